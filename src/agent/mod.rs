//! The agent's commands: what `fieldsync <command>` does, apart from parsing.
//! Each returns a [`Failure`] (message + class → exit code) or prints its result;
//! exit codes are mapped in one place, [`crate::error::Class::exit_code`].

#[cfg(feature = "central")]
pub mod demo;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Class, StoreError, TransportError};
use crate::field::led::{self, Leds};
use crate::field::status::{self, Attempt};
use crate::store::{self, key, Store};
use crate::sync::{self as cycle, Config, Outcome, Progress, Report};
use crate::wire::client::Client;
use crate::wire::credentials;
use crate::wire::transport::{HttpTransport, Origin};
use crate::{store::outbox, store::registry};

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

/// How long the connectivity probe may take. Defaults to 5 s: an offline sync
/// ends within a few seconds, not after the 15 s connect timeout and retries.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

// ---- init -------------------------------------------------------------------------

pub struct InitOptions {
    pub url: String,
    pub site: String,
    pub password: String,
    pub allow_insecure_http: bool,
    pub led: Option<String>,
    pub attention_led: Option<String>,
}

pub fn init(db: &Path, o: &InitOptions) -> CmdResult {
    Origin::parse(&o.url, o.allow_insecure_http)
        .map_err(|e| Failure::new(Class::Input, e.to_string()))?;
    if o.site.trim().is_empty() || o.site.contains(':') {
        return Err(Failure::new(
            Class::Input,
            "site name must be non-empty and contain no ':'",
        ));
    }
    if o.password.is_empty() {
        return Err(Failure::new(
            Class::Input,
            "the password is empty; give the one the administrator set",
        ));
    }
    let mut store = Store::open(db)?;
    let tx = store.tx()?;
    // Changing the central or the site of an initialised store would mix two
    // sites' data in one file.
    if let (Some(old_url), Some(old_site)) = (
        store::get_setting(&tx, key::CENTRAL_URL)?,
        store::get_setting(&tx, key::SITE_NAME)?,
    ) {
        let initialised = store::get_setting(&tx, key::INIT_STATE)?.is_some();
        if initialised && !old_site.eq_ignore_ascii_case(&o.site) {
            return Err(Failure::new(
                Class::Input,
                format!("this database belongs to site {old_site} ({old_url}); use a new --db for site {}", o.site),
            ));
        }
    }
    store::set_setting(&tx, key::CENTRAL_URL, &o.url)?;
    store::set_setting(&tx, key::SITE_NAME, &o.site)?;
    store::set_setting(
        &tx,
        key::PASSWORD_DIGEST,
        credentials::password_digest(&o.password).expose(),
    )?;
    store::set_setting(
        &tx,
        key::ALLOW_HTTP,
        if o.allow_insecure_http { "1" } else { "0" },
    )?;
    if store::get_setting(&tx, key::HARDWARE_ID)?.is_none() {
        store::set_setting(
            &tx,
            key::HARDWARE_ID,
            &credentials::derive_hardware_id(credentials::MACHINE_ID_PATHS),
        )?;
    }
    if let Some(l) = &o.led {
        store::set_setting(&tx, "led", l)?;
    }
    if let Some(l) = &o.attention_led {
        store::set_setting(&tx, "attention_led", l)?;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("saving settings", e))?;
    let hw = store.setting(key::HARDWARE_ID)?.unwrap_or_default();
    println!(
        "configured site {} at {} (hardware id {hw}); run `fieldsync sync`",
        o.site, o.url
    );
    Ok(())
}

/// Reads the password from a file, an environment variable or stdin — never argv.
pub fn read_password(
    file: Option<&str>,
    env: Option<&str>,
    stdin: bool,
) -> Result<String, Failure> {
    let text = if let Some(f) = file {
        std::fs::read_to_string(f)
            .map_err(|e| Failure::new(Class::Input, format!("password file {f}: {e}")))?
    } else if let Some(v) = env {
        std::env::var(v).map_err(|_| {
            Failure::new(Class::Input, format!("environment variable {v} is not set"))
        })?
    } else if stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .map_err(|e| Failure::new(Class::Input, format!("reading stdin: {e}")))?;
        s
    } else {
        return Err(Failure::new(
            Class::Input,
            "give the password with --password-file, --password-env or --password-stdin",
        ));
    };
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

// ---- sync ---------------------------------------------------------------------------

/// The single-flight lock: a second sync exits at once. Held until dropped; the
/// OS releases it if the process dies.
pub struct SyncLock(#[allow(dead_code)] std::fs::File);

/// The lock file beside the database.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

pub fn lock(db: &Path) -> Result<SyncLock, Failure> {
    let p = lock_path(db);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Failure::new(Class::Local, format!("lock file {}: {e}", p.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(SyncLock(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::new(
            Class::Busy,
            "another fieldsync sync is running on this database; not starting a second",
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Failure::new(Class::Local, format!("lock: {e}")))
        }
    }
}

/// Everything a sync needs from the settings.
pub struct Setup {
    pub origin: Origin,
    pub client: Client<HttpTransport>,
    pub leds: Leds,
    pub config: Config,
    pub site: String,
}

pub fn setup(store: &Store) -> Result<Setup, Failure> {
    let need = |k: &str| -> Result<String, Failure> {
        store.setting(k)?.ok_or_else(|| {
            Failure::new(
                Class::NotConfigured,
                "not configured: run `fieldsync init` first",
            )
        })
    };
    let url = need(key::CENTRAL_URL)?;
    let site = need(key::SITE_NAME)?;
    let digest = credentials::Secret::new(need(key::PASSWORD_DIGEST)?);
    let hw = need(key::HARDWARE_ID)?;
    let allow = store.setting(key::ALLOW_HTTP)?.as_deref() == Some("1");
    let origin =
        Origin::parse(&url, allow).map_err(|e| Failure::new(Class::Input, e.to_string()))?;
    let mut client = Client::new(
        HttpTransport::new(origin.clone()),
        credentials::basic_auth(&site, &digest),
        hw,
    );
    // `retry_base_ms` scales the 2-4-8 s retry delays (tests and the link emulator
    // use a few milliseconds).
    if let Some(base) = store
        .setting("retry_base_ms")?
        .and_then(|v| v.parse::<u64>().ok())
    {
        client =
            client.with_retry_delays((0..3).map(|i| Duration::from_millis(base << i)).collect());
    }
    let mut config = Config::default();
    if let Some(n) = store
        .setting(key::BATCH_RECORDS)?
        .and_then(|v| v.parse().ok())
    {
        config.batch_records = n;
    }
    if let Some(n) = store
        .setting(key::BATCH_BYTES)?
        .and_then(|v| v.parse().ok())
    {
        config.batch_bytes = n;
    }
    if let Some(n) = store
        .setting("integration_wait_secs")?
        .and_then(|v| v.parse().ok())
    {
        config.integration_wait = Duration::from_secs(n);
    }
    if let Some(n) = store
        .setting("init_poll_secs")?
        .and_then(|v| v.parse().ok())
    {
        config.init_poll = Duration::from_secs(n);
    }
    let led_dir = std::env::var("FIELDSYNC_LED_DIR").unwrap_or_else(|_| led::SYS_LEDS.into());
    let leds = Leds::new(
        led_dir,
        // The package's /etc/default/fieldsync may name the LEDs for every site.
        std::env::var("FIELDSYNC_LED")
            .ok()
            .or(store.setting("led")?)
            .filter(|l| !l.is_empty() && l != "none"),
        std::env::var("FIELDSYNC_ATTENTION_LED")
            .ok()
            .or(store.setting("attention_led")?)
            .filter(|l| !l.is_empty() && l != "none"),
    );
    Ok(Setup {
        origin,
        client,
        leds,
        config,
        site,
    })
}

/// TCP connect to the central within [`PROBE_TIMEOUT`].
pub fn probe(origin: &Origin) -> Result<(), TransportError> {
    use std::net::ToSocketAddrs;
    let host = origin.host.trim_start_matches('[').trim_end_matches(']');
    let addrs = (host, origin.port)
        .to_socket_addrs()
        .map_err(|e| TransportError::Unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(TransportError::Unreachable(match last {
        Some(e) => format!("{}:{}: {e}", origin.host, origin.port),
        None => format!("{} has no address", origin.host),
    }))
}

/// One cycle with status file, LED and log lines. Returns the report.
pub fn sync_once(db: &Path, store: &mut Store, s: &mut Setup) -> Report {
    let snap_path = status::snapshot_path(db);
    let mut snap = status::read_snapshot(&snap_path).unwrap_or_default();
    snap.running = true;
    snap.pid = Some(std::process::id());
    s.leds.show(led::Pattern::Syncing);
    let _ = status::write_snapshot(&snap_path, &snap);
    log::info!(
        "sync started (site {}, central {})",
        s.site,
        s.origin.url("")
    );
    let started = Instant::now();
    let mut last_write = Instant::now();
    let mut last_log = Instant::now();
    let mut last_step = None;
    // Under `fieldsync run` with systemd's watchdog: a long sync is alive too.
    let watchdog = crate::field::notify::watchdog_interval();
    let mut last_ping = Instant::now();
    s.client.traffic = Default::default();
    let origin = s.origin.clone();
    let mut observe = |p: Progress| {
        // Snapshot on every step change and at most every second; a log line
        // at least every 5 s during long work ("x of y").
        if last_step != Some(p.step) || last_write.elapsed() >= Duration::from_secs(1) {
            snap.step = Some(p.step);
            snap.done = p.done;
            snap.total = p.total;
            let _ = status::write_snapshot(&snap_path, &snap);
            last_write = Instant::now();
        }
        if last_step == Some(p.step) && last_log.elapsed() >= Duration::from_secs(5) {
            match p.total {
                Some(t) => log::info!("{:?}: {} of {t}", p.step, p.done),
                None => log::info!("{:?}: {}", p.step, p.done),
            }
            last_log = Instant::now();
        }
        last_step = Some(p.step);
        if watchdog.is_some_and(|w| last_ping.elapsed() >= w.min(Duration::from_secs(5))) {
            crate::field::notify::notify("WATCHDOG=1");
            last_ping = Instant::now();
        }
    };
    let report = cycle::run(
        store,
        &mut s.client,
        &s.config,
        || probe(&origin),
        &mut observe,
    );
    let took = started.elapsed();
    log_report(&report, took);
    let attempt = Attempt::from_report(&report);
    if let Err(e) = status::record_attempt(store, &attempt) {
        log::warn!("could not save the sync result: {e}");
    }
    let rejected = outbox::rejected_count(store.conn()).unwrap_or(0);
    let pattern = led::pattern(false, Some(report.outcome()), report.outbox_left, rejected);
    s.leds.show(pattern);
    snap.running = false;
    snap.step = None;
    snap.led = Some(pattern);
    snap.last = Some(attempt);
    let _ = status::write_snapshot(&snap_path, &snap);
    report
}

fn log_report(r: &Report, took: Duration) {
    let summary = format!(
        "pushed {} record(s) in {} batch(es), pulled {} central + {} queued, integrated {}, integration errors {}, \
         outbox now {}, {} request(s), took {:.1}s",
        r.pushed,
        r.push_batches,
        r.pulled_central,
        r.pulled_queue,
        r.integrated,
        r.integration_failed,
        r.outbox_left,
        r.requests,
        took.as_secs_f64()
    );
    match (r.outcome(), &r.error) {
        (Outcome::Ok, _) => log::info!("sync ok: {summary}"),
        (Outcome::OkWithIntegrationErrors, _) => {
            log::warn!(
                "sync ok with integration errors: {summary}; {}",
                Class::Integration.hint()
            )
        }
        (Outcome::Offline, Some(e)) => log::warn!("sync offline: {e}; {}", Class::Offline.hint()),
        (o, Some(e)) => {
            let hint = r.class.map(|c| c.hint()).unwrap_or("");
            if o == Outcome::NeedsAttention {
                log::error!("sync stopped: {e}; {hint} ({summary})");
            } else {
                log::warn!("sync incomplete: {e}; {hint} ({summary})");
            }
        }
        (_, None) => log::info!("sync: {summary}"),
    }
}

pub fn sync(db: &Path, json: bool) -> CmdResult {
    let _lock = lock(db)?;
    let mut store = Store::open(db)?;
    let mut s = setup(&store)?;
    let report = sync_once(db, &mut store, &mut s);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    match report.class {
        None => Ok(()),
        Some(c) => Err(Failure::new(
            c,
            report.error.unwrap_or_else(|| c.hint().into()),
        )),
    }
}

// ---- run ------------------------------------------------------------------------------

/// The long-running loop for devices without systemd timers: sync every
/// `interval`; while offline or failing, back off (capped doubling with jitter from
/// 30 s to the interval) but probe cheaply every 30 s so a sync starts soon after
/// the link returns; stop at the next safe point on SIGTERM/SIGINT.
pub fn run(db: &Path, interval: Duration) -> CmdResult {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Failure::new(Class::Local, format!("signal handler: {e}")))?;
    }
    let _lock = lock(db)?;
    let mut store = Store::open(db)?;
    let mut s = setup(&store)?;
    crate::field::notify::notify("READY=1");
    let watchdog = crate::field::notify::watchdog_interval();
    let mut failures: u32 = 0;
    let mut first_failure: Option<String> = None;
    loop {
        let report = sync_once(db, &mut store, &mut s);
        crate::field::notify::notify(&format!("STATUS=last sync: {:?}", report.outcome()));
        let wait = match report.outcome() {
            Outcome::Ok | Outcome::OkWithIntegrationErrors => {
                if failures > 0 {
                    log::info!("recovered after {failures} failed attempt(s)");
                }
                failures = 0;
                first_failure = None;
                interval
            }
            _ => {
                failures += 1;
                if first_failure.is_none() {
                    first_failure = report.error.clone();
                }
                backoff(failures, interval)
            }
        };
        // Sleep in small steps: stop promptly, feed the watchdog, and probe so a
        // sync starts soon after the link comes back.
        let until = Instant::now() + wait;
        let mut next_probe = Instant::now() + Duration::from_secs(30);
        let offline = report.outcome() == Outcome::Offline;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                crate::field::notify::notify("STOPPING=1");
                log::info!("stopping on signal");
                return Ok(());
            }
            if watchdog.is_some() {
                crate::field::notify::notify("WATCHDOG=1");
            }
            if offline && Instant::now() >= next_probe {
                if probe(&s.origin).is_ok() {
                    log::info!("central reachable again; syncing now");
                    break;
                }
                next_probe = Instant::now() + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if stop.load(Ordering::Relaxed) {
            crate::field::notify::notify("STOPPING=1");
            return Ok(());
        }
    }
}

/// Capped doubling from 30 s to `cap`, plus up to a quarter of jitter.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(30)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    base + crate::wire::client::jitter(base)
}

// ---- status ---------------------------------------------------------------------------

pub fn status(db: &Path, json: bool) -> CmdResult {
    let store = Store::open_existing(db)?;
    let snap = status::read_snapshot(&status::snapshot_path(db));
    let v = status::view(&store, snap.as_ref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", status::render(&v, status::now_unix()));
    }
    Ok(())
}

// ---- records --------------------------------------------------------------------------

pub fn parse_json(text: &str, at: &str) -> Result<Value, Failure> {
    serde_json::from_str(text)
        .map_err(|e| Failure::new(Class::Input, format!("{at}: not JSON: {e}")))
}

pub fn put(db: &Path, table: &str, json_text: &str) -> CmdResult {
    if json_text.len() > store::MAX_RECORD_BYTES {
        return Err(Failure::new(
            Class::Input,
            format!(
                "record: over the {}-byte record limit; nothing was written",
                store::MAX_RECORD_BYTES
            ),
        ));
    }
    let row = parse_json(json_text, "record")?;
    let mut store = Store::open(db)?;
    store.put(table, &row)?;
    Ok(())
}

pub fn get(db: &Path, table: &str, id: &str) -> CmdResult {
    let store = Store::open_existing(db)?;
    match store.get(table, id)? {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => Err(Failure::new(
            Class::Input,
            format!("no {table} record {id}"),
        )),
    }
}

pub fn delete(db: &Path, table: &str, id: &str) -> CmdResult {
    let mut store = Store::open(db)?;
    if store.delete(table, id)? {
        Ok(())
    } else {
        Err(Failure::new(
            Class::Input,
            format!("no {table} record {id}"),
        ))
    }
}

pub fn list(db: &Path, table: Option<&str>) -> CmdResult {
    let store = Store::open_existing(db)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    store.for_each_record(table, |t, d| {
        writeln!(out, "{{\"table\":{},\"record\":{d}}}", Value::from(t))
            .map_err(|e| StoreError::Io("writing output".into(), e))
    })?;
    Ok(())
}

/// Bulk import of JSON Lines: `{"table": T, "record": {...}}` per line, or plain
/// records with `--table`. One transaction for the whole file, so a bad line
/// leaves nothing half-written; reading streams line by line, so memory does not
/// grow with the file, and lines are capped at the record limit.
pub fn import(db: &Path, path: &str, table: Option<&str>) -> Result<u64, Failure> {
    let file: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| Failure::new(Class::Input, format!("{path}: {e}")))?,
        )
    };
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut store = Store::open(db)?;
    let tx = store.tx()?;
    let mut line = Vec::with_capacity(4096);
    let mut n = 0u64;
    let mut lineno = 0u64;
    loop {
        line.clear();
        lineno += 1;
        let at = format!("{path} line {lineno}");
        let read = (&mut reader)
            .take(store::MAX_RECORD_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::new(Class::Input, format!("{at}: {e}")))?;
        if read == 0 {
            break;
        }
        if line.len() > store::MAX_RECORD_BYTES {
            return Err(Failure::new(
                Class::Input,
                format!(
                    "{at}: line is over the {}-byte record limit; nothing was imported",
                    store::MAX_RECORD_BYTES
                ),
            ));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| Failure::new(Class::Input, format!("{at}: not UTF-8")))?;
        if text.trim().is_empty() {
            continue;
        }
        let v = parse_json(text, &at)?;
        let (t, row) = match table {
            Some(t) => (t.to_string(), v),
            None => {
                let t = v.get("table").and_then(|t| t.as_str()).ok_or_else(|| {
                    Failure::new(
                        Class::Input,
                        format!("{at}: needs {{\"table\": …, \"record\": {{…}}}} (or use --table)"),
                    )
                })?;
                (
                    t.to_string(),
                    v.get("record").cloned().unwrap_or(Value::Null),
                )
            }
        };
        store::put_local(&tx, &t, &row, &at)
            .map_err(|e| Failure::new(Class::Input, format!("{e}; nothing was imported")))?;
        n += 1;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("committing the import", e))?;
    Ok(n)
}

pub fn queue(db: &Path, json: bool, list_all: bool, rejected: bool) -> CmdResult {
    let store = Store::open_existing(db)?;
    let pending = outbox::pending_count(store.conn())?;
    let set_aside = outbox::rejected_count(store.conn())?;
    let rows = if list_all || rejected {
        outbox::list(store.conn(), rejected, 10_000)?
    } else {
        vec![]
    };
    if json {
        let v = serde_json::json!({"pending": pending, "rejected": set_aside, "records": rows});
        println!("{v}");
    } else {
        println!("{pending} record(s) waiting to be pushed, {set_aside} set aside");
        for r in rows {
            println!(
                "{:>8} {:<7} {:<8} {} {}{}",
                r.seq,
                r.action,
                r.state,
                r.table,
                r.id,
                r.reason.map(|x| format!("  ({x})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn queue_retry(db: &Path, only: Option<(&str, &str)>) -> CmdResult {
    let store = Store::open(db)?;
    let n = outbox::retry(store.conn(), only)?;
    println!("{n} record(s) back in the queue");
    Ok(())
}

/// Lists the registry (for the README and for people writing imports).
pub fn tables() {
    for t in registry::tables() {
        println!("{:<22} {:<16} {:?}", t.name, t.kind.sql_name(), t.owner);
    }
}
