//! The agent's commands: what `fieldsync <command>` does, apart from parsing.
//! Each returns a [`Failure`] (message + class → exit code) or prints its result;
//! exit codes are mapped in one place, [`crate::error::Class::exit_code`].
//!
//! - [`settings`]: every setting in one table, resolved from stored rows and the
//!   environment by one pure function;
//! - [`conf`]: the configuration file, which only the agent's user writes;
//! - [`config`]: `init`, `config`, password reading;
//! - [`credential`]: where the site's password digest lives (never the database);
//! - [`runner`]: one sync with its status file, LED and log lines; `run`'s loop;
//!   the single-flight lock;
//! - [`records`]: local records (`put`, `get`, `delete`, `list`, `import`,
//!   `queue`, `tables`);
//! - [`check`]: `fieldsync check`, the connection checked step by step;
//! - [`courier`]: sync by USB stick (`export`, `import-bundle`);
//! - [`demo`]: the whole job on an embedded default.

pub mod check;
pub mod conf;
pub mod config;
pub mod courier;
pub mod credential;
#[cfg(feature = "central")]
pub mod demo;
pub mod link;
pub mod records;
pub mod runner;
pub mod settings;

use std::path::Path;

use crate::error::Class;
use crate::field::status;
use crate::store::{Store, StoreError};

/// A command failure: one line for the person, and its class for the exit code.
#[derive(Debug)]
pub struct Failure {
    pub class: Class,
    pub message: String,
}

impl Failure {
    pub fn new(class: Class, message: impl Into<String>) -> Failure {
        Failure {
            class,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::new(e.class(), e.to_string())
    }
}

pub type CmdResult = Result<(), Failure>;

/// argh reads every argument that starts with `-` as an option, so the usual
/// lone `-` for stdin reaches the commands as this name instead.
pub const STDIN_ARG: &str = "<stdin>";

/// Parses this process's arguments for the binaries (`--help` printed and exit 0;
/// a usage error printed on stderr and the bad-input exit code).
pub fn parse_args<T: argh::TopLevelCommand>(name: &str) -> Result<T, std::process::ExitCode> {
    quiet_broken_pipe();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| match a.as_str() {
            "-" => STDIN_ARG.to_string(),
            // What people type first; argh knows only --help.
            "-h" => "--help".to_string(),
            _ => a,
        })
        .collect();
    if matches!(args.as_slice(), [v] if v == "--version" || v == "-V") {
        println!("{name} {}", env!("CARGO_PKG_VERSION"));
        return Err(std::process::ExitCode::SUCCESS);
    }
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    T::from_args(&[name], &strs).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            std::process::ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{name}: {}", early.output.trim_end());
            let global = ["-q", "--quiet", "-v", "--verbose", "--db", "--log-file"];
            if let Some(g) = global.iter().find(|g| {
                early
                    .output
                    .contains(&format!("Unrecognized argument: {g}"))
            }) {
                eprintln!(
                    "options that apply to every command go before it: `{name} {g} … <command>`"
                );
            }
            eprintln!("see `{name} help` (or `{name} <command> --help`)");
            std::process::ExitCode::from(Class::Input.exit_code())
        }
    })
}

/// Output piped into a program that stopped reading (`sync --json | head`)
/// ends the process quietly with the shell's broken-pipe status (141), not a
/// panic and a backtrace: the work was done and committed before the printing.
/// Only stdout's broken pipe is treated so; every other panic is reported.
fn quiet_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// `fieldsync status [--json]`: readable while a sync or the app holds the write
/// lock, and on a device not configured yet (class 3, and JSON that says what to do).
pub fn status(db: &Path, json: bool) -> CmdResult {
    let snap = status::read_snapshot(&status::snapshot_path(db));
    let store = match Store::open_existing(db) {
        Ok(s) => s,
        Err(StoreError::Missing(_)) => {
            let v = status::View::unconfigured(db);
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", status::render(&v, status::now_unix()));
            }
            return Err(Failure::new(
                Class::NotConfigured,
                format!(
                    "no database at {}: run `fieldsync init` (or pass --db)",
                    db.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let v = status::view(&store, snap.as_ref(), configured(db, &store))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", status::render(&v, status::now_unix()));
    }
    if v.site.is_none() {
        return Err(Failure::new(
            Class::NotConfigured,
            "this device is not configured: run `fieldsync init`",
        ));
    }
    Ok(())
}

/// The site and central as the configuration names them, for `status`.
fn configured(db: &Path, store: &Store) -> status::Configured {
    match conf::Conf::peek(db, store) {
        Ok(c) => status::Configured {
            site: c.get(settings::key::SITE_NAME).map(str::to_string),
            central_url: c.get(settings::key::CENTRAL_URL).map(str::to_string),
        },
        Err(e) => {
            log::warn!("{}", e.message);
            status::Configured::default()
        }
    }
}

/// `fieldsync status --watch`: the status every second while a sync runs (for a
/// second SSH session or a helper's screen), then once more when it has ended.
/// On a terminal each view replaces the last; otherwise they follow each other
/// (with `--json`, one JSON object per line).
pub fn watch(db: &Path, json: bool) -> CmdResult {
    use std::io::IsTerminal;
    let redraw = !json && std::io::stdout().is_terminal();
    loop {
        let snap = status::read_snapshot(&status::snapshot_path(db));
        let store = Store::open_existing(db)?;
        let v = status::view(&store, snap.as_ref(), configured(db, &store))?;
        drop(store);
        if json {
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
        } else {
            if redraw {
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", status::render(&v, status::now_unix()));
            if !redraw {
                println!();
            }
        }
        if !v.running {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
