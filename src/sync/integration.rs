//! Integration: applying received records to the store (protocol §7.4).
//!
//! A pulled record is applied where it arrives ([`receive`]), in the transaction
//! that stores its page, so it is written once. What cannot be applied yet keeps
//! its error and attempt count in the buffer, and [`integrate`] retries the
//! buffer on every pass: upserts by rank (parents before children), deletes in
//! reverse rank, merges last; each row gets a savepoint, about
//! [`ROWS_PER_TRANSACTION`] rows share a transaction, a row that fails again
//! waits again, the rest goes on. Writes run with the rules dropped inside their
//! transaction: they are never captured for push (nothing received is echoed).

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::store::buffer::{self, Incoming};
use crate::store::registry::{self, Kind, Owner};
use crate::store::{self, row, Store, StoreError};

/// Rows per integration transaction. Defaults to 500 (§7.4): large enough to
/// amortise the fsync, small enough that the clinic's app waits little.
pub const ROWS_PER_TRANSACTION: usize = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub integrated: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// What integration needs to know about the site.
#[derive(Debug, Clone)]
pub struct Site {
    pub active_store: Option<String>,
    /// After initialisation the local copy of the active store's records wins.
    pub initialised: bool,
}

/// Why one row did not integrate: the row itself (kept with its error, retried
/// next pass), or the store under it (the pass stops; nothing of this
/// transaction is kept).
enum RowError {
    Bad(String),
    Store(StoreError),
}

impl From<StoreError> for RowError {
    fn from(e: StoreError) -> Self {
        RowError::Store(e)
    }
}

/// A SQLite failure on one row: a constraint is that row's problem; anything else
/// (I/O, disk full, locked) is the store's.
fn sql(e: rusqlite::Error) -> RowError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            RowError::Bad(e.to_string())
        }
        _ => RowError::Store(StoreError::sqlite("integrating a record", e)),
    }
}

struct Row {
    table: String,
    id: String,
    merge_drop: String,
    action: String,
    data: Option<String>,
    key: (i64, i64, i64),
}

/// One pass over the pending and failed rows of the buffer.
pub fn integrate(
    store: &mut Store,
    site: &Site,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    // Keyset paging over (phase, rank key, receipt): stable while rows are removed.
    let mut after = (-1i64, i64::MIN, -1i64);
    loop {
        let rows = next_rows(store.conn(), after)?;
        if rows.is_empty() {
            break;
        }
        after = rows.last().map(|r| r.key).unwrap_or(after);
        store.without_rules(|tx| {
            for row in &rows {
                settle(tx, site, row, &mut report, |_| Ok(()))?;
            }
            crash_point!("integration-mid");
            Ok(())
        })?;
        crash_point!("integration-committed");
        progress(report.integrated + report.failed + report.ignored);
    }
    Ok(report)
}

/// Applies one row under a savepoint. Applied or ignored: any older receipt of
/// the same record waiting in the buffer is stale and goes. Refused: the row's
/// changes are rolled back, `keep` makes sure the buffer holds it, and it is
/// marked failed with the reason, so one bad row never blocks the rest.
fn settle(
    tx: &Connection,
    site: &Site,
    row: &Row,
    report: &mut Report,
    keep: impl FnOnce(&Connection) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    tx.execute_batch("SAVEPOINT row")
        .map_err(|e| StoreError::sqlite("savepoint", e))?;
    match apply(tx, site, row) {
        Ok(outcome) => {
            tx.execute_batch("RELEASE row")
                .map_err(|e| StoreError::sqlite("savepoint", e))?;
            tx.prepare_cached(
                "DELETE FROM buffer WHERE table_name = ?1 AND record_id = ?2 AND merge_drop = ?3",
            )
            .and_then(|mut st| st.execute(params![row.table, row.id, row.merge_drop]))
            .map_err(|e| StoreError::sqlite("clearing the buffer", e))?;
            match outcome {
                Outcome::Applied => report.integrated += 1,
                Outcome::Ignored(why) => {
                    log::warn!("ignored received {} {}: {why}", row.table, row.id);
                    report.ignored += 1;
                }
            }
        }
        Err(RowError::Store(e)) => return Err(e),
        Err(RowError::Bad(why)) => {
            tx.execute_batch("ROLLBACK TO row; RELEASE row")
                .map_err(|e| StoreError::sqlite("savepoint", e))?;
            keep(tx)?;
            tx.execute(
                "UPDATE buffer SET state = 'failed', error = ?4, attempts = attempts + 1 \
                 WHERE table_name = ?1 AND record_id = ?2 AND merge_drop = ?3",
                params![row.table, row.id, row.merge_drop, why],
            )
            .map_err(|e| StoreError::sqlite("recording an integration error", e))?;
            report.failed += 1;
        }
    }
    Ok(())
}

/// A received record applied where it arrives, inside the transaction that
/// stores its page and moves the cursor (or precedes its acknowledgement), so a
/// pulled row is written once instead of into the buffer and again into the
/// store. What cannot be applied yet (a line before its header) goes to the
/// buffer, failed with its reason, for the next pass; what cannot be read goes
/// there as invalid. The caller's transaction must run without the rules
/// ([`crate::store::Store::tx_unruled`]).
pub fn receive(
    tx: &Connection,
    site: &Site,
    rec: &Incoming<'_>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let row = match rec {
        Incoming::Invalid { .. } => return buffer::put(tx, rec),
        Incoming::Upsert { table, id, data } => {
            if row::check(data, Some(id)).is_err() {
                return buffer::put(tx, rec); // kept as invalid, with the reason
            }
            Row {
                table: table.to_string(),
                id: id.to_string(),
                merge_drop: String::new(),
                action: "upsert".into(),
                data: Some(data.to_string()),
                key: (0, 0, 0),
            }
        }
        Incoming::Delete { table, id } => Row {
            table: table.to_string(),
            id: id.to_string(),
            merge_drop: String::new(),
            action: "delete".into(),
            data: None,
            key: (0, 0, 0),
        },
        Incoming::Merge { table, keep, drop } => Row {
            table: table.to_string(),
            id: keep.clone(),
            merge_drop: drop.clone(),
            action: "merge".into(),
            data: None,
            key: (0, 0, 0),
        },
    };
    // A failed row is kept in the buffer as received, for the next pass.
    settle(tx, site, &row, report, |tx| buffer::put(tx, rec))?;
    crash_point!("integration-mid");
    Ok(())
}

fn next_rows(conn: &Connection, after: (i64, i64, i64)) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT table_name, record_id, merge_drop, action, data, phase, rank_key, received FROM ( \
               SELECT *, CASE action WHEN 'upsert' THEN 0 WHEN 'delete' THEN 1 ELSE 2 END AS phase, \
                         CASE action WHEN 'upsert' THEN rank WHEN 'delete' THEN -rank ELSE 0 END AS rank_key \
               FROM buffer WHERE action <> 'invalid') \
             WHERE (phase, rank_key, received) > (?1, ?2, ?3) \
             ORDER BY phase, rank_key, received LIMIT ?4",
        )
        .map_err(|e| StoreError::sqlite("reading the sync buffer", e))?;
    let rows = stmt
        .query_map(
            params![after.0, after.1, after.2, ROWS_PER_TRANSACTION as i64],
            |r| {
                Ok(Row {
                    table: r.get(0)?,
                    id: r.get(1)?,
                    merge_drop: r.get(2)?,
                    action: r.get(3)?,
                    data: r.get(4)?,
                    key: (r.get(5)?, r.get(6)?, r.get(7)?),
                })
            },
        )
        .map_err(|e| StoreError::sqlite("reading the sync buffer", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| StoreError::sqlite("reading the sync buffer", e))
}

enum Outcome {
    Applied,
    Ignored(String),
}

fn apply(tx: &Connection, site: &Site, row: &Row) -> Result<Outcome, RowError> {
    match row.action.as_str() {
        "upsert" => {
            let text = row.data.as_deref().unwrap_or("");
            let data: Value =
                serde_json::from_str(text).map_err(|e| RowError::Bad(format!("bad JSON: {e}")))?;
            let existing = store::get_record(tx, &row.table, &row.id)?;
            if site.initialised {
                if let Some(old) = &existing {
                    // §7.4: the local copy of the active store's own records is
                    // authoritative; only a change that moves the record elsewhere
                    // (a store moved off this site) is taken.
                    if edited_here(&row.table, old)
                        && owned_here(tx, site, &row.table, old)?
                        && owned_here(tx, site, &row.table, &data)?
                    {
                        return Ok(Outcome::Ignored(
                            "local copy of this site's own record is authoritative".into(),
                        ));
                    }
                }
            }
            if let Some(Owner::Parent { field, table, .. }) =
                registry::lookup(&row.table).map(|t| t.owner)
            {
                let parent_id = data.get(field).and_then(|v| v.as_str()).unwrap_or("");
                if store::get_record(tx, table, parent_id)?.is_none() {
                    return Err(RowError::Bad(format!(
                        "missing parent {table} {parent_id:?}; retried when it arrives"
                    )));
                }
            }
            // Stored exactly as received (§7.4 rev 2): no reference is dropped or
            // rewritten, even one to a row this site will never hold.
            tx.prepare_cached(
                "INSERT INTO record (table_name, record_id, data, origin) VALUES (?1, ?2, ?3, 'sync') \
                 ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data, origin = 'sync'",
            )
            .and_then(|mut s| s.execute(params![row.table, row.id, text]))
            .map_err(sql)?;
            // A received copy replaces any local edit: it is the central's now
            // (transfer numbering takes only received documents, §7.5 rev 2).
            tx.prepare_cached("DELETE FROM local_edit WHERE table_name = ?1 AND record_id = ?2")
                .and_then(|mut s| s.execute(params![row.table, row.id]))
                .map_err(sql)?;
            Ok(Outcome::Applied)
        }
        "delete" => {
            if let Some(old) = store::get_record(tx, &row.table, &row.id)? {
                if site.initialised
                    && edited_here(&row.table, &old)
                    && owned_here(tx, site, &row.table, &old)?
                {
                    return Ok(Outcome::Ignored(
                        "the central asked to delete this site's own record".into(),
                    ));
                }
                tx.execute(
                    "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
                    params![row.table, row.id],
                )
                .map_err(sql)?;
            }
            Ok(Outcome::Applied)
        }
        "merge" => merge(tx, &row.table, &row.id, &row.merge_drop).map(|_| Outcome::Applied),
        other => Err(RowError::Bad(format!("cannot integrate action {other}"))),
    }
}

/// Kinds this site edits when it owns the row; central store data (`store`,
/// `pref`) owned by the active store is still the central's to change.
fn edited_here(table: &str, row: &Value) -> bool {
    matches!(
        registry::row_kind(table, row),
        Kind::Store | Kind::Patient | Kind::Message
    )
}

fn owned_here(tx: &Connection, site: &Site, table: &str, row: &Value) -> Result<bool, StoreError> {
    let Some(active) = site.active_store.as_deref() else {
        return Ok(false);
    };
    Ok(owner_of(tx, table, row)?.as_deref() == Some(active))
}

/// The owning store of a row, following a parent where the registry says so.
pub fn owner_of(tx: &Connection, table: &str, row: &Value) -> Result<Option<String>, StoreError> {
    let field_str = |v: &Value, f: &str| v.get(f).and_then(|x| x.as_str()).map(str::to_string);
    Ok(match registry::lookup(table).map(|t| t.owner) {
        Some(Owner::Field(f)) => field_str(row, f),
        Some(Owner::Parent {
            field,
            table,
            parent_field,
        }) => {
            let pid = field_str(row, field).unwrap_or_default();
            store::get_record(tx, table, &pid)?.and_then(|p| field_str(&p, parent_field))
        }
        _ => None,
    })
}

/// Merge `drop` into `keep` (§7.4): every reference is repointed, joins that would
/// become duplicates are dropped, the loser is deleted. Repeating it is a no-op.
fn merge(tx: &Connection, table: &str, keep: &str, drop: &str) -> Result<(), RowError> {
    for field in registry::merge_reference_fields(table) {
        let path = format!("$.{field}");
        for (join, join_field, other) in registry::MERGE_JOINS {
            if join_field != field {
                continue;
            }
            // A join row of the loser whose pair already exists for the keeper goes.
            tx.execute(
                &format!(
                    "DELETE FROM record WHERE table_name = ?1 AND json_extract(data, '$.{field}') = ?3 \
                     AND EXISTS (SELECT 1 FROM record k WHERE k.table_name = ?1 \
                                 AND json_extract(k.data, '$.{field}') = ?2 \
                                 AND json_extract(k.data, '$.{other}') = json_extract(record.data, '$.{other}'))"
                ),
                params![join, keep, drop],
            )
            .map_err(sql)?;
        }
        tx.execute(
            "UPDATE record SET data = json_set(data, ?1, ?2) WHERE json_extract(data, ?1) = ?3",
            params![path, keep, drop],
        )
        .map_err(sql)?;
    }
    tx.execute(
        "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
        params![table, drop],
    )
    .map_err(sql)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::buffer;
    use serde_json::json;

    fn receive(s: &Store, table: &str, action: &str, data: Value) {
        let id = data
            .get("ID")
            .and_then(|v| v.as_str())
            .unwrap_or("M")
            .to_string();
        let text = data.to_string();
        let rec = if action == "delete" {
            buffer::Incoming::Delete { table, id: &id }
        } else {
            buffer::Incoming::Upsert {
                table,
                id: &id,
                data: &text,
            }
        };
        buffer::put(s.conn(), &rec).unwrap();
    }

    fn site() -> Site {
        Site {
            active_store: Some("S".into()),
            initialised: true,
        }
    }

    #[test]
    fn a_line_waits_for_its_parent_and_the_rest_goes_on() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S").unwrap();
        receive(
            &s,
            "trans_line",
            "insert",
            json!({"ID": "L1", "transaction_ID": "T9"}),
        );
        receive(&s, "unit", "insert", json!({"ID": "U1"}));
        let r = integrate(&mut s, &site(), |_| {}).unwrap();
        assert_eq!((r.integrated, r.failed), (1, 1));
        let errs = buffer::first_errors(s.conn(), 5).unwrap();
        assert!(errs[0].2.contains("missing parent transact"), "{:?}", errs);
        receive(
            &s,
            "transact",
            "insert",
            json!({"ID": "T9", "store_ID": "OTHER"}),
        );
        let r = integrate(&mut s, &site(), |_| {}).unwrap();
        assert_eq!((r.integrated, r.failed), (2, 0));
        assert!(s.get("trans_line", "L1").unwrap().is_some());
        assert_eq!(
            crate::store::outbox::pending_count(s.conn()).unwrap(),
            0,
            "no echo"
        );
    }

    #[test]
    fn own_records_are_not_overwritten_after_initialisation() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S").unwrap();
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S", "comment": "local"}),
        )
        .unwrap();
        receive(
            &s,
            "transact",
            "update",
            json!({"ID": "T1", "store_ID": "S", "comment": "central"}),
        );
        assert_eq!(integrate(&mut s, &site(), |_| {}).unwrap().ignored, 1);
        receive(&s, "transact", "delete", json!({"ID": "T1"}));
        assert_eq!(integrate(&mut s, &site(), |_| {}).unwrap().ignored, 1);
        assert_eq!(
            s.get("transact", "T1").unwrap().unwrap()["comment"],
            "local"
        );
    }

    #[test]
    fn merge_repoints_and_is_idempotent() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S").unwrap();
        receive(&s, "item", "insert", json!({"ID": "A1"}));
        receive(&s, "item", "insert", json!({"ID": "B7"}));
        receive(
            &s,
            "item_store_join",
            "insert",
            json!({"ID": "J1", "item_ID": "A1", "store_ID": "S"}),
        );
        receive(
            &s,
            "item_store_join",
            "insert",
            json!({"ID": "J2", "item_ID": "B7", "store_ID": "S"}),
        );
        receive(
            &s,
            "item_line",
            "insert",
            json!({"ID": "IL", "item_ID": "B7", "store_ID": "S"}),
        );
        integrate(
            &mut s,
            &Site {
                active_store: Some("S".into()),
                initialised: false,
            },
            |_| {},
        )
        .unwrap();
        for _ in 0..2 {
            let m = buffer::Incoming::Merge {
                table: "item",
                keep: "A1".into(),
                drop: "B7".into(),
            };
            buffer::put(s.conn(), &m).unwrap();
            let r = integrate(&mut s, &site(), |_| {}).unwrap();
            assert_eq!(r.failed, 0);
        }
        assert!(s.get("item", "B7").unwrap().is_none());
        assert_eq!(s.get("item_line", "IL").unwrap().unwrap()["item_ID"], "A1");
        assert!(
            s.get("item_store_join", "J2").unwrap().is_none(),
            "duplicate join dropped"
        );
        assert!(s.get("item_store_join", "J1").unwrap().is_some());
        assert_eq!(
            crate::store::outbox::pending_count(s.conn()).unwrap(),
            0,
            "merges are not echoed"
        );
    }
}
