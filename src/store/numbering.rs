//! The store's side of transfer numbering (protocol §7.5): which received
//! responding documents wait for a number, and giving one — the number, the
//! counter and the outbox entry in one transaction, the number written through
//! the ordinary local-write path so the triggers capture it. Which documents are
//! numbered, and when, is `sync::transfer`'s.

use rusqlite::{params, Connection};
use serde_json::json;

use super::{Store, StoreError};

/// A kind of responding document numbered on receipt.
#[derive(Debug, Clone, Copy)]
pub struct Numbering {
    pub table: &'static str,
    /// The responding document's `type` (`si`, `response`).
    pub doc_type: &'static str,
    /// The field holding its number (`invoice_num`, `serial_number`).
    pub number: &'static str,
    /// The field linking it to the initiating document.
    pub link: &'static str,
    /// The local counter of numbers given.
    pub counter: &'static str,
}

impl Store {
    /// Documents of `kind` in `store` received without a number (< 1) and not
    /// edited here since (`local_edit`): (id, link), the link "" when missing.
    /// A number stored as text (`"12"`) counts as that number.
    pub fn unnumbered(
        &self,
        kind: &Numbering,
        store: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let err = |e| StoreError::sqlite("finding transfers to number", e);
        let mut stmt = self
            .conn()
            .prepare(&format!(
                "SELECT record_id, coalesce(json_extract(data, '$.{link}'), '') FROM record r \
                 WHERE table_name = ?1 AND json_extract(data, '$.store_ID') = ?2 \
                   AND json_extract(data, '$.type') = ?3 \
                   AND coalesce(CAST(json_extract(data, '$.{number}') AS INTEGER), 0) < 1 \
                   AND NOT EXISTS (SELECT 1 FROM local_edit l \
                                   WHERE l.table_name = r.table_name AND l.record_id = r.record_id) \
                 ORDER BY record_id",
                link = kind.link,
                number = kind.number
            ))
            .map_err(err)?;
        let rows = stmt
            .query_map(params![kind.table, store, kind.doc_type], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Gives document `id` the store's next number of its kind, saves the
    /// counter and queues the change, in one transaction. Returns the number.
    pub fn give_number(
        &mut self,
        kind: &Numbering,
        id: &str,
        store: &str,
    ) -> Result<i64, StoreError> {
        let saved: i64 = self
            .agent()
            .query_row(
                "SELECT coalesce((SELECT value FROM counter WHERE name = ?1), 0)",
                [kind.counter],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::sqlite("reading the number counter", e))?;
        let tx = self.tx()?;
        let next = next_number(tx.conn(), kind, store, saved)?;
        tx.put_local(
            kind.table,
            &json!({"ID": id, kind.number: next}),
            "transfer numbering",
        )?;
        // The counter is the state file's, committed after the number: a cut
        // between them leaves the number in the store, where the next one is
        // counted from too.
        tx.agent()
            .execute(
                "INSERT INTO counter (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![kind.counter, next],
            )
            .map_err(|e| StoreError::sqlite("saving the number counter", e))?;
        tx.commit()?;
        Ok(next)
    }
}

/// max(saved counter, highest number in the store) + 1. Numbers are read as
/// integers whatever their JSON type (an app may store `"12"`); a store whose
/// highest number leaves none after it is an error, never a wrap-around.
fn next_number(
    conn: &Connection,
    kind: &Numbering,
    store: &str,
    saved: i64,
) -> Result<i64, StoreError> {
    let highest: i64 = conn
        .query_row(
            &format!(
                "SELECT max(?4, coalesce((SELECT max(CAST(json_extract(data, '$.{}') AS INTEGER)) FROM record \
                                      WHERE table_name = ?1 AND json_extract(data, '$.store_ID') = ?2 \
                                        AND json_extract(data, '$.type') = ?3), 0))",
                kind.number
            ),
            params![kind.table, store, kind.doc_type, saved],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::sqlite("reading the number counter", e))?;
    highest.checked_add(1).ok_or_else(|| StoreError::BadRecord {
        at: format!("{} numbering of store {store}", kind.table),
        what: format!(
            "the highest {} is {highest}, which leaves no next number; correct that document",
            kind.number
        ),
    })
}
