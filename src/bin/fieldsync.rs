//! `fieldsync`: the agent's command line. Parsing only; the commands live in
//! `fieldsync::agent`, exit codes in `fieldsync::error::Class::exit_code`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fieldsync::agent::{self, Failure};
use fieldsync::error::Class;

const USAGE: &str = "\
usage: fieldsync [--db PATH] [-v|--verbose] [-q|--quiet] [--log-file PATH] <command>

commands:
  demo                         central + agent on loopback, a real sync, printed
  init --url URL --site NAME (--password-file F | --password-env VAR | --password-stdin)
       [--allow-insecure-http] [--led NAME] [--attention-led NAME]
  sync [--json]                one sync cycle
  run [--interval SECS]        sync every SECS (default 300) until SIGTERM
  status [--json]              what the site is doing, and what to do
  put TABLE JSON|-             insert or update a record (keys overlay the stored row)
  get TABLE ID                 print a record
  delete TABLE ID              delete a record
  list [TABLE]                 print records as JSON Lines
  import FILE|- [--table T]    import JSON Lines ({\"table\":…,\"record\":{…}} per line)
  queue [--list|--rejected] [--json]   records waiting to be pushed
  queue retry [TABLE ID]       put set-aside records back in the queue
  tables                       the legacy tables fieldsync knows
  dev set-identity --site-id N --store ID   (tests only) act as an initialised site
  version

--db defaults to $STATE_DIRECTORY/fieldsync.sqlite under systemd, else ./fieldsync.sqlite.
Exit codes: 0 ok, 2 bad input, 3 not configured, 4 device fault, 10 offline, 11 transient,
12 credentials, 13 hardware id, 14 version, 15 site/protocol, 16 records rejected,
17 integration errors, 18 another sync running.";

struct Args {
    rest: Vec<String>,
}

impl Args {
    /// Removes `--name VALUE` and returns VALUE.
    fn value(&mut self, name: &str) -> Result<Option<String>, Failure> {
        match self.rest.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) if i + 1 < self.rest.len() => {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(v))
            }
            Some(_) => Err(Failure::new(Class::Input, format!("{name} needs a value"))),
        }
    }
    fn flag(&mut self, names: &[&str]) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| !names.contains(&a.as_str()));
        before != self.rest.len()
    }
    fn required(&mut self, name: &str) -> Result<String, Failure> {
        self.value(name)?
            .ok_or_else(|| Failure::new(Class::Input, format!("{name} is required")))
    }
    fn positional(&mut self, what: &str) -> Result<String, Failure> {
        if self.rest.is_empty() || self.rest[0].starts_with("--") && self.rest[0] != "-" {
            return Err(Failure::new(Class::Input, format!("missing {what}")));
        }
        Ok(self.rest.remove(0))
    }
    fn done(&self) -> Result<(), Failure> {
        match self.rest.first() {
            None => Ok(()),
            Some(a) => Err(Failure::new(
                Class::Input,
                format!("unexpected argument {a:?}; see `fieldsync --help`"),
            )),
        }
    }
}

fn main() -> ExitCode {
    let result = real_main();
    // For the memory tests and the bench: the process's own peak RSS.
    if std::env::var_os("FIELDSYNC_PEAK_RSS").is_some() {
        if let Some(kib) = peak_rss_kib() {
            eprintln!("peak-rss-kib: {kib}");
        }
        if let Some((cpu_ms, written)) = cpu_and_io() {
            eprintln!("cpu-ms: {cpu_ms}");
            eprintln!("write-bytes: {written}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fieldsync: {}", f.message);
            ExitCode::from(f.class.exit_code())
        }
    }
}

fn real_main() -> Result<(), Failure> {
    let mut args = Args {
        rest: std::env::args().skip(1).collect(),
    };
    if args.flag(&["-h", "--help"]) || args.rest.is_empty() {
        println!("{USAGE}");
        return Ok(());
    }
    let db = args
        .value("--db")?
        .map(PathBuf::from)
        .unwrap_or_else(fieldsync::store::default_path);
    let level = if args.flag(&["-v", "--verbose"]) {
        log::LevelFilter::Debug
    } else if args.flag(&["-q", "--quiet"]) {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    };
    let log_file = args.value("--log-file")?.map(PathBuf::from);
    fieldsync::field::logging::init(level, log_file);
    let json = args.flag(&["--json"]);
    let command = args.positional("command")?;
    match command.as_str() {
        "version" => {
            args.done()?;
            println!("fieldsync {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "init" => {
            let url = args.required("--url")?;
            let site = args.required("--site")?;
            let file = args.value("--password-file")?;
            let env = args.value("--password-env")?;
            let stdin = args.flag(&["--password-stdin"]);
            let allow = args.flag(&["--allow-insecure-http"]);
            let led = args.value("--led")?;
            let attention_led = args.value("--attention-led")?;
            args.done()?;
            let password = agent::read_password(file.as_deref(), env.as_deref(), stdin)?;
            agent::init(
                &db,
                &agent::InitOptions {
                    url,
                    site,
                    password,
                    allow_insecure_http: allow,
                    led,
                    attention_led,
                },
            )
        }
        "sync" => {
            args.done()?;
            agent::sync(&db, json)
        }
        "run" => {
            let interval = match args.value("--interval")? {
                Some(s) => s
                    .parse()
                    .map_err(|_| Failure::new(Class::Input, "--interval takes whole seconds"))?,
                None => 300,
            };
            args.done()?;
            agent::run(&db, Duration::from_secs(interval))
        }
        "status" => {
            args.done()?;
            agent::status(&db, json)
        }
        "put" => {
            let table = args.positional("TABLE")?;
            let arg = args.positional("JSON (or - for stdin)")?;
            args.done()?;
            let text = if arg == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin().take_limited(), &mut s)
                    .map_err(|e| Failure::new(Class::Input, format!("stdin: {e}")))?;
                s
            } else {
                arg
            };
            agent::put(&db, &table, &text)
        }
        "get" => {
            let table = args.positional("TABLE")?;
            let id = args.positional("ID")?;
            args.done()?;
            agent::get(&db, &table, &id)
        }
        "delete" => {
            let table = args.positional("TABLE")?;
            let id = args.positional("ID")?;
            args.done()?;
            agent::delete(&db, &table, &id)
        }
        "list" => {
            let table = if args.rest.is_empty() {
                None
            } else {
                Some(args.positional("TABLE")?)
            };
            args.done()?;
            agent::list(&db, table.as_deref())
        }
        "import" => {
            let table = args.value("--table")?;
            let file = args.positional("FILE")?;
            args.done()?;
            let n = agent::import(&db, &file, table.as_deref())?;
            println!("imported {n} record(s)");
            Ok(())
        }
        "queue" => {
            if args.rest.first().map(String::as_str) == Some("retry") {
                args.rest.remove(0);
                let only = if args.rest.len() >= 2 {
                    Some((args.positional("TABLE")?, args.positional("ID")?))
                } else {
                    None
                };
                args.done()?;
                return agent::queue_retry(
                    &db,
                    only.as_ref().map(|(t, i)| (t.as_str(), i.as_str())),
                );
            }
            let list = args.flag(&["--list"]);
            let rejected = args.flag(&["--rejected"]);
            args.done()?;
            agent::queue(&db, json, list, rejected)
        }
        "tables" => {
            args.done()?;
            agent::tables();
            Ok(())
        }
        "dev" => {
            let sub = args.positional("dev command")?;
            if sub != "set-identity" {
                return Err(Failure::new(
                    Class::Input,
                    format!("unknown dev command {sub:?}"),
                ));
            }
            let site: u32 = args
                .required("--site-id")?
                .parse()
                .map_err(|_| Failure::new(Class::Input, "--site-id takes a number"))?;
            let store_id = args.required("--store")?;
            args.done()?;
            let mut store = fieldsync::store::Store::open(&db)?;
            store.set_site_identity(site, &store_id)?;
            Ok(())
        }
        "demo" => {
            let dir = args.value("--dir")?.map(PathBuf::from);
            args.done()?;
            demo(dir)
        }
        other => Err(Failure::new(
            Class::Input,
            format!("unknown command {other:?}; see `fieldsync --help`"),
        )),
    }
}

#[cfg(feature = "central")]
fn demo(dir: Option<PathBuf>) -> Result<(), Failure> {
    fieldsync::agent::demo::run(dir.as_deref())
}

#[cfg(not(feature = "central"))]
fn demo(_dir: Option<PathBuf>) -> Result<(), Failure> {
    Err(Failure::new(
        Class::Input,
        "this is a device build without the reference central; `demo` needs a development build",
    ))
}

/// Reads stdin up to the record limit plus one byte, so a 50 MB paste is refused
/// by the store's size check instead of filling memory.
trait TakeLimited {
    fn take_limited(self) -> std::io::Take<std::io::Stdin>;
}
impl TakeLimited for std::io::Stdin {
    fn take_limited(self) -> std::io::Take<std::io::Stdin> {
        std::io::Read::take(self, fieldsync::store::MAX_RECORD_BYTES as u64 + 1)
    }
}

/// VmHWM from /proc/self/status (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User+system CPU milliseconds (/proc/self/stat) and bytes this process caused to
/// be written to storage (/proc/self/io `write_bytes`: what wears the SD card).
fn cpu_and_io() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let written = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Some((ticks * 10, written))
}
