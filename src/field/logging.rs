//! Log output: one line per event, through simplelog's `CombinedLogger`.
//!
//! - On a terminal: `[LEVEL] message` on stderr (simplelog's `WriteLogger`).
//! - Under systemd (journald reads our stderr, `JOURNAL_STREAM` is set): each line
//!   starts with its syslog priority (`<3>` error … `<7>` debug) and carries no
//!   timestamp, since the journal adds its own — [`Journal`], our own small
//!   `SharedLogger`, because simplelog writes no priority prefixes.
//! - With `--log-file`: timestamped lines in a file kept under [`MAX_LOG_FILE`] by
//!   rotating to `<file>.1` ([`Rotating`]).
//!
//! Other crates' records (ureq, rustls) pass only at warning level and above.
//! Nothing logged anywhere carries a password, digest or Authorization header:
//! the modules never format them (credentials are [`crate::wire::credentials::Secret`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, WriteLogger};

/// Largest log file before rotation. Defaults to 1 MiB: weeks of syncs, and an SD
/// card never fills with logs.
pub const MAX_LOG_FILE: u64 = 1 << 20;

const OURS: &str = "fieldsync";

/// Two loggers per destination: ours at `level`, everyone else's at warnings.
fn pair(
    level: LevelFilter,
    timestamps: bool,
    make: &mut dyn FnMut(LevelFilter, simplelog::Config) -> Box<dyn SharedLogger>,
) -> [Box<dyn SharedLogger>; 2] {
    let config = |ours: bool| {
        let mut b = ConfigBuilder::new();
        b.set_time_level(if timestamps {
            LevelFilter::Error
        } else {
            LevelFilter::Off
        })
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
        if ours {
            b.add_filter_allow_str(OURS);
        } else {
            b.add_filter_ignore_str(OURS);
        }
        b.build()
    };
    [
        make(level, config(true)),
        make(level.min(LevelFilter::Warn), config(false)),
    ]
}

/// Installs the logger once. `JOURNAL_STREAM` is set by systemd when stderr goes
/// to the journal.
pub fn init(level: LevelFilter, file: Option<PathBuf>) {
    let mut loggers: Vec<Box<dyn SharedLogger>> = Vec::new();
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        loggers.push(Box::new(Journal { level }));
    } else {
        loggers.extend(pair(level, false, &mut |l, c| {
            WriteLogger::new(l, c, Terminal)
        }));
    }
    if let Some(path) = file {
        loggers.extend(pair(level, true, &mut |l, c| {
            WriteLogger::new(l, c, Rotating::new(path.clone(), MAX_LOG_FILE))
        }));
    }
    let _ = CombinedLogger::init(loggers);
}

/// stderr, clearing the progress line first if one stands (see `progress`).
struct Terminal;

impl Write for Terminal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        super::progress::clear_live_line(&mut err);
        err.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// journald priorities on stderr, no timestamp (the journal keeps its own).
struct Journal {
    level: LevelFilter,
}

impl Journal {
    fn priority(level: Level) -> u8 {
        match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        }
    }
}

impl Log for Journal {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && (m.target().starts_with(OURS) || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let line = format!("<{}>{}\n", Journal::priority(r.level()), r.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

impl SharedLogger for Journal {
    fn level(&self) -> LevelFilter {
        self.level
    }
    fn config(&self) -> Option<&simplelog::Config> {
        None
    }
    fn as_log(self: Box<Self>) -> Box<dyn Log> {
        self
    }
}

/// A file that renames itself to `<path>.1` once it grows past `max` bytes.
pub struct Rotating {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    written: u64,
}

impl Rotating {
    pub fn new(path: PathBuf, max: u64) -> Rotating {
        Rotating {
            path,
            max,
            file: None,
            written: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written > self.max {
            let mut old = self.path.as_os_str().to_owned();
            old.push(".1");
            self.file = None;
            std::fs::rename(&self.path, old)?;
        }
        let n = self.open()?.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_and_stays_bounded() {
        let tmp = crate::testkit::tempdir::TempDir::new("log");
        let dir = tmp.path();
        let path = dir.join("agent.log");
        let mut w = Rotating::new(path.clone(), 100);
        for i in 0..50 {
            writeln!(w, "line {i:03} of the log").unwrap();
        }
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("agent.log.1")).unwrap().len();
        assert!(now <= 130 && old <= 130, "{now} {old}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("line 049 of the log\n"), "{text}");
    }

    #[test]
    fn journal_priorities() {
        assert_eq!(Journal::priority(Level::Error), 3);
        assert_eq!(Journal::priority(Level::Warn), 4);
        assert_eq!(Journal::priority(Level::Info), 6);
        assert_eq!(Journal::priority(Level::Debug), 7);
    }
}
