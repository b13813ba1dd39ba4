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

use crate::sync::Outcome;

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
    /// Not set up: nothing drives the light yet.
    Off,
}

impl Pattern {
    /// (delay_on ms, delay_off ms) under the `timer` trigger. The LED stays on the
    /// timer trigger for good: switching triggers makes the kernel recreate
    /// delay_on/delay_off owned by root, which an unprivileged agent could then not
    /// write. delay_off 0 is steady on, delay_on 0 is off (kernel led-core).
    fn delays(self) -> (u32, u32) {
        match self {
            Pattern::Synced => (1, 0),
            Pattern::Waiting => (1000, 1000),
            Pattern::Syncing => (100, 100),
            Pattern::Offline => (100, 1900),
            Pattern::Attention => (50, 50),
            Pattern::Off => (0, 1),
        }
    }

    /// The light and what it means, word for word as README's table for
    /// clinic staff says (tests/readme.rs holds them together).
    pub fn meaning(self) -> &'static str {
        match self {
            Pattern::Synced => "steady on: everything is sent and received",
            Pattern::Waiting => {
                "slow blink: waiting for the next sync: records to send, or the last sync did not finish"
            }
            Pattern::Syncing => "fast blink: syncing now",
            Pattern::Offline => {
                "short flash: the central server cannot be reached; data is kept and sent later"
            }
            Pattern::Attention => "rapid flicker: a person must act",
            Pattern::Off => "off: not set up yet, or fieldsync does not run",
        }
    }

    pub const ALL: [Pattern; 6] = [
        Pattern::Synced,
        Pattern::Waiting,
        Pattern::Syncing,
        Pattern::Offline,
        Pattern::Attention,
        Pattern::Off,
    ];
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
    let (on, off) = p.delays();
    write_delays(dir, on, off)
}

fn off(dir: &Path) -> std::io::Result<()> {
    write_delays(dir, 0, 1000)
}

fn write_delays(dir: &Path, on: u32, off: u32) -> std::io::Result<()> {
    // The kernel lists every trigger with the active one in brackets; the
    // package's udev rule selects "timer" when the LED appears.
    let trigger = std::fs::read_to_string(dir.join("trigger")).unwrap_or_default();
    if !trigger.contains("[timer]") && trigger.trim() != "timer" {
        std::fs::write(dir.join("trigger"), "timer").map_err(|e| with_path(e, dir))?;
    }
    std::fs::write(dir.join("delay_on"), on.to_string()).map_err(|e| with_path(e, dir))?;
    std::fs::write(dir.join("delay_off"), off.to_string()).map_err(|e| with_path(e, dir))
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
        let tmp = crate::testkit::tempdir::TempDir::new("led");
        let base = tmp.path().to_path_buf();
        for n in ["ACT", "PWR"] {
            std::fs::create_dir_all(base.join(n)).unwrap();
        }
        let read = |n: &str, f: &str| std::fs::read_to_string(base.join(n).join(f)).unwrap();
        let delays = |n: &str| (read(n, "delay_on"), read(n, "delay_off"));
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        // Every pattern on a single status LED.
        let single = Leds::new(&base, Some("ACT".into()), None);
        for (p, want) in [
            (Pattern::Synced, s("1", "0")),
            (Pattern::Waiting, s("1000", "1000")),
            (Pattern::Syncing, s("100", "100")),
            (Pattern::Offline, s("100", "1900")),
            (Pattern::Attention, s("50", "50")),
        ] {
            single.show(p);
            assert_eq!(read("ACT", "trigger"), "timer", "{p:?}");
            assert_eq!(delays("ACT"), want, "{p:?}");
        }
        // A kernel trigger file already on the timer is left alone.
        std::fs::write(base.join("ACT/trigger"), "none mmc0 [timer] heartbeat").unwrap();
        single.show(Pattern::Offline);
        assert_eq!(read("ACT", "trigger"), "none mmc0 [timer] heartbeat");
        // With an attention LED, attention shows there only.
        let two = Leds::new(&base, Some("ACT".into()), Some("PWR".into()));
        two.show(Pattern::Offline);
        assert_eq!(delays("PWR"), s("0", "1000"), "attention LED off");
        two.show(Pattern::Attention);
        assert_eq!(delays("PWR"), s("50", "50"));
        assert_eq!(delays("ACT"), s("1", "0"));
        // A missing LED is a warning, not a failure.
        Leds::new(&base, Some("nope".into()), None).show(Pattern::Synced);
    }
}
