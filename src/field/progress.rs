//! What a person sees of a sync while it runs: one line for the step under way,
//! with its counts, the bytes that crossed the link, the rate and the time left
//! where they are known — `push 3,072 / 10,000 records · 1.2 MB sent · 240 kB/s ·
//! ~25 s left`.
//!
//! On a terminal the line is rewritten in place at most four times a second and
//! cleared before the next log line or the summary ([`clear_live_line`]); in the
//! journal or a log file it is a plain log line every `progress_secs` while a
//! step runs longer than that. The same text goes into the status snapshot, so
//! `fieldsync status` shows it from another session.
//!
//! Times come from the cycle's monotonic clock, never the date.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sync::{Progress, Step};

/// Set while a live line stands on the terminal without its newline.
static LIVE: AtomicBool = AtomicBool::new(false);

/// Terminal redraws at most this often.
const REDRAW: Duration = Duration::from_millis(250);

/// Clears the live line, if one stands, so a log line starts on a clean row.
pub fn clear_live_line(w: &mut dyn Write) {
    if LIVE.swap(false, Ordering::SeqCst) {
        let _ = w.write_all(b"\r\x1b[2K");
    }
}

/// Where the progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A live line on stderr (a terminal, not `--quiet`).
    Terminal,
    /// A log line every `every` while a step runs longer than that.
    Log { every: Duration },
    /// Nothing (quiet, or a test).
    None,
}

/// Follows one cycle's progress events and shows them on its sink.
pub struct Meter {
    sink: Sink,
    step: Option<Step>,
    /// Monotonic time, records and bytes when the step began.
    started: Duration,
    done0: u64,
    sent0: u64,
    received0: u64,
    last_out: Duration,
    line: String,
}

impl Meter {
    pub fn new(sink: Sink) -> Meter {
        Meter {
            sink,
            step: None,
            started: Duration::ZERO,
            done0: 0,
            sent0: 0,
            received0: 0,
            last_out: Duration::ZERO,
            line: String::new(),
        }
    }

    /// One progress event at monotonic time `now`. Returns the line as it
    /// stands (for the status snapshot).
    pub fn update(&mut self, p: &Progress, now: Duration) -> &str {
        if self.step != Some(p.step) {
            self.step = Some(p.step);
            self.started = now;
            self.done0 = p.done;
            self.sent0 = p.sent;
            self.received0 = p.received;
            self.last_out = now;
            if self.sink == Sink::Terminal {
                self.last_out = Duration::ZERO; // show a new step at once
            }
        }
        self.line = line(
            p,
            now.saturating_sub(self.started),
            p.done.saturating_sub(self.done0),
            p.sent.saturating_sub(self.sent0),
            p.received.saturating_sub(self.received0),
        );
        match self.sink {
            Sink::Terminal
                if now.saturating_sub(self.last_out) >= REDRAW || self.last_out.is_zero() =>
            {
                let mut err = std::io::stderr().lock();
                let mut shown: String = self.line.chars().take(110).collect();
                if shown.is_empty() {
                    shown.push(' ');
                }
                let _ = write!(err, "\r\x1b[2K{shown}");
                let _ = err.flush();
                LIVE.store(true, Ordering::SeqCst);
                self.last_out = now.max(Duration::from_nanos(1));
            }
            Sink::Log { every } if now.saturating_sub(self.last_out) >= every => {
                if !self.line.is_empty() {
                    log::info!("{}", self.line);
                }
                self.last_out = now;
            }
            _ => {}
        }
        &self.line
    }

    /// The cycle ended: the live line goes, the summary takes its row.
    pub fn finish(&mut self) {
        if self.sink == Sink::Terminal {
            clear_live_line(&mut std::io::stderr().lock());
        }
    }
}

/// The line for one event. `in_step`: time since the step began; `done_in_step`,
/// `sent`, `received`: what moved during it.
pub fn line(
    p: &Progress,
    in_step: Duration,
    done_in_step: u64,
    sent: u64,
    received: u64,
) -> String {
    let secs = in_step.as_secs_f64();
    let rate = |bytes: u64| -> Option<String> {
        (secs >= 1.0 && bytes > 0).then(|| format!("{}/s", size((bytes as f64 / secs) as u64)))
    };
    let left = |total: Option<u64>| -> Option<String> {
        let total = total?;
        if secs < 1.0 || done_in_step == 0 || p.done >= total {
            return None;
        }
        let per_sec = done_in_step as f64 / secs;
        Some(format!(
            "~{} left",
            duration(((total - p.done) as f64 / per_sec).max(1.0))
        ))
    };
    let count = |what: &str| match p.total {
        Some(t) => format!("{what} {} / {} records", thousands(p.done), thousands(t)),
        None => format!("{what} {} records", thousands(p.done)),
    };
    let parts: Vec<String> = match p.step {
        Step::Probe => vec!["connecting to the central".into()],
        Step::SiteInfo => vec!["asking the central about this site".into()],
        Step::Initialise => vec![
            "initialisation: the central is preparing this site's records".into(),
            duration(secs),
        ],
        Step::Check => vec!["checking this device's records against what was synced".into()],
        Step::Compare => vec!["comparing this device's records with the central's".into()],
        Step::Push => [
            Some(count("push")),
            Some(format!("{} sent", size(sent))),
            rate(sent),
            left(p.total),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Step::WaitIntegration => vec![
            "waiting for the central to integrate what was sent".into(),
            duration(secs),
        ],
        Step::CentralRecords | Step::Queue => [
            Some(count(if p.step == Step::Queue {
                "queued records"
            } else {
                "central records"
            })),
            Some(format!("{} received", size(received))),
            rate(received),
            left(p.total),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Step::Integrate => [Some(count("integrating")), left(p.total)]
            .into_iter()
            .flatten()
            .collect(),
        Step::Transfers => vec!["numbering received transfers".into()],
        Step::Done => vec![],
    };
    parts.join(" · ")
}

/// 12345 → "12,345".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in SI units, as a link's speed is quoted: "812 B", "240 kB", "1.2 MB".
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1000 {
        format!("{bytes} B")
    } else if b < 1e6 {
        format!("{:.0} kB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} GB", b / 1e9)
    }
}

/// Seconds as a person reads them: "25 s", "4 min", "1 h 20 min".
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 100 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(step: Step, done: u64, total: Option<u64>, sent: u64, received: u64) -> Progress {
        Progress {
            step,
            done,
            total,
            sent,
            received,
        }
    }

    #[test]
    fn a_push_line_has_counts_bytes_rate_and_time_left() {
        let l = line(
            &p(Step::Push, 3072, Some(10_000), 1_200_000, 0),
            Duration::from_secs(5),
            3072,
            1_200_000,
            0,
        );
        assert_eq!(
            l,
            "push 3,072 / 10,000 records · 1.2 MB sent · 240 kB/s · ~11 s left"
        );
    }

    #[test]
    fn pulls_count_what_arrived_and_waits_their_time() {
        let l = line(
            &p(Step::CentralRecords, 400, None, 0, 812),
            Duration::from_millis(500),
            400,
            0,
            812,
        );
        assert_eq!(l, "central records 400 records · 812 B received");
        // Once a page said how many there are: the total and the time left.
        let l = line(
            &p(Step::CentralRecords, 2_000, Some(10_025), 0, 1_800_000),
            Duration::from_secs(20),
            2_000,
            0,
            1_800_000,
        );
        assert_eq!(
            l,
            "central records 2,000 / 10,025 records · 1.8 MB received · 90 kB/s · ~80 s left"
        );
        let l = line(
            &p(Step::WaitIntegration, 3, None, 0, 0),
            Duration::from_secs(130),
            0,
            0,
            0,
        );
        assert_eq!(
            l,
            "waiting for the central to integrate what was sent · 2 min"
        );
    }

    #[test]
    fn figures_read_as_people_read_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(240_000), "240 kB");
        assert_eq!(duration(25.4), "25 s");
        assert_eq!(duration(4000.0), "1 h 6 min");
    }

    #[test]
    fn the_log_sink_writes_only_when_a_step_outlasts_its_interval() {
        let mut m = Meter::new(Sink::Log {
            every: Duration::from_secs(30),
        });
        let e = p(Step::Push, 10, Some(100), 1000, 0);
        m.update(&e, Duration::from_secs(0));
        assert_eq!(m.last_out, Duration::ZERO);
        m.update(&e, Duration::from_secs(29));
        assert_eq!(m.last_out, Duration::ZERO, "not yet");
        m.update(&e, Duration::from_secs(31));
        assert_eq!(m.last_out, Duration::from_secs(31), "written");
    }
}
