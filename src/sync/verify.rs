//! Keeping the site's file true to what was synced: the check of the shared
//! file against the versions last synced ([`crate::store::check`], issue 26),
//! run at the start of a cycle when it is due so what it queues leaves in the
//! same cycle; and the central's copies asked for again, after the push, so
//! they arrive with the same cycle's queue [PC].
//!
//! Against a central that does not advertise the extension nothing is asked:
//! the records wait on the list, and `status` says a person must restore them
//! (a re-initialisation does).
//!
//! And the comparison with the central [PC] (README "Protocol addendum:
//! compare"): at the end of a cycle when one is due — asked for (`fieldsync
//! verify`), every `compare_every_syncs` syncs, or owed because the central
//! looked restored (its epoch changed, or its change log ends before this
//! site's cursor) — the two sides' summaries are compared top-down, the
//! records that differ are repaired by the normal paths
//! ([`crate::store::compare`]), and what that queued leaves in the same
//! cycle: a second push, the requeue, a second queue pull.

use std::collections::{BTreeMap, HashMap};

use crate::legacy::digest::{self, Summary, MAX_PREFIX};
use crate::store::compare::{Compared, Difference};
use crate::store::InitState;
use crate::wire::protocol::{Leaf, Node, Requeued, MAX_COMPARE_NODES};
use crate::wire::transport::Transport;

use super::{pull, Cycle, Step, SyncError};

/// Records found different that one comparison repairs; the rest are found
/// again by the next one.
const MAX_DIFFERENCES: usize = 100_000;
/// Rounds of one comparison: one per level of the tree, and the leaves.
const MAX_ROUNDS: usize = MAX_PREFIX + 2;
const HEX: &[u8; 16] = b"0123456789abcdef";

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

/// Child nodes asked and record lists answered in one round, by table.
#[derive(Default)]
struct Round {
    children: BTreeMap<String, Vec<(String, Vec<Node>)>>,
    leaves: BTreeMap<String, Vec<(String, Vec<Leaf>)>>,
}

impl<T: Transport> Cycle<'_, T> {
    /// The central's epoch, noted at first contact; a change is a central that
    /// found itself restored (central::epoch): a comparison is owed.
    pub(super) fn note_epoch(&mut self) -> Result<(), SyncError> {
        if !self.client.compares() {
            return Ok(());
        }
        let Some(now) = self.client.epoch().map(str::to_string) else {
            return Ok(());
        };
        match self.store.central_epoch()? {
            None => self.store.set_central_epoch(&now)?,
            Some(before) if before != now && self.store.compare_due()?.is_none() => {
                log::warn!(
                    "the central was restored from an older copy or lost writes (its epoch changed \
                     from {before} to {now}): comparing everything this site holds with it"
                );
                self.store.owe_compare("central_restored")?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The central's change log ends before this site's cursor: it went back
    /// in time. The comparison is owed first, then the cursor moves back, so
    /// the central's new changes (numbered again from where its log ends)
    /// are read, and a power cut between the two still compares.
    pub(super) fn central_went_back(&mut self, cursor: u64, max: u64) -> Result<(), SyncError> {
        log::warn!(
            "the central was restored from an older copy: its change log ends at {max}, before \
             this site's cursor {cursor}; reading it from {max} on{}",
            if self.client.compares() {
                " and comparing everything this site holds with it"
            } else {
                " (this central cannot compare: records this site sent since its backup may be missing there)"
            }
        );
        if self.client.compares() {
            self.store.owe_compare("central_restored")?;
        }
        Ok(())
    }

    /// The comparison with the central, when one is due (module comment).
    pub(super) fn compare_with_central(&mut self) -> Result<(), SyncError> {
        let since = self.store.syncs_since_compare()?;
        let every = u64::from(self.cfg.compare_every);
        let reason = if self.cfg.check_now {
            "asked".to_string()
        } else if let Some(r) = self.store.compare_due()? {
            r
        } else if every > 0 && since >= every {
            "due".to_string()
        } else {
            return Ok(());
        };
        if !self.client.compares() {
            if self.cfg.check_now {
                self.report.compare_unavailable = true;
            }
            return Ok(());
        }
        self.step(Step::Compare, 0, None);
        let before = self.client.traffic();
        let mut found = Compared {
            reason,
            ..Compared::default()
        };
        let diffs = self.differences(&mut found)?;
        let after = self.client.traffic();
        found.requests = after.requests - before.requests;
        found.bytes =
            (after.bytes_sent - before.bytes_sent) + (after.bytes_received - before.bytes_received);
        self.store.repair_differences(&diffs, &mut found)?;
        if found.clean() {
            log::info!(
                "compared {} record(s) with the central ({} request(s), {} bytes): the same",
                found.records,
                found.requests,
                found.bytes
            );
        } else {
            log::warn!(
                "compared {} record(s) with the central: {} differ — {} queued for the central, \
                 {} asked of it, {} already on their way, {} only here and not this site's",
                found.records,
                found.differences,
                found.queued,
                found.restore,
                found.pending,
                found.unmatched
            );
        }
        if found.queued + found.restore > 0 {
            // What the repair queued leaves in this cycle.
            self.push()?;
            self.ask_restore()?;
            let ack_failed = self.pull(pull::Source::Queue, true)?;
            self.integrate(true)?;
            if let Some(e) = ack_failed {
                return Err(e);
            }
        }
        let epoch = self.client.epoch().map(str::to_string);
        self.store.compared(epoch.as_deref(), &found)?;
        self.report.compared = Some(found);
        Ok(())
    }

    /// Walks the tree top-down with the central and returns the records that
    /// differ.
    fn differences(&mut self, found: &mut Compared) -> Result<Vec<Difference>, SyncError> {
        let tables = self.store.compare_tables()?;
        found.records = tables.iter().map(|(_, s)| s.count).sum();
        let mut ask: Vec<Node> = tables
            .into_iter()
            .map(|(table, s)| node(table, String::new(), &s))
            .collect();
        if ask.len() > MAX_COMPARE_NODES {
            log::warn!(
                "{} tables hold records here; the comparison covers the first {MAX_COMPARE_NODES}",
                ask.len()
            );
            ask.truncate(MAX_COMPARE_NODES);
        }
        let mut diffs = Vec::new();
        let mut root = true;
        for _ in 0..MAX_ROUNDS {
            if ask.is_empty() || diffs.len() >= MAX_DIFFERENCES {
                break;
            }
            let mut round = Round::default();
            for chunk in ask.chunks(MAX_COMPARE_NODES) {
                for a in self.client.compare(root, chunk.to_vec())?.nodes {
                    if a.same || !digest::valid_prefix(&a.prefix) {
                        continue;
                    }
                    if let Some(records) = a.records {
                        round
                            .leaves
                            .entry(a.table)
                            .or_default()
                            .push((a.prefix, records));
                    } else if let Some(children) = a.children {
                        if a.prefix.len() < MAX_PREFIX {
                            round
                                .children
                                .entry(a.table)
                                .or_default()
                                .push((a.prefix, children));
                        }
                    }
                }
            }
            root = false;
            ask = Vec::new();
            for (table, nodes) in round.children {
                let prefixes: Vec<String> = nodes.iter().map(|(p, _)| p.clone()).collect();
                let mine = self.store.compare_children(&table, &prefixes)?;
                for ((prefix, theirs), mine) in nodes.into_iter().zip(mine) {
                    for (i, m) in mine.iter().enumerate() {
                        let child = format!("{prefix}{}", HEX[i] as char);
                        let same = theirs
                            .iter()
                            .find(|n| n.prefix == child)
                            .map_or(m.count == 0, |n| n.count == m.count && n.hash == m.hash());
                        if !same {
                            ask.push(node(table.clone(), child, m));
                        }
                    }
                }
            }
            for (table, nodes) in round.leaves {
                let prefixes: Vec<String> = nodes.iter().map(|(p, _)| p.clone()).collect();
                let mine = self.store.compare_leaves(&table, &prefixes)?;
                for ((_, theirs), mut mine) in nodes.into_iter().zip(mine) {
                    let mut theirs: HashMap<String, String> =
                        theirs.into_iter().map(|l| (l.id, l.hash)).collect();
                    for (id, d) in mine.drain() {
                        match theirs.remove(&id) {
                            Some(h) if h == digest::hex(&d) => {}
                            central => diffs.push(Difference {
                                table: table.clone(),
                                id,
                                site: true,
                                central: central.is_some(),
                            }),
                        }
                    }
                    diffs.extend(theirs.into_keys().map(|id| Difference {
                        table: table.clone(),
                        id,
                        site: false,
                        central: true,
                    }));
                }
            }
        }
        diffs.truncate(MAX_DIFFERENCES);
        diffs.sort_by(|a, b| (&a.table, &a.id).cmp(&(&b.table, &b.id)));
        Ok(diffs)
    }
}

fn node(table: String, prefix: String, s: &Summary) -> Node {
    Node {
        table,
        prefix,
        count: s.count,
        hash: s.hash(),
    }
}

/// Whether `state` lets a comparison run (only an initialised site holds
/// what the central's routing says it should).
pub(super) fn may_compare(state: InitState) -> bool {
    state == InitState::Initialised
}
