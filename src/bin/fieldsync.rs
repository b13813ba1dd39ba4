//! `fieldsync`: the agent's command line. Parsing only (argh); the commands live in
//! `fieldsync::agent`, exit codes in `fieldsync::error::Class::exit_code`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use fieldsync::agent::config::{self, InitOptions, PasswordSource};
use fieldsync::agent::{self, records, runner, Failure};
use fieldsync::error::Class;

/// Sync agent for mSupply-style remote sites. Exit codes: 0 ok, 2 bad input, 3 not
/// configured, 4 device fault, 10 offline, 11 transient, 12 credentials, 13 hardware
/// id, 14 version, 15 site/protocol, 16 records rejected, 17 integration errors,
/// 18 another sync running.
#[derive(FromArgs)]
struct Cli {
    /// the database (default: $STATE_DIRECTORY/fieldsync.sqlite under systemd, else ./fieldsync.sqlite)
    #[argh(option)]
    db: Option<PathBuf>,
    /// more detail in the log
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// warnings and errors only
    #[argh(switch, short = 'q')]
    quiet: bool,
    /// also write the log to this file (kept under 1 MiB, rotated to FILE.1)
    #[argh(option)]
    log_file: Option<PathBuf>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Demo(Demo),
    Init(Init),
    Sync(Sync),
    Verify(Verify),
    Run(Run),
    Status(Status),
    Check(Check),
    Config(ConfigCmd),
    Put(Put),
    Get(Get),
    Delete(Delete),
    List(List),
    Import(Import),
    Queue(Queue),
    Export(Export),
    ImportBundle(ImportBundle),
    Tables(Tables),
    #[cfg(feature = "testkit")]
    Dev(Dev),
    Version(Version),
}

/// a reference central on loopback, an agent, real syncs, printed
#[derive(FromArgs)]
#[argh(subcommand, name = "demo")]
struct Demo {
    /// keep the demo's files here (default: a temporary directory)
    #[argh(option)]
    dir: Option<PathBuf>,
}

/// configure this device for a site (the password never on the command line)
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
struct Init {
    /// the central server, https://…
    #[argh(option)]
    url: String,
    /// this site's name on the central
    #[argh(option)]
    site: String,
    /// read the password from this file
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// read the password from this environment variable
    #[argh(option)]
    password_env: Option<String>,
    /// read the password from the first line of stdin
    #[argh(switch)]
    password_stdin: bool,
    /// allow plain http:// to a host other than loopback (test networks only)
    #[argh(switch)]
    allow_insecure_http: bool,
    /// the status LED under /sys/class/leds (ACT on a Pi)
    #[argh(option)]
    led: Option<String>,
    /// a second LED lit only when a person must act (PWR on a Pi)
    #[argh(option)]
    attention_led: Option<String>,
}

/// one sync cycle
#[derive(FromArgs)]
#[argh(subcommand, name = "sync")]
struct Sync {
    /// print the cycle's report as JSON on stdout
    #[argh(switch)]
    json: bool,
}

/// a sync that checks every record of this device against what was last synced, and compares what it holds with the central
#[derive(FromArgs)]
#[argh(subcommand, name = "verify")]
struct Verify {
    /// print what was found as JSON on stdout
    #[argh(switch)]
    json: bool,
}

/// sync every interval until SIGTERM/SIGINT (for devices without systemd timers)
#[derive(FromArgs)]
#[argh(subcommand, name = "run")]
struct Run {
    /// seconds between syncs (default 300)
    #[argh(option, default = "300")]
    interval: u64,
}

/// what the site is doing, and what to do
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct Status {
    /// everything, as JSON
    #[argh(switch)]
    json: bool,
    /// refresh every second until the running sync ends
    #[argh(switch)]
    watch: bool,
}

/// check the connection to the central step by step; writes nothing
#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
struct Check {
    /// as JSON
    #[argh(switch)]
    json: bool,
}

/// the settings: list them, or get, set, unset one
#[derive(FromArgs)]
#[argh(subcommand, name = "config")]
struct ConfigCmd {
    /// as JSON (list only)
    #[argh(switch)]
    json: bool,
    /// list, get KEY, set KEY VALUE, or unset KEY (default: list)
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// insert or update a record (the given keys overlay the stored row)
#[derive(FromArgs)]
#[argh(subcommand, name = "put")]
struct Put {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the record as JSON, or - to read it from stdin
    #[argh(positional)]
    json: String,
}

/// print a record
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct Get {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the record's ID
    #[argh(positional)]
    id: String,
}

/// delete a record
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct Delete {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the record's ID
    #[argh(positional)]
    id: String,
}

/// records as JSON Lines, one object with "table" and "record" per line
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct List {
    /// only this table
    #[argh(positional)]
    table: Option<String>,
}

/// import JSON Lines as `list` writes them, in one transaction
#[derive(FromArgs)]
#[argh(subcommand, name = "import")]
struct Import {
    /// the file, or - for stdin
    #[argh(positional)]
    file: String,
    /// the lines are plain records of this table
    #[argh(option)]
    table: Option<String>,
}

/// records waiting to be pushed; `queue retry [TABLE ID]` puts set-aside records back; `queue drop TABLE ID --yes` discards one
#[derive(FromArgs)]
#[argh(subcommand, name = "queue")]
struct Queue {
    /// list every waiting record
    #[argh(switch)]
    list: bool,
    /// list the records set aside, with their reasons
    #[argh(switch)]
    rejected: bool,
    /// as JSON
    #[argh(switch)]
    json: bool,
    /// with drop: confirm that the change is discarded for good
    #[argh(switch)]
    yes: bool,
    /// retry [TABLE ID]: put set-aside records back in the queue; drop TABLE
    /// ID: discard a set-aside change (the record returns to the central's copy)
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// write the waiting records as a bundle for the central, for a USB stick (no link needed)
#[derive(FromArgs)]
#[argh(subcommand, name = "export")]
struct Export {
    /// the directory to write the bundle in (the stick)
    #[argh(positional)]
    dir: PathBuf,
}

/// apply a bundle the central wrote for this site (USB stick), as a sync's pull would
#[derive(FromArgs)]
#[argh(subcommand, name = "import-bundle")]
struct ImportBundle {
    /// the bundle file
    #[argh(positional)]
    file: PathBuf,
}

/// the legacy tables fieldsync knows, their kind and owner field
#[derive(FromArgs)]
#[argh(subcommand, name = "tables")]
struct Tables {}

/// tests only: act as an initialised site
#[cfg(feature = "testkit")]
#[derive(FromArgs)]
#[argh(subcommand, name = "dev")]
struct Dev {
    /// set-identity
    #[argh(positional)]
    action: String,
    /// the site id
    #[argh(option)]
    site_id: u32,
    /// the active store
    #[argh(option)]
    store: String,
    /// the central's id for the site (as its first answer would give)
    #[argh(option)]
    site_uuid: Option<String>,
}

/// print the version
#[derive(FromArgs)]
#[argh(subcommand, name = "version")]
struct Version {}

fn main() -> ExitCode {
    let cli: Cli = match agent::parse_args("fieldsync") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = run(cli);
    // For the memory tests and the bench: the process's own peak RSS, CPU and
    // bytes written (test builds only).
    #[cfg(feature = "testkit")]
    fieldsync::testkit::usage::report_if_asked();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fieldsync: {}", f.message);
            ExitCode::from(f.class.exit_code())
        }
    }
}

fn input(m: impl Into<String>) -> Failure {
    Failure::new(Class::Input, m)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let db = cli.db.unwrap_or_else(fieldsync::store::default_path);
    let level = if cli.verbose {
        log::LevelFilter::Debug
    } else if cli.quiet {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    };
    fieldsync::field::logging::init(level, cli.log_file);
    match cli.command {
        Command::Version(_) => {
            println!("fieldsync {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Init(i) => {
            let password =
                PasswordSource::from_options(i.password_file, i.password_env, i.password_stdin)
                    .and_then(|s| s.read())
                    .map_err(input)?;
            config::init(
                &db,
                &InitOptions {
                    url: i.url,
                    site: i.site,
                    password,
                    allow_insecure_http: i.allow_insecure_http,
                    led: i.led,
                    attention_led: i.attention_led,
                },
            )
        }
        Command::Sync(s) => runner::sync(&db, s.json),
        Command::Verify(v) => runner::verify(&db, v.json),
        Command::Run(r) => runner::run(&db, Duration::from_secs(r.interval)),
        Command::Status(s) if s.watch => agent::watch(&db, s.json),
        Command::Status(s) => agent::status(&db, s.json),
        Command::Check(c) => agent::check::check(&db, c.json),
        // The greedy positionals take a switch written after them too.
        Command::Config(c) => match c
            .args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--json")
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] | ["list"] => config::list(&db, c.json || c.args.iter().any(|a| a == "--json")),
            ["get", key] => config::get(&db, key),
            ["set", key, value] => config::set(&db, key, value),
            ["unset", key] => config::unset(&db, key),
            _ => Err(input(
                "config takes: list | get KEY | set KEY VALUE | unset KEY",
            )),
        },
        Command::Put(p) => {
            let text = if p.json == agent::STDIN_ARG {
                let mut s = String::new();
                let limit = fieldsync::store::MAX_RECORD_BYTES as u64 + 1;
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), limit),
                    &mut s,
                )
                .map_err(|e| input(format!("stdin: {e}")))?;
                s
            } else {
                p.json
            };
            records::put(&db, &p.table, &text)
        }
        Command::Get(g) => records::get(&db, &g.table, &g.id),
        Command::Delete(d) => records::delete(&db, &d.table, &d.id),
        Command::List(l) => records::list(&db, l.table.as_deref()),
        Command::Import(i) => {
            let file = if i.file == agent::STDIN_ARG {
                "-"
            } else {
                i.file.as_str()
            };
            let n = records::import(&db, file, i.table.as_deref())?;
            println!("imported {n} record(s)");
            Ok(())
        }
        // The greedy positionals take a switch written after them too.
        Command::Queue(q) => match q
            .args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--yes")
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => records::queue(&db, q.json, q.list, q.rejected),
            ["retry"] => records::queue_retry(&db, None),
            ["retry", table, id] => records::queue_retry(&db, Some((table, id))),
            ["drop", table, id] => {
                records::queue_drop(&db, table, id, q.yes || q.args.iter().any(|a| a == "--yes"))
            }
            _ => Err(input(
                "queue takes: [--list|--rejected] [--json] | retry [TABLE ID] | drop TABLE ID --yes",
            )),
        },
        Command::Export(e) => agent::courier::export(&db, &e.dir),
        Command::ImportBundle(i) => agent::courier::import(&db, &i.file),
        Command::Tables(_) => {
            records::tables();
            Ok(())
        }
        #[cfg(feature = "testkit")]
        Command::Dev(d) => {
            if d.action != "set-identity" {
                return Err(input(format!("unknown dev command {:?}", d.action)));
            }
            let mut store = fieldsync::store::Store::open(&db)?;
            store.set_site_identity(d.site_id, &d.store, d.site_uuid.as_deref())?;
            Ok(())
        }
        Command::Demo(d) => demo(d.dir),
    }
}

#[cfg(feature = "central")]
fn demo(dir: Option<PathBuf>) -> Result<(), Failure> {
    fieldsync::agent::demo::run(dir.as_deref())
}

#[cfg(not(feature = "central"))]
fn demo(_dir: Option<PathBuf>) -> Result<(), Failure> {
    Err(input(
        "this is a device build without the reference central; `demo` needs a development build",
    ))
}
