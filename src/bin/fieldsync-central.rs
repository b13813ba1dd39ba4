//! `fieldsync-central`: the reference central's command line (serve and
//! administer). Parsing only (argh); the work is in `fieldsync::central`.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use fieldsync::agent::config::PasswordSource;
use fieldsync::central::Central;

/// The reference central server: serve the v5 sync API and administer sites,
/// stores and central data. TLS for a pilot: a reverse proxy in front (README).
#[derive(FromArgs)]
struct Cli {
    /// the central's database: an SQLite file (default ./central.sqlite) or a
    /// postgres://user:password@host/database URL (or set it in FIELDSYNC_CENTRAL_DB,
    /// so the password is not on the command line)
    #[argh(option, default = "PathBuf::from(\"central.sqlite\")")]
    db: PathBuf,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(Serve),
    Site(Site),
    Store(Store),
    Unqueue(Unqueue),
    Requeue(Requeue),
    Put(Put),
    Import(Import),
    Delete(Delete),
    Merge(Merge),
    Get(Get),
    Report(Report),
    ImportBundle(ImportBundle),
    ExportBundle(ExportBundle),
    CopyTo(CopyTo),
}

/// copy this central, whole, into a new store: an empty PostgreSQL database
/// (postgres://…) or a new SQLite file; stop the central first, then serve
/// with --db set to the copy
#[derive(FromArgs)]
#[argh(subcommand, name = "copy-to")]
struct CopyTo {
    /// the new store: a postgres:// URL (or set FIELDSYNC_CENTRAL_COPY_TO) or an SQLite file's path
    #[argh(positional)]
    target: Option<String>,
}

/// apply a site's USB bundle (`fieldsync export`) as that site's pushes
#[derive(FromArgs)]
#[argh(subcommand, name = "import-bundle")]
struct ImportBundle {
    /// the bundle file
    #[argh(positional)]
    file: PathBuf,
    /// read the site's password from this environment variable
    #[argh(option)]
    password_env: Option<String>,
    /// read the site's password from this file
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// read the site's password from the first line of stdin
    #[argh(switch)]
    password_stdin: bool,
}

/// write a USB bundle for a site: its queue and the central data after its cursor
#[derive(FromArgs)]
#[argh(subcommand, name = "export-bundle")]
struct ExportBundle {
    /// the directory to write in (the stick)
    #[argh(positional)]
    dir: PathBuf,
    /// the site's name
    #[argh(option)]
    site: String,
    /// start the central data after this cursor (default: where the site is known to be)
    #[argh(option)]
    cursor: Option<u64>,
    /// read the site's password from this environment variable
    #[argh(option)]
    password_env: Option<String>,
    /// read the site's password from this file
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// read the site's password from the first line of stdin
    #[argh(switch)]
    password_stdin: bool,
}

/// serve the v5 API until SIGTERM/SIGINT
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct Serve {
    /// address to listen on (default 127.0.0.1:8080)
    #[argh(option, default = "String::from(\"127.0.0.1:8080\")")]
    listen: String,
    /// the URL sites reach this central at (behind a proxy, say); Open
    /// mSupply sites are told it as their v6 server's when no site is marked
    /// with `site om-central` (default: the address each request came to)
    #[argh(option)]
    public_url: Option<String>,
    /// answer the test endpoints of Open mSupply's integration tests for sites
    /// marked with `site test-site` (never on a production central)
    #[argh(switch)]
    test_mode: bool,
}

/// sites: add, password, reset-hardware-id, reinitialise, primary, clear-backoff, om-central, test-site
#[derive(FromArgs)]
#[argh(subcommand, name = "site")]
struct Site {
    #[argh(subcommand)]
    command: SiteCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum SiteCommand {
    Add(SiteAdd),
    Password(SitePassword),
    ResetHardwareId(SiteName),
    Reinitialise(SiteReinit),
    Primary(SitePrimary),
    ClearBackoff(SiteClearBackoff),
    OmCentral(SiteOmCentral),
    TestSite(SiteTestSite),
}

/// mark a site as the Open mSupply central server (its URL goes to every site)
#[derive(FromArgs)]
#[argh(subcommand, name = "om-central")]
struct SiteOmCentral {
    /// the site's name
    #[argh(positional)]
    name: Option<String>,
    /// the Open mSupply central server's URL (https://…)
    #[argh(option)]
    url: Option<String>,
    /// no site is: this central answers Open mSupply's v6 calls itself
    #[argh(switch)]
    none: bool,
}

/// allow a site the test endpoints (answered only under serve --test-mode)
#[derive(FromArgs)]
#[argh(subcommand, name = "test-site")]
struct SiteTestSite {
    /// the site's name
    #[argh(positional)]
    name: String,
    /// stop allowing it
    #[argh(switch)]
    off: bool,
}

/// forget the wrong-password back-offs of a site (every address), or --all
#[derive(FromArgs)]
#[argh(subcommand, name = "clear-backoff")]
struct SiteClearBackoff {
    /// the site's name
    #[argh(positional)]
    name: Option<String>,
    /// every back-off, of every name and address
    #[argh(switch)]
    all: bool,
}

/// make a site the primary of a mirrored system: it edits the central data
#[derive(FromArgs)]
#[argh(subcommand, name = "primary")]
struct SitePrimary {
    /// the site's name
    #[argh(positional)]
    name: Option<String>,
    /// end mirroring: the central edits central data again
    #[argh(switch)]
    none: bool,
}

/// add a site (its password from a file, an environment variable or stdin)
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct SiteAdd {
    /// the site's name (its Basic-auth user)
    #[argh(positional)]
    name: String,
    /// a short code (default: the name in capitals)
    #[argh(option)]
    code: Option<String>,
    /// read the password from this environment variable
    #[argh(option)]
    password_env: Option<String>,
    /// read the password from this file
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// read the password from the first line of stdin
    #[argh(switch)]
    password_stdin: bool,
}

/// change a site's password (its devices need `fieldsync init` again)
#[derive(FromArgs)]
#[argh(subcommand, name = "password")]
struct SitePassword {
    /// the site's name
    #[argh(positional)]
    name: String,
    /// read the password from this environment variable
    #[argh(option)]
    password_env: Option<String>,
    /// read the password from this file
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// read the password from the first line of stdin
    #[argh(switch)]
    password_stdin: bool,
}

/// forget the bound hardware id: the next device to connect is bound
#[derive(FromArgs)]
#[argh(subcommand, name = "reset-hardware-id")]
struct SiteName {
    /// the site's name
    #[argh(positional)]
    name: String,
}

/// ask the site to initialise again
#[derive(FromArgs)]
#[argh(subcommand, name = "reinitialise")]
struct SiteReinit {
    /// the site's name
    #[argh(positional)]
    name: String,
}

/// stores: add, move, copy
#[derive(FromArgs)]
#[argh(subcommand, name = "store")]
struct Store {
    #[argh(subcommand)]
    command: StoreCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum StoreCommand {
    Add(StoreAdd),
    Move(StoreMove),
    Copy(StoreCopy),
    ResyncPatients(StoreResync),
}

/// send every patient visible in a store, with their dispensary data, to its site again
#[derive(FromArgs)]
#[argh(subcommand, name = "resync-patients")]
struct StoreResync {
    /// the store's ID
    #[argh(positional)]
    store: String,
}

/// add a store (no --site: active on the central)
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct StoreAdd {
    /// the store's ID
    #[argh(positional)]
    id: String,
    /// its code (default: the ID)
    #[argh(option)]
    code: Option<String>,
    /// its name (default: the ID)
    #[argh(option)]
    name: Option<String>,
    /// the site where it is active
    #[argh(option)]
    site: Option<String>,
}

/// make a store active on another site (no --site: on the central)
#[derive(FromArgs)]
#[argh(subcommand, name = "move")]
struct StoreMove {
    /// the store's ID
    #[argh(positional)]
    id: String,
    /// the site where it becomes active
    #[argh(option)]
    site: Option<String>,
}

/// how a site holds a store: collector, transfer or none
#[derive(FromArgs)]
#[argh(subcommand, name = "copy")]
struct StoreCopy {
    /// the store's ID
    #[argh(positional)]
    store: String,
    /// the site
    #[argh(option)]
    site: String,
    /// collector, transfer or none
    #[argh(option)]
    kind: String,
}

/// remove a record's unacknowledged entries from every site's queue
#[derive(FromArgs)]
#[argh(subcommand, name = "unqueue")]
struct Unqueue {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the record's ID
    #[argh(positional)]
    id: String,
}

/// queue a site everything it should hold again, or every row of one table
/// (for a site that could not read what it was sent)
#[derive(FromArgs)]
#[argh(subcommand, name = "requeue")]
struct Requeue {
    /// the site's name
    #[argh(positional)]
    site: String,
    /// only this legacy table (central data included)
    #[argh(option)]
    table: Option<String>,
}

/// insert or update central (or central store) data
#[derive(FromArgs)]
#[argh(subcommand, name = "put")]
struct Put {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the row as JSON
    #[argh(positional)]
    json: String,
}

/// insert or update central data in bulk: JSON Lines {"table": T, "record": {…}}
/// (as `fieldsync list` writes them); a bad line anywhere imports nothing
#[derive(FromArgs)]
#[argh(subcommand, name = "import")]
struct Import {
    /// the file
    #[argh(positional)]
    file: PathBuf,
}

/// delete central data
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

/// merge one record into another (item, name or clinician)
#[derive(FromArgs)]
#[argh(subcommand, name = "merge")]
struct Merge {
    /// the legacy table
    #[argh(positional)]
    table: String,
    /// the ID that stays
    #[argh(positional)]
    keep: String,
    /// the ID merged into it
    #[argh(positional)]
    drop: String,
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

/// every site, its last connection, sites silent for over a month flagged
#[derive(FromArgs)]
#[argh(subcommand, name = "report")]
struct Report {
    /// as JSON
    #[argh(switch)]
    json: bool,
}

fn main() -> ExitCode {
    let cli: Cli = match fieldsync::agent::parse_args("fieldsync-central") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldsync-central: {e}");
            ExitCode::from(2)
        }
    }
}

fn password(file: Option<PathBuf>, env: Option<String>, stdin: bool) -> Result<String, String> {
    PasswordSource::from_options(file, env, stdin)?.read()
}

fn run(cli: Cli) -> Result<(), String> {
    fieldsync::field::logging::init(log::LevelFilter::Info, None);
    // A mistyped --db must not make an empty central that answers every
    // agent "unknown site": only `site add`, the first thing a new central
    // needs, creates the database.
    let creates = matches!(
        &cli.command,
        Command::Site(Site {
            command: SiteCommand::Add(_)
        })
    );
    let db = match std::env::var("FIELDSYNC_CENTRAL_DB") {
        Ok(v) if cli.db == std::path::Path::new("central.sqlite") && !v.is_empty() => v,
        _ => cli.db.to_string_lossy().into_owned(),
    };
    if fieldsync::central::is_postgres_url(&db) {
        let central =
            Central::open_postgres(&db, creates).map_err(|e| format!("--db (PostgreSQL): {e}"))?;
        return command(cli.command, central);
    }
    if !creates && !cli.db.exists() {
        return Err(format!(
            "no central database at {}: check --db (a new central starts with \
             `fieldsync-central --db {} site add NAME …`)",
            cli.db.display(),
            cli.db.display()
        ));
    }
    let central = Central::open(&cli.db).map_err(|e| e.to_string())?;
    command(cli.command, central)
}

fn command(command: Command, central: Central) -> Result<(), String> {
    let e = |e: fieldsync::central::CentralError| e.to_string();
    match command {
        Command::Serve(s) => {
            let mut central = central;
            if let Some(url) = &s.public_url {
                central.public_url = Some(fieldsync::central::admin::absolute_url(url).map_err(e)?);
            }
            if s.test_mode {
                central.test_mode = true;
                log::warn!(
                    "TEST MODE: sites marked with `site test-site` may create sites and change \
                     central data through /sync/v5/test/*; never run a production central like this"
                );
            }
            // Before the first answer (and before saying it serves): a
            // database older than the one last served gets a new epoch.
            if let Err(e) = central.check_restored() {
                log::warn!("restore detection: {e}");
            }
            let listener = std::net::TcpListener::bind(&s.listen)
                .map_err(|e| format!("listen on {}: {e}", s.listen))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            log::info!("fieldsync-central serving v5 on http://{addr}");
            if central.test_mode && !addr.ip().is_loopback() {
                log::warn!(
                    "TEST MODE on {addr}, an address other machines can reach: \
                     anyone with a test site's password can change central data"
                );
            }
            fieldsync::central::http::serve(central, listener).map_err(|e| e.to_string())
        }
        Command::Site(s) => match s.command {
            SiteCommand::Add(a) => {
                let pw = password(a.password_file, a.password_env, a.password_stdin)?;
                let code = a.code.unwrap_or_else(|| a.name.to_uppercase());
                let id = central.add_site(&a.name, &code, &pw).map_err(e)?;
                println!("site {} added with siteId {id}", a.name);
                Ok(())
            }
            SiteCommand::Password(p) => {
                let pw = password(p.password_file, p.password_env, p.password_stdin)?;
                central.set_password(&p.name, &pw).map_err(e)
            }
            SiteCommand::ResetHardwareId(n) => central.reset_hardware_id(&n.name).map_err(e),
            SiteCommand::Reinitialise(n) => central.request_reinitialise(&n.name).map_err(e),
            SiteCommand::ClearBackoff(c) => {
                let n = match (c.name, c.all) {
                    (Some(n), false) => central.clear_backoffs(Some(&n)).map_err(e)?,
                    (None, true) => central.clear_backoffs(None).map_err(e)?,
                    _ => return Err("give a site name, or --all".into()),
                };
                println!("{n} back-off(s) cleared");
                Ok(())
            }
            SiteCommand::OmCentral(o) => match (o.name, o.none) {
                (Some(n), false) if o.url.is_some() => central
                    .set_om_central(Some(&n), o.url.as_deref())
                    .map_err(e),
                (None, true) => central.set_om_central(None, None).map_err(e),
                _ => Err("give a site name and --url URL, or --none".into()),
            },
            SiteCommand::TestSite(t) => central.set_test_site(&t.name, !t.off).map_err(e),
            SiteCommand::Primary(p) => match (p.name, p.none) {
                (Some(n), false) => central.set_primary(Some(&n)).map_err(e),
                (None, true) => central.set_primary(None).map_err(e),
                _ => Err("give a site name, or --none".into()),
            },
        },
        Command::Store(s) => match s.command {
            StoreCommand::Add(a) => {
                let code = a.code.unwrap_or_else(|| a.id.clone());
                let name = a.name.unwrap_or_else(|| a.id.clone());
                central
                    .add_store(&a.id, &code, &name, a.site.as_deref())
                    .map_err(e)
            }
            StoreCommand::Move(m) => central.move_store(&m.id, m.site.as_deref()).map_err(e),
            StoreCommand::Copy(c) => central.set_copy(&c.store, &c.site, &c.kind).map_err(e),
            StoreCommand::ResyncPatients(r) => {
                let n = central.resync_patients(&r.store).map_err(e)?;
                println!(
                    "{n} record(s) queued to the site where {} is active",
                    r.store
                );
                Ok(())
            }
        },
        Command::Unqueue(u) => {
            let n = central.unqueue(&u.table, &u.id).map_err(e)?;
            println!("{n} queue entr(ies) removed");
            Ok(())
        }
        Command::Requeue(r) => {
            let n = central
                .requeue_site(&r.site, r.table.as_deref())
                .map_err(e)?;
            println!("{n} record(s) queued to site {}", r.site);
            Ok(())
        }
        Command::Import(i) => {
            let n = central.import(&i.file).map_err(e)?;
            println!("imported {n} record(s)");
            Ok(())
        }
        Command::Put(p) => {
            let row: serde_json::Value =
                serde_json::from_str(&p.json).map_err(|err| format!("record: not JSON: {err}"))?;
            central.put(&p.table, &row).map_err(e)
        }
        Command::Delete(d) => central.delete(&d.table, &d.id).map_err(e),
        Command::Merge(m) => central.merge(&m.table, &m.keep, &m.drop).map_err(e),
        Command::Get(g) => match central.get(&g.table, &g.id).map_err(e)? {
            Some(v) => {
                println!("{v}");
                Ok(())
            }
            None => Err("no such record".into()),
        },
        Command::Report(r) => report(&central, r.json),
        Command::CopyTo(c) => {
            let target = match (c.target, std::env::var("FIELDSYNC_CENTRAL_COPY_TO")) {
                (Some(t), _) => t,
                (None, Ok(t)) if !t.is_empty() => t,
                _ => {
                    return Err(
                        "copy-to: name the new store (a postgres:// URL or an SQLite file)".into(),
                    )
                }
            };
            if !fieldsync::central::is_postgres_url(&target)
                && std::path::Path::new(&target).exists()
            {
                return Err(format!(
                    "copy-to: {target} exists; the copy goes into a new SQLite file (or an empty PostgreSQL database)"
                ));
            }
            let into = Central::open_db(&target).map_err(|err| format!("copy-to: {err}"))?;
            let copied = central
                .copy_to(&into)
                .map_err(|err| format!("copy-to: {err}"))?;
            for (table, n) in &copied {
                println!("{table}: {n} row(s)");
            }
            println!(
                "copied; serve the central with --db set to the new store (the old one is unchanged)"
            );
            Ok(())
        }
        Command::ImportBundle(i) => {
            let pw = password(i.password_file, i.password_env, i.password_stdin)?;
            let done = central.import_bundle(&i.file, &pw).map_err(e)?;
            println!(
                "imported {} record(s) of site {} from {} ({} already newer here, {} queue entr(ies) acknowledged){}; integrated: {}",
                done.records,
                done.site,
                i.file.display(),
                done.stale,
                done.acknowledged,
                if done.refused.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} refused (they go back to the site in its next bundle)",
                        done.refused.len()
                    )
                },
                if done.integrated {
                    "yes"
                } else {
                    "not yet (see `report`)"
                }
            );
            for r in &done.refused {
                println!("  refused {} {}: {}", r.table, r.id, r.reason);
            }
            Ok(())
        }
        Command::ExportBundle(x) => {
            let pw = password(x.password_file, x.password_env, x.password_stdin)?;
            let (path, n) = central
                .export_bundle(&x.site, &pw, &x.dir, x.cursor)
                .map_err(e)?;
            println!(
                "wrote {} with {n} record(s) for site {}; take it to the site (`fieldsync import-bundle`)",
                path.display(),
                x.site
            );
            Ok(())
        }
    }
}

fn report(central: &Central, json: bool) -> Result<(), String> {
    let now = fieldsync::clock::now_unix() as i64;
    let rows = central.report(now).map_err(|e| e.to_string())?;
    let backoffs = central.backoffs().map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"sites": rows, "backoffs": backoffs}))
                .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<5} {:<16} {:<10} {:<12} {:<8} {:<8} {:<10} LAST CONNECTED",
        "ID", "SITE", "STATUS", "STORES", "QUEUED", "STAGED", "HARDWARE"
    );
    for r in rows {
        let last = r.last_seen.map_or("never".to_string(), |t| {
            fieldsync::field::status::ago(t as u64, now as u64)
        });
        println!(
            "{:<5} {:<16} {:<10} {:<12} {:<8} {:<8} {:<10} {last}{}",
            r.site_id,
            r.name,
            r.init_status,
            r.stores.join(","),
            r.queued,
            r.staged,
            if r.hardware_id_bound {
                "bound"
            } else {
                "unbound"
            },
            if r.silent {
                "  ** silent for over a month **"
            } else {
                ""
            }
        );
    }
    if !backoffs.is_empty() {
        println!();
        println!("Wrong passwords (answers to them wait; the right password never does):");
        println!(
            "{:<16} {:<40} {:>6} {:>6}  LAST",
            "SITE NAME", "ADDRESS", "WRONG", "WAIT"
        );
        for b in backoffs {
            println!(
                "{:<16} {:<40} {:>6} {:>5}s  {}",
                if b.site_name == "*" {
                    "(any name)"
                } else {
                    &b.site_name
                },
                b.address,
                b.wrong_passwords,
                b.delay_secs,
                fieldsync::field::status::ago(b.last as u64, now as u64)
            );
        }
        println!("Clear with `fieldsync-central site clear-backoff NAME` (or --all).");
    }
    Ok(())
}
