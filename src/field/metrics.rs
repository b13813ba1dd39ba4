//! Fleet metrics: after each sync the agent writes what a deployer's dashboard
//! needs as a text file in the Prometheus/OpenMetrics exposition format, for
//! node_exporter's textfile collector (`--collector.textfile.directory`) or any
//! scraper that reads such files. Off unless the `metrics_file` setting names
//! the file.
//!
//! What must hold: a reader never sees half a file (written beside the target,
//! then renamed over it); the file parses as both OpenMetrics (it ends with
//! `# EOF`, which the Prometheus text parser reads as a comment) and the older
//! Prometheus text format (only `gauge` types, no reserved suffixes); times are
//! the device's clock, which may be wrong (no RTC), so a clock-free count of
//! attempts since the last success sits beside them.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Class;
use crate::field::status::Attempt;
use crate::store::modes;
use crate::sync::Outcome;

/// What the file says; gathered by the runner after a sync.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub site: String,
    pub last: Option<Attempt>,
    /// Device clock (unix seconds) of the last success, if any.
    pub last_success_unix: Option<u64>,
    /// Attempts that did not succeed since the last one that did.
    pub attempts_since_success: u64,
    pub outbox_pending: u64,
    pub outbox_rejected: u64,
    pub outbox_held: u64,
    pub integration_pending: u64,
    pub integration_failed: u64,
    /// The last comparison with the central (issue 30), if one ran.
    pub compared: Option<crate::store::compare::Compared>,
    /// A comparison is owed: the central looked restored.
    pub compare_owed: bool,
}

/// Label values are quoted strings: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(out: &mut String, name: &str, help: &str, v: f64) {
    gauge(out, name, help, &[(String::new(), v)]);
}

/// The exposition text.
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "fieldsync_version",
        "The agent's version and site (always 1).",
        &[(
            format!(
                "{{version=\"{}\",site=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                label(&s.site)
            ),
            1.0,
        )],
    );
    if let Some(t) = s.last_success_unix {
        one(
            &mut out,
            "fieldsync_last_success_timestamp_seconds",
            "Device clock at the end of the last successful sync (a Pi without RTC may be wrong).",
            t as f64,
        );
    }
    one(
        &mut out,
        "fieldsync_attempts_since_success",
        "Syncs since the last successful one (clock-free; 288 a day at the 5 min timer).",
        s.attempts_since_success as f64,
    );
    if let Some(a) = &s.last {
        one(
            &mut out,
            "fieldsync_last_attempt_timestamp_seconds",
            "Device clock at the end of the last sync attempt.",
            a.finished_unix as f64,
        );
        let outcome = |o: Outcome| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let outcomes = [
            Outcome::Ok,
            Outcome::OkWithIntegrationErrors,
            Outcome::Offline,
            Outcome::Transient,
            Outcome::NeedsAttention,
        ];
        gauge(
            &mut out,
            "fieldsync_last_attempt_outcome",
            "The last sync's outcome: 1 for the one it had, 0 for the others.",
            &outcomes
                .iter()
                .map(|o| {
                    (
                        format!("{{outcome=\"{}\"}}", outcome(*o)),
                        f64::from(u8::from(*o == a.outcome)),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let class = |c: Class| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        gauge(
            &mut out,
            "fieldsync_last_attempt_class",
            "The last sync's result class (README: exit codes): 1 for its class, 0 for the others; all 0 on success.",
            &Class::ALL
                .iter()
                .map(|c| {
                    (
                        format!("{{class=\"{}\"}}", class(*c)),
                        f64::from(u8::from(a.class == Some(*c))),
                    )
                })
                .collect::<Vec<_>>(),
        );
        one(
            &mut out,
            "fieldsync_last_attempt_exit_code",
            "The exit code `fieldsync sync` gave for the last sync (0: success).",
            f64::from(a.class.map_or(0, Class::exit_code)),
        );
        let r = &a.report;
        for (name, help, v) in [
            (
                "fieldsync_last_sync_duration_seconds",
                "How long the last sync took.",
                a.duration_ms as f64 / 1000.0,
            ),
            (
                "fieldsync_last_sync_requests",
                "HTTP requests of the last sync.",
                r.requests as f64,
            ),
            (
                "fieldsync_last_sync_sent_bytes",
                "Bytes the last sync put on the link (heads and bodies, compressed as sent).",
                r.bytes_sent as f64,
            ),
            (
                "fieldsync_last_sync_received_bytes",
                "Bytes the link brought the last sync (heads and bodies, compressed as they came).",
                r.bytes_received as f64,
            ),
            (
                "fieldsync_last_sync_pushed_records",
                "Records the last sync pushed.",
                r.pushed as f64,
            ),
            (
                "fieldsync_last_sync_pulled_records",
                "Records the last sync pulled (central data and queue).",
                (r.pulled_central + r.pulled_queue) as f64,
            ),
        ] {
            one(&mut out, name, help, v);
        }
    }
    for (name, help, v) in [
        (
            "fieldsync_outbox_records",
            "Local changes waiting to be sent.",
            s.outbox_pending,
        ),
        (
            "fieldsync_rejected_records",
            "Local changes set aside (refused by the central or unsendable); a person must look.",
            s.outbox_rejected,
        ),
        (
            "fieldsync_held_records",
            "Dispensary transactions kept on the site by its preference.",
            s.outbox_held,
        ),
        (
            "fieldsync_integration_pending_records",
            "Received records waiting to be applied.",
            s.integration_pending,
        ),
        (
            "fieldsync_integration_error_records",
            "Received records that could not be applied yet.",
            s.integration_failed,
        ),
    ] {
        one(&mut out, name, help, v as f64);
    }
    if let Some(c) = &s.compared {
        for (name, help, v) in [
            (
                "fieldsync_compare_differences",
                "Records that differed from the central at the last comparison (repaired or listed).",
                c.differences,
            ),
            (
                "fieldsync_compare_unmatched_records",
                "Records held here, not this site's, that the central has no copy of (last comparison); a person decides.",
                c.unmatched,
            ),
        ] {
            one(&mut out, name, help, v as f64);
        }
    }
    one(
        &mut out,
        "fieldsync_compare_owed",
        "1 while a comparison with the central is owed because it looked restored.",
        f64::from(u8::from(s.compare_owed)),
    );
    out.push_str("# EOF\n");
    out
}

/// Writes the file whole: a temporary file beside it, then a rename (the
/// textfile collector's own advice), readable by the exporter's user.
pub fn write(path: &Path, s: &Sample) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = modes::open_exact(&tmp, modes::PUBLIC, true)?;
        std::io::Write::write_all(&mut f, render(s).as_bytes())?;
        // On the card before the rename, so a power cut leaves the old file or
        // the new one, never an empty one.
        f.sync_data()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Report;

    #[test]
    fn every_family_is_typed_and_the_file_ends_with_eof() {
        let mut report = Report {
            pushed: 3,
            requests: 7,
            ..Report::default()
        };
        report.class = Some(Class::Offline);
        let s = Sample {
            site: "kaw \"north\"".into(),
            last: Some(Attempt::from_report(&report)),
            attempts_since_success: 2,
            outbox_pending: 3,
            ..Sample::default()
        };
        let text = render(&s);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("site=\"kaw \\\"north\\\"\""), "{text}");
        assert!(text.contains("fieldsync_last_attempt_class{class=\"offline\"} 1\n"));
        assert!(text.contains("fieldsync_last_attempt_exit_code 10\n"));
        assert!(text.contains("fieldsync_last_attempt_outcome{outcome=\"offline\"} 1\n"));
        assert!(!text.contains("fieldsync_last_success_timestamp_seconds"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} gauge\n")),
                "{name} has no TYPE"
            );
        }
    }
}
