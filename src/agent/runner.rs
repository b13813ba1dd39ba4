//! Running syncs: one cycle with its status file, LED and log lines
//! (`fieldsync sync`), the long-running loop with backoff and cheap probes
//! (`fieldsync run`), and the single-flight lock both take.
//!
//! What must hold: one sync per database at a time (a lock the OS releases when
//! the process dies); `run` stops only at a safe point between cycles; waits use
//! the [`Clock`], never the date.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{self, Clock};
use crate::error::Class;
use crate::field::led::{self, Leds};
use crate::field::metrics;
use crate::field::notify;
use crate::field::progress;
use crate::field::status::{self, Attempt};
use crate::store::{modes, Store};
use crate::sync::{self, Outcome, Progress, Report};
use crate::wire::client::Client;
use crate::wire::credentials::{self, Secret};
use crate::wire::resolve::{self, Dns};
use crate::wire::transport::{HttpTransport, Origin, Transport};
use crate::wire::TransportError;

use super::conf::Conf;
use super::credential;
use super::link;
use super::settings::Settings;
use super::{CmdResult, Failure};

/// How long the connectivity probe may take. Defaults to 5 s: an offline sync
/// ends within a few seconds, not after the 15 s connect timeout and retries.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// While offline, `run` probes this often so a sync starts soon after the link
/// returns. Defaults to 30 s.
pub const OFFLINE_PROBE_EVERY: Duration = Duration::from_secs(30);
/// After the kernel reports a link change: a probe at once, then after 2 s,
/// 4 s, … (each failed probe doubles the step from this).
const LINK_SETTLE: Duration = Duration::from_secs(1);
/// How often a long sync tells systemd's watchdog it is alive, at most.
/// Defaults to 5 s, well inside any watchdog interval a unit sets.
const WATCHDOG_PING_MAX: Duration = Duration::from_secs(5);
/// Shortest backoff after a failed cycle. Defaults to 30 s (§5 step 9).
pub const BACKOFF_START: Duration = Duration::from_secs(30);

/// When a condition that fieldsync retries by itself has lasted long enough that
/// a person must act, counted in syncs in a row (never by the date: a Pi has no
/// clock). At the timer's 5 minutes: a wrong device clock or an untrusted
/// certificate after an hour (neither fixes itself by retrying), the network
/// answering instead of the central or the central failing after a day. Plain
/// "unreachable" never: that is the offline light, and the central's report
/// flags a site silent for a month.
pub fn escalates(condition: &str, in_a_row: u32) -> bool {
    match condition {
        "clock" | "certificate" => in_a_row >= ESCALATE_FIXED_CAUSE,
        "intercepted" | "transient" => in_a_row >= ESCALATE_PASSING_CAUSE,
        _ => false,
    }
}

/// Syncs in a row before a cause that does not fix itself by waiting (a wrong
/// device clock, an untrusted certificate) asks for a person: 12, an hour of
/// the timer's 5-minute syncs. Counted in syncs, never by the date; a device on
/// another interval escalates after the same number of syncs.
pub const ESCALATE_FIXED_CAUSE: u32 = 12;
/// Syncs in a row before a cause that may pass by itself (the network answering
/// instead of the central, the central failing) asks for a person: 288, a day
/// of 5-minute syncs.
pub const ESCALATE_PASSING_CAUSE: u32 = 288;

/// Counts syncs in a row ending with the same condition (state kept in the
/// store) and marks the report escalated when [`escalates`] says so.
fn count_in_a_row(store: &Store, report: &mut Report) {
    let previous = match store.condition_in_a_row() {
        Ok(p) => p,
        Err(e) => {
            log::warn!("could not read how long the last condition lasted: {e}");
            None
        }
    };
    let Some(condition) = report.condition.clone() else {
        if previous.is_some() {
            if let Err(e) = store.set_condition_in_a_row(None) {
                log::warn!("could not reset the condition count: {e}");
            }
        }
        return;
    };
    let n: u32 = match previous {
        Some((c, count)) if c == condition => count + 1,
        _ => 1,
    };
    report.in_a_row = n;
    if escalates(&condition, n) {
        report.escalated = true;
        let base = report.hint.clone().unwrap_or_default();
        report.hint = Some(format!(
            "{base} — this has lasted {n} syncs in a row; a person must look now"
        ));
    }
    if let Err(e) = store.set_condition_in_a_row(Some((&condition, n))) {
        log::warn!("could not count the condition: {e}");
    }
}

/// The single-flight lock: a second sync exits at once. Held until dropped; the
/// OS releases it if the process dies.
pub struct SyncLock(#[allow(dead_code)] std::fs::File);

/// The lock file beside the database.
pub fn lock_path(db: &Path) -> PathBuf {
    status::lock_path(db)
}

pub fn lock(db: &Path) -> Result<SyncLock, Failure> {
    let p = lock_path(db);
    let f = modes::open_exact(&p, modes::PRIVATE, false).map_err(|e| {
        // The database's own trouble (a directory this user may not enter)
        // says more than the lock file's.
        match crate::store::must_exist(db) {
            Err(why) => Failure::from(why),
            Ok(()) if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
            {
                Failure::new(
                    Class::Local,
                    format!(
                        "cannot write the lock file {} ({e}): run as the user that owns the device's \
                         files (sudo -u fieldsync …), or the card or mount became read-only \
                         (`fieldsync status` still works)",
                        p.display()
                    ),
                )
            }
            Ok(()) => Failure::new(Class::Local, format!("lock file {}: {e}", p.display())),
        }
    })?;
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

/// Everything a sync needs, built from the settings.
pub struct Setup<T: Transport> {
    pub settings: Settings,
    pub client: Client<T>,
    pub leds: Leds,
}

impl<T: Transport> Setup<T> {
    /// A setup over any transport (tests put an in-process central here).
    pub fn with_transport(
        settings: Settings,
        digest: &Secret,
        transport: T,
        clock: Arc<dyn Clock>,
    ) -> Setup<T> {
        let client = Client::new(
            transport,
            credentials::basic_auth(&settings.site, digest),
            settings.hardware_id.clone(),
            clock,
        )
        .with_retry_delays(settings.retry_delays.clone());
        let leds = Leds::new(
            &settings.led_dir,
            settings.led.clone(),
            settings.attention_led.clone(),
        );
        Setup {
            settings,
            client,
            leds,
        }
    }
}

/// The real setup: HTTP to the configured central, the site credential, the
/// system clock. Writes nothing (`check` uses it): a digest an older fieldsync
/// left in the database is used where it is until [`prepare`] moves it.
pub fn setup(store: &Store) -> Result<Setup<HttpTransport>, Failure> {
    let settings = Settings::from_conf(&Conf::peek(store.path(), store)?)?;
    let places = credential::Places::from_env(store.path(), settings.credential_file.clone());
    let digest = match places.read() {
        Ok(d) => d,
        Err(e) => match store.digest_to_move()? {
            Some(old) => Secret::new(old),
            None => return Err(e),
        },
    };
    let transport = HttpTransport::new(settings.origin.clone(), &settings.net)
        .map_err(|e| Failure::new(e.class(), e.to_string()))?;
    Ok(Setup::with_transport(
        settings,
        &digest,
        transport,
        clock::system(),
    ))
}

/// [`setup`] for the commands that sync: first moves a digest an older
/// fieldsync kept in the database out into the credential file.
pub fn prepare(store: &mut Store) -> Result<Setup<HttpTransport>, Failure> {
    let db = store.path().to_path_buf();
    let settings = Settings::from_conf(&Conf::open(&db, store)?)?;
    let places = credential::Places::from_env(store.path(), settings.credential_file.clone());
    credential::migrate(store, &places.file)?;
    setup(store)
}

/// The store and the sync's setup; a failure here is noted in the status
/// file, which is all `status` can read of a sync that never started (the
/// timer's exit code alone reaches nobody at the clinic). Another sync
/// holding the lock is no failure.
fn start(db: &Path) -> Result<(Store, Setup<HttpTransport>), Failure> {
    let started = Store::open_configured(db)
        .map_err(Failure::from)
        .and_then(|mut store| {
            let s = prepare(&mut store)?;
            Ok((store, s))
        });
    let path = status::snapshot_path(db);
    let mut snap = status::read_snapshot(&path);
    let noted = snap.as_ref().is_some_and(|s| s.failed_start.is_some());
    let failed = match &started {
        Err(f) if f.class != Class::Busy => {
            Some(status::Attempt::failed_start(f.class, &f.message))
        }
        _ => None,
    };
    if failed.is_some() || noted {
        let snap = snap.get_or_insert_with(Default::default);
        snap.failed_start = failed;
        if let Err(e) = status::write_snapshot(&path, snap) {
            log::warn!("could not write the status file {}: {e}", path.display());
        }
    }
    started
}

/// Where a sync's progress goes: a live line on a terminal (not `--quiet`, not
/// the journal), else a log line every `every` during long steps.
fn progress_sink(every: Duration) -> progress::Sink {
    use std::io::IsTerminal;
    if log::max_level() < log::LevelFilter::Info {
        progress::Sink::None
    } else if std::io::stderr().is_terminal() && std::env::var_os("JOURNAL_STREAM").is_none() {
        progress::Sink::Terminal
    } else {
        progress::Sink::Log { every }
    }
}

/// TCP connect to the central within [`PROBE_TIMEOUT`].
pub fn probe(origin: &Origin, dns: &Dns) -> Result<(), TransportError> {
    let addrs = resolve::lookup(origin.bare_host(), origin.port, dns, PROBE_TIMEOUT)?;
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(TransportError::unreachable(match last {
        Some(e) => format!("{}:{}: {e}", origin.host, origin.port),
        None => format!("{} has no address", origin.host),
    }))
}

/// One cycle with status file, LED and log lines. Returns the report.
pub fn sync_once<T: Transport>(
    db: &Path,
    store: &mut Store,
    s: &mut Setup<T>,
    probe: impl FnOnce() -> Result<(), TransportError>,
) -> Report {
    // The snapshot is a file on the SD card, written only while a sync runs
    // long enough to show progress (a running sync is known by its lock, see
    // `status::sync_holder`): an idle sync does not write it at all.
    let snap_path = status::snapshot_path(db);
    let mut snap = status::read_snapshot(&snap_path).unwrap_or_default();
    snap.running = true;
    snap.pid = Some(std::process::id());
    let mut snapshot_written = false;
    let mut snapshot_failed = false;
    s.leds.show(led::Pattern::Syncing);
    log::info!(
        "sync started (site {}, central {})",
        s.settings.site,
        s.settings.origin.url("")
    );
    let clock = s.client.clock();
    let started = clock.now();
    let mut last_write = clock.now();
    let mut meter = progress::Meter::new(progress_sink(s.settings.progress_every));
    // Under `fieldsync run` with systemd's watchdog: a long sync is alive too.
    let watchdog = notify::watchdog_interval();
    let mut last_ping = clock.now();
    let mut observe = |p: Progress| {
        let now = clock.now();
        let line = meter.update(&p, now - started);
        // At most once a second, and only when what it says has changed.
        if now - last_write >= Duration::from_secs(1)
            && (snap.step != Some(p.step) || snap.line.as_deref() != Some(line))
        {
            snap.step = Some(p.step);
            snap.done = p.done;
            snap.total = p.total;
            snap.line = Some(line.to_string());
            if let Err(e) = status::write_snapshot(&snap_path, &snap) {
                if !snapshot_failed {
                    log::warn!(
                        "could not write the status file {}: {e}; `status` shows less while this sync runs",
                        snap_path.display()
                    );
                    snapshot_failed = true;
                }
            }
            snapshot_written = true;
            last_write = now;
        }
        if watchdog.is_some_and(|w| now - last_ping >= w.min(WATCHDOG_PING_MAX)) {
            notify::notify("WATCHDOG=1");
            last_ping = now;
        }
    };
    let mut report = sync::run(store, &mut s.client, &s.settings.sync, probe, &mut observe);
    meter.finish();
    count_in_a_row(store, &mut report);
    log_report(&report, s.client.clock().now() - started);
    let mut attempt = Attempt::from_report(&report);
    attempt.duration_ms = (s.client.clock().now() - started).as_millis() as u64;
    if let Err(e) = status::record_attempt(store, &attempt) {
        log::warn!("could not save the sync result: {e}");
    }
    if let Some(path) = &s.settings.metrics_file {
        if let Err(e) = write_metrics(path, store, &s.settings.site, Some(attempt.clone())) {
            log::warn!("could not write the metrics file {}: {e}", path.display());
        }
    }
    let rejected = store.outbox_counts().map(|c| c.rejected).unwrap_or(0);
    let pattern = led::pattern(false, Some(report.outcome()), report.outbox_left, rejected);
    s.leds.show(pattern);
    if snapshot_written {
        // What the file said while the sync ran is over.
        snap.running = false;
        snap.step = None;
        snap.line = None;
        snap.led = Some(pattern);
        snap.last = Some(attempt);
        if let Err(e) = status::write_snapshot(&snap_path, &snap) {
            log::warn!(
                "could not write the status file {}: {e}",
                snap_path.display()
            );
        }
    }
    report
}

/// The fleet metrics again after something other than a sync changed the
/// counts (a USB bundle written or read), if the deployer asked for them.
pub fn refresh_metrics(store: &Store) {
    let Ok(settings) = Conf::peek(store.path(), store).and_then(|c| Settings::from_conf(&c)) else {
        return;
    };
    let Some(path) = settings.metrics_file else {
        return;
    };
    let last = store
        .last_attempt()
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_value::<Attempt>(t).ok());
    if let Err(e) = write_metrics(&path, store, &settings.site, last) {
        log::warn!("could not write the metrics file {}: {e}", path.display());
    }
}

/// The fleet metrics (see [`metrics`]).
fn write_metrics(
    path: &Path,
    store: &Store,
    site: &str,
    attempt: Option<Attempt>,
) -> Result<(), String> {
    let counts = store.buffer_counts().map_err(|e| e.to_string())?;
    let outbox = store.outbox_counts().map_err(|e| e.to_string())?;
    let sample = metrics::Sample {
        site: site.to_string(),
        last: attempt,
        last_success_unix: store.last_success().map_err(|e| e.to_string())?,
        attempts_since_success: store.attempts_since_success().map_err(|e| e.to_string())?,
        outbox_pending: outbox.pending,
        outbox_rejected: outbox.rejected,
        outbox_held: outbox.held,
        integration_pending: counts.pending,
        integration_failed: counts.failed,
        compared: store.last_compare().map_err(|e| e.to_string())?,
        compare_owed: store.compare_due().map_err(|e| e.to_string())?.is_some(),
    };
    metrics::write(path, &sample).map_err(|e| e.to_string())
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
    let hint = r
        .hint
        .clone()
        .or_else(|| r.class.map(|c| c.hint().to_string()))
        .unwrap_or_default();
    match (r.outcome(), &r.error) {
        (Outcome::Ok, _) => log::info!("sync ok: {summary}"),
        (Outcome::OkWithIntegrationErrors, _) => {
            log::warn!("sync ok with integration errors: {summary}; {hint}")
        }
        (Outcome::Offline, Some(e)) => log::warn!("sync offline: {e}; {hint}"),
        (Outcome::NeedsAttention, Some(e)) => log::error!("sync stopped: {e}; {hint} ({summary})"),
        (_, Some(e)) => log::warn!("sync incomplete: {e}; {hint} ({summary})"),
        (_, None) => log::info!("sync: {summary}"),
    }
}

/// `fieldsync sync [--json]`.
pub fn sync(db: &Path, json: bool) -> CmdResult {
    let _lock = lock(db)?;
    let (mut store, mut s) = start(db)?;
    let (origin, dns) = (s.settings.origin.clone(), s.settings.net.dns.clone());
    let report = sync_once(db, &mut store, &mut s, || probe(&origin, &dns));
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

/// `fieldsync verify [--json]`: a sync whose check of this device's records
/// against what was last synced runs whatever the count, then what it found.
pub fn verify(db: &Path, json: bool) -> CmdResult {
    let _lock = lock(db)?;
    let (mut store, mut s) = start(db)?;
    s.settings.sync.check_now = true;
    let (origin, dns) = (s.settings.origin.clone(), s.settings.net.dns.clone());
    let report = sync_once(db, &mut store, &mut s, || probe(&origin, &dns));
    let checked = report.checked.clone().unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"checked": checked, "restored": report.restored,
                               "restore_waiting": report.restore_waiting,
                               "compared": report.compared,
                               "compare_unavailable": report.compare_unavailable,
                               "sync": report})
        );
    } else {
        println!(
            "checked {} record(s): {} changed behind the rules and queued for the central, {} restored from the central's copy{}",
            checked.records,
            checked.queued,
            checked.restore,
            if report.restore_waiting > 0 {
                format!(
                    " ({} wait: this central cannot send them again; re-initialise the site to restore them)",
                    report.restore_waiting
                )
            } else {
                String::new()
            }
        );
        for f in &checked.findings {
            println!("  {} {}: {:?}, {:?}", f.table, f.id, f.change, f.repair);
        }
        if let Some(c) = &report.compared {
            println!("{}", compared_line(c));
            for (table, id, done) in &c.listed {
                println!("  {table} {id}: {done}");
            }
        } else if report.compare_unavailable {
            println!(
                "not compared with the central: it lacks this project's compare extension \
                 (a fieldsync central has it); this device's own records were checked"
            );
        }
    }
    match report.class {
        None => Ok(()),
        Some(c) => Err(Failure::new(
            c,
            report.error.unwrap_or_else(|| c.hint().into()),
        )),
    }
}

/// One line on a comparison with the central, for a person.
pub fn compared_line(c: &crate::store::compare::Compared) -> String {
    if c.clean() {
        format!(
            "compared {} record(s) with the central: the same ({} request(s), {} bytes)",
            c.records, c.requests, c.bytes
        )
    } else {
        format!(
            "compared {} record(s) with the central: {} differed — {} queued for the central, \
             {} asked of the central, {} already in the outbox, {} only here and not this site's \
             (left for a person) ({} request(s), {} bytes)",
            c.records,
            c.differences,
            c.queued,
            c.restore,
            c.pending,
            c.unmatched,
            c.requests,
            c.bytes
        )
    }
}

/// The long-running loop for devices without systemd timers: sync every
/// `interval`; while offline or failing, back off (capped doubling with jitter from
/// 30 s to the interval) but probe cheaply every 30 s so a sync starts soon after
/// the link returns; stop at the next safe point on SIGTERM/SIGINT.
pub fn run(db: &Path, interval: Duration) -> CmdResult {
    let waker = Waker::new()?;
    // One `run` per database; the sync lock is taken for each sync only, so
    // `status` sees a sleeping run as asleep and a timer's or a person's
    // `sync` may go between two of its syncs.
    let _run = run_lock(db)?;
    let (mut store, mut s) = {
        let _lock = lock(db)?;
        start(db)?
    };
    let clock = s.client.clock();
    notify::notify("READY=1");
    let watchdog = notify::watchdog_interval();
    let mut failures: u32 = 0;
    // Link changes from the kernel, where it tells: a sync moments after the
    // link returns. The probe every 30 s stays either way: a central that was
    // down comes back on a link that never changed.
    let events = match link::LinkEvents::open() {
        Ok(e) => Some(e),
        Err(e) => {
            log::info!("link changes from the kernel are not available ({e}); probing every 30 s while offline");
            None
        }
    };
    let offline_wakes = format!(
        "{}a probe every {} s while offline",
        if events.is_some() {
            "link changes from the kernel and "
        } else {
            ""
        },
        OFFLINE_PROBE_EVERY.as_secs()
    );
    log::info!(
        "run: a sync every {} s; woken early by SIGHUP, {}{offline_wakes}",
        interval.as_secs(),
        if watchdog.is_some() {
            "the watchdog's half-interval, "
        } else {
            ""
        }
    );
    let wakes = format!(
        "every {} s, SIGHUP, {}{offline_wakes}",
        interval.as_secs(),
        if watchdog.is_some() {
            "the watchdog, "
        } else {
            ""
        }
    );
    status::note_run(db, Some(&wakes));
    loop {
        let (origin, dns) = (s.settings.origin.clone(), s.settings.net.dns.clone());
        let report = match lock(db) {
            Ok(_lock) => sync_once(db, &mut store, &mut s, || probe(&origin, &dns)),
            Err(f) if f.class == Class::Busy => {
                log::info!(
                    "a sync of this database is running already; run waits for its next turn"
                );
                crate::sync::Report::default()
            }
            Err(f) => return Err(f),
        };
        notify::notify(&format!("STATUS=last sync: {:?}", report.outcome()));
        let wait = match report.outcome() {
            Outcome::Ok | Outcome::OkWithIntegrationErrors => {
                if failures > 0 {
                    log::info!("recovered after {failures} failed attempt(s)");
                }
                failures = 0;
                interval
            }
            // Offline, the probe below starts the next sync as soon as the
            // central answers again; a whole sync on a dead link would only
            // write its failure again.
            Outcome::Offline => {
                failures += 1;
                interval
            }
            _ => {
                failures += 1;
                backoff(failures, interval)
            }
        };
        // Asleep until there is something to do: the next sync, a signal,
        // the watchdog's ping, a probe while offline. Nothing else wakes the
        // process (a tablet's battery pays for every wake-up).
        let until = clock.now() + wait;
        let offline = report.outcome() == Outcome::Offline;
        // Every 30 s; after a link change, at once and then 2 s, 4 s, … up
        // to the 30 s again.
        let mut probe_every = OFFLINE_PROBE_EVERY;
        let mut next_probe = clock.now() + probe_every;
        let mut next_ping = watchdog.map(|w| clock.now() + w);
        // Events from while the link was up (an address renewed) are old news.
        let mut link = events.as_ref().filter(|_| offline);
        if let Some(l) = link {
            l.drain();
        }
        loop {
            let now = clock.now();
            if waker.stop() || waker.sync_now() || now >= until {
                break;
            }
            if next_ping.is_some_and(|p| now >= p) {
                notify::notify("WATCHDOG=1");
                next_ping = watchdog.map(|w| now + w);
            }
            if offline && now >= next_probe {
                if probe(&s.settings.origin, &s.settings.net.dns).is_ok() {
                    log::info!("central reachable again; syncing now");
                    break;
                }
                probe_every = (probe_every * 2).min(OFFLINE_PROBE_EVERY);
                next_probe = clock.now() + probe_every;
            }
            let mut wake = until;
            if offline {
                wake = wake.min(next_probe);
            }
            if let Some(p) = next_ping {
                wake = wake.min(p);
            }
            if waker.sleep(wake.saturating_duration_since(clock.now()), link) == link::Woke::Link {
                let n = link.map_or(0, link::LinkEvents::drain);
                if n == 0 {
                    // Readable but nothing to read: a socket that misbehaves
                    // (an emulator's) would wake the loop without end. The
                    // 30 s probe carries on alone until the next sync.
                    log::warn!("the kernel's link events woke run with nothing to read; probing every 30 s instead");
                    link = None;
                    continue;
                }
                log::info!(
                    "the kernel reports a network change ({n} event(s)); probing the central"
                );
                // At once, and once more shortly: an address may come a
                // moment before its route, DHCP a moment before DNS.
                next_probe = clock.now();
                probe_every = LINK_SETTLE;
            }
        }
        if waker.stop() {
            notify::notify("STOPPING=1");
            status::note_run(db, None);
            log::info!("stopping on signal");
            return Ok(());
        }
        if waker.take_sync_now() {
            log::info!("SIGHUP: syncing now");
        }
    }
}

/// The lock that keeps a second `run` off a database, held for run's life.
fn run_lock(db: &Path) -> Result<SyncLock, Failure> {
    let mut p = db.as_os_str().to_owned();
    p.push(".run.lock");
    let p = PathBuf::from(p);
    let f = modes::open_exact(&p, modes::PRIVATE, false)
        .map_err(|e| Failure::new(Class::Local, format!("lock file {}: {e}", p.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(SyncLock(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::new(
            Class::Busy,
            "`fieldsync run` is already running on this database; not starting a second",
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Failure::new(Class::Local, format!("lock: {e}")))
        }
    }
}

/// What wakes `run` before its time: SIGTERM and SIGINT (stop), SIGHUP (sync
/// now). Each sets its flag, then writes a byte into a socket pair that the
/// loop sleeps reading with a timeout: no polling, and no unsafe code.
struct Waker {
    rx: std::os::unix::net::UnixStream,
    stop: Arc<AtomicBool>,
    now: Arc<AtomicBool>,
}

impl Waker {
    fn new() -> Result<Waker, Failure> {
        let fail = |e: std::io::Error| Failure::new(Class::Local, format!("signal handler: {e}"));
        let (rx, tx) = std::os::unix::net::UnixStream::pair().map_err(fail)?;
        tx.set_nonblocking(true).map_err(fail)?;
        rx.set_nonblocking(true).map_err(fail)?;
        let (stop, now) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for (sig, flag) in [(SIGTERM, &stop), (SIGINT, &stop), (SIGHUP, &now)] {
            // The flag first, then the byte: a wake-up always finds its flag set.
            signal_hook::flag::register(sig, Arc::clone(flag)).map_err(fail)?;
            signal_hook::low_level::pipe::register(sig, tx.try_clone().map_err(fail)?)
                .map_err(fail)?;
        }
        Ok(Waker { rx, stop, now })
    }

    fn stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn sync_now(&self) -> bool {
        self.now.load(Ordering::SeqCst)
    }

    fn take_sync_now(&self) -> bool {
        self.now.swap(false, Ordering::SeqCst)
    }

    /// Sleeps `d` at most, less if a signal comes or (when `link` is given)
    /// the kernel reports a link change; what woke it.
    fn sleep(&self, d: Duration, link: Option<&link::LinkEvents>) -> link::Woke {
        use std::io::Read;
        let woke = link::sleep(&self.rx, link, d.max(Duration::from_millis(1)));
        if woke == link::Woke::Signal {
            let mut buf = [0u8; 64];
            while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
        }
        woke
    }
}

/// Capped doubling from 30 s to `cap`, plus up to a quarter of jitter.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    base + crate::clock::jitter(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_conditions_turn_into_a_person_s_job() {
        assert!(!escalates("clock", 11) && escalates("clock", 12));
        assert!(escalates("certificate", 12));
        assert!(!escalates("intercepted", 287) && escalates("intercepted", 288));
        assert!(escalates("transient", 300));
        assert!(
            !escalates("unreachable", 100_000),
            "offline is the offline light"
        );
    }

    #[test]
    fn backoff_doubles_to_the_interval() {
        let cap = Duration::from_secs(300);
        let within = |d: Duration, base: u64| {
            d >= Duration::from_secs(base) && d < Duration::from_millis(base * 1250)
        };
        assert!(within(backoff(1, cap), 30));
        assert!(within(backoff(2, cap), 60));
        assert!(within(backoff(4, cap), 240));
        assert!(within(backoff(5, cap), 300));
        assert!(within(backoff(40, cap), 300));
    }
}
