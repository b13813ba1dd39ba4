//! §5 steps 5–7: central records by cursor, the queue with acknowledgements, and
//! integration of what arrived. Both sources go through one page loop: ask for a
//! page, read it whole off the link ([`crate::wire::page`]), then — and only then
//! — take the store's write lock, apply its records and move the source on.
//!
//! What must hold: the cursor moves in the transaction that stores the records it
//! covers; a queue entry is acknowledged only after the transaction holding its
//! record committed; a record that cannot be read is set aside by its ids
//! (recorded in the buffer, the cursor moved past it or its entry acknowledged)
//! so it never stops the pull for good; no write transaction is open while a
//! request is on the link. Pages adapt to the link (§9.3): the `limit` doubles
//! after a quick page, halves after a slow one or a timeout, and is kept for the
//! next cycle.

use std::time::Duration;

use crate::store::buffer::Incoming;
use crate::store::{StoreError, Tx};
use crate::wire::decode::PullHeader;
use crate::wire::page::{Page, Unreadable};
use crate::wire::protocol::{Action, Merge, SyncRecord};
use crate::wire::transport::Transport;
use crate::wire::{TransportError, WireError};

use super::integration::{self, Site};
use super::{Cycle, Progress, Step, SyncError};

/// Bounds of the adaptive page size (§9.3): 20 is the seed's "sync request
/// size" default, 1000 the reference central's maximum.
pub const MIN_PULL_LIMIT: u32 = 20;
pub const MAX_PULL_LIMIT: u32 = 1000;
/// First page size of a site that has never pulled. Defaults to 100 (§9.3).
pub const START_PULL_LIMIT: u32 = 100;
/// A page quicker than this doubles the limit; slower than `SLOW_PAGE` halves it.
pub const QUICK_PAGE: Duration = Duration::from_secs(5);
pub const SLOW_PAGE: Duration = Duration::from_secs(20);
/// Records between two progress reports while a page is applied.
const PROGRESS_EVERY: u64 = 100;

/// The next page size after a page that took `took` (`None`: it timed out). Pure.
pub fn next_limit(current: u32, took: Option<Duration>, (min, max): (u32, u32)) -> u32 {
    let next = match took {
        Some(t) if t < QUICK_PAGE => current.saturating_mul(2),
        Some(t) if t <= SLOW_PAGE => current,
        _ => current / 2,
    };
    next.clamp(min, max)
}

/// Where a pull reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The central-data change log, by cursor (§5 step 5).
    Central,
    /// This site's queue, acknowledged page by page (§5 step 6).
    Queue,
}

impl Source {
    fn step(self) -> Step {
        match self {
            Source::Central => Step::CentralRecords,
            Source::Queue => Step::Queue,
        }
    }
}

/// One page as applied: how many records, and what moves the source on.
#[derive(Default)]
pub(super) struct Applied {
    pub records: u64,
    /// Central: the highest `ID` applied (the new cursor).
    pub last_id: Option<u64>,
    /// Queue: the `syncOutId`s to acknowledge.
    pub sync_ids: Vec<String>,
    /// Records set aside because they could not be read.
    pub unreadable: u64,
}

/// What the loop does after a page.
enum Next {
    More,
    Done,
}

impl<T: Transport> Cycle<'_, T> {
    fn pull_limit(&self) -> Result<u32, StoreError> {
        let (min, max) = self.cfg.pull_limits;
        Ok(self
            .store
            .pull_limit()?
            .map_or(START_PULL_LIMIT, |n| n.min(u64::from(u32::MAX)) as u32)
            .clamp(min, max))
    }

    /// §5 steps 5 and 6: pages from `source` until it has nothing more. A failed
    /// acknowledgement ends the queue step but is returned, not raised: what
    /// arrived is integrated first (§5 step 6), and the entries come back next
    /// time and upsert harmlessly.
    pub(super) fn pull(
        &mut self,
        source: Source,
        initialised: bool,
    ) -> Result<Option<SyncError>, SyncError> {
        let site = Site {
            active_store: self.store.active_store()?,
            initialised,
        };
        let mut gaps = 0u64;
        let mut warned_long = false;
        let mut previous: Vec<String> = Vec::new();
        // How many records this pull will have brought, as the central's
        // headers tell after each page (`maxCursor` less the cursor: an upper
        // bound, hidden change-log entries included; `queueLength`).
        let mut total: Option<u64> = None;
        loop {
            self.step(source.step(), self.pulled(source), total);
            let limit = self.pull_limit()?;
            let cursor = self.store.cursor()?;
            let started = self.clock.now();
            let fetched = match source {
                Source::Central => self.client.central_records(cursor, limit),
                Source::Queue => self.client.queued_records(limit),
            };
            let took = self.clock.now() - started;
            let page = match fetched {
                Ok(p) => p,
                // A page over the size cap: ask again for half as many records.
                Err(WireError::Transport(TransportError::TooLarge(_)))
                    if next_limit(limit, None, self.cfg.pull_limits) < limit =>
                {
                    self.save_limit(limit, None)?;
                    continue;
                }
                Err(e) => {
                    let timed_out = e.class() == crate::error::Class::Transient;
                    self.save_limit(limit, if timed_out { None } else { Some(took) })?;
                    return Err(e.into());
                }
            };
            self.save_limit(limit, Some(took))?;
            let (applied, header) = self.apply_page(source, page, &site, cursor, total)?;
            if applied.records > u64::from(limit) && !warned_long {
                log::warn!(
                    "the central sent {} {} for a limit of {limit}; accepted (§9.2)",
                    applied.records,
                    match source {
                        Source::Central => "records",
                        Source::Queue => "queued records",
                    }
                );
                warned_long = true;
            }
            self.report.unreadable += applied.unreadable;
            let after = self.pulled(source) + applied.records;
            total = match source {
                Source::Central => header
                    .max_cursor
                    .zip(applied.last_id)
                    .map(|(max, at)| after + max.saturating_sub(at)),
                Source::Queue => header
                    .queue_length
                    .map(|q| after + q.saturating_sub(header.records)),
            }
            .or(total)
            .map(|t| t.max(after));
            let next = match source {
                Source::Central => {
                    self.report.pulled_central += applied.records;
                    self.central_moved(cursor, &applied, header.max_cursor, &mut gaps)?
                }
                Source::Queue => {
                    if header.queue_length.is_some_and(|q| q < header.records) {
                        log::warn!(
                            "central said queueLength {} but sent {} records; continuing",
                            header.queue_length.unwrap_or(0),
                            header.records
                        );
                    }
                    self.report.pulled_queue += applied.sync_ids.len() as u64;
                    match self.acknowledge(applied.sync_ids, &mut previous)? {
                        Ok(next) => next,
                        Err(ack_failed) => return Ok(Some(ack_failed)),
                    }
                }
            };
            if let Next::Done = next {
                return Ok(None);
            }
        }
    }

    fn pulled(&self, source: Source) -> u64 {
        match source {
            Source::Central => self.report.pulled_central,
            Source::Queue => self.report.pulled_queue,
        }
    }

    /// Applies one page in one write transaction (see [`apply_records`]) and,
    /// for the change log, moves the cursor past it in the same commit.
    fn apply_page(
        &mut self,
        source: Source,
        page: Page,
        site: &Site,
        cursor: u64,
        total: Option<u64>,
    ) -> Result<(Applied, PullHeader), SyncError> {
        let pulled_before = self.pulled(source);
        let client = &*self.client;
        let observe = &mut *self.observe;
        let tx = self.store.receiving()?;
        let mut progress = |done: u64| {
            // The page was read whole before it is applied (wire::page): its
            // bytes are in these counts.
            let traffic = client.traffic();
            observe(Progress {
                step: source.step(),
                done: pulled_before + done,
                total,
                sent: traffic.bytes_sent,
                received: traffic.bytes_received,
            })
        };
        let (applied, header) = apply_records(
            &tx,
            source,
            Carrier::Link,
            site,
            cursor,
            &mut self.integrated,
            &mut progress,
            |each| page.decode(each),
        )?;
        if source == Source::Central {
            if let Some(id) = applied.last_id {
                tx.set_cursor(id)?;
                crash_point!("central-page-buffered");
            }
        } else if !applied.sync_ids.is_empty() {
            crash_point!("queue-page-buffered");
        }
        tx.commit()?;
        match source {
            Source::Central if applied.last_id.is_some() => {
                crash_point!("central-page-committed");
                // The page's records were applied in that commit.
                crash_point!("integration-committed");
            }
            Source::Queue if !applied.sync_ids.is_empty() => {
                crash_point!("queue-page-committed");
            }
            _ => {}
        }
        Ok((applied, header))
    }

    /// After a change-log page: more pages, a legacy gap to step over, or done.
    fn central_moved(
        &mut self,
        cursor: u64,
        applied: &Applied,
        max_cursor: Option<u64>,
        gaps: &mut u64,
    ) -> Result<Next, SyncError> {
        if applied.last_id.is_some() {
            return Ok(Next::More);
        }
        let tx = self.store.tx()?;
        if max_cursor.is_some_and(|max| max > cursor) && *gaps < self.cfg.max_gap_steps {
            // Legacy gap in the change log: step over it.
            tx.set_cursor(cursor + 1)?;
            tx.commit()?;
            *gaps += 1;
            return Ok(Next::More);
        }
        // `maxCursor` is never below the cursor asked from (§4); this
        // project's central says where its log really ends [PC].
        let end = self.client.log_end().or(max_cursor);
        if let Some(max) = end.filter(|end| *end < cursor) {
            // The change log ends before the cursor: the central went back
            // in time (restored from an older copy).
            drop(tx);
            self.central_went_back(cursor, max)?;
            let tx = self.store.tx()?;
            tx.set_cursor(max)?;
            tx.set_max_cursor(max)?;
            tx.commit()?;
            return Ok(Next::Done);
        }
        // Done. An unknown maxCursor means "where we are" (§9.2).
        tx.set_max_cursor(max_cursor.unwrap_or(cursor).max(cursor))?;
        tx.commit()?;
        Ok(Next::Done)
    }

    /// After a queue page committed: acknowledge its entries (§5 step 6). `Err`
    /// inside: the acknowledgement failed.
    fn acknowledge(
        &mut self,
        mut ids: Vec<String>,
        previous: &mut Vec<String>,
    ) -> Result<Result<Next, SyncError>, SyncError> {
        if ids.is_empty() {
            return Ok(Ok(Next::Done));
        }
        if !previous.is_empty() && ids.iter().all(|i| previous.contains(i)) {
            return Err(SyncError::violation(
                "the central sent acknowledged records again; the queue does not advance",
            ));
        }
        ids.sort_unstable();
        ids.dedup();
        if let Err(e) = self.client.acknowledge(&ids) {
            log::warn!(
                "acknowledging {} record(s) failed ({e}); they come again next time",
                ids.len()
            );
            return Ok(Err(e.into()));
        }
        crash_point!("ack-answered");
        self.store.queue_entries_acknowledged(&ids)?;
        *previous = ids;
        Ok(Ok(Next::More))
    }

    /// Learns from how long a page took (`None`: it timed out or was too
    /// large); kept as local data for the next cycle.
    fn save_limit(&mut self, limit: u32, took: Option<Duration>) -> Result<(), StoreError> {
        let next = next_limit(limit, took, self.cfg.pull_limits);
        if next != limit {
            log::debug!("pull page size {limit} → {next}");
            let tx = self.store.tx()?;
            tx.set_pull_limit(next)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// §5 step 7 / §7.4: one integration pass over the buffer (what could not be
    /// applied as it arrived).
    pub(super) fn integrate(&mut self, initialised: bool) -> Result<(), SyncError> {
        let direct = std::mem::take(&mut self.integrated);
        self.report.integrated += direct.integrated;
        self.report.ignored += direct.ignored;
        let waiting = self.store.buffer_counts()?;
        let total = waiting.pending + waiting.failed;
        self.step(Step::Integrate, 0, Some(total));
        let site = Site {
            active_store: self.store.active_store()?,
            initialised,
        };
        let t = self.client.traffic();
        let observe = &mut *self.observe;
        let r = integration::integrate(self.store, &site, |done| {
            observe(Progress {
                step: Step::Integrate,
                done,
                total: Some(total),
                sent: t.bytes_sent,
                received: t.bytes_received,
            })
        })?;
        self.report.integrated += r.integrated;
        self.report.ignored += r.ignored;
        self.report.integration_failed = self.store.buffer_counts()?.failed;
        self.refresh_hold()
    }

    /// §9.7: whether the active dispensary store keeps its transactions here, from
    /// the store row and preferences as they are now.
    pub(super) fn refresh_hold(&mut self) -> Result<(), SyncError> {
        use crate::store::Hold;
        match self.store.refresh_hold()? {
            Some(Hold::Holding) => log::info!(
                "the dispensary store's transactions are kept on this site (its \"include transactions in sync\" preference is off)"
            ),
            Some(Hold::Released(n)) => log::info!(
                "the dispensary store's transactions sync again: {n} held record(s) queued"
            ),
            None => {}
        }
        Ok(())
    }
}

/// How a page came: over the link, or on a USB stick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carrier {
    Link,
    /// A bundle's page: change-log records this site holds already are skipped
    /// (a bundle may start before the site's cursor), and the queue entries
    /// applied are noted for the next bundle to acknowledge.
    Bundle,
}

/// Applies the records `decode` hands over in `tx`: each through
/// [`integration::receive`], the change log's IDs checked to ascend past
/// `cursor`, a record that cannot be read set aside by its ids (in the change
/// log by its `ID`, the cursor moving past it; in the queue by its `syncOutId`,
/// acknowledged with the rest). The caller moves its source on and commits.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_records(
    tx: &Tx,
    source: Source,
    carrier: Carrier,
    site: &Site,
    cursor: u64,
    tally: &mut integration::Tally,
    progress: &mut dyn FnMut(u64),
    decode: impl FnOnce(
        &mut dyn FnMut(SyncRecord) -> Result<(), SyncError>,
    ) -> Result<PullHeader, SyncError>,
) -> Result<(Applied, PullHeader), SyncError> {
    let mut applied = Applied::default();
    let mut last = cursor;
    let result = decode(&mut |rec: SyncRecord| {
        match source {
            Source::Central => {
                let id = rec
                    .id
                    .ok_or_else(|| SyncError::violation("a central record without \"ID\""))?;
                if id <= last {
                    if carrier == Carrier::Bundle {
                        return Ok(()); // held already
                    }
                    return Err(SyncError::violation(format!(
                        "central record IDs must ascend above the cursor ({id} after {last})"
                    )));
                }
                last = id;
                applied.last_id = Some(id);
            }
            Source::Queue => {
                let sid = rec
                    .sync_out_id
                    .clone()
                    .ok_or_else(|| SyncError::violation("a queued record without syncOutId"))?;
                if carrier == Carrier::Bundle {
                    tx.applied_from_bundle(&sid)?;
                }
                applied.sync_ids.push(sid);
            }
        }
        integration::receive(tx, site, &incoming(&rec), tally)?;
        applied.records += 1;
        if applied.records.is_multiple_of(PROGRESS_EVERY) {
            progress(applied.records);
        }
        Ok(())
    });
    let header = match result {
        Ok(h) => h,
        Err(SyncError::Unreadable(u)) => {
            let settled = match source {
                Source::Central => u.record.id.filter(|id| *id > last).map(|id| {
                    applied.last_id = Some(id);
                }),
                Source::Queue => u
                    .record
                    .sync_out_id
                    .clone()
                    .map(|sid| applied.sync_ids.push(sid)),
            };
            if settled.is_none() {
                return Err(SyncError::Unreadable(u));
            }
            set_aside_received(tx, &u)?;
            applied.unreadable += 1;
            PullHeader::default()
        }
        Err(e) => return Err(e), // nothing of this page is kept
    };
    Ok((applied, header))
}

/// Records a received record that could not be read, so status shows it.
fn set_aside_received(tx: &Tx, u: &Unreadable) -> Result<(), StoreError> {
    let table = u.record.table_name.clone().unwrap_or_default();
    let id = u
        .record
        .record_id
        .clone()
        .or_else(|| {
            u.record
                .sync_out_id
                .clone()
                .map(|s| format!("syncOutId {s}"))
        })
        .or_else(|| u.record.id.map(|i| format!("ID {i}")))
        .unwrap_or_default();
    log::warn!(
        "received {table} {id} cannot be read ({}); set aside",
        u.why
    );
    tx.buffer(&Incoming::Invalid {
        table: &table,
        id: &id,
        why: format!("set aside, cannot be read: {}", u.why),
    })
}

/// What a received envelope asks for (§3): actions in any case, `insert` is an
/// upsert, a delete's `recordData` may be anything, a merge names both ids.
pub fn incoming(rec: &SyncRecord) -> Incoming<'_> {
    let (table, id) = (rec.table_name.as_str(), rec.record_id.as_str());
    let invalid = |why: String| Incoming::Invalid { table, id, why };
    if table.is_empty() || id.is_empty() {
        return invalid("record without tableName or recordId".into());
    }
    match Action::parse(&rec.action) {
        None => invalid(format!(
            "unknown action {:?}",
            rec.action.chars().take(40).collect::<String>()
        )),
        Some(Action::Delete) => Incoming::Delete { table, id },
        Some(Action::Upsert) => match rec.data_text() {
            Some(data) => Incoming::Upsert { table, id, data },
            None => invalid("upsert without recordData".into()),
        },
        Some(Action::Merge) => match rec.data_text().map(serde_json::from_str::<Merge>) {
            Some(Ok(m)) if !m.merge_id_to_keep.is_empty() && !m.merge_id_to_delete.is_empty() => {
                // Keyed by both ids, so a merge never overwrites an upsert (§7.4).
                Incoming::Merge {
                    table,
                    keep: m.merge_id_to_keep,
                    drop: m.merge_id_to_delete,
                }
            }
            _ => invalid("merge without mergeIdToKeep and mergeIdToDelete".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_follows_the_link() {
        let b = (MIN_PULL_LIMIT, MAX_PULL_LIMIT);
        let s = Duration::from_secs;
        assert_eq!(next_limit(100, Some(s(1)), b), 200, "quick page doubles");
        assert_eq!(next_limit(800, Some(s(1)), b), 1000, "within the maximum");
        assert_eq!(
            next_limit(100, Some(s(10)), b),
            100,
            "ordinary page keeps it"
        );
        assert_eq!(next_limit(100, Some(s(30)), b), 50, "slow page halves");
        assert_eq!(
            next_limit(30, None, b),
            20,
            "a timeout halves, within the minimum"
        );
    }
}
