//! The store's side of sync by USB stick: which outbox entry versions went into
//! which bundle (`bundle_sent`), so the central's confirmation removes exactly
//! those; and which queue entries were applied from the central's bundles
//! (`bundle_ack`), so the next bundle to the central acknowledges them. Both
//! are the agent's bookkeeping, in its state file. What a bundle holds and when
//! it is written is `sync::courier`'s.
//!
//! What must hold: an export reads the outbox in a snapshot (the clinic's app
//! keeps writing meanwhile) and records what it carried only once the file is
//! complete ([`Store::bundle_written`]); an entry edited since keeps its new
//! version in the outbox.

use rusqlite::{params, OptionalExtension, Transaction};

use super::outbox::{self, Entry};
use super::{Store, StoreError, Tx};

/// An export's read of the outbox: one snapshot for the whole file, with what
/// it takes noted in temporary tables (this connection only, never the file).
pub struct ExportRead<'a> {
    snapshot: Transaction<'a>,
    agent: &'a rusqlite::Connection,
}

/// A record the central refused from a bundle it confirmed.
#[derive(Debug, Clone)]
pub struct RefusedRecord<'a> {
    pub table: &'a str,
    pub id: &'a str,
    pub reason: &'a str,
}

/// What a confirmation did on this side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub removed: u64,
    pub refused: u64,
}

fn err(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(what, e)
}

impl Store {
    /// Starts an export's read (see [`ExportRead`]).
    pub fn export_read(&mut self) -> Result<ExportRead<'_>, StoreError> {
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS bundle_out (seq INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE IF NOT EXISTS bundle_ack_out (id TEXT PRIMARY KEY);
                 DELETE FROM temp.bundle_out; DELETE FROM temp.bundle_ack_out;",
            )
            .map_err(err("noting the bundle"))?;
        let snapshot = self.conn.transaction().map_err(err("reading the outbox"))?;
        Ok(ExportRead {
            snapshot,
            agent: &self.agent,
        })
    }

    /// The file of bundle `id` is complete: in one short write transaction, what
    /// it carried is recorded (entry versions still in the outbox), the entries
    /// that could not go are set aside (unless edited meanwhile: `seq` changed),
    /// and `summary` is kept for `status`.
    pub fn bundle_written(
        &mut self,
        id: &[u8],
        unsendable: &[(i64, String)],
        summary: &str,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        record_carried(&tx, id, unsendable)?;
        tx.set_state(super::key::BUNDLE_OUT, summary)?;
        tx.commit()?;
        let _ = self
            .conn
            .execute_batch("DELETE FROM temp.bundle_out; DELETE FROM temp.bundle_ack_out;");
        Ok(())
    }

    /// Queue entries acknowledged over the link need not go in the next bundle
    /// (a read first: usually there are none).
    pub fn queue_entries_acknowledged(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let any: bool = self
            .agent
            .query_row("SELECT EXISTS (SELECT 1 FROM bundle_ack)", [], |r| r.get(0))
            .map_err(err("forgetting acknowledged bundle entries"))?;
        if any {
            let tx = self
                .agent
                .transaction()
                .map_err(err("forgetting acknowledged bundle entries"))?;
            for id in ids {
                tx.execute("DELETE FROM bundle_ack WHERE sync_out_id = ?1", [id])
                    .map_err(err("forgetting acknowledged bundle entries"))?;
            }
            tx.commit()
                .map_err(err("forgetting acknowledged bundle entries"))?;
        }
        Ok(())
    }
}

/// What a written bundle carried, recorded in the state file: the versions
/// still in the outbox (read from this connection's notes), the queue entries
/// it acknowledges; and the entries that cannot be sent, set aside.
fn record_carried(tx: &Tx, id: &[u8], unsendable: &[(i64, String)]) -> Result<(), StoreError> {
    let e = err("recording the bundle");
    let (c, a) = (tx.conn(), tx.agent());
    {
        let mut still = c
            .prepare("SELECT seq FROM temp.bundle_out WHERE seq IN (SELECT seq FROM outbox)")
            .map_err(&e)?;
        let mut note = a
            .prepare("INSERT OR IGNORE INTO bundle_sent (bundle, seq) VALUES (?1, ?2)")
            .map_err(&e)?;
        let mut rows = still.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let seq: i64 = r.get(0).map_err(&e)?;
            note.execute(params![id, seq]).map_err(&e)?;
        }
    }
    {
        let mut acked = c
            .prepare("SELECT id FROM temp.bundle_ack_out")
            .map_err(&e)?;
        let mut mark = a
            .prepare("UPDATE bundle_ack SET bundle = ?1 WHERE sync_out_id = ?2")
            .map_err(&e)?;
        let mut rows = acked.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let sid: String = r.get(0).map_err(&e)?;
            mark.execute(params![id, sid]).map_err(&e)?;
        }
    }
    for (seq, why) in unsendable {
        c.execute(
            "UPDATE outbox SET state = 'rejected', reason = ?2 WHERE seq = ?1 AND state = 'pending'",
            params![seq, why],
        )
        .map_err(err("setting a record aside"))?;
    }
    Ok(())
}

impl ExportRead<'_> {
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        outbox::pending_count(&self.snapshot)
    }

    /// The first and last outbox sequence waiting (0 when none).
    pub fn seq_range(&self) -> Result<(u64, u64), StoreError> {
        let (first, last): (Option<i64>, Option<i64>) = self
            .snapshot
            .query_row(
                "SELECT min(seq), max(seq) FROM outbox WHERE state = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err("reading the outbox"))?;
        Ok((first.unwrap_or(0) as u64, last.unwrap_or(0) as u64))
    }

    /// Every pending entry in push order, once (see [`outbox::for_each_pending`]).
    pub fn for_each_pending(&self, f: impl FnMut(Entry) -> bool) -> Result<(), StoreError> {
        outbox::for_each_pending(&self.snapshot, usize::MAX, f)
    }

    /// Notes that the entry version `seq` is in the bundle.
    pub fn carried(&self, seq: i64) -> Result<(), StoreError> {
        self.snapshot
            .prepare_cached("INSERT OR IGNORE INTO temp.bundle_out (seq) VALUES (?1)")
            .and_then(|mut s| s.execute([seq]))
            .map(drop)
            .map_err(err("noting the bundle"))
    }

    /// Every queue entry applied from the central's bundles, noted as
    /// acknowledged by this bundle.
    pub fn for_each_applied_entry(
        &self,
        mut f: impl FnMut(String) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let e = err("reading the applied queue entries");
        let mut stmt = self
            .agent
            .prepare("SELECT sync_out_id FROM bundle_ack ORDER BY sync_out_id")
            .map_err(&e)?;
        let mut note = self
            .snapshot
            .prepare("INSERT OR IGNORE INTO temp.bundle_ack_out (id) VALUES (?1)")
            .map_err(&e)?;
        let mut rows = stmt.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let id: String = r.get(0).map_err(&e)?;
            note.execute([&id]).map_err(&e)?;
            f(id)?;
        }
        Ok(())
    }

    /// Ends the read, keeping the notes (a rollback would drop them).
    pub fn finish(self) -> Result<(), StoreError> {
        self.snapshot.commit().map_err(err("noting the bundle"))
    }
}

impl Tx<'_> {
    /// A queue entry applied from a central's bundle: acknowledged by the next
    /// bundle to the central, with this page's records already committed.
    pub fn applied_from_bundle(&self, sync_out_id: &str) -> Result<(), StoreError> {
        self.agent()
            .prepare_cached("INSERT OR IGNORE INTO bundle_ack (sync_out_id) VALUES (?1)")
            .and_then(|mut st| st.execute([sync_out_id]))
            .map(drop)
            .map_err(err("noting an applied queue entry"))
    }

    /// The central confirmed bundle `bundle`: the entry versions it carried
    /// leave the outbox, the ones it refused are set aside with its reason, and
    /// the queue entries that bundle acknowledged are gone from the central.
    pub fn bundle_confirmed(
        &self,
        bundle: &[u8],
        refused: &[RefusedRecord<'_>],
    ) -> Result<Confirmed, StoreError> {
        let (c, a) = (self.conn(), self.agent());
        let e = err("removing confirmed records");
        let seqs: Vec<i64> = a
            .prepare("SELECT seq FROM bundle_sent WHERE bundle = ?1")
            .and_then(|mut s| s.query_map([bundle], |r| r.get(0))?.collect())
            .map_err(&e)?;
        let mut done = Confirmed::default();
        // No record is written while these are confirmed.
        let run = self.confirming()?;
        for seq in seqs {
            let entry: Option<(String, String, bool)> = c
                .query_row(
                    "SELECT table_name, record_id, action = 'Delete' FROM outbox WHERE seq = ?1 \
                     AND state IN ('pending', 'sent')",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(&e)?;
            let Some((table, id, delete)) = entry else {
                continue;
            };
            if let Some(r) = refused.iter().find(|r| r.table == table && r.id == id) {
                done.refused +=
                    c.execute(
                        "UPDATE outbox SET state = 'rejected', reason = ?2 WHERE seq = ?1",
                        params![seq, r.reason],
                    )
                    .map_err(err("setting refused records aside"))? as u64;
                continue;
            }
            done.removed += c
                .execute("DELETE FROM outbox WHERE seq = ?1", [seq])
                .map_err(&e)? as u64;
            let current: Option<String> = c
                .query_row(
                    "SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2",
                    params![table, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&e)?;
            match (delete, current) {
                (false, Some(text)) => self.mark_confirmed(&run, &table, &id, &text)?,
                _ => self.forget_synced(&table, &id)?,
            }
        }
        a.execute("DELETE FROM bundle_sent WHERE bundle = ?1", [bundle])
            .map_err(&e)?;
        a.execute("DELETE FROM bundle_ack WHERE bundle = ?1", [bundle])
            .map_err(&e)?;
        Ok(done)
    }
}
