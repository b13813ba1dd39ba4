//! §5 steps 3, 4 and 8: push the outbox in bounded batches, the final empty push,
//! the wait for the central's integration, and transfer numbering (whose numbers
//! leave in a push at once).
//!
//! What must hold: an entry is marked sent only in a transaction after the central
//! confirmed its batch, and only if it was not edited since it was read; one bad
//! row (too large, not a row, refused by the central) is set aside with its reason
//! and never holds back the rest; the wait follows *every* final push (rev 2), so
//! nothing is pulled while the central still integrates what this site sent.

use std::time::Duration;

use crate::legacy::row;
use crate::store::outbox::Entry;
use crate::wire::transport::Transport;
use crate::wire::{ProtocolError, WireError};

use super::batch::{self, Batch, Limits, Offer};
use super::{transfer, Cycle, Step, SyncError};

/// First look at `site_status` after the final push (the central usually
/// finishes in milliseconds); later looks every second (§5 step 4). Between
/// the two each wait is half as long again as the last: doubling made a sync
/// wait up to twice as long as the integration it waited for (a 10,000-record
/// push was answered idle ~0.2 s after it was; issue 31).
const FIRST_STATUS_LOOK: Duration = Duration::from_millis(20);
const STATUS_LOOK_EVERY: Duration = Duration::from_secs(1);

impl<T: Transport> Cycle<'_, T> {
    /// Drains the outbox, sends the final empty push, then waits for integration.
    pub(super) fn push(&mut self) -> Result<(), SyncError> {
        // The budget is in bytes on the wire: it starts at a 2G-sized body and
        // adapt_bytes moves it towards what the link carries in the target time.
        // A batch's uncompressed size is the wire budget over the last
        // compression ratio, never above `batch_bytes` (the central's memory).
        let mut wire_budget = batch::START_BATCH_BYTES.min(self.cfg.batch_bytes);
        let mut ratio = 1.0f64;
        loop {
            let total = self.store.outbox_pending()?;
            self.step(
                Step::Push,
                self.report.pushed,
                Some(self.report.pushed + total),
            );
            let budget = ((wire_budget as f64 / ratio) as usize).clamp(
                batch::MIN_BATCH_BYTES.min(self.cfg.batch_bytes),
                self.cfg.batch_bytes,
            );
            let (mut b, set_aside) = self.fill(total, budget)?;
            if b.is_empty() && total > set_aside {
                continue; // only unsendable records were in the way; read again
            }
            if b.is_empty() && total > 0 {
                // Everything pending was set aside: the final push announces
                // nothing left (§5 step 3), or the central takes it for a
                // batch still on its way and starts no integration.
                b = Batch::new(0);
            }
            let final_push = b.is_empty();
            let (body, sent) = b.finish();
            let started = self.clock.now();
            match self.client.push(&body) {
                Ok((started_integration, wire)) => {
                    if !final_push {
                        crash_point!("push-answered");
                    }
                    if final_push {
                        if !started_integration {
                            return Err(SyncError::violation(
                                "integration not started: the central answered false to the final push",
                            ));
                        }
                        crash_point!("final-push-answered");
                        break;
                    }
                    let tx = self.store.tx()?;
                    tx.mark_sent(&sent)?;
                    tx.commit()?;
                    crash_point!("push-confirmed");
                    self.report.pushed += sent.len() as u64;
                    self.report.push_batches += 1;
                    ratio = (wire as f64 / body.len().max(1) as f64)
                        .clamp(batch::MIN_COMPRESSION_RATIO, 1.0);
                    wire_budget = batch::adapt_bytes(
                        wire,
                        (self.clock.now() - started).as_secs_f64(),
                        self.cfg.target_request.as_secs_f64(),
                        self.cfg.batch_bytes,
                    );
                }
                Err(WireError::Protocol(ProtocolError::Rejected { records, code, .. })) => {
                    self.set_aside_refused(&code, &records)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Everything confirmed goes in one transaction (see outbox::delete_sent).
        let tx = self.store.tx()?;
        tx.delete_sent()?;
        tx.commit()?;
        crash_point!("outbox-cleared");
        self.wait_integration()
    }

    /// Reads the next batch in push order. Rows that can never be sent are set
    /// aside on the way, with their reason; returns the batch and how many.
    fn fill(&mut self, total: u64, budget: usize) -> Result<(Batch, u64), SyncError> {
        let mut b = Batch::new(total);
        let limits = Limits {
            max_records: self.cfg.batch_records,
            max_bytes: budget,
        };
        let mut unsendable: Vec<(String, String, String)> = Vec::new();
        self.store.for_each_pending(
            limits.max_records.clamp(1, batch::MAX_BATCH_RECORDS) + 1,
            |e| match offer(&mut b, &e, limits) {
                Offered::Added => true,
                Offered::Full => false,
                Offered::Unsendable(why) => {
                    unsendable.push((e.table, e.id, why));
                    true
                }
            },
        )?;
        if !unsendable.is_empty() {
            let tx = self.store.tx()?;
            for (t, id, why) in &unsendable {
                log::warn!(
                    "{t} {id} cannot be sent ({why}); set aside (see `fieldsync queue --rejected`)"
                );
                tx.set_aside(t, id, why)?;
                self.report.too_large += 1;
            }
            tx.commit()?;
        }
        Ok((b, unsendable.len() as u64))
    }

    /// §7.2: entries listed in a 403/400 are set aside and the rest is re-sent; a
    /// list matching nothing of the batch stops the cycle.
    fn set_aside_refused(
        &mut self,
        code: &str,
        records: &[crate::wire::protocol::RejectedRecord],
    ) -> Result<(), SyncError> {
        let tx = self.store.tx()?;
        let mut matched = 0;
        for r in records {
            if tx.set_aside(
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
        tx.commit()?;
        if matched == 0 {
            return Err(SyncError::violation(format!(
                "the central refused the push ({code}) but listed no record of this batch"
            )));
        }
        self.report.rejected += matched;
        Ok(())
    }

    /// §5 step 4 (rev 2): after every final push, `site_status` until `idle`, at
    /// most `integration_wait`. Codes other than the four known ones mean busy
    /// (§9.2).
    fn wait_integration(&mut self) -> Result<(), SyncError> {
        self.step(Step::WaitIntegration, 0, None);
        let started = self.clock.now();
        let mut delay = FIRST_STATUS_LOOK;
        loop {
            let status = self.client.site_status()?;
            crash_point!("wait-status");
            if status.code == "idle" {
                return Ok(());
            }
            let waited = self.clock.now() - started;
            if waited >= self.cfg.integration_wait {
                return Err(SyncError::still_busy(
                    status.code,
                    "the central is still integrating our push; the next sync continues",
                ));
            }
            self.step(Step::WaitIntegration, waited.as_secs(), None);
            self.clock.sleep(delay);
            delay = (delay * 3 / 2).min(STATUS_LOOK_EVERY);
        }
    }

    /// §5 step 8: number received transfers, then push the numbers at once.
    pub(super) fn transfers(&mut self) -> Result<(), SyncError> {
        let Some(active) = self.store.active_store()? else {
            return Ok(());
        };
        self.step(Step::Transfers, 0, None);
        let transfer::Pass {
            numbered,
            unlinked,
            failed,
        } = transfer::number_all(self.store, &active)?;
        for f in &failed {
            log::error!("{f}; left unnumbered");
        }
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
            crash_point!("transfer-numbered");
            self.push()?;
        }
        Ok(())
    }
}

/// What became of an outbox entry offered to a batch (a push's, or a USB
/// bundle's: the same rule for both).
pub(super) enum Offered {
    Added,
    /// The batch is full: send it, start the next one with this entry.
    Full,
    /// It can never be sent as it is: set it aside with this reason.
    Unsendable(String),
}

/// Offers `e` to `b`: a row that is not a valid row (stored as a BLOB, not
/// JSON, another `ID`…) or too large is unsendable; anything else is added if
/// it fits `limits`.
pub(super) fn offer(b: &mut Batch, e: &Entry, limits: Limits) -> Offered {
    let problem = match (&e.unreadable, &e.data) {
        (Some(why), _) => Some(format!("invalid: {why}")),
        (None, Some(data)) if !e.delete => row::check(data, Some(&e.id))
            .err()
            .map(|p| format!("{}: {p}", p.code())),
        _ => None,
    };
    if let Some(why) = problem {
        return Offered::Unsendable(why);
    }
    match b.offer(e, limits) {
        Offer::Added => Offered::Added,
        Offer::Full => Offered::Full,
        Offer::TooLarge(n) => Offered::Unsendable(format!("too_large: {n} bytes")),
    }
}
