//! Writing received records into the store (protocol §7.4): as received,
//! exactly (rev 2: no reference dropped or rewritten), with this connection's
//! rules off, never captured. What to write is decided above, in
//! `sync::integration`; this is how.

use rusqlite::params;
use serde_json::Value;

use super::{StoreError, Tx};
use crate::legacy::owner::Rows;
use crate::legacy::registry;

impl Tx<'_> {
    /// Stores a received row (the exact text received) as the central's copy:
    /// it replaces any local edit of the record (transfer numbering takes only
    /// received documents, §7.5 rev 2), and is noted as the synced version
    /// ([`super::check`]).
    pub fn write_received(&self, table: &str, id: &str, text: &str) -> Result<(), StoreError> {
        self.unrule()?;
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO record (table_name, record_id, data, origin) VALUES (?1, ?2, ?3, 'sync') \
             ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data, origin = 'sync'",
        )
        .and_then(|mut s| s.execute(params![table, id, text]))
        .map_err(|e| StoreError::sqlite(format!("writing received {table} {id}"), e))?;
        conn.prepare_cached("DELETE FROM local_edit WHERE table_name = ?1 AND record_id = ?2")
            .and_then(|mut s| s.execute(params![table, id]))
            .map_err(|e| StoreError::sqlite("writing a received record", e))?;
        self.mark_synced(table, id, text, false)
    }

    /// Deletes a record on the central's word.
    pub fn delete_received(&self, table: &str, id: &str) -> Result<(), StoreError> {
        self.unrule()?;
        self.conn()
            .prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")
            .and_then(|mut s| s.execute(params![table, id]))
            .map_err(|e| StoreError::sqlite(format!("deleting received {table} {id}"), e))?;
        self.forget_synced(table, id)
    }

    /// Merge `drop` into `keep` (§7.4): every reference is repointed, joins that
    /// would become duplicates are dropped, the loser is deleted. Repeating it is
    /// a no-op.
    pub fn merge_received(&self, table: &str, keep: &str, drop: &str) -> Result<(), StoreError> {
        self.unrule()?;
        let conn = self.conn();
        let err = |e| StoreError::sqlite(format!("merging {table} {drop} into {keep}"), e);
        for field in registry::merge_reference_fields(table) {
            let path = format!("$.{field}");
            for (join, join_field, other) in registry::MERGE_JOINS {
                if join_field != field {
                    continue;
                }
                // A join row of the loser whose pair already exists for the keeper goes.
                conn.execute(
                    &format!(
                        "DELETE FROM record WHERE table_name = ?1 AND json_extract(data, '$.{field}') = ?3 \
                         AND EXISTS (SELECT 1 FROM record k WHERE k.table_name = ?1 \
                                     AND json_extract(k.data, '$.{field}') = ?2 \
                                     AND json_extract(k.data, '$.{other}') = json_extract(record.data, '$.{other}'))"
                    ),
                    params![join, keep, drop],
                )
                .map_err(err)?;
            }
            let repointed: Vec<(String, String, String)> = conn
                .prepare(
                    "UPDATE record SET data = json_set(data, ?1, ?2) WHERE json_extract(data, ?1) = ?3 \
                     RETURNING table_name, record_id, data",
                )
                .and_then(|mut s| {
                    s.query_map(params![path, keep, drop], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect()
                })
                .map_err(err)?;
            for (t, id, data) in repointed {
                // Repointed on the central's word: the central's copy says the same.
                let created_here = self.created_by_writer(&t, &id)? == Some(true);
                self.mark_synced(&t, &id, &data, created_here)?;
            }
        }
        conn.execute(
            "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
            params![table, drop],
        )
        .map_err(err)?;
        self.forget_synced(table, drop)
    }
}

/// The store as the rows a judgement looks at: a line's header, a patient.
impl Rows for Tx<'_> {
    type Error = StoreError;
    fn row(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        self.get(table, id)
    }
    fn created_by_writer(&self, table: &str, id: &str) -> Result<Option<bool>, StoreError> {
        if self.get(table, id)?.is_none() {
            return Ok(None);
        }
        self.conn()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM local_edit WHERE table_name = ?1 AND record_id = ?2)",
            )
            .and_then(|mut s| s.query_row(params![table, id], |r| r.get(0)))
            .map(Some)
            .map_err(|e| StoreError::sqlite("reading local edits", e))
    }
}
