//! Log output: one line per event. Under systemd (journald reads our stderr) each
//! line starts with its syslog priority (`<3>` error … `<7>` debug) and carries no
//! timestamp, since the journal adds its own; on a terminal lines are plain
//! "LEVEL message"; an optional file gets timestamped lines and is kept under a
//! size bound by rotating to `<file>.1`.
//!
//! Nothing logged anywhere carries a password, digest or Authorization header: the
//! modules never format them (credentials are [`crate::wire::credentials::Secret`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Largest log file before rotation. Defaults to 1 MiB: weeks of syncs, and an SD
/// card never fills with logs.
pub const MAX_LOG_FILE: u64 = 1 << 20;

struct Logger {
    journal: bool,
    level: LevelFilter,
    file: Option<Mutex<(PathBuf, Option<File>)>>,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.target().starts_with("fieldsync") || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = if self.journal {
            let prio = match r.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{prio}>{}\n", r.args())
        } else {
            format!("{:<5} {}\n", r.level(), r.args())
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = &self.file {
            let mut guard = f.lock().unwrap_or_else(|p| p.into_inner());
            let (path, file) = &mut *guard;
            if file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .is_some_and(|m| m.len() > MAX_LOG_FILE)
            {
                let mut old = path.as_os_str().to_owned();
                old.push(".1");
                let _ = std::fs::rename(&*path, old);
                *file = None;
            }
            if file.is_none() {
                *file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .ok();
            }
            if let Some(f) = file {
                let t = crate::field::status::now_unix();
                let _ = write!(f, "{t} {:<5} {}", r.level(), r.args());
                let _ = f.write_all(b"\n");
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once. `JOURNAL_STREAM` is set by systemd when stderr goes
/// to the journal.
pub fn init(level: LevelFilter, file: Option<PathBuf>) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logger = Logger {
        journal,
        level,
        file: file.map(|p| Mutex::new((p, None))),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
