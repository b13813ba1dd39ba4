//! The site's half of the comparison with the central (compare extension
//! [PC], [`crate::legacy::digest`]): the summaries of what this site holds,
//! and the repair of each record found different.
//!
//! What the site holds, for the comparison: every record of the shared file
//! but the local-only tables — its own data and the central's and others'
//! records it received. The central sums what its routing says this site
//! holds; the two agree when nothing was lost on either side.
//!
//! What holds: nothing is deleted here, and nothing is sent but through the
//! outbox and the central's queue (the normal paths, judged as any push or
//! pull). A record that waits in the outbox is left to the push that carries
//! it; a record the site may edit is queued again; one it may not is asked
//! of the central; one the central has no copy of and the site may not edit
//! is only reported — verification alone never deletes.

use std::collections::HashMap;

use rusqlite::params;

use super::{state, Store, StoreError};
use crate::legacy::digest::{self, Digest, Summary};
use crate::legacy::registry::{self, Kind};

/// Differences repaired in one transaction.
const REPAIRS_PER_TX: usize = 500;

/// One record that is not the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: String,
    pub id: String,
    /// The site holds it (with a different digest when `central` too).
    pub site: bool,
    /// The central holds it for this site.
    pub central: bool,
}

/// What a comparison with the central found and did (`status`, `verify --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compared {
    /// Records this site holds (by its own count).
    pub records: u64,
    /// Requests and bytes the comparison took on the link.
    pub requests: u64,
    pub bytes: u64,
    /// Records not the same on both sides.
    pub differences: u64,
    /// The site's own: queued again for the central.
    pub queued: u64,
    /// The central's copy asked for (the site lacks it or holds it changed).
    pub restore: u64,
    /// Already on their way in the outbox.
    pub pending: u64,
    /// Held here, not the site's to send, and the central has no copy for
    /// this site: reported only, for a person.
    pub unmatched: u64,
    /// Why this comparison ran: `asked`, `due`, `central_restored`.
    pub reason: String,
    /// The first differences, for a person (table, id, what was done).
    pub listed: Vec<(String, String, String)>,
}

/// Differences listed in full in [`Compared::listed`].
const LISTED: usize = 50;

impl Compared {
    pub fn clean(&self) -> bool {
        self.differences == 0
    }
}

fn held(table: &str) -> bool {
    registry::lookup(table).is_none_or(|t| t.kind != Kind::Local)
}

impl Store {
    /// Each table this site holds records of, summed whole (the root of the
    /// tree), in one pass over the file.
    pub fn compare_tables(&self) -> Result<Vec<(String, Summary)>, StoreError> {
        let err = |e| StoreError::sqlite("summing the records for the comparison", e);
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT table_name, record_id, CAST(data AS TEXT) FROM record ORDER BY table_name",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut out: Vec<(String, Summary)> = Vec::new();
        while let Some(r) = rows.next().map_err(err)? {
            let (table, id): (String, String) = (r.get(0).map_err(err)?, r.get(1).map_err(err)?);
            if !held(&table) {
                continue;
            }
            let text: Option<String> = r.get(2).map_err(err)?;
            let d = digest::record(&table, &id, text.as_deref().unwrap_or(""));
            match out.last_mut() {
                Some((t, s)) if *t == table => s.add(&d),
                _ => {
                    let mut s = Summary::default();
                    s.add(&d);
                    out.push((table, s));
                }
            }
        }
        Ok(out)
    }

    /// Streams the records of `table` whose bucket starts with one of
    /// `prefixes`, with the index of the (first) prefix each falls under.
    fn each_in(
        &self,
        table: &str,
        prefixes: &[String],
        mut f: impl FnMut(usize, &str, &str, Digest),
    ) -> Result<(), StoreError> {
        if !held(table) {
            return Ok(());
        }
        let err = |e| StoreError::sqlite("summing the records for the comparison", e);
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT record_id, CAST(data AS TEXT) FROM record WHERE table_name = ?1",
            )
            .map_err(err)?;
        let mut rows = stmt.query([table]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let id: String = r.get(0).map_err(err)?;
            let bucket = digest::bucket(&id);
            let Some(i) = prefixes.iter().position(|p| bucket.starts_with(p.as_str())) else {
                continue;
            };
            let text: Option<String> = r.get(1).map_err(err)?;
            let d = digest::record(table, &id, text.as_deref().unwrap_or(""));
            f(i, &bucket, &id, d);
        }
        Ok(())
    }

    /// The sixteen child summaries of each node `(table, prefix)`.
    pub fn compare_children(
        &self,
        table: &str,
        prefixes: &[String],
    ) -> Result<Vec<[Summary; 16]>, StoreError> {
        let mut out = vec![[Summary::default(); 16]; prefixes.len()];
        self.each_in(table, prefixes, |i, bucket, _, d| {
            if let Some(c) = bucket.as_bytes().get(prefixes[i].len()) {
                let n = if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                };
                out[i][usize::from(n)].add(&d);
            }
        })?;
        Ok(out)
    }

    /// The records of each node `(table, prefix)`: ID → digest.
    pub fn compare_leaves(
        &self,
        table: &str,
        prefixes: &[String],
    ) -> Result<Vec<HashMap<String, Digest>>, StoreError> {
        let mut out = vec![HashMap::new(); prefixes.len()];
        self.each_in(table, prefixes, |i, _, id, d| {
            out[i].insert(id.to_string(), d);
        })?;
        Ok(out)
    }

    /// Repairs each difference by the normal paths (see the module comment)
    /// and adds what was done to `found`. The central's copies asked for go
    /// on the restore list, asked for by the same sync.
    pub fn repair_differences(
        &mut self,
        diffs: &[Difference],
        found: &mut Compared,
    ) -> Result<(), StoreError> {
        let mut restore: Vec<(String, String)> = Vec::new();
        for chunk in diffs.chunks(REPAIRS_PER_TX) {
            let tx = self.tx()?;
            for d in chunk {
                found.differences += 1;
                let done = tx.repair_difference(d)?;
                match done {
                    Repaired::Pending => found.pending += 1,
                    Repaired::Queued => found.queued += 1,
                    Repaired::Restore => {
                        found.restore += 1;
                        restore.push((d.table.clone(), d.id.clone()));
                    }
                    Repaired::Unmatched => {
                        found.unmatched += 1;
                        log::warn!(
                            "{} {} is held here, is not this site's to send, and the central has no copy \
                             of it for this site: left as it is (a person may remove it)",
                            d.table,
                            d.id
                        );
                    }
                }
                if found.listed.len() < LISTED {
                    found
                        .listed
                        .push((d.table.clone(), d.id.clone(), done.word().into()));
                }
            }
            tx.commit()?;
        }
        self.restore_later(restore)
    }

    /// Why a comparison is owed now (a restore of the central was seen), if one is.
    pub fn compare_due(&self) -> Result<Option<String>, StoreError> {
        state::get(self.agent(), state::key::COMPARE_DUE)
    }

    /// Marks a comparison owed, for `reason`.
    pub fn owe_compare(&self, reason: &str) -> Result<(), StoreError> {
        state::set(self.agent(), state::key::COMPARE_DUE, reason)
    }

    /// The comparison ran to the end against `epoch`: nothing owed, the count
    /// starts again, and `status` shows what it found.
    pub fn compared(&self, epoch: Option<&str>, c: &Compared) -> Result<(), StoreError> {
        state::set(
            self.agent(),
            state::key::LAST_COMPARE,
            &serde_json::to_string(c).unwrap_or_default(),
        )?;
        if let Some(e) = epoch {
            state::set(self.agent(), state::key::CENTRAL_EPOCH, e)?;
        }
        self.defer_state(state::key::SYNCS_SINCE_COMPARE, "0".into());
        state::unset(self.agent(), state::key::COMPARE_DUE)
    }

    /// The epoch of the central at the last comparison (or first contact).
    pub fn central_epoch(&self) -> Result<Option<String>, StoreError> {
        state::get(self.agent(), state::key::CENTRAL_EPOCH)
    }

    pub fn set_central_epoch(&self, epoch: &str) -> Result<(), StoreError> {
        state::set(self.agent(), state::key::CENTRAL_EPOCH, epoch)
    }

    /// What the last comparison found.
    pub fn last_compare(&self) -> Result<Option<Compared>, StoreError> {
        Ok(state::get(self.agent(), state::key::LAST_COMPARE)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Syncs since the last comparison, counting this one.
    pub fn syncs_since_compare(&self) -> Result<u64, StoreError> {
        let n = self
            .state_value(state::key::SYNCS_SINCE_COMPARE)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        // Saved with the sync's attempt (see Store::defer_state).
        self.defer_state(state::key::SYNCS_SINCE_COMPARE, n.to_string());
        Ok(n)
    }
}

/// What was done about one difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repaired {
    Pending,
    Queued,
    Restore,
    Unmatched,
}

impl Repaired {
    fn word(self) -> &'static str {
        match self {
            Repaired::Pending => "in the outbox already",
            Repaired::Queued => "queued for the central",
            Repaired::Restore => "the central's copy asked for",
            Repaired::Unmatched => "only here, not this site's: for a person",
        }
    }
}

impl super::Tx<'_> {
    fn repair_difference(&self, d: &Difference) -> Result<Repaired, StoreError> {
        let err = |e| StoreError::sqlite("repairing a record the comparison found", e);
        let in_outbox: bool = self
            .conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE table_name = ?1 AND record_id = ?2)",
                params![d.table, d.id],
                |r| r.get(0),
            )
            .map_err(err)?;
        if in_outbox {
            return Ok(Repaired::Pending);
        }
        let Some(row) = self.get(&d.table, &d.id)? else {
            // Gone here since the comparison read it, or never here: the
            // central's copy comes through the queue (or it answers it has none).
            return Ok(if d.central {
                Repaired::Restore
            } else {
                Repaired::Pending
            });
        };
        if self.may_edit_synced(&d.table, &d.id, &row)? {
            self.requeue(&d.table, &d.id)?;
            Ok(Repaired::Queued)
        } else if d.central {
            Ok(Repaired::Restore)
        } else {
            Ok(Repaired::Unmatched)
        }
    }
}
