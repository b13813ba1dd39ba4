//! The status LED, through the Linux LED class (`/sys/class/leds/<name>/`).
//!
//! Five patterns, one per thing staff need to know (README, "For clinic staff"):
//! steady on = all synced; slow blink = records waiting; fast blink = syncing;
//! short flash every 2 s = offline; double-speed flicker on the attention LED (or
//! the status LED when there is one) = a person must act. No LED configured, or no
//! permission, is a warning logged once, never a failure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::cycle::Outcome;

/// Where LED class devices live; tests point it at a fake directory.
pub const SYS_LEDS: &str = "/sys/class/leds";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Synced,
    Waiting,
    Syncing,
    Offline,
    Attention,
}

impl Pattern {
    /// (trigger, brightness, delay_on ms, delay_off ms).
    fn settings(self) -> (&'static str, u32, u32, u32) {
        match self {
            Pattern::Synced => ("none", 1, 0, 0),
            Pattern::Waiting => ("timer", 1, 1000, 1000),
            Pattern::Syncing => ("timer", 1, 100, 100),
            Pattern::Offline => ("timer", 1, 100, 1900),
            Pattern::Attention => ("timer", 1, 50, 50),
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Pattern::Synced => "steady on: everything is sent and received",
            Pattern::Waiting => "slow blink: records are waiting to be sent at the next sync",
            Pattern::Syncing => "fast blink: syncing now",
            Pattern::Offline => {
                "short flash: the central server cannot be reached; data is kept and sent later"
            }
            Pattern::Attention => "rapid flicker: a person must act; run `fieldsync status`",
        }
    }
}

/// The pattern for the current state: pure, tested by a table.
pub fn pattern(
    running: bool,
    last: Option<Outcome>,
    outbox_pending: u64,
    rejected: u64,
) -> Pattern {
    if running {
        return Pattern::Syncing;
    }
    match last {
        Some(Outcome::NeedsAttention) | Some(Outcome::OkWithIntegrationErrors) => {
            Pattern::Attention
        }
        _ if rejected > 0 => Pattern::Attention,
        Some(Outcome::Offline) => Pattern::Offline,
        _ if outbox_pending > 0 => Pattern::Waiting,
        None => Pattern::Waiting,
        Some(Outcome::Transient) => Pattern::Waiting,
        Some(Outcome::Ok) => Pattern::Synced,
    }
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Drives the configured LEDs. `status` shows the state pattern; `attention`,
/// when configured, lights only for attention so staff see it from afar.
pub struct Leds {
    base: PathBuf,
    status: Option<String>,
    attention: Option<String>,
}

impl Leds {
    pub fn new(
        base: impl Into<PathBuf>,
        status: Option<String>,
        attention: Option<String>,
    ) -> Leds {
        Leds {
            base: base.into(),
            status,
            attention,
        }
    }

    pub fn show(&self, p: Pattern) {
        if self.status.is_none() && self.attention.is_none() {
            return;
        }
        let mut result = Ok(());
        if let Some(name) = &self.status {
            let shown = if self.attention.is_some() && p == Pattern::Attention {
                Pattern::Synced
            } else {
                p
            };
            result = result.and(write_led(&self.base.join(name), shown));
        }
        if let Some(name) = &self.attention {
            let dir = self.base.join(name);
            result = result.and(if p == Pattern::Attention {
                write_led(&dir, p)
            } else {
                off(&dir)
            });
        }
        if let Err(e) = result {
            if !WARNED.swap(true, Ordering::Relaxed) {
                log::warn!("cannot drive the status LED ({e}); install the package's udev rule or set `led` to none");
            }
        }
    }
}

fn write_led(dir: &Path, p: Pattern) -> std::io::Result<()> {
    let (trigger, brightness, on, off_ms) = p.settings();
    std::fs::write(dir.join("trigger"), trigger).map_err(|e| with_path(e, dir))?;
    if trigger == "timer" {
        // The timer trigger creates delay_on/delay_off; write them after it.
        std::fs::write(dir.join("delay_on"), on.to_string()).map_err(|e| with_path(e, dir))?;
        std::fs::write(dir.join("delay_off"), off_ms.to_string()).map_err(|e| with_path(e, dir))?;
    } else {
        std::fs::write(dir.join("brightness"), brightness.to_string())
            .map_err(|e| with_path(e, dir))?;
    }
    Ok(())
}

fn off(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("trigger"), "none").map_err(|e| with_path(e, dir))?;
    std::fs::write(dir.join("brightness"), "0").map_err(|e| with_path(e, dir))
}

fn with_path(e: std::io::Error, dir: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        use Outcome::*;
        let cases = [
            (true, Some(NeedsAttention), 5, 0, Pattern::Syncing),
            (false, Some(Ok), 0, 0, Pattern::Synced),
            (false, Some(Ok), 3, 0, Pattern::Waiting),
            (false, Some(Offline), 3, 0, Pattern::Offline),
            (false, Some(Transient), 0, 0, Pattern::Waiting),
            (false, Some(NeedsAttention), 0, 0, Pattern::Attention),
            (
                false,
                Some(OkWithIntegrationErrors),
                0,
                0,
                Pattern::Attention,
            ),
            (false, Some(Ok), 0, 2, Pattern::Attention),
            (false, None, 0, 0, Pattern::Waiting),
        ];
        for (running, last, pending, rejected, want) in cases {
            assert_eq!(
                pattern(running, last, pending, rejected),
                want,
                "{running} {last:?} {pending} {rejected}"
            );
        }
    }

    #[test]
    fn writes_the_led_class_files() {
        let base = std::env::temp_dir().join(format!("fs-led-{}", std::process::id()));
        for n in ["ACT", "PWR"] {
            std::fs::create_dir_all(base.join(n)).unwrap();
        }
        let leds = Leds::new(&base, Some("ACT".into()), Some("PWR".into()));
        leds.show(Pattern::Offline);
        let read = |n: &str, f: &str| std::fs::read_to_string(base.join(n).join(f)).unwrap();
        assert_eq!(read("ACT", "trigger"), "timer");
        assert_eq!(
            (
                read("ACT", "delay_on").as_str(),
                read("ACT", "delay_off").as_str()
            ),
            ("100", "1900")
        );
        assert_eq!(
            (
                read("PWR", "trigger").as_str(),
                read("PWR", "brightness").as_str()
            ),
            ("none", "0")
        );
        leds.show(Pattern::Attention);
        assert_eq!(read("PWR", "trigger"), "timer");
        assert_eq!(read("PWR", "delay_on"), "50");
        assert_eq!(
            (
                read("ACT", "trigger").as_str(),
                read("ACT", "brightness").as_str()
            ),
            ("none", "1")
        );
        // Every pattern on a single status LED.
        let single = Leds::new(&base, Some("ACT".into()), None);
        for (p, want) in [
            (Pattern::Synced, ("none", None)),
            (Pattern::Waiting, ("timer", Some(("1000", "1000")))),
            (Pattern::Syncing, ("timer", Some(("100", "100")))),
            (Pattern::Offline, ("timer", Some(("100", "1900")))),
            (Pattern::Attention, ("timer", Some(("50", "50")))),
        ] {
            single.show(p);
            assert_eq!(read("ACT", "trigger"), want.0, "{p:?}");
            if let Some((on, off)) = want.1 {
                assert_eq!(
                    (
                        read("ACT", "delay_on").as_str(),
                        read("ACT", "delay_off").as_str()
                    ),
                    (on, off),
                    "{p:?}"
                );
            } else {
                assert_eq!(read("ACT", "brightness"), "1");
            }
        }
        // A missing LED is a warning, not a failure.
        Leds::new(&base, Some("nope".into()), None).show(Pattern::Synced);
        std::fs::remove_dir_all(base).unwrap();
    }
}
