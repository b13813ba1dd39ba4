//! The sync buffer: pulled records, durably stored before they are acknowledged or
//! the cursor moves past them, waiting for integration (protocol §5 steps 5–6, §7.4).
//!
//! What must hold: a record is written here in the same transaction that moves
//! the central cursor past it, or before its queue entry is acknowledged. Keys make
//! re-delivery harmless: a newer receipt of a record replaces the older one and
//! resets it to `pending`; a merge is keyed by both ids and never replaces an upsert.

use rusqlite::{params, Connection};

use crate::error::StoreError;
use crate::store::registry;
use crate::wire::protocol::{Action, Merge, SyncRecord};

/// Writes one received record into the buffer. Records that cannot be understood
/// (unknown action, missing or mismatched data) are kept as `invalid` with the
/// reason, visible in status, never integrated: quarantined, not crashed on.
pub fn put(conn: &Connection, rec: &SyncRecord) -> Result<(), StoreError> {
    let rank = i64::from(registry::order(&rec.table_name));
    let (action, record_id, merge_drop, data, error) = classify(rec);
    conn.execute(
        "UPDATE counter SET value = value + 1 WHERE name = 'receipt_seq'",
        [],
    )
    .map_err(|e| StoreError::sqlite("buffer receipt counter", e))?;
    conn.prepare_cached(
        "INSERT INTO buffer (table_name, record_id, merge_drop, action, data, rank, received, state, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT value FROM counter WHERE name = 'receipt_seq'), \
                 CASE WHEN ?7 IS NULL THEN 'pending' ELSE 'failed' END, ?7) \
         ON CONFLICT (table_name, record_id, merge_drop) DO UPDATE SET \
             action = excluded.action, data = excluded.data, rank = excluded.rank, \
             received = excluded.received, state = excluded.state, error = excluded.error, attempts = 0",
    )
    .and_then(|mut s| s.execute(params![rec.table_name, record_id, merge_drop, action, data, rank, error]))
    .map(|_| ())
    .map_err(|e| StoreError::sqlite("writing the sync buffer", e))
}

type Classified = (&'static str, String, String, Option<String>, Option<String>);

fn classify(rec: &SyncRecord) -> Classified {
    let invalid = |why: String| {
        (
            "invalid",
            rec.record_id.clone(),
            String::new(),
            None,
            Some(why),
        )
    };
    if rec.table_name.is_empty() || rec.record_id.is_empty() {
        return invalid("record without tableName or recordId".into());
    }
    match Action::parse(&rec.action) {
        None => invalid(format!("unknown action {:?}", truncate(&rec.action))),
        Some(Action::Delete) => ("delete", rec.record_id.clone(), String::new(), None, None),
        Some(Action::Upsert) => match &rec.record_data {
            Some(serde_json::Value::Object(row)) => {
                if row.get("ID").and_then(|v| v.as_str()) != Some(rec.record_id.as_str()) {
                    return invalid("recordData.ID does not match recordId".into());
                }
                let text = serde_json::Value::Object(row.clone()).to_string();
                if text.len() > crate::store::MAX_RECORD_BYTES {
                    return invalid(format!(
                        "record is {} bytes, over the record limit",
                        text.len()
                    ));
                }
                (
                    "upsert",
                    rec.record_id.clone(),
                    String::new(),
                    Some(text),
                    None,
                )
            }
            _ => invalid("upsert without a recordData object".into()),
        },
        Some(Action::Merge) => match rec.record_data.clone().map(serde_json::from_value::<Merge>) {
            Some(Ok(m)) if !m.merge_id_to_keep.is_empty() && !m.merge_id_to_delete.is_empty() => (
                "merge",
                m.merge_id_to_keep,
                m.merge_id_to_delete,
                None,
                None,
            ),
            _ => invalid("merge without mergeIdToKeep and mergeIdToDelete".into()),
        },
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub failed: u64,
}

pub fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    conn.query_row(
        "SELECT coalesce(sum(state = 'pending'), 0), coalesce(sum(state = 'failed'), 0) FROM buffer",
        [],
        |r| Ok(Counts { pending: r.get::<_, i64>(0)? as u64, failed: r.get::<_, i64>(1)? as u64 }),
    )
    .map_err(|e| StoreError::sqlite("counting the sync buffer", e))
}

/// The first `n` records that failed to integrate: (table, id, error, attempts).
pub fn first_errors(
    conn: &Connection,
    n: u32,
) -> Result<Vec<(String, String, String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT table_name, record_id, coalesce(error, ''), attempts FROM buffer \
             WHERE state = 'failed' ORDER BY received LIMIT ?1",
        )
        .map_err(|e| StoreError::sqlite("reading integration errors", e))?;
    let rows = stmt
        .query_map([n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(|e| StoreError::sqlite("reading integration errors", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| StoreError::sqlite("reading integration errors", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    fn rec(table: &str, id: &str, action: &str, data: Option<serde_json::Value>) -> SyncRecord {
        SyncRecord {
            id: None,
            sync_out_id: Some("1".into()),
            table_name: table.into(),
            record_id: id.into(),
            action: action.into(),
            record_data: data,
        }
    }

    #[test]
    fn newer_receipt_replaces_and_merges_do_not_collide() {
        let s = Store::open_in_memory().unwrap();
        put(
            s.conn(),
            &rec("item", "A1", "insert", Some(json!({"ID": "A1", "v": 1}))),
        )
        .unwrap();
        put(
            s.conn(),
            &rec("item", "A1", "UPDATE", Some(json!({"ID": "A1", "v": 2}))),
        )
        .unwrap();
        put(
            s.conn(),
            &rec(
                "item",
                "A1",
                "merge",
                Some(json!({"mergeIdToKeep": "A1", "mergeIdToDelete": "B7"})),
            ),
        )
        .unwrap();
        let n: i64 = s
            .conn()
            .query_row("SELECT count(*) FROM buffer", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let data: String = s
            .conn()
            .query_row("SELECT data FROM buffer WHERE action = 'upsert'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(data.contains("\"v\":2"));
    }

    #[test]
    fn malformed_records_are_quarantined() {
        let s = Store::open_in_memory().unwrap();
        put(s.conn(), &rec("item", "A1", "frobnicate", None)).unwrap();
        put(
            s.conn(),
            &rec("item", "A2", "update", Some(json!({"ID": "OTHER"}))),
        )
        .unwrap();
        put(s.conn(), &rec("item", "A3", "update", None)).unwrap();
        put(s.conn(), &rec("item", "A4", "merge", Some(json!({})))).unwrap();
        assert_eq!(
            counts(s.conn()).unwrap(),
            Counts {
                pending: 0,
                failed: 4
            }
        );
        let errs = first_errors(s.conn(), 10).unwrap();
        assert!(errs[0].2.contains("unknown action"));
        assert!(errs[1].2.contains("does not match"));
    }
}
