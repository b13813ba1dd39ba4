//! The outbox: local changes waiting to be pushed (protocol §7.2). The store's
//! triggers fill it; this module reads it in push order and removes or sets aside
//! entries once the central has answered.
//!
//! What must hold: an entry leaves only after the central confirmed the batch that
//! carried it, and only if it was not edited meanwhile (its `seq` and `version`
//! still match what was sent) — an edit during a push is pushed next time.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError, Tx};

/// One pending entry as the batch needs it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub table: String,
    pub id: String,
    pub seq: i64,
    pub version: i64,
    pub delete: bool,
    /// The current row (JSON text); `None` for deletes.
    pub data: Option<String>,
    /// Why the stored row cannot be read as text (a program stored a BLOB or
    /// bytes that are not UTF-8): the push sets the entry aside with this reason.
    pub unreadable: Option<String>,
}

/// What a confirmed batch removes: identified by `seq`, which changes on every edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: i64,
    pub version: i64,
}

pub(super) fn pending_count(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite("counting the outbox", e))
}

/// Entries a dispensary store keeps on the site (§9.7).
pub(super) fn held_count(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE state = 'held'",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite("counting held records", e))
}

pub(super) fn rejected_count(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE state = 'rejected'",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite("counting rejected records", e))
}

/// Streams up to `limit` pending entries in push order (§7.3): upserts by rank
/// then sequence, then deletes children first. `f` returns `false` to stop early.
///
/// The order comes from the `outbox_push` index (push_key, seq), so a batch reads
/// `limit` index entries, not the whole outbox; each row's data is then read by
/// key. Sorting the outbox per batch made a large push quadratic in time and in
/// temp-file writes (flash wear).
pub(super) fn for_each_pending(
    conn: &Connection,
    limit: usize,
    mut f: impl FnMut(Entry) -> bool,
) -> Result<(), StoreError> {
    let err = |e| StoreError::sqlite("reading the outbox", e);
    let mut keys = conn
        .prepare_cached(
            "SELECT table_name, record_id, seq, version, action = 'Delete' FROM outbox \
             WHERE state = 'pending' ORDER BY push_key, seq LIMIT ?1",
        )
        .map_err(err)?;
    let mut data = conn
        .prepare_cached("SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2")
        .map_err(err)?;
    let mut rows = keys.query([limit as i64]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let table: String = row.get(0).map_err(err)?;
        let id: String = row.get(1).map_err(err)?;
        let is_delete: bool = row.get(4).map_err(err)?;
        let mut unreadable = None;
        let current: Option<String> = if is_delete {
            None
        } else {
            // Read the value as SQLite holds it: a BLOB or invalid UTF-8 is this
            // row's problem, never a reason to stop reading the outbox.
            let raw: Option<Result<String, &'static str>> = data
                .query_row(rusqlite::params![table, id], |r| {
                    use rusqlite::types::ValueRef as V;
                    Ok(match r.get_ref(0)? {
                        V::Text(b) => std::str::from_utf8(b)
                            .map(str::to_string)
                            .map_err(|_| "text that is not UTF-8"),
                        V::Blob(_) => Err("a BLOB"),
                        V::Integer(_) | V::Real(_) => Err("a number"),
                        V::Null => Err("NULL"),
                    })
                })
                .optional()
                .map_err(err)?;
            match raw {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(what)) => {
                    unreadable = Some(format!("stored as {what}, not JSON text"));
                    Some(String::new())
                }
            }
        };
        // An Update whose row vanished (deleted by a program that bypassed the
        // triggers) can only be pushed as a delete.
        let delete = is_delete || current.is_none();
        let entry = Entry {
            table,
            id,
            seq: row.get(2).map_err(err)?,
            version: row.get(3).map_err(err)?,
            delete,
            data: current,
            unreadable,
        };
        if !f(entry) {
            break;
        }
    }
    Ok(())
}

/// Marks confirmed entries that were not edited since they were read (their
/// `seq` is unchanged) as sent, and notes each record's version as the one the
/// site last synced ([`super::check`]). Called in the transaction after the
/// central confirmed the batch; [`delete_sent`] removes them at the end of the
/// push.
fn mark_sent(tx: &Tx, sent: &[Sent]) -> Result<u64, StoreError> {
    let err = |e| StoreError::sqlite("confirming pushed records", e);
    let mut n = 0;
    // No record is written while these are confirmed.
    let run = tx.confirming()?;
    for s in sent {
        let marked: Option<(String, String, bool)> = tx
            .conn()
            .prepare_cached(
                "UPDATE outbox SET state = 'sent' WHERE seq = ?1 AND version = ?2 AND state = 'pending' \
                 RETURNING table_name, record_id, action = 'Delete'",
            )
            .and_then(|mut st| {
                st.query_row(params![s.seq, s.version], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(err)?;
        let Some((table, id, delete)) = marked else {
            continue;
        };
        n += 1;
        let current: Option<String> = tx
            .conn()
            .prepare_cached("SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2")
            .and_then(|mut st| st.query_row(params![table, id], |r| r.get(0)).optional())
            .map_err(err)?;
        match (delete, current) {
            (false, Some(text)) => tx.mark_confirmed(&run, &table, &id, &text)?,
            _ => tx.forget_synced(&table, &id)?,
        }
    }
    Ok(n)
}

/// Deletes every sent entry, in one transaction: each page of the (table, ID)
/// index is written once per push, not once per batch.
pub(super) fn delete_sent(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("DELETE FROM outbox WHERE state = 'sent'")
        .and_then(|mut s| s.execute([]))
        .map(|n| n as u64)
        .map_err(|e| StoreError::sqlite("clearing pushed records", e))
}

/// Sets an entry aside (central refused it, or it is too large to send). Returns
/// whether an entry was found.
pub(super) fn reject(
    conn: &Connection,
    table: &str,
    id: &str,
    reason: &str,
) -> Result<bool, StoreError> {
    conn.execute(
        "UPDATE outbox SET state = 'rejected', reason = ?3 WHERE table_name = ?1 AND record_id = ?2",
        params![table, id, reason],
    )
    .map(|n| n > 0)
    .map_err(|e| StoreError::sqlite("setting a record aside", e))
}

/// Puts rejected entries back in the queue (all, or one record).
pub(super) fn retry(conn: &Connection, only: Option<(&str, &str)>) -> Result<u64, StoreError> {
    let n = match only {
        Some((t, id)) => conn.execute(
            "UPDATE outbox SET state = 'pending', reason = NULL \
             WHERE state = 'rejected' AND table_name = ?1 AND record_id = ?2",
            params![t, id],
        ),
        None => conn.execute(
            "UPDATE outbox SET state = 'pending', reason = NULL WHERE state = 'rejected'",
            [],
        ),
    };
    n.map(|n| n as u64)
        .map_err(|e| StoreError::sqlite("retrying rejected records", e))
}

/// A listing row for `fieldsync queue`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub seq: i64,
    pub table: String,
    pub id: String,
    pub action: String,
    pub state: String,
    pub reason: Option<String>,
}

pub(super) fn list(
    conn: &Connection,
    rejected_only: bool,
    limit: u64,
) -> Result<Vec<Listed>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, table_name, record_id, action, state, reason FROM outbox \
             WHERE state <> 'sent' AND (?1 = 0 OR state = 'rejected') ORDER BY seq LIMIT ?2",
        )
        .map_err(|e| StoreError::sqlite("listing the outbox", e))?;
    let rows = stmt
        .query_map(params![rejected_only as i64, limit as i64], |r| {
            Ok(Listed {
                seq: r.get(0)?,
                table: r.get(1)?,
                id: r.get(2)?,
                action: r.get(3)?,
                state: r.get(4)?,
                reason: r.get(5)?,
            })
        })
        .map_err(|e| StoreError::sqlite("listing the outbox", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| StoreError::sqlite("listing the outbox", e))
}

/// How many entries wait, in each state a person cares about.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Waiting to be pushed.
    pub pending: u64,
    /// Set aside: refused by the central or unsendable, waiting for a person.
    pub rejected: u64,
    /// A dispensary's transactions kept on the site (§9.7).
    pub held: u64,
}

impl Store {
    pub fn outbox_pending(&self) -> Result<u64, StoreError> {
        pending_count(self.conn())
    }

    pub fn outbox_counts(&self) -> Result<Counts, StoreError> {
        Ok(Counts {
            pending: pending_count(self.conn())?,
            rejected: rejected_count(self.conn())?,
            held: held_count(self.conn())?,
        })
    }

    /// Streams up to `limit` pending entries in push order (§7.3); `f` returns
    /// `false` to stop early. See [`for_each_pending`].
    pub fn for_each_pending(
        &self,
        limit: usize,
        f: impl FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        for_each_pending(self.conn(), limit, f)
    }

    /// Entries for `fieldsync queue` (not the sent ones), oldest first.
    pub fn outbox_list(&self, rejected_only: bool, limit: u64) -> Result<Vec<Listed>, StoreError> {
        list(self.conn(), rejected_only, limit)
    }

    /// Puts set-aside entries back in the queue (all, or one record).
    pub fn outbox_retry(&self, only: Option<(&str, &str)>) -> Result<u64, StoreError> {
        retry(self.conn(), only)
    }
}

impl Tx<'_> {
    /// Marks confirmed entries sent; see [`mark_sent`].
    pub fn mark_sent(&self, sent: &[Sent]) -> Result<u64, StoreError> {
        mark_sent(self, sent)
    }

    /// Deletes every sent entry; see [`delete_sent`].
    pub fn delete_sent(&self) -> Result<u64, StoreError> {
        delete_sent(self.conn())
    }

    /// Sets an entry aside with its reason; whether there was one.
    pub fn set_aside(&self, table: &str, id: &str, reason: &str) -> Result<bool, StoreError> {
        reject(self.conn(), table, id, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_pending(s: &Store) -> Vec<Sent> {
        let mut sent = vec![];
        for_each_pending(s.conn(), 100, |e| {
            sent.push(Sent {
                seq: e.seq,
                version: e.version,
            });
            true
        })
        .unwrap();
        sent
    }

    #[test]
    fn push_order_is_rank_then_seq_with_deletes_children_first() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        s.put("transact", &json!({"ID": "T1", "store_ID": "S"}))
            .unwrap();
        s.put("trans_line", &json!({"ID": "L1", "transaction_ID": "T1"}))
            .unwrap();
        s.put("transact", &json!({"ID": "T2", "store_ID": "S"}))
            .unwrap();
        s.put("trans_line", &json!({"ID": "L2", "transaction_ID": "T2"}))
            .unwrap();
        s.put("Location", &json!({"ID": "LOC", "store_ID": "S"}))
            .unwrap();
        s.delete("trans_line", "L2").unwrap();
        s.delete("transact", "T2").unwrap();
        let mut order = vec![];
        for_each_pending(s.conn(), 100, |e| {
            order.push(format!("{}{}", if e.delete { "-" } else { "+" }, e.id));
            true
        })
        .unwrap();
        assert_eq!(order, ["+LOC", "+T1", "+L1", "-L2", "-T2"]);
    }

    #[test]
    fn an_entry_edited_after_sending_stays() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        s.put("transact", &json!({"ID": "T1", "store_ID": "S"}))
            .unwrap();
        let sent = all_pending(&s);
        s.put(
            "transact",
            &json!({"ID": "T1", "comment": "edited during push"}),
        )
        .unwrap();
        let tx = s.tx().unwrap();
        assert_eq!(tx.mark_sent(&sent).unwrap(), 0);
        tx.commit().unwrap();
        assert_eq!(pending_count(s.conn()).unwrap(), 1);
        assert!(reject(s.conn(), "transact", "T1", "other_store").unwrap());
        assert_eq!(pending_count(s.conn()).unwrap(), 0);
        assert_eq!(
            list(s.conn(), true, 10).unwrap()[0].reason.as_deref(),
            Some("other_store")
        );
        assert_eq!(retry(s.conn(), None).unwrap(), 1);
        assert_eq!(pending_count(s.conn()).unwrap(), 1);
    }

    #[test]
    fn sent_entries_leave_at_the_end_and_an_edit_brings_them_back() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        for id in ["A", "B"] {
            s.put("transact", &json!({"ID": id, "store_ID": "S"}))
                .unwrap();
        }
        let sent = all_pending(&s);
        let tx = s.tx().unwrap();
        assert_eq!(tx.mark_sent(&sent).unwrap(), 2);
        tx.commit().unwrap();
        assert_eq!(
            pending_count(s.conn()).unwrap(),
            0,
            "sent entries are not pending"
        );
        s.put(
            "transact",
            &json!({"ID": "B", "comment": "edited after it was sent"}),
        )
        .unwrap();
        assert_eq!(
            pending_count(s.conn()).unwrap(),
            1,
            "the edit goes out again"
        );
        assert_eq!(delete_sent(s.conn()).unwrap(), 1, "only A was still sent");
        let left: Vec<String> = list(s.conn(), false, 10)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(left, ["B"]);
    }
}
