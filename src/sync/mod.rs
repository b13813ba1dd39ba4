//! One sync cycle (protocol §5): probe, site info, initialisation, push, wait,
//! central records, queue, integrate, transfer numbering. The only module that
//! knows both the store and the client.
//!
//! What must hold, at every line (think of a power cut between any two):
//! - an outbox entry leaves only in the transaction after the central confirmed it;
//! - the central cursor moves in the transaction that stores the records it covers;
//! - a queue entry is acknowledged only after its record is committed (FULL sync);
//! - nothing here reads the wall clock to decide anything.
//!
//! The cycle never prints: it reports progress to an observer and returns a
//! [`Report`] that the log, status file and LED render.

pub mod batch;
pub mod integration;
pub mod transfer;

use std::time::{Duration, Instant};

use rusqlite::params;

use crate::error::{Class, ProtocolError, StoreError, SyncError};
use crate::store::buffer;
use crate::store::outbox;
use crate::store::{key, Store};
use crate::wire::client::{Client, Traffic};
use crate::wire::protocol::SiteInfo;
use crate::wire::transport::Transport;
use batch::{Batch, Limits, Offer};
use integration::Site;

/// Tunables of one cycle; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Records per push (≤ 1024). Defaults to 1024.
    pub batch_records: usize,
    /// Largest push body. Defaults to 1 MiB; each cycle starts at 256 KiB (about
    /// 8 s over 2G) and adapts to the link within this bound.
    pub batch_bytes: usize,
    /// Target duration of one push request for adaptive sizing. Defaults to 8 s.
    pub target_request: Duration,
    /// `limit` of pulls. Defaults to 1000 (the reference central's maximum).
    pub pull_limit: u32,
    /// Longest wait for the central's integration after the final push. Defaults to 30 s (§5 step 4).
    pub integration_wait: Duration,
    /// Polling interval while the central initialises. Defaults to 15 s (§5 step 2).
    pub init_poll: Duration,
    /// Longest wait for an initialisation. Defaults to 30 min (§5 step 2).
    pub init_wait: Duration,
    /// Legacy change-log gaps skipped per cycle. Defaults to 10 000 (§5 step 5).
    pub max_gap_steps: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_records: batch::MAX_BATCH_RECORDS,
            batch_bytes: batch::DEFAULT_BATCH_BYTES,
            target_request: Duration::from_secs(8),
            pull_limit: 1000,
            integration_wait: Duration::from_secs(30),
            init_poll: Duration::from_secs(15),
            init_wait: Duration::from_secs(30 * 60),
            max_gap_steps: 10_000,
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
    Push,
    WaitIntegration,
    CentralRecords,
    Queue,
    Integrate,
    Transfers,
    Done,
}

/// Progress handed to the observer: the step, and "x of y" where known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub step: Step,
    pub done: u64,
    pub total: Option<u64>,
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
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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
    pub numbered: Vec<transfer::Numbered>,
    pub outbox_left: u64,
    pub initialised: bool,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Set when the cycle ended early.
    pub error: Option<String>,
    pub class: Option<Class>,
}

impl Report {
    pub fn outcome(&self) -> Outcome {
        match self.class {
            None => Outcome::Ok,
            Some(Class::Integration) => Outcome::OkWithIntegrationErrors,
            Some(Class::Offline) => Outcome::Offline,
            Some(c) if c.is_transient() => Outcome::Transient,
            Some(_) => Outcome::NeedsAttention,
        }
    }
}

/// Local initialisation state (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    Uninitialised,
    Requested,
    Initialised,
}

impl InitState {
    pub fn load(store: &Store) -> Result<InitState, StoreError> {
        Ok(match store.setting(key::INIT_STATE)?.as_deref() {
            Some("initialised") => InitState::Initialised,
            Some("requested") => InitState::Requested,
            _ => InitState::Uninitialised,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            InitState::Uninitialised => "uninitialised",
            InitState::Requested => "requested",
            InitState::Initialised => "initialised",
        }
    }
}

/// What the initialisation step does next, from local state and the central's
/// `initialisationStatus` (§5 step 2). Pure, so it is tested by a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitAction {
    /// Already initialised: sync normally.
    Sync,
    /// Ask the central to build our queue.
    Initialise,
    /// The central is building it: wait.
    Poll,
    /// Built: pull everything (no pushes yet).
    Pull,
    /// The central asks for re-initialisation of an initialised site: a person decides.
    Attention,
}

pub fn init_action(local: InitState, central: &str) -> InitAction {
    match (local, central) {
        (InitState::Initialised, "new") => InitAction::Attention,
        (InitState::Initialised, _) => InitAction::Sync,
        (_, "started") => InitAction::Poll,
        (InitState::Requested, "completed") => InitAction::Pull,
        (InitState::Uninitialised, _) | (InitState::Requested, _) => InitAction::Initialise,
    }
}

/// Runs one cycle. Never panics on what the central sends; every early end is in
/// the report's `error` and `class`.
pub fn run<T: Transport>(
    store: &mut Store,
    client: &mut Client<T>,
    cfg: &Config,
    probe: impl FnOnce() -> Result<(), crate::error::TransportError>,
    observe: &mut dyn FnMut(Progress),
) -> Report {
    let mut report = Report::default();
    let result = Cycle {
        store,
        client,
        cfg,
        observe,
        report: &mut report,
    }
    .run(probe);
    if let Err(e) = result {
        report.class = Some(e.class());
        report.error = Some(e.to_string());
    }
    let traffic: Traffic = client.traffic;
    report.requests = traffic.requests;
    report.bytes_sent = traffic.bytes_sent;
    report.bytes_received = traffic.bytes_received;
    report.outbox_left = outbox::pending_count(store.conn()).unwrap_or(0);
    report.initialised = InitState::load(store)
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
    report
}

struct Cycle<'a, T: Transport> {
    store: &'a mut Store,
    client: &'a mut Client<T>,
    cfg: &'a Config,
    observe: &'a mut dyn FnMut(Progress),
    report: &'a mut Report,
}

impl<T: Transport> Cycle<'_, T> {
    fn step(&mut self, step: Step, done: u64, total: Option<u64>) {
        (self.observe)(Progress { step, done, total });
    }

    fn run(
        &mut self,
        probe: impl FnOnce() -> Result<(), crate::error::TransportError>,
    ) -> Result<(), SyncError> {
        self.step(Step::Probe, 0, None);
        probe()?;

        self.step(Step::SiteInfo, 0, None);
        let site = match self.client.site() {
            Err(SyncError::Protocol(ProtocolError::Server { code, .. }))
                if code == crate::wire::protocol::code::SITE_HAS_NO_STORE =>
            {
                return Err(self.store_moved_away());
            }
            other => other?,
        };
        self.check_identity(&site)?;

        let mut state = InitState::load(self.store)?;
        match init_action(state, &site.initialisation_status) {
            InitAction::Attention => {
                return Err(SyncError::Attention(
                    Class::Site,
                    "the central asks to re-initialise this site; local data is kept — call support before \
                     re-initialising (it replaces this device's copy)"
                        .into(),
                ))
            }
            InitAction::Sync => {}
            InitAction::Pull => {}
            InitAction::Initialise | InitAction::Poll => {
                if !self.initialise(init_action(state, &site.initialisation_status))? {
                    return Ok(());
                }
                state = InitState::Requested;
            }
        }

        let mut waited = true;
        if state == InitState::Initialised {
            waited = self.push()?;
        }
        match self.pull_central() {
            // The central may still be integrating a push staged by an earlier,
            // interrupted cycle: wait for it this once, then pull.
            Err(e) if e.class() == Class::Busy && !waited => {
                self.wait_integration()?;
                self.pull_central()?;
            }
            other => other?,
        }
        self.pull_queue()?;
        self.integrate(state == InitState::Initialised)?;
        if state == InitState::Requested {
            self.finish_initialisation(&site)?;
        } else {
            self.check_active_store(&site)?;
        }
        if InitState::load(self.store)? == InitState::Initialised {
            self.transfers()?;
        }
        self.step(Step::Done, 0, None);
        Ok(())
    }

    /// §5 step 1: the central must be the one this site knows.
    fn check_identity(&mut self, site: &SiteInfo) -> Result<(), SyncError> {
        if site.is_om_supply_central_server {
            return Err(SyncError::Attention(
                Class::Site,
                "the server says it is an Open mSupply central (v6); fieldsync speaks v5: check the central URL".into(),
            ));
        }
        let stored_uuid = self.store.setting(key::SITE_UUID)?;
        let stored_id = self.store.setting(key::SITE_ID)?;
        match (stored_uuid, stored_id) {
            (Some(u), Some(i)) if u != site.id || i != site.site_id.to_string() => {
                Err(SyncError::Attention(
                    Class::Site,
                    format!(
                        "the central reports site {} (id {}), but this device belongs to site id {i}; \
                         local data untouched — check the central URL and site name",
                        site.name, site.site_id
                    ),
                ))
            }
            (Some(_), Some(_)) => Ok(()),
            _ => {
                let tx = self.store.tx()?;
                crate::store::set_setting(&tx, key::SITE_UUID, &site.id)?;
                crate::store::set_setting(&tx, key::SITE_ID, &site.site_id.to_string())?;
                crate::store::set_setting(&tx, key::CENTRAL_SITE_ID, &site.m_supply_central_site_id.to_string())?;
                tx.commit().map_err(|e| StoreError::sqlite("saving site identity", e))?;
                Ok(())
            }
        }
    }

    /// §5 step 2. Returns whether the cycle may go on to pull.
    fn initialise(&mut self, action: InitAction) -> Result<bool, SyncError> {
        self.step(Step::Initialise, 0, None);
        if action == InitAction::Initialise {
            match self.client.initialise() {
                Ok(r) => {
                    self.store
                        .set_setting(key::INIT_STATE, InitState::Requested.as_str())?;
                    log::info!(
                        "initialisation: the central queued {} records for this site",
                        r.queue_length
                    );
                    return Ok(true);
                }
                // The central may still be building: timeout, cut link, 5xx, busy → poll.
                Err(e)
                    if e.class().is_transient()
                        || matches!(e.class(), Class::Site if is_5xx(&e)) =>
                {
                    log::info!(
                        "initialisation request did not complete ({e}); waiting for the central"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let started = Instant::now();
        let mut polls = 0;
        loop {
            let status = self.client.site_status()?;
            if status.code == "idle" {
                break;
            }
            if started.elapsed() > self.cfg.init_wait {
                return Err(SyncError::Protocol(ProtocolError::Server {
                    status: 200,
                    code: status.code,
                    message: "initialisation still running; the next sync continues".into(),
                    class: Class::Transient,
                }));
            }
            polls += 1;
            // Progress while the central builds our queue (status file, watchdog).
            self.step(Step::Initialise, polls, None);
            std::thread::sleep(self.cfg.init_poll);
        }
        let site = self.client.site()?;
        if site.initialisation_status == "completed" {
            self.store
                .set_setting(key::INIT_STATE, InitState::Requested.as_str())?;
            Ok(true)
        } else {
            Err(SyncError::Protocol(ProtocolError::Server {
                status: 200,
                code: format!("initialisation_{}", site.initialisation_status),
                message: "the central has not completed this site's initialisation".into(),
                class: Class::Transient,
            }))
        }
    }

    /// §5 step 3–4: drain the outbox in bounded batches, then the final empty push.
    /// Returns whether it waited for the central's integration (it does when this
    /// cycle sent or set aside records; an idle cycle saves that round trip).
    fn push(&mut self) -> Result<bool, SyncError> {
        // Start at a 2G-sized body; adapt_bytes moves it towards what the link
        // carries in the target time, within [MIN_BATCH_BYTES, batch_bytes].
        let mut budget = batch::START_BATCH_BYTES.min(self.cfg.batch_bytes);
        let sent_before = self.report.pushed + self.report.rejected;
        loop {
            let total = outbox::pending_count(self.store.conn())?;
            self.step(
                Step::Push,
                self.report.pushed,
                Some(self.report.pushed + total),
            );
            let mut b = Batch::new(total);
            let limits = Limits {
                max_records: self.cfg.batch_records,
                max_bytes: budget,
            };
            let mut too_large: Vec<(String, String, usize)> = Vec::new();
            outbox::for_each_pending(
                self.store.conn(),
                limits.max_records.clamp(1, batch::MAX_BATCH_RECORDS) + 1,
                |e| match b.offer(&e, limits) {
                    Offer::Added => true,
                    Offer::Full => false,
                    Offer::TooLarge(n) => {
                        too_large.push((e.table, e.id, n));
                        true
                    }
                },
            )?;
            for (t, id, n) in &too_large {
                log::warn!("{t} {id} is {n} bytes, over the send limit; set aside (see `fieldsync queue --rejected`)");
                outbox::reject(self.store.conn(), t, id, &format!("too_large: {n} bytes"))?;
                self.report.too_large += 1;
            }
            if b.is_empty() && total > too_large.len() as u64 {
                continue; // only oversized records were in the way; read again
            }
            let final_push = b.is_empty();
            let (body, sent) = b.finish();
            let started = Instant::now();
            match self.client.push(&body) {
                Ok(started_integration) => {
                    if final_push {
                        if !started_integration {
                            return Err(SyncError::Protocol(ProtocolError::Violation(
                                "integration not started: the central answered false to the final push".into(),
                            )));
                        }
                        break;
                    }
                    let tx = self.store.tx()?;
                    outbox::mark_sent(&tx, &sent)?;
                    tx.commit()
                        .map_err(|e| StoreError::sqlite("confirming pushed records", e))?;
                    self.report.pushed += sent.len() as u64;
                    self.report.push_batches += 1;
                    budget = batch::adapt_bytes(
                        body.len(),
                        started.elapsed().as_secs_f64(),
                        self.cfg.target_request.as_secs_f64(),
                        self.cfg.batch_bytes,
                    );
                }
                Err(SyncError::Protocol(ProtocolError::Rejected { records, code, .. })) => {
                    // §7.2: listed entries are set aside, the rest is re-sent.
                    let tx = self.store.tx()?;
                    let mut matched = 0;
                    for r in &records {
                        if outbox::reject(
                            &tx,
                            &r.table_name,
                            &r.record_id,
                            &format!("{code}: {}", r.reason),
                        )? {
                            log::warn!(
                                "central refused {} {} ({}); set aside",
                                r.table_name,
                                r.record_id,
                                r.reason
                            );
                            matched += 1;
                        }
                    }
                    tx.commit()
                        .map_err(|e| StoreError::sqlite("setting refused records aside", e))?;
                    if matched == 0 {
                        return Err(SyncError::Protocol(ProtocolError::Violation(format!(
                            "the central refused the push ({code}) but listed no record of this batch"
                        ))));
                    }
                    self.report.rejected += matched;
                }
                Err(e) => return Err(e),
            }
        }
        // Everything confirmed goes in one transaction (see outbox::delete_sent).
        let tx = self.store.tx()?;
        outbox::delete_sent(&tx)?;
        tx.commit()
            .map_err(|e| StoreError::sqlite("clearing pushed records", e))?;
        if self.report.pushed + self.report.rejected == sent_before {
            return Ok(false);
        }
        self.wait_integration()?;
        Ok(true)
    }

    fn wait_integration(&mut self) -> Result<(), SyncError> {
        self.step(Step::WaitIntegration, 0, None);
        let started = Instant::now();
        // First look soon (the central usually finishes in milliseconds), then
        // every second as §5 step 4 asks.
        let mut delay = Duration::from_millis(20);
        loop {
            let status = self.client.site_status()?;
            if status.code == "idle" {
                return Ok(());
            }
            if started.elapsed() >= self.cfg.integration_wait {
                return Err(SyncError::Protocol(ProtocolError::Server {
                    status: 200,
                    code: status.code,
                    message: "the central is still integrating our push; the next sync continues"
                        .into(),
                    class: Class::Transient,
                }));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// §5 step 5: central data by cursor; the cursor moves in the transaction that
    /// stores the records.
    fn pull_central(&mut self) -> Result<(), SyncError> {
        let mut gaps = 0;
        loop {
            let cursor: u64 = self
                .store
                .setting(key::CURSOR)?
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            self.step(Step::CentralRecords, self.report.pulled_central, None);
            let tx = self.store.tx()?;
            let mut last = cursor;
            let (mut count, limit) = (0u32, self.cfg.pull_limit);
            let mut violation: Option<String> = None;
            let mut store_err: Option<StoreError> = None;
            let header = self
                .client
                .central_records(cursor, self.cfg.pull_limit, &mut |rec| {
                    if count >= limit {
                        let m = format!("more records than the limit of {limit} asked for");
                        violation = Some(m.clone());
                        return Err(m);
                    }
                    count += 1;
                    let id = rec
                        .id
                        .ok_or_else(|| "central record without \"ID\"".to_string())?;
                    if id <= last {
                        let m = format!(
                            "central record IDs must ascend above the cursor ({id} after {last})"
                        );
                        violation = Some(m.clone());
                        return Err(m);
                    }
                    last = id;
                    buffer::put(&tx, &rec).map_err(|e| {
                        let m = e.to_string();
                        store_err = Some(e);
                        m
                    })
                });
            if let Some(e) = store_err {
                return Err(e.into());
            }
            if let Some(v) = violation {
                return Err(ProtocolError::Violation(v).into());
            }
            let header = header?;
            let max = header
                .max_cursor
                .ok_or_else(|| ProtocolError::Violation("no maxCursor".into()))?;
            if header.records > 0 {
                crate::store::set_setting(&tx, key::CURSOR, &last.to_string())?;
                tx.commit()
                    .map_err(|e| StoreError::sqlite("storing central records", e))?;
                self.report.pulled_central += header.records;
            } else if max > cursor && gaps < self.cfg.max_gap_steps {
                // Legacy gap in the change log: step over it.
                crate::store::set_setting(&tx, key::CURSOR, &(cursor + 1).to_string())?;
                tx.commit()
                    .map_err(|e| StoreError::sqlite("storing the cursor", e))?;
                gaps += 1;
            } else {
                crate::store::set_setting(&tx, "central_max_cursor", &max.to_string())?;
                tx.commit()
                    .map_err(|e| StoreError::sqlite("storing the cursor", e))?;
                return Ok(());
            }
        }
    }

    /// §5 step 6: queued records, committed durably, then acknowledged.
    fn pull_queue(&mut self) -> Result<(), SyncError> {
        let mut previous: Vec<String> = Vec::new();
        loop {
            self.step(Step::Queue, self.report.pulled_queue, None);
            let tx = self.store.tx()?;
            let mut ids: Vec<String> = Vec::with_capacity(self.cfg.pull_limit as usize);
            let mut store_err: Option<StoreError> = None;
            let header = self.client.queued_records(self.cfg.pull_limit, &mut |rec| {
                let sid = rec
                    .sync_out_id
                    .clone()
                    .ok_or_else(|| "queued record without syncOutId".to_string())?;
                if ids.len() >= self.cfg.pull_limit as usize {
                    return Err(format!(
                        "more records than the limit of {} asked for",
                        self.cfg.pull_limit
                    ));
                }
                buffer::put(&tx, &rec).map_err(|e| {
                    let m = e.to_string();
                    store_err = Some(e);
                    m
                })?;
                ids.push(sid);
                Ok(())
            });
            if let Some(e) = store_err {
                return Err(e.into());
            }
            let header = header?;
            if header.records == 0 {
                return Ok(());
            }
            if header.queue_length.is_some_and(|q| q < header.records) {
                log::warn!(
                    "central said queueLength {} but sent {} records; continuing",
                    header.queue_length.unwrap_or(0),
                    header.records
                );
            }
            if !previous.is_empty() && ids.iter().all(|i| previous.contains(i)) {
                return Err(ProtocolError::Violation(
                    "the central sent acknowledged records again; the queue does not advance"
                        .into(),
                )
                .into());
            }
            tx.commit()
                .map_err(|e| StoreError::sqlite("storing queued records", e))?;
            self.report.pulled_queue += header.records;
            ids.sort_unstable();
            ids.dedup();
            // A failed ack ends the step; the entries come back and upsert harmlessly.
            self.client.acknowledge(&ids)?;
            previous = ids;
        }
    }

    fn integrate(&mut self, initialised: bool) -> Result<(), SyncError> {
        let pending = buffer::counts(self.store.conn())?;
        let total = pending.pending + pending.failed;
        self.step(Step::Integrate, 0, Some(total));
        let site = Site {
            active_store: self.store.active_store()?,
            initialised,
        };
        let observe = &mut *self.observe;
        let r = integration::integrate(self.store, &site, |done| {
            observe(Progress {
                step: Step::Integrate,
                done,
                total: Some(total),
            })
        })?;
        self.report.integrated += r.integrated;
        self.report.ignored += r.ignored;
        self.report.integration_failed = buffer::counts(self.store.conn())?.failed;
        Ok(())
    }

    /// §5 step 7: requested → initialised once everything is in and exactly one
    /// store is active on this site.
    fn finish_initialisation(&mut self, site: &SiteInfo) -> Result<(), SyncError> {
        let max: u64 = self
            .store
            .setting("central_max_cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let cursor: u64 = self
            .store
            .setting(key::CURSOR)?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if cursor < max {
            return Ok(()); // gaps left for the next cycle
        }
        let stores = active_stores(self.store, site.site_id)?;
        if stores.len() != 1 {
            return Err(SyncError::Attention(
                Class::Site,
                format!(
                    "the central lists {} active store(s) for this site; exactly one is needed — ask the \
                     administrator to make one store active on site {}",
                    stores.len(),
                    site.name
                ),
            ));
        }
        let tx = self.store.tx()?;
        crate::store::set_setting(&tx, key::ACTIVE_STORE, &stores[0])?;
        crate::store::set_setting(&tx, key::INIT_STATE, InitState::Initialised.as_str())?;
        tx.commit()
            .map_err(|e| StoreError::sqlite("completing initialisation", e))?;
        log::info!("initialisation complete: active store {}", stores[0]);
        Ok(())
    }

    /// The central says this site has no active store any more (moved to another
    /// site, seed: moving a store): local edits of its data stop until one is
    /// assigned again; the data stays.
    fn store_moved_away(&mut self) -> SyncError {
        let active = self.store.active_store().ok().flatten().unwrap_or_default();
        if !active.is_empty() {
            if let Err(e) = self.store.set_setting(key::ACTIVE_STORE, "") {
                return e.into();
            }
        }
        let which = if active.is_empty() {
            String::new()
        } else {
            format!(" (store {active} is no longer active on this site)")
        };
        SyncError::Attention(
            Class::Site,
            format!(
                "the central says this site has no active store{which}; its data here is now read-only — ask \
                 the administrator which site the store moved to"
            ),
        )
    }

    /// After initialisation: the central may move the active store off this site
    /// (seed: moving a store). Local edits of its data stop; a person is told.
    fn check_active_store(&mut self, site: &SiteInfo) -> Result<(), SyncError> {
        let Some(active) = self.store.active_store()? else {
            return Ok(());
        };
        let stores = active_stores(self.store, site.site_id)?;
        if active.is_empty() {
            // Assigned again after a move away: editing resumes.
            if let [only] = stores.as_slice() {
                self.store.set_setting(key::ACTIVE_STORE, only)?;
                log::info!("store {only} is active on this site again");
            }
            return Ok(());
        }
        // Only a store row that names another site is a move; a missing row is an
        // inconsistency to report, not a reason to stop local work.
        let moved = match self.store.get("store", &active)? {
            Some(row) => !stores.contains(&active) && row.get("sync_id_remote_site").is_some(),
            None => {
                log::warn!("this site holds no store row for its active store {active}");
                false
            }
        };
        if moved {
            // "" owns nothing: every store-data write is refused as another store's.
            self.store.set_setting(key::ACTIVE_STORE, "")?;
            return Err(SyncError::Attention(
                Class::Site,
                format!("store {active} is no longer active on this site; its data here is now read-only"),
            ));
        }
        Ok(())
    }

    fn transfers(&mut self) -> Result<(), SyncError> {
        let Some(active) = self.store.active_store()? else {
            return Ok(());
        };
        self.step(Step::Transfers, 0, None);
        let (numbered, unlinked) = transfer::number_all(self.store, &active)?;
        for n in &numbered {
            log::info!(
                "numbered received {} {} as {} (linked to {})",
                n.table,
                n.id,
                n.number,
                n.linked
            );
        }
        for u in &unlinked {
            log::warn!("{u} has no number and no link to an initiating record; left as it is");
        }
        let any = !numbered.is_empty();
        self.report.numbered.extend(numbered);
        if any {
            // §5 step 8: send the numbers now rather than next cycle.
            self.push()?;
        }
        Ok(())
    }
}

fn is_5xx(e: &SyncError) -> bool {
    matches!(e, SyncError::Protocol(ProtocolError::Server { status, .. }) if *status >= 500)
}

/// Stores whose `sync_id_remote_site` is this site (a number on the wire; a
/// string is tolerated).
fn active_stores(store: &Store, site_id: u32) -> Result<Vec<String>, StoreError> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT record_id FROM record WHERE table_name = 'store' \
             AND CAST(json_extract(data, '$.sync_id_remote_site') AS INTEGER) = ?1 ORDER BY record_id",
        )
        .map_err(|e| StoreError::sqlite("finding the active store", e))?;
    let rows = stmt
        .query_map(params![site_id], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("finding the active store", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| StoreError::sqlite("finding the active store", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_decisions() {
        use InitAction::*;
        use InitState::*;
        let table = [
            (Uninitialised, "new", Initialise),
            (Uninitialised, "error", Initialise),
            (Uninitialised, "completed", Initialise),
            (Uninitialised, "started", Poll),
            (Requested, "new", Initialise),
            (Requested, "error", Initialise),
            (Requested, "started", Poll),
            (Requested, "completed", Pull),
            (Initialised, "completed", Sync),
            (Initialised, "started", Sync),
            (Initialised, "new", Attention),
        ];
        for (local, central, want) in table {
            assert_eq!(init_action(local, central), want, "{local:?} + {central}");
        }
    }

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
}
