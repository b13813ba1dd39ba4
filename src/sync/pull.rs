//! §5 steps 5–7: central records by cursor, the queue with acknowledgements, and
//! integration of what arrived.
//!
//! What must hold: the cursor moves in the transaction that stores the records it
//! covers; a queue entry is acknowledged only after the transaction holding its
//! record committed; a record that cannot be read is set aside by its ids (recorded
//! in the buffer, the cursor moved past it or its entry acknowledged) so it never
//! stops the pull for good. Pages adapt to the link (§9.3): the `limit` doubles
//! after a quick page, halves after a slow one or a timeout, and is kept for the
//! next cycle.

use std::time::Duration;

use crate::store::buffer::{self, Incoming};
use crate::store::{key, StoreError};
use crate::wire::client::Unreadable;
use crate::wire::protocol::{Action, Merge, SyncRecord};
use crate::wire::transport::Transport;

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

/// The next page size after a page that took `took` (`None`: it timed out). Pure.
pub fn next_limit(current: u32, took: Option<Duration>, (min, max): (u32, u32)) -> u32 {
    let next = match took {
        Some(t) if t < QUICK_PAGE => current.saturating_mul(2),
        Some(t) if t <= SLOW_PAGE => current,
        _ => current / 2,
    };
    next.clamp(min, max)
}

impl<T: Transport> Cycle<'_, T> {
    fn pull_limit(&self) -> Result<u32, StoreError> {
        let (min, max) = self.cfg.pull_limits;
        Ok(self
            .store
            .number(key::PULL_LIMIT)?
            .map_or(START_PULL_LIMIT, |n| n.min(u64::from(u32::MAX)) as u32)
            .clamp(min, max))
    }

    /// §5 step 5: central data by cursor.
    pub(super) fn pull_central(&mut self, initialised: bool) -> Result<(), SyncError> {
        let mut gaps = 0;
        let mut warned_long = false;
        let bounds = self.cfg.pull_limits;
        let site = self.integration_site(initialised)?;
        loop {
            let cursor = self.store.number(key::CURSOR)?.unwrap_or(0);
            let limit = self.pull_limit()?;
            self.step(Step::CentralRecords, self.report.pulled_central, None);
            let pulled_before = self.report.pulled_central;
            let (sent, received_before) = (
                self.client.traffic.bytes_sent,
                self.client.traffic.bytes_received,
            );
            let live = self.client.in_flight();
            let observe = &mut *self.observe;
            let integrated = &mut self.integrated;
            let tx = self.store.tx_unruled_lazily()?;
            let (mut last, mut count) = (cursor, 0u64);
            let started = self.clock.now();
            let result = {
                let mut each = |rec: SyncRecord| -> Result<(), SyncError> {
                    let id = rec
                        .id
                        .ok_or_else(|| SyncError::violation("a central record without \"ID\""))?;
                    if id <= last {
                        return Err(SyncError::violation(format!(
                            "central record IDs must ascend above the cursor ({id} after {last})"
                        )));
                    }
                    last = id;
                    tx.unrule()?;
                    integration::receive(&tx, &site, &incoming(&rec), integrated)?;
                    count += 1;
                    if count.is_multiple_of(100) {
                        observe(Progress {
                            step: Step::CentralRecords,
                            done: pulled_before + count,
                            total: None,
                            sent,
                            received: received_before + live.get(),
                        });
                    }
                    Ok(())
                };
                self.client.central_records(cursor, limit, &mut each)
            };
            let took = page_time(&result, self.clock.now() - started);
            let header = match result {
                Ok(h) => h,
                // A record that cannot be read: set aside by its ID, which moves the
                // cursor past it; the next request starts after it.
                Err(SyncError::Unreadable(u)) if u.record.id.is_some_and(|id| id > last) => {
                    let id = u.record.id.expect("checked");
                    set_aside_received(&tx, &u)?;
                    save_limit(&tx, limit, took, bounds)?;
                    crate::store::set_setting(&tx, key::CURSOR, &id.to_string())?;
                    tx.commit()?;
                    self.report.pulled_central += count;
                    self.report.unreadable += 1;
                    continue;
                }
                Err(e) => {
                    drop(tx); // this page's records come again next time
                    save_limit(self.store.conn(), limit, took, bounds)?;
                    return Err(e);
                }
            };
            if count > u64::from(limit) && !warned_long {
                log::warn!(
                    "the central sent {count} records for a limit of {limit}; accepted (§9.2)"
                );
                warned_long = true;
            }
            save_limit(&tx, limit, took, bounds)?;
            if count > 0 {
                crate::store::set_setting(&tx, key::CURSOR, &last.to_string())?;
                crash_point!("central-page-buffered");
                tx.commit()?;
                crash_point!("central-page-committed");
                // The page's records were applied in that commit.
                crash_point!("integration-committed");
                self.report.pulled_central += count;
            } else if header.max_cursor.is_some_and(|max| max > cursor)
                && gaps < self.cfg.max_gap_steps
            {
                // Legacy gap in the change log: step over it.
                crate::store::set_setting(&tx, key::CURSOR, &(cursor + 1).to_string())?;
                tx.commit()?;
                gaps += 1;
            } else {
                // Done. An unknown maxCursor means "where we are" (§9.2).
                let max = header.max_cursor.unwrap_or(cursor).max(cursor);
                crate::store::set_setting(&tx, key::CENTRAL_MAX_CURSOR, &max.to_string())?;
                tx.commit()?;
                return Ok(());
            }
        }
    }

    /// §5 step 6: queued records, committed durably, then acknowledged. Returns
    /// the error of a failed acknowledgement, which ends this step but not the
    /// integration of what arrived.
    pub(super) fn pull_queue(&mut self, initialised: bool) -> Result<Option<SyncError>, SyncError> {
        let mut previous: Vec<String> = Vec::new();
        let mut warned_long = false;
        let bounds = self.cfg.pull_limits;
        let site = self.integration_site(initialised)?;
        loop {
            self.step(Step::Queue, self.report.pulled_queue, None);
            let limit = self.pull_limit()?;
            let pulled_before = self.report.pulled_queue;
            let (sent, received_before) = (
                self.client.traffic.bytes_sent,
                self.client.traffic.bytes_received,
            );
            let live = self.client.in_flight();
            let observe = &mut *self.observe;
            let integrated = &mut self.integrated;
            let tx = self.store.tx_unruled_lazily()?;
            let mut ids: Vec<String> = Vec::new();
            let started = self.clock.now();
            let result = {
                let mut each = |rec: SyncRecord| -> Result<(), SyncError> {
                    let sid = rec
                        .sync_out_id
                        .clone()
                        .ok_or_else(|| SyncError::violation("a queued record without syncOutId"))?;
                    tx.unrule()?;
                    integration::receive(&tx, &site, &incoming(&rec), integrated)?;
                    ids.push(sid);
                    if ids.len().is_multiple_of(100) {
                        observe(Progress {
                            step: Step::Queue,
                            done: pulled_before + ids.len() as u64,
                            total: None,
                            sent,
                            received: received_before + live.get(),
                        });
                    }
                    Ok(())
                };
                self.client.queued_records(limit, &mut each)
            };
            let took = page_time(&result, self.clock.now() - started);
            match result {
                Ok(h) => {
                    if h.records > u64::from(limit) && !warned_long {
                        log::warn!(
                            "the central sent {} queued records for a limit of {limit}; accepted (§9.2)",
                            h.records
                        );
                        warned_long = true;
                    }
                    if h.queue_length.is_some_and(|q| q < h.records) {
                        log::warn!(
                            "central said queueLength {} but sent {} records; continuing",
                            h.queue_length.unwrap_or(0),
                            h.records
                        );
                    }
                }
                // Set aside by its syncOutId: recorded, then acknowledged with the rest.
                Err(SyncError::Unreadable(u)) if u.record.sync_out_id.is_some() => {
                    set_aside_received(&tx, &u)?;
                    ids.push(u.record.sync_out_id.clone().expect("checked"));
                    self.report.unreadable += 1;
                }
                Err(e) => {
                    drop(tx);
                    save_limit(self.store.conn(), limit, took, bounds)?;
                    return Err(e);
                }
            }
            save_limit(&tx, limit, took, bounds)?;
            if ids.is_empty() {
                tx.commit()?;
                return Ok(None);
            }
            if !previous.is_empty() && ids.iter().all(|i| previous.contains(i)) {
                return Err(SyncError::violation(
                    "the central sent acknowledged records again; the queue does not advance",
                ));
            }
            crash_point!("queue-page-buffered");
            tx.commit()?;
            crash_point!("queue-page-committed");
            self.report.pulled_queue += ids.len() as u64;
            ids.sort_unstable();
            ids.dedup();
            if let Err(e) = self.client.acknowledge(&ids) {
                log::warn!(
                    "acknowledging {} record(s) failed ({e}); they come again next time",
                    ids.len()
                );
                return Ok(Some(e.into()));
            }
            crash_point!("ack-answered");
            forget_bundle_acks(self.store.conn(), &ids)?;
            previous = ids;
        }
    }

    /// What integration needs to know of the site, for this cycle.
    fn integration_site(&self, initialised: bool) -> Result<Site, StoreError> {
        Ok(Site {
            active_store: self.store.active_store()?,
            initialised,
        })
    }

    /// §5 step 7 / §7.4: one integration pass over the buffer (what could not be
    /// applied as it arrived).
    pub(super) fn integrate(&mut self, initialised: bool) -> Result<(), SyncError> {
        let direct = std::mem::take(&mut self.integrated);
        self.report.integrated += direct.integrated;
        self.report.ignored += direct.ignored;
        let pending = buffer::counts(self.store.conn())?;
        let total = pending.pending + pending.failed;
        self.step(Step::Integrate, 0, Some(total));
        let site = self.integration_site(initialised)?;
        let t = self.client.traffic;
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
        self.report.integration_failed = buffer::counts(self.store.conn())?.failed;
        self.refresh_hold()
    }

    /// §9.7: whether the active dispensary store keeps its transactions here, from
    /// the store row and preferences as they are now.
    pub(super) fn refresh_hold(&mut self) -> Result<(), SyncError> {
        match self.store.refresh_hold()? {
            Some((true, _)) => log::info!(
                "the dispensary store's transactions are kept on this site (its \"include transactions in sync\" preference is off)"
            ),
            Some((false, n)) => log::info!(
                "the dispensary store's transactions sync again: {n} held record(s) queued"
            ),
            None => {}
        }
        Ok(())
    }
}

/// Queue entries applied from a USB bundle and now acknowledged over the link
/// need not go in the next bundle (a read first: usually there are none).
fn forget_bundle_acks(conn: &rusqlite::Connection, ids: &[String]) -> Result<(), StoreError> {
    let err = |e| StoreError::sqlite("forgetting acknowledged bundle entries", e);
    let any: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM bundle_ack)", [], |r| r.get(0))
        .map_err(err)?;
    if any {
        let tx = conn.unchecked_transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM bundle_ack WHERE sync_out_id = ?1", [id])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
    }
    Ok(())
}

/// Learns from how long a page took (`None`: it timed out); kept as local data
/// for the next cycle, written in the caller's transaction.
fn save_limit(
    conn: &rusqlite::Connection,
    limit: u32,
    took: Option<Duration>,
    bounds: (u32, u32),
) -> Result<(), StoreError> {
    let next = next_limit(limit, took, bounds);
    if next != limit {
        log::debug!("pull page size {limit} → {next}");
        crate::store::set_setting(conn, key::PULL_LIMIT, &next.to_string())?;
    }
    Ok(())
}

/// How long a page took, or `None` when it failed on the link (a timeout halves).
fn page_time<R>(result: &Result<R, SyncError>, took: Duration) -> Option<Duration> {
    match result {
        Err(e) if e.class() == crate::error::Class::Transient => None,
        _ => Some(took),
    }
}

/// Records a received record that could not be read, so status shows it.
fn set_aside_received(tx: &rusqlite::Connection, u: &Unreadable) -> Result<(), StoreError> {
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
    buffer::put(
        tx,
        &Incoming::Invalid {
            table: &table,
            id: &id,
            why: format!("set aside, cannot be read: {}", u.why),
        },
    )
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
