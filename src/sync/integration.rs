//! Integration: applying received records to the store (protocol §7.4).
//!
//! A pulled record is applied where it arrives ([`receive`]), in the transaction
//! that stores its page, so it is written once. What cannot be applied yet keeps
//! its error and attempt count in the buffer, and [`integrate`] retries the
//! buffer on every pass: upserts by rank (parents before children), deletes in
//! reverse rank, merges last; each row gets a savepoint, about
//! [`ROWS_PER_TRANSACTION`] rows share a transaction, a row that fails again
//! waits again, the rest goes on. Received records are written with this
//! connection's rules off ([`Store::receiving`]): they are never captured for
//! push (nothing received is echoed).
//!
//! This module decides what a received record does to the store (applied,
//! ignored, or not yet); the store's `received` operations do it.

use serde_json::Value;

use crate::legacy::owner;
use crate::legacy::registry::{self, Kind, Owner};
use crate::store::buffer::{Action, Buffered, Incoming, Position};
use crate::store::{Store, StoreError, Tx};

/// Rows per integration transaction. Defaults to 500 (§7.4): large enough to
/// amortise the fsync, small enough that the clinic's app waits little.
pub const ROWS_PER_TRANSACTION: usize = 500;

/// What integration did, in one pass or as records arrived.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
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

/// What became of one received record.
enum Applied {
    Written,
    Ignored(String),
}

/// Why one record did not integrate: the record itself (kept with its error,
/// retried next pass), or the store under it (the pass stops; nothing of this
/// transaction is kept).
enum RowError {
    NotYet(String),
    Store(StoreError),
}

impl From<StoreError> for RowError {
    fn from(e: StoreError) -> Self {
        match e {
            // A constraint refusing the row is that row's problem.
            StoreError::Constraint(m) => RowError::NotYet(m),
            e => RowError::Store(e),
        }
    }
}

/// One pass over the pending and failed rows of the buffer.
pub fn integrate(
    store: &mut Store,
    site: &Site,
    mut progress: impl FnMut(u64),
) -> Result<Tally, StoreError> {
    let mut tally = Tally::default();
    let mut after = Position::START;
    loop {
        let rows = store.buffered(after, ROWS_PER_TRANSACTION)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.position();
        let tx = store.receiving()?;
        for row in &rows {
            apply_one(&tx, site, row, &mut tally, |_| Ok(()))?;
        }
        crash_point!("integration-mid");
        tx.commit()?;
        crash_point!("integration-committed");
        progress(tally.integrated + tally.failed + tally.ignored);
    }
    Ok(tally)
}

/// A received record applied where it arrives, inside the transaction that
/// stores its page and moves the cursor (or precedes its acknowledgement), so a
/// pulled row is written once instead of into the buffer and again into the
/// store. What cannot be applied yet (a line before its header) goes to the
/// buffer, failed with its reason, for the next pass; what cannot be read goes
/// there as invalid.
pub fn receive(
    tx: &Tx,
    site: &Site,
    rec: &Incoming<'_>,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let Some(row) = Buffered::from_incoming(rec) else {
        return tx.buffer(rec); // kept as invalid, with the reason
    };
    // A failed row is kept in the buffer as received, for the next pass.
    apply_one(tx, site, &row, tally, |tx| tx.buffer(rec))?;
    crash_point!("integration-mid");
    Ok(())
}

/// Applies one row under a savepoint. Applied or ignored: any older receipt of
/// the same record waiting in the buffer is stale and goes. Not applicable yet:
/// the row's changes are rolled back, `keep` makes sure the buffer holds it, and
/// it is marked failed with the reason, so one bad row never blocks the rest.
fn apply_one(
    tx: &Tx,
    site: &Site,
    row: &Buffered,
    tally: &mut Tally,
    keep: impl FnOnce(&Tx) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    match tx.savepoint(|tx| apply(tx, site, row)) {
        Ok(applied) => {
            tx.buffer_done(row)?;
            match applied {
                Applied::Written => tally.integrated += 1,
                Applied::Ignored(why) => {
                    log::warn!("ignored received {} {}: {why}", row.table, row.id);
                    tally.ignored += 1;
                }
            }
        }
        Err(RowError::Store(e)) => return Err(e),
        Err(RowError::NotYet(why)) => {
            keep(tx)?;
            tx.buffer_failed(row, &why)?;
            tally.failed += 1;
        }
    }
    Ok(())
}

fn apply(tx: &Tx, site: &Site, row: &Buffered) -> Result<Applied, RowError> {
    // A change this site made and has not pushed yet wins, whatever the kind of
    // record: it goes to the central next, and a received copy written now
    // would be pushed back as if it were the site's (issue 26). A delete stays
    // a delete.
    if row.action != Action::Merge {
        if let Some(delete) = tx.waiting_change(&row.table, &row.id)? {
            return Ok(Applied::Ignored(if delete {
                "this site deleted it and the delete waits to be pushed".into()
            } else {
                "this site's own change waits to be pushed, and wins".into()
            }));
        }
    }
    match row.action {
        Action::Upsert => {
            let text = row.data.as_deref().unwrap_or("");
            let data: Value = serde_json::from_str(text)
                .map_err(|e| RowError::NotYet(format!("bad JSON: {e}")))?;
            if let Some(old) = tx.get(&row.table, &row.id)? {
                // §7.4: the local copy of the active store's own records is
                // authoritative; only a change that moves the record elsewhere
                // (a store moved off this site) is taken.
                if authoritative_here(tx, site, &row.table, &old)?
                    && owned_here(tx, site, &row.table, &data)?
                {
                    return Ok(Applied::Ignored(
                        "local copy of this site's own record is authoritative".into(),
                    ));
                }
            }
            if let Some(Owner::Parent { field, table, .. }) =
                registry::lookup(&row.table).map(|t| t.owner)
            {
                let parent_id = owner::field(&data, field);
                if tx.get(table, parent_id)?.is_none() {
                    return Err(RowError::NotYet(format!(
                        "missing parent {table} {parent_id:?}; retried when it arrives"
                    )));
                }
            }
            // Stored exactly as received (§7.4 rev 2): no reference is dropped or
            // rewritten, even one to a row this site will never hold.
            tx.write_received(&row.table, &row.id, text)?;
            Ok(Applied::Written)
        }
        Action::Delete => {
            if let Some(old) = tx.get(&row.table, &row.id)? {
                if authoritative_here(tx, site, &row.table, &old)? {
                    return Ok(Applied::Ignored(
                        "the central asked to delete this site's own record".into(),
                    ));
                }
                tx.delete_received(&row.table, &row.id)?;
            }
            Ok(Applied::Written)
        }
        Action::Merge => {
            tx.merge_received(&row.table, &row.id, &row.merge_drop)?;
            Ok(Applied::Written)
        }
    }
}

/// Whether this site's copy of `row` wins over a received one: after
/// initialisation, a record of a kind this site edits (store data, patients,
/// messages — central store data such as `store` and `pref` is still the
/// central's to change) owned by its active store.
fn authoritative_here(tx: &Tx, site: &Site, table: &str, row: &Value) -> Result<bool, StoreError> {
    Ok(site.initialised
        && matches!(
            registry::row_kind(table, row),
            Kind::Store | Kind::Patient | Kind::Message
        )
        && owned_here(tx, site, table, row)?)
}

fn owned_here(tx: &Tx, site: &Site, table: &str, row: &Value) -> Result<bool, StoreError> {
    let Some(active) = site.active_store.as_deref() else {
        return Ok(false);
    };
    Ok(owner::owner_of(table, row, tx)?.as_deref() == Some(active))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn receive_all(s: &mut Store, site: &Site, recs: &[(&str, &str, Value)]) -> Tally {
        let mut tally = Tally::default();
        let tx = s.receiving().unwrap();
        for (table, action, data) in recs {
            let id = data.get("ID").and_then(|v| v.as_str()).unwrap_or("M");
            let text = data.to_string();
            let rec = if *action == "delete" {
                Incoming::Delete { table, id }
            } else {
                Incoming::Upsert {
                    table,
                    id,
                    data: &text,
                }
            };
            super::receive(&tx, site, &rec, &mut tally).unwrap();
        }
        tx.commit().unwrap();
        tally
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
        s.set_site_identity(1, "S", None).unwrap();
        let t = receive_all(
            &mut s,
            &site(),
            &[
                (
                    "trans_line",
                    "insert",
                    json!({"ID": "L1", "transaction_ID": "T9"}),
                ),
                ("unit", "insert", json!({"ID": "U1"})),
            ],
        );
        assert_eq!((t.integrated, t.failed), (1, 1));
        let errs = s.buffer_errors(5).unwrap();
        assert!(
            errs[0].error.contains("missing parent transact"),
            "{errs:?}"
        );
        receive_all(
            &mut s,
            &site(),
            &[(
                "transact",
                "insert",
                json!({"ID": "T9", "store_ID": "OTHER"}),
            )],
        );
        let r = integrate(&mut s, &site(), |_| {}).unwrap();
        assert_eq!((r.integrated, r.failed), (1, 0));
        assert!(s.get("trans_line", "L1").unwrap().is_some());
        assert_eq!(s.outbox_pending().unwrap(), 0, "no echo");
    }

    #[test]
    fn own_records_are_not_overwritten_after_initialisation() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S", "comment": "local"}),
        )
        .unwrap();
        let t = receive_all(
            &mut s,
            &site(),
            &[
                (
                    "transact",
                    "update",
                    json!({"ID": "T1", "store_ID": "S", "comment": "central"}),
                ),
                ("transact", "delete", json!({"ID": "T1"})),
            ],
        );
        assert_eq!(t.ignored, 2);
        assert_eq!(
            s.get("transact", "T1").unwrap().unwrap()["comment"],
            "local"
        );
    }

    #[test]
    fn merge_repoints_and_is_idempotent() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        let fresh = Site {
            active_store: Some("S".into()),
            initialised: false,
        };
        receive_all(
            &mut s,
            &fresh,
            &[
                ("item", "insert", json!({"ID": "A1"})),
                ("item", "insert", json!({"ID": "B7"})),
                (
                    "item_store_join",
                    "insert",
                    json!({"ID": "J1", "item_ID": "A1", "store_ID": "S"}),
                ),
                (
                    "item_store_join",
                    "insert",
                    json!({"ID": "J2", "item_ID": "B7", "store_ID": "S"}),
                ),
                (
                    "item_line",
                    "insert",
                    json!({"ID": "IL", "item_ID": "B7", "store_ID": "S"}),
                ),
            ],
        );
        for _ in 0..2 {
            let tx = s.receiving().unwrap();
            let mut tally = Tally::default();
            let m = Incoming::Merge {
                table: "item",
                keep: "A1".into(),
                drop: "B7".into(),
            };
            super::receive(&tx, &site(), &m, &mut tally).unwrap();
            tx.commit().unwrap();
            assert_eq!(tally.failed, 0);
        }
        assert!(s.get("item", "B7").unwrap().is_none());
        assert_eq!(s.get("item_line", "IL").unwrap().unwrap()["item_ID"], "A1");
        assert!(
            s.get("item_store_join", "J2").unwrap().is_none(),
            "duplicate join dropped"
        );
        assert!(s.get("item_store_join", "J1").unwrap().is_some());
        assert_eq!(s.outbox_pending().unwrap(), 0, "merges are not echoed");
    }
}
