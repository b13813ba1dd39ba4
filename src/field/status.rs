//! What field staff and helpers see: the status snapshot file and the `status`
//! command's view.
//!
//! The snapshot is JSON, written atomically (temp file + rename) after each step, so
//! the LED, `status` and any script (`jq`) can read the state without opening
//! SQLite, even while a sync holds the write lock. JSON rather than postcard: its
//! readers are people and shell tools, and it is a few hundred bytes.
//! Wall-clock times here are for display only ("last sync 5 min ago"); nothing is
//! ordered or decided by them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Class;
use crate::field::led::Pattern;
use crate::store::check::Checked;
use crate::store::{modes, InitState, Store, StoreError};
use crate::sync::{Outcome, Report, Step};

/// The single-sync lock beside the database (held, `flock`, by a running sync).
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Whether a sync of `db` runs: read from the kernel's lock table
/// (`/proc/locks`: no write, no lock taken, so `status` can never make a
/// starting sync think another one runs); where that cannot be read, from the
/// snapshot's pid.
pub fn sync_running(db: &Path, snap: Option<&Snapshot>) -> bool {
    match sync_holder(db) {
        Some(holder) => holder.is_some(),
        None => snap.is_some_and(|s| s.running && s.pid.is_some_and(process_alive)),
    }
}

/// `Some(pid)` of the process holding `db`'s sync lock, `Some(None)` when none
/// does, `None` when the lock table cannot be read.
fn sync_holder(db: &Path) -> Option<Option<u32>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let Ok(m) = std::fs::metadata(lock_path(db)) else {
            return Some(None); // never synced here
        };
        let (dev, ino) = (m.dev(), m.ino());
        let (major, minor) = (
            ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            (dev & 0xff) | ((dev >> 12) & !0xff),
        );
        let want = format!("{major:02x}:{minor:02x}:{ino}");
        Some(locks.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF"
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = db;
        None
    }
}

/// The snapshot file beside the database.
pub fn snapshot_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".status.json");
    PathBuf::from(p)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub running: bool,
    pub pid: Option<u32>,
    pub step: Option<Step>,
    pub done: u64,
    pub total: Option<u64>,
    /// The progress line as the terminal shows it (see `progress`).
    #[serde(default)]
    pub line: Option<String>,
    pub led: Option<Pattern>,
    pub last: Option<Attempt>,
    /// The last sync that failed before it could start (an unreadable
    /// credential, a broken setting, the database): nothing in the database
    /// says so, so the status would otherwise show the sync before it as the
    /// last word. Cleared by the next sync that starts.
    #[serde(default)]
    pub failed_start: Option<Attempt>,
    /// A `run` loop on this database: its pid and what wakes it.
    #[serde(default)]
    pub run: Option<RunNote>,
}

/// What `status` says of a `run` loop between its syncs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunNote {
    pub pid: u32,
    pub wakes: String,
}

/// `run` notes itself (and what wakes it) in the status file, or its end.
pub fn note_run(db: &Path, wakes: Option<&str>) {
    let path = snapshot_path(db);
    let mut snap = read_snapshot(&path).unwrap_or_default();
    snap.run = wakes.map(|w| RunNote {
        pid: std::process::id(),
        wakes: w.to_string(),
    });
    if let Err(e) = write_snapshot(&path, &snap) {
        log::warn!("could not write the status file {}: {e}", path.display());
    }
}

/// The last finished cycle, as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub outcome: Outcome,
    pub class: Option<Class>,
    pub error: Option<String>,
    pub hint: Option<String>,
    pub finished_unix: u64,
    /// How long the sync took (monotonic clock), in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    pub report: Report,
}

pub use crate::clock::{now_unix, utc_date};

impl Attempt {
    /// A sync that failed before it started: `class`, `error`, nothing done.
    pub fn failed_start(class: Class, error: &str) -> Attempt {
        Attempt {
            outcome: if class.is_transient() {
                Outcome::Transient
            } else {
                Outcome::NeedsAttention
            },
            class: Some(class),
            error: Some(error.to_string()),
            hint: Some(class.hint().to_string()),
            finished_unix: now_unix(),
            duration_ms: 0,
            report: Report::default(),
        }
    }

    pub fn from_report(report: &Report) -> Attempt {
        Attempt {
            outcome: report.outcome(),
            class: report.class,
            error: report.error.clone(),
            hint: report
                .hint
                .clone()
                .or_else(|| report.class.map(|c| c.hint().to_string())),
            finished_unix: now_unix(),
            duration_ms: 0,
            report: report.clone(),
        }
    }
}

pub fn write_snapshot(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = modes::open_exact(&tmp, modes::PUBLIC, true)?;
    std::io::Write::write_all(&mut f, &text)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

pub fn read_snapshot(path: &Path) -> Option<Snapshot> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Saves the attempt in the database too (same file as the data, so a copied
/// database tells its own story); `last_success` only on success.
pub fn record_attempt(store: &mut Store, attempt: &Attempt) -> Result<(), StoreError> {
    let text = serde_json::to_string(attempt).unwrap_or_default();
    let success = matches!(
        attempt.outcome,
        Outcome::Ok | Outcome::OkWithIntegrationErrors
    );
    store.record_attempt(&text, success, attempt.finished_unix)
}

/// Everything `fieldsync status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub site: Option<String>,
    pub central_url: Option<String>,
    pub active_store: Option<String>,
    pub initialised: bool,
    pub outbox_pending: u64,
    pub outbox_rejected: u64,
    pub integration_pending: u64,
    pub integration_failed: u64,
    pub integration_errors: Vec<String>,
    pub last_success_unix: Option<u64>,
    pub last_attempt: Option<Attempt>,
    pub running: bool,
    pub step: Option<Step>,
    pub progress: Option<String>,
    pub led: Pattern,
    /// The one thing to do now, if anything.
    pub what_to_do: Option<String>,
    /// Another program changed fieldsync's rules in the database: what was found
    /// now, or when they were last restored (issue 18).
    pub rules: Option<String>,
    /// What the last check of the records against what was last synced found
    /// (changes made behind the rules; issue 26).
    pub check: Option<Checked>,
    /// Records changed behind the rules that the central was not yet asked to
    /// send again.
    pub restore_waiting: u64,
    /// What the last comparison with the central found and repaired (issue 30).
    #[serde(default)]
    pub compare: Option<crate::store::compare::Compared>,
    /// Why a comparison with the central is owed (the central looked restored).
    #[serde(default)]
    pub compare_due: Option<String>,
    /// The database is on storage that refuses writes (a failing card, a
    /// read-only mount): nothing can sync or be saved until it is writable.
    #[serde(default)]
    pub read_only: bool,
    /// Stored rows set aside by a schema upgrade (not valid rows).
    pub quarantined: u64,
    /// The class of the current condition (exit-code meaning), if any.
    pub class: Option<Class>,
    /// The last USB bundle written (`fieldsync export`) and read
    /// (`fieldsync import-bundle`): file, records, device time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_out: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_in: Option<serde_json::Value>,
    /// A `run` loop on this database and what wakes it.
    #[serde(default)]
    pub run: Option<String>,
}

impl View {
    /// The view of a device with no database yet: nothing to show but what to do.
    pub fn unconfigured(db: &Path) -> View {
        View {
            site: None,
            central_url: None,
            active_store: None,
            initialised: false,
            outbox_pending: 0,
            outbox_rejected: 0,
            integration_pending: 0,
            integration_failed: 0,
            integration_errors: vec![],
            last_success_unix: None,
            last_attempt: None,
            running: false,
            step: None,
            progress: None,
            led: Pattern::Off,
            what_to_do: Some(format!(
                "{} (no database at {})",
                Class::NotConfigured.hint(),
                db.display()
            )),
            class: Some(Class::NotConfigured),
            rules: None,
            check: None,
            restore_waiting: 0,
            compare: None,
            compare_due: None,
            read_only: false,
            quarantined: 0,
            bundle_out: None,
            bundle_in: None,
            run: None,
        }
    }
}

/// Reads the view with plain SELECTs (WAL readers never wait for a writer).
/// What the configuration says of the site, for the view (the configuration is
/// the agent's; this layer only shows it).
#[derive(Debug, Clone, Default)]
pub struct Configured {
    pub site: Option<String>,
    pub central_url: Option<String>,
}

pub fn view(
    store: &Store,
    snap: Option<&Snapshot>,
    configured: Configured,
) -> Result<View, StoreError> {
    let counts = store.buffer_counts()?;
    let errors = store
        .buffer_errors(5)?
        .into_iter()
        .map(|f| format!("{} {}: {} (tried {}×)", f.table, f.id, f.error, f.attempts))
        .collect();
    // A sync that could not start is newer than any the database recorded
    // (the next one that starts clears it).
    let last_attempt: Option<Attempt> = match snap.and_then(|s| s.failed_start.clone()) {
        Some(failed) => Some(failed),
        None => store
            .last_attempt()?
            .and_then(|v| serde_json::from_value(v).ok()),
    };
    // A running sync holds the lock; the snapshot's own flag is the fallback
    // where the lock table cannot be read.
    let running = sync_running(store.path(), snap);
    let outbox = store.outbox_counts()?;
    let pending = outbox.pending;
    let (bundle_out, bundle_in) = store.bundles()?;
    let mut v = View {
        site: configured.site,
        central_url: configured.central_url,
        active_store: store.active_store()?.filter(|s| !s.is_empty()),
        initialised: store.init_state()? == InitState::Initialised,
        outbox_pending: pending,
        outbox_rejected: outbox.rejected,
        integration_pending: counts.pending,
        integration_failed: counts.failed,
        integration_errors: errors,
        last_success_unix: store.last_success()?,
        running,
        step: if running {
            snap.and_then(|s| s.step)
        } else {
            None
        },
        progress: if running {
            snap.map(|s| match (&s.line, s.total) {
                (Some(l), _) if !l.is_empty() => l.clone(),
                (_, Some(t)) => format!("{} of {t}", s.done),
                (_, None) => format!("{}", s.done),
            })
        } else {
            None
        },
        led: Pattern::Synced,
        last_attempt,
        what_to_do: None,
        class: None,
        rules: rules_note(store, now_unix())?,
        check: store.last_check()?,
        restore_waiting: store.restore_waiting()?,
        compare: store.last_compare()?,
        compare_due: store.compare_due()?,
        read_only: store.read_only(),
        quarantined: store.quarantined()?,
        bundle_out,
        bundle_in,
        run: snap
            .and_then(|s| s.run.as_ref())
            .filter(|r| process_alive(r.pid))
            .map(|r| format!("fieldsync run (pid {}) syncs {}", r.pid, r.wakes)),
    };
    if v.site.is_none() {
        v.class = Some(Class::NotConfigured);
        v.what_to_do = Some(Class::NotConfigured.hint().into());
    } else if let Some(a) = v.last_attempt.as_ref().filter(|a| a.class.is_some()) {
        v.class = a.class;
        v.what_to_do = a.hint.clone();
    }
    let mut outcome = v.last_attempt.as_ref().map(|a| a.outcome);
    // The last sync stopped only for records set aside, and a person has
    // since put them back (`queue retry`) or dropped them (`queue drop`):
    // nothing is left to act on, whatever the last attempt said.
    if v.class == Some(Class::Rejected) && v.outbox_rejected == 0 {
        v.class = None;
        v.what_to_do = (pending > 0).then(|| {
            "the records put back are sent by the next sync (or run `fieldsync sync` now)"
                .to_string()
        });
        if let Some(a) = v.last_attempt.as_mut() {
            a.error = a
                .error
                .take()
                .map(|e| format!("{e}; since put back or dropped: nothing is set aside now"));
        }
        outcome = Some(Outcome::Ok);
    }
    if v.read_only {
        // Nothing else can be done before this: no sync, no app write, lands.
        v.what_to_do = Some(READ_ONLY_HINT.into());
        outcome = Some(Outcome::NeedsAttention);
    }
    v.led = crate::field::led::pattern(running, outcome, pending, v.outbox_rejected);
    Ok(v)
}

/// What status says about the rules: changed right now (a read-only look; the
/// next write restores them), or restored before.
fn rules_note(store: &Store, now: u64) -> Result<Option<String>, StoreError> {
    let problems = store.rules_problems()?;
    if !problems.is_empty() {
        return Ok(Some(format!(
            "changed by another program ({}); the next sync restores them — find that program and stop it",
            problems.join("; ")
        )));
    }
    Ok(store.rules_repaired()?.map(|v| {
        format!(
            "restored {} ({}; {} time(s) in all): writes made meanwhile were not checked or queued",
            ago(v["unix"].as_u64().unwrap_or(0), now),
            v["detail"].as_str().unwrap_or("?"),
            v["count"]
        )
    }))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// "5 min ago" from two display clocks; a device clock that went backwards shows
/// "just now" instead of a negative age.
pub fn ago(then: u64, now: u64) -> String {
    let d = now.saturating_sub(then);
    match d {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86_399 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// What to do about a database on storage that refuses writes.
pub const READ_ONLY_HINT: &str = "the storage is read-only: nothing can be synced or saved. An SD card \
     that turned read-only is failing: copy the files off it and replace it (or remount it writable)";

/// The human view, a few plain lines.
pub fn render(v: &View, now: u64) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, val: String| out.push_str(&format!("{k:<20} {val}\n"));
    line(
        &mut out,
        "site",
        v.site
            .clone()
            .unwrap_or_else(|| "(not set: run `fieldsync init`)".into()),
    );
    if let Some(url) = &v.central_url {
        line(&mut out, "central", url.clone());
    }
    line(
        &mut out,
        "active store",
        v.active_store
            .clone()
            .unwrap_or_else(|| "(none yet)".into()),
    );
    line(
        &mut out,
        "initialised",
        if v.initialised {
            "yes".into()
        } else {
            "no (the first sync does it)".into()
        },
    );
    line(
        &mut out,
        "waiting to send",
        format!("{} record(s)", v.outbox_pending),
    );
    if v.outbox_rejected > 0 {
        line(
            &mut out,
            "set aside",
            format!(
                "{} record(s): `fieldsync queue --rejected`",
                v.outbox_rejected
            ),
        );
    }
    line(
        &mut out,
        "last good sync",
        v.last_success_unix.map_or("never".into(), |t| ago(t, now)),
    );
    if let Some(a) = &v.last_attempt {
        // Words for the people at the clinic; `--json` keeps the codes.
        let outcome = match a.outcome {
            Outcome::Ok => "ok",
            Outcome::OkWithIntegrationErrors => "ok, but some received records wait",
            Outcome::Offline => "no connection to the central",
            Outcome::Transient => "did not finish; tries again by itself",
            Outcome::NeedsAttention => "failed; a person must act",
        };
        line(
            &mut out,
            "last attempt",
            format!("{outcome}, {}", ago(a.finished_unix, now)),
        );
        if let Some(e) = &a.error {
            line(&mut out, "problem", e.clone());
        }
    }
    if v.read_only {
        line(
            &mut out,
            "storage",
            "read-only (shown as last written)".into(),
        );
    }
    if let Some(w) = &v.what_to_do {
        line(&mut out, "what to do", w.clone());
    }
    if let Some(r) = &v.rules {
        line(&mut out, "store rules", r.clone());
    }
    if let Some(c) = v
        .check
        .as_ref()
        .filter(|c| c.queued + c.restore + c.set_aside > 0)
    {
        line(
            &mut out,
            "changed behind rules",
            format!(
                "last check of {} record(s): {} sent to the central, {} restored from it, {} set aside for a person (`fieldsync queue --rejected`)",
                c.records, c.queued, c.restore, c.set_aside
            ),
        );
        for f in c.findings.iter().take(3) {
            out.push_str(&format!("{:<20} {} {}\n", "", f.table, f.id));
        }
    }
    if let Some(c) = &v.compare {
        line(
            &mut out,
            "compared",
            if c.clean() {
                format!("{} record(s) with the central: the same", c.records)
            } else {
                format!(
                    "{} record(s) with the central: {} differed — {} sent again, {} asked of the central, \
                     {} only here and not this site's (for a person)",
                    c.records, c.differences, c.queued, c.restore, c.unmatched
                )
            },
        );
    }
    if let Some(why) = &v.compare_due {
        line(
            &mut out,
            "comparison owed",
            format!("{} — at the next sync", why.replace('_', " ")),
        );
    }
    if v.restore_waiting > 0 {
        line(
            &mut out,
            "restore waiting",
            format!(
                "{} record(s) to ask the central for again at the next sync",
                v.restore_waiting
            ),
        );
    }
    if v.quarantined > 0 {
        line(
            &mut out,
            "set aside on upgrade",
            format!(
                "{} stored row(s) were not valid rows: table record_quarantine",
                v.quarantined
            ),
        );
    }
    if v.integration_failed > 0 {
        line(
            &mut out,
            "not applied yet",
            format!("{} received record(s)", v.integration_failed),
        );
        for e in &v.integration_errors {
            out.push_str(&format!("{:<20} {e}\n", ""));
        }
    }
    for (k, b) in [
        ("last bundle written", &v.bundle_out),
        ("last bundle read", &v.bundle_in),
    ] {
        if let Some(b) = b {
            line(
                &mut out,
                k,
                format!(
                    "{}, {} record(s), {}",
                    b["file"].as_str().unwrap_or("?"),
                    b["records"],
                    ago(b["unix"].as_u64().unwrap_or(0), now)
                ),
            );
        }
    }
    if let Some(r) = &v.run {
        line(&mut out, "run", r.clone());
    }
    if v.running {
        let step = v
            .step
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|s| s.as_str().map(str::to_string));
        line(
            &mut out,
            "syncing now",
            // The progress line names its step in words; the step's code
            // only when there is no line yet.
            v.progress
                .clone()
                .filter(|p| !p.is_empty())
                .or(step)
                .unwrap_or_default(),
        );
    }
    line(&mut out, "light", v.led.meaning().into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_snapshot_is_readable_by_all_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = crate::testkit::tempdir::TempDir::new("snapshot");
        let d = tmp.path();
        let p = snapshot_path(&d.join("f.sqlite"));
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let snap = Snapshot {
            running: true,
            step: Some(Step::Push),
            ..Default::default()
        };
        write_snapshot(&p, &snap).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(read_snapshot(&p).unwrap().step, Some(Step::Push));
    }

    #[test]
    fn ages_read_plainly_and_survive_a_clock_jump() {
        assert_eq!(ago(1000, 1030), "just now");
        assert_eq!(ago(1000, 1000 + 300), "5 min ago");
        assert_eq!(ago(1000, 1000 + 7200), "2 h ago");
        assert_eq!(ago(5000, 10), "just now", "clock set back to 1970");
    }

    #[test]
    fn every_result_class_renders_its_hint() {
        use Class::*;
        // The classes a sync can end with (not Input or NotConfigured).
        for class in Class::ALL
            .into_iter()
            .filter(|c| !matches!(c, Input | NotConfigured))
        {
            let report = Report {
                class: Some(class),
                error: Some(format!("{} happened", class.as_str())),
                ..Default::default()
            };
            let v = View {
                site: Some("kaw".into()),
                central_url: None,
                active_store: Some("S_KAW".into()),
                initialised: true,
                outbox_pending: 2,
                outbox_rejected: 0,
                integration_pending: 0,
                integration_failed: 0,
                integration_errors: vec![],
                last_success_unix: None,
                last_attempt: Some(Attempt::from_report(&report)),
                running: false,
                step: None,
                progress: None,
                led: crate::field::led::pattern(false, Some(report.outcome()), 2, 0),
                what_to_do: Some(class.hint().to_string()),
                class: Some(class),
                rules: None,
                check: None,
                restore_waiting: 0,
                compare: None,
                compare_due: None,
                read_only: false,
                quarantined: 0,
                bundle_out: None,
                bundle_in: None,
                run: None,
            };
            let text = render(&v, now_unix());
            assert!(text.contains(class.hint()), "{class:?}: {text}");
            assert!(
                text.contains(&format!("{} happened", class.as_str())),
                "{text}"
            );
            let json = serde_json::to_value(&v).unwrap();
            assert_eq!(json["last_attempt"]["hint"], class.hint());
        }
        let hw = Class::HardwareId.hint();
        assert!(hw.contains("ask the administrator to reset the hardware id"));
    }

    #[test]
    fn snapshot_writes_atomically_and_reads_back() {
        let tmp = crate::testkit::tempdir::TempDir::new("snap");
        let dir = tmp.path();
        let p = snapshot_path(&dir.join("x.sqlite"));
        let snap = Snapshot {
            running: true,
            pid: Some(1),
            step: Some(Step::Push),
            done: 3,
            total: Some(9),
            ..Default::default()
        };
        write_snapshot(&p, &snap).unwrap();
        let back = read_snapshot(&p).unwrap();
        assert_eq!(back.step, Some(Step::Push));
        assert_eq!(back.total, Some(9));
    }
}
