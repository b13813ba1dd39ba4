//! Keeping the site's file true to what was synced: the check of the shared
//! file against the versions last synced ([`crate::store::check`], issue 26),
//! run at the start of a cycle when it is due so what it queues leaves in the
//! same cycle; and the central's copies asked for again, after the push, so
//! they arrive with the same cycle's queue [PC].
//!
//! Against a central that does not advertise the extension nothing is asked:
//! the records wait on the list, and `status` says a person must restore them
//! (a re-initialisation does).

use crate::wire::protocol::Requeued;
use crate::wire::transport::Transport;

use super::{Cycle, Step, SyncError};

/// Records asked for in one request: what the central takes at most.
const RESTORE_PER_REQUEST: usize = crate::wire::protocol::MAX_REQUEUE;

impl<T: Transport> Cycle<'_, T> {
    /// The check of the shared file, when due (every `check_every` syncs; 0:
    /// only when asked, `fieldsync verify`).
    pub(super) fn check_shared(&mut self) -> Result<(), SyncError> {
        let since = self.store.syncs_since_check(false)?;
        let every = self.cfg.check_every;
        if !self.cfg.check_now && (every == 0 || since < u64::from(every)) {
            return Ok(());
        }
        self.step(Step::Check, 0, None);
        let checked = self.store.check_records()?;
        self.store.syncs_since_check(true)?;
        if !checked.clean() {
            log::warn!(
                "the check of {} record(s) found changes made behind fieldsync's rules: {} queued, {} to restore, {} outbox entr(ies) put back",
                checked.records,
                checked.queued,
                checked.restore,
                checked.outbox_repaired
            );
        }
        self.store.save_check(&checked)?;
        self.report.checked = Some(checked);
        Ok(())
    }

    /// Asks the central for its copies of what the check set aside (§ module
    /// comment); what it has none of, or says this site should not hold, is
    /// removed here (never a record of the site's own: those are pushed).
    pub(super) fn ask_restore(&mut self) -> Result<(), SyncError> {
        let list = self.store.to_restore()?;
        if list.is_empty() {
            return Ok(());
        }
        if !self.client.verifies() {
            self.report.restore_waiting = list.len() as u64;
            return Ok(());
        }
        for chunk in list.chunks(RESTORE_PER_REQUEST) {
            let answers: Vec<((String, String), Requeued)> = self
                .client
                .requeue(chunk)?
                .into_iter()
                .map(|(k, s)| ((k.table_name, k.record_id), s))
                .collect();
            let gone: Vec<(String, String)> = answers
                .iter()
                .filter(|(_, s)| matches!(s, Requeued::Absent | Requeued::NotHeld))
                .map(|(k, _)| k.clone())
                .collect();
            if !gone.is_empty() {
                let tx = self.store.receiving()?;
                for (table, id) in &gone {
                    log::warn!(
                        "{table} {id} was written here behind the rules and the central has no copy for this site; removed"
                    );
                    tx.delete_received(table, id)?;
                }
                tx.commit()?;
            }
            let asked: Vec<(String, String)> = answers.into_iter().map(|(k, _)| k).collect();
            self.report.restored += asked.len() as u64;
            self.store.restore_requested(&asked)?;
        }
        Ok(())
    }
}
