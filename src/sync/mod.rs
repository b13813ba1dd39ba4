//! One sync cycle (protocol §5): probe, site info, initialisation, push and wait,
//! central records, queue, integrate, transfer numbering. The only layer that
//! knows both the store and the client; each step lives in its own file
//! (`init`, `push`, `pull`) and this one runs them in order.
//!
//! What must hold, at every line (think of a power cut between any two):
//! - an outbox entry leaves only in a transaction after the central confirmed it;
//! - the central cursor moves in the transaction that stores the records it covers;
//! - a queue entry is acknowledged only after its record is committed (FULL sync);
//! - nothing here reads the wall clock to decide anything (the [`Clock`] is
//!   monotonic and, in tests, virtual).
//!
//! The cycle never prints: it reports progress to an observer and returns a
//! [`Report`] that the log, status file and LED render.

pub mod batch;
pub mod courier;
mod init;
pub mod integration;
mod pull;
mod push;
pub mod transfer;
mod verify;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::Class;
use crate::store::{Store, StoreError};
use crate::wire::client::{Client, Gzip};
use crate::wire::page::Unreadable;
use crate::wire::transport::Transport;
use crate::wire::{ProtocolError, TransportError, WireError};

pub use crate::store::InitState;
pub use init::{init_action, InitAction};
pub use pull::incoming;

/// Tunables of one cycle; `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Records per push (≤ 1024). Defaults to 1024.
    pub batch_records: usize,
    /// Largest push body. Defaults to 1 MiB; each cycle starts at 256 KiB (about
    /// 8 s over 2G) and adapts to the link within this bound.
    pub batch_bytes: usize,
    /// Target duration of one push request for adaptive sizing. Defaults to 8 s.
    pub target_request: Duration,
    /// Bounds of the adaptive pull `limit` (§9.3). Default 20..1000.
    pub pull_limits: (u32, u32),
    /// Longest wait for the central's integration after the final push. Defaults to 30 s (§5 step 4).
    pub integration_wait: Duration,
    /// Polling interval while the central initialises. Defaults to 15 s (§5 step 2).
    pub init_poll: Duration,
    /// Longest wait for an initialisation. Defaults to 30 min (§5 step 2).
    pub init_wait: Duration,
    /// Legacy change-log gaps skipped per cycle. Defaults to 10 000 (§5 step 5).
    pub max_gap_steps: u64,
    /// Check the shared file against what was synced every this many syncs
    /// (issue 26; 0: only when asked). Defaults to [`CHECK_EVERY`].
    pub check_every: u32,
    /// Check it in this cycle whatever the count (`fieldsync verify`); also
    /// compares with the central.
    pub check_now: bool,
    /// Compare what this site holds with the central every this many syncs
    /// (compare extension [PC]; 0: only when asked or owed). Defaults to
    /// [`COMPARE_EVERY`].
    pub compare_every: u32,
}

/// How often this site compares with the central by default: a day of syncs
/// every five minutes. A restored central is compared with at once.
pub const COMPARE_EVERY: u32 = 288;

/// How often the shared file is checked by default: every sync. A check reads
/// every record once (measured in README "Benchmarks"); a site with a very
/// large store may space it out with `check_every_syncs`.
pub const CHECK_EVERY: u32 = 1;

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_records: batch::MAX_BATCH_RECORDS,
            batch_bytes: batch::DEFAULT_BATCH_BYTES,
            target_request: Duration::from_secs(8),
            pull_limits: (pull::MIN_PULL_LIMIT, pull::MAX_PULL_LIMIT),
            integration_wait: Duration::from_secs(30),
            init_poll: Duration::from_secs(15),
            init_wait: Duration::from_secs(30 * 60),
            max_gap_steps: 10_000,
            check_every: CHECK_EVERY,
            check_now: false,
            compare_every: COMPARE_EVERY,
        }
    }
}

/// Where a cycle is; the status file shows it while a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Probe,
    SiteInfo,
    Initialise,
    /// The shared file checked against what was synced (issue 26).
    Check,
    /// What this site holds compared with the central [PC] (issue 30).
    Compare,
    Push,
    WaitIntegration,
    CentralRecords,
    Queue,
    Integrate,
    Transfers,
    Done,
}

/// Progress handed to the observer: the step, "x of y" where known, and the
/// bytes that crossed the link so far in this cycle (received counts a page as
/// it streams in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub step: Step,
    pub done: u64,
    pub total: Option<u64>,
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    OkWithIntegrationErrors,
    Offline,
    Transient,
    NeedsAttention,
}

/// What one cycle did. Counts are of records unless named otherwise.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub pushed: u64,
    pub push_batches: u64,
    pub pulled_central: u64,
    pub pulled_queue: u64,
    pub integrated: u64,
    pub integration_failed: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub too_large: u64,
    /// Received records that could not be read and were set aside.
    #[serde(default)]
    pub unreadable: u64,
    pub numbered: Vec<transfer::Numbered>,
    pub outbox_left: u64,
    pub initialised: bool,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Set when the cycle ended early.
    pub error: Option<String>,
    pub class: Option<Class>,
    /// What to do about `error`: the class's hint, or a more specific one.
    #[serde(default)]
    pub hint: Option<String>,
    /// Which retried condition ended the cycle (`unreachable`, `intercepted`,
    /// `certificate`, `clock`, `transient`), for counting how long it lasts.
    #[serde(default)]
    pub condition: Option<String>,
    /// Syncs in a row that ended with the same condition, this one included.
    #[serde(default)]
    pub in_a_row: u32,
    /// The condition has lasted long enough that a person should look (the
    /// agent's escalation rule; README "When retrying is not enough").
    #[serde(default)]
    pub escalated: bool,
    /// What this cycle's check of the shared file found (when one ran).
    #[serde(default)]
    pub checked: Option<crate::store::check::Checked>,
    /// Records asked for again from the central this cycle.
    #[serde(default)]
    pub restored: u64,
    /// Records changed behind the rules that wait for a central that can send
    /// them again (one without this project's extension).
    #[serde(default)]
    pub restore_waiting: u64,
    /// What this cycle's comparison with the central found (when one ran).
    #[serde(default)]
    pub compared: Option<crate::store::compare::Compared>,
    /// A comparison was asked for and the central lacks the extension.
    #[serde(default)]
    pub compare_unavailable: bool,
}

impl Report {
    pub fn outcome(&self) -> Outcome {
        if self.escalated {
            return Outcome::NeedsAttention;
        }
        match self.class {
            None => Outcome::Ok,
            Some(Class::Integration) => Outcome::OkWithIntegrationErrors,
            Some(Class::Offline) => Outcome::Offline,
            Some(c) if c.is_transient() => Outcome::Transient,
            Some(_) => Outcome::NeedsAttention,
        }
    }
}

/// Anything that ends a sync cycle early.
#[derive(Debug)]
pub enum SyncError {
    Store(StoreError),
    Wire(WireError),
    /// A pulled record that cannot be read; the pull step sets it aside by its ids
    /// when it can, and this escapes only when it cannot.
    Unreadable(Unreadable),
    /// The cycle stopped on a condition a person must look at (site identity,
    /// re-initialisation requested centrally, wrong number of active stores).
    Attention(Class, String),
    /// The same, when what to do is known better than the class's hint says.
    Advised {
        class: Class,
        message: String,
        hint: String,
    },
}

impl SyncError {
    pub fn class(&self) -> Class {
        match self {
            // A store error during a sync is a device fault, never the user's input.
            SyncError::Store(e) => match e.class() {
                Class::Input => Class::Local,
                c => c,
            },
            SyncError::Wire(e) => e.class(),
            SyncError::Unreadable(_) => Class::Site,
            SyncError::Attention(c, _) => *c,
            SyncError::Advised { class, .. } => *class,
        }
    }

    /// The retried condition this error is, if it is one.
    pub fn condition(&self) -> Option<&'static str> {
        use crate::wire::transport::Certificate;
        match self {
            SyncError::Wire(WireError::Transport(t)) => Some(match t {
                TransportError::Unreachable { .. } => "unreachable",
                TransportError::Intercepted(_) => "intercepted",
                TransportError::Certificate(Certificate::Time { .. }) => "clock",
                TransportError::Certificate(Certificate::Untrusted(_)) => "certificate",
                _ => "transient",
            }),
            e if e.class().is_transient() => Some("transient"),
            _ => None,
        }
    }

    /// What to do, when the error knows better than its class: the network in
    /// between, the device clock (§9.4).
    pub fn hint(&self) -> Option<String> {
        match self {
            SyncError::Wire(WireError::Transport(t)) => t.advice(),
            SyncError::Advised { hint, .. } => Some(hint.clone()),
            _ => None,
        }
    }

    pub(crate) fn violation(m: impl Into<String>) -> SyncError {
        SyncError::Wire(WireError::Protocol(ProtocolError::Violation(m.into())))
    }

    /// The central still works on something (integration, initialisation): the
    /// next cycle continues.
    pub(crate) fn still_busy(code: String, message: &str) -> SyncError {
        SyncError::Wire(WireError::Protocol(ProtocolError::Server {
            status: 200,
            code,
            message: message.into(),
            class: Class::Transient,
        }))
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Store(e) => e.fmt(f),
            SyncError::Wire(e) => e.fmt(f),
            SyncError::Unreadable(u) => write!(
                f,
                "a received record cannot be read ({}) and the central did not say which it is; \
                 the pull cannot go past it",
                u.why
            ),
            SyncError::Attention(_, m) => f.write_str(m),
            SyncError::Advised { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Store(e) => Some(e),
            SyncError::Wire(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        SyncError::Store(e)
    }
}
impl From<WireError> for SyncError {
    fn from(e: WireError) -> Self {
        SyncError::Wire(e)
    }
}
impl From<TransportError> for SyncError {
    fn from(e: TransportError) -> Self {
        SyncError::Wire(e.into())
    }
}
impl From<ProtocolError> for SyncError {
    fn from(e: ProtocolError) -> Self {
        SyncError::Wire(e.into())
    }
}
impl From<Unreadable> for SyncError {
    fn from(e: Unreadable) -> Self {
        SyncError::Unreadable(e)
    }
}

/// Runs one cycle. Never panics on what the central sends; every early end is in
/// the report's `error` and `class`.
pub fn run<T: Transport>(
    store: &mut Store,
    client: &mut Client<T>,
    cfg: &Config,
    probe: impl FnOnce() -> Result<(), TransportError>,
    observe: &mut dyn FnMut(Progress),
) -> Report {
    let mut report = Report::default();
    client.start_counting();
    // §9.1: what this central said of gzip bodies, kept between syncs (local data).
    let gzip_before = match store.central_gzip().ok().flatten().as_deref() {
        Some("advertised") => Gzip::Advertised,
        Some("refused") => Gzip::Refused,
        _ => Gzip::Unknown,
    };
    client.remember_gzip(gzip_before);
    let clock = client.clock();
    let result = Cycle {
        store,
        client,
        cfg,
        clock,
        observe,
        report: &mut report,
        integrated: integration::Tally::default(),
    }
    .run(probe);
    if let Err(e) = result {
        report.class = Some(e.class());
        report.hint = e.hint();
        report.condition = e.condition().map(str::to_string);
        report.error = Some(e.to_string());
    }
    if client.gzip() != gzip_before {
        let v = match client.gzip() {
            Gzip::Advertised => "advertised",
            Gzip::Refused => "refused",
            Gzip::Unknown => "unknown",
        };
        if let Err(e) = store.set_central_gzip(Some(v)) {
            log::warn!("could not remember the central's gzip answer: {e}");
        }
    }
    let traffic = client.traffic();
    report.requests = traffic.requests;
    report.bytes_sent = traffic.bytes_sent;
    report.bytes_received = traffic.bytes_received;
    report.outbox_left = store.outbox_pending().unwrap_or(0);
    report.initialised = store
        .init_state()
        .map(|s| s == InitState::Initialised)
        .unwrap_or(false);
    if report.class.is_none() && report.integration_failed > 0 {
        report.class = Some(Class::Integration);
    }
    if report.class.is_none() && report.rejected + report.too_large > 0 {
        report.class = Some(Class::Rejected);
        report.error = Some(format!(
            "{} record(s) set aside",
            report.rejected + report.too_large
        ));
    }
    if report.hint.is_none() {
        report.hint = report.class.map(|c| c.hint().to_string());
    }
    report
}

/// One cycle's state while it runs; the steps are methods in `init`, `push` and `pull`.
struct Cycle<'a, T: Transport> {
    store: &'a mut Store,
    client: &'a mut Client<T>,
    cfg: &'a Config,
    clock: Arc<dyn Clock>,
    observe: &'a mut dyn FnMut(Progress),
    report: &'a mut Report,
    /// Records applied as they arrived, this cycle (added to the report by the
    /// integration step).
    integrated: integration::Tally,
}

impl<T: Transport> Cycle<'_, T> {
    fn step(&mut self, step: Step, done: u64, total: Option<u64>) {
        let t = self.client.traffic();
        (self.observe)(Progress {
            step,
            done,
            total,
            sent: t.bytes_sent,
            received: t.bytes_received,
        });
    }

    fn run(&mut self, probe: impl FnOnce() -> Result<(), TransportError>) -> Result<(), SyncError> {
        self.step(Step::Probe, 0, None);
        probe()?;
        self.step(Step::SiteInfo, 0, None);
        let site = self.site_info()?;
        self.note_epoch()?;
        let Some(state) = self.initialisation(&site)? else {
            return Ok(());
        };
        if state == InitState::Initialised {
            // What passed the rules unseen is queued before the push takes the
            // outbox (issue 26).
            self.check_shared()?;
            // §5 steps 3–4: drain the outbox, the final push, then always wait.
            self.push()?;
            self.ask_restore()?;
        }
        let initialised = state == InitState::Initialised;
        self.pull(pull::Source::Central, initialised)?;
        let ack_failed = self.pull(pull::Source::Queue, initialised)?;
        self.integrate(initialised)?;
        if let Some(e) = ack_failed {
            // §5 step 6: a failed ack ends the step; what arrived is integrated,
            // the entries come back next time and upsert harmlessly.
            return Err(e);
        }
        self.after_pull(state, &site)?;
        // The active store is known only once initialisation completes.
        self.refresh_hold()?;
        if verify::may_compare(self.store.init_state()?) {
            self.transfers()?;
            self.compare_with_central()?;
        }
        self.step(Step::Done, 0, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_follows_class() {
        let mut r = Report::default();
        assert_eq!(r.outcome(), Outcome::Ok);
        r.class = Some(Class::Integration);
        assert_eq!(r.outcome(), Outcome::OkWithIntegrationErrors);
        r.class = Some(Class::Offline);
        assert_eq!(r.outcome(), Outcome::Offline);
        r.class = Some(Class::Busy);
        assert_eq!(r.outcome(), Outcome::Transient);
        r.class = Some(Class::HardwareId);
        assert_eq!(r.outcome(), Outcome::NeedsAttention);
    }

    #[test]
    fn network_and_clock_errors_carry_their_own_hint() {
        let e = SyncError::from(TransportError::Intercepted("an HTML page".into()));
        assert_eq!(e.class(), Class::Offline);
        let hint = e.hint().unwrap();
        assert!(hint.starts_with("sign in to the Wi-Fi"), "{hint}");
        let e = SyncError::from(TransportError::unreachable("connection refused"));
        assert_eq!(e.hint(), None);
    }
}
