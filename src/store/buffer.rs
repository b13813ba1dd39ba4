//! The sync buffer: pulled records, durably stored before they are acknowledged or
//! the cursor moves past them, waiting for integration (protocol §5 steps 5–6, §7.4).
//!
//! What must hold: a record is written here in the same transaction that moves
//! the central cursor past it, or before its queue entry is acknowledged. Keys make
//! re-delivery harmless: a newer receipt of a record replaces the older one and
//! resets it to `pending`; a merge is keyed by both ids and never replaces an upsert.

use rusqlite::{params, Connection};

use crate::store::{registry, row, StoreError};

/// One received record, as the sync layer read it from its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Insert or update with the row's exact text as received.
    Upsert {
        table: &'a str,
        id: &'a str,
        data: &'a str,
    },
    Delete {
        table: &'a str,
        id: &'a str,
    },
    Merge {
        table: &'a str,
        keep: String,
        drop: String,
    },
    /// Cannot be understood; kept with the reason.
    Invalid {
        table: &'a str,
        id: &'a str,
        why: String,
    },
}

/// Writes one received record into the buffer. Records that cannot be understood
/// (unknown action, missing data, not a valid row) are kept as `invalid` with the
/// reason, visible in status, never integrated: quarantined, not crashed on.
/// Upserted rows are stored as the exact text received (§7.4 rev 2).
pub fn put(conn: &Connection, rec: &Incoming<'_>) -> Result<(), StoreError> {
    let (table, id, drop, action, data, error): (
        &str,
        &str,
        &str,
        &str,
        Option<&str>,
        Option<String>,
    ) = match rec {
        Incoming::Upsert { table, id, data } => match row::check(data, Some(id)) {
            Ok(_) => (table, id, "", "upsert", Some(data), None),
            Err(p) => (
                table,
                id,
                "",
                "invalid",
                None,
                Some(format!("recordData {p}")),
            ),
        },
        Incoming::Delete { table, id } => (table, id, "", "delete", None, None),
        Incoming::Merge { table, keep, drop } => (table, keep, drop, "merge", None, None),
        Incoming::Invalid { table, id, why } => {
            (table, id, "", "invalid", None, Some(truncate(why, 300)))
        }
    };
    let rank = i64::from(registry::order(table));
    conn.prepare_cached("UPDATE counter SET value = value + 1 WHERE name = 'receipt_seq'")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| StoreError::sqlite("buffer receipt counter", e))?;
    conn.prepare_cached(
        "INSERT INTO buffer (table_name, record_id, merge_drop, action, data, rank, received, state, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT value FROM counter WHERE name = 'receipt_seq'), \
                 CASE WHEN ?7 IS NULL THEN 'pending' ELSE 'failed' END, ?7) \
         ON CONFLICT (table_name, record_id, merge_drop) DO UPDATE SET \
             action = excluded.action, data = excluded.data, rank = excluded.rank, \
             received = excluded.received, state = excluded.state, error = excluded.error, attempts = 0",
    )
    .and_then(|mut s| s.execute(params![table, id, drop, action, data, rank, error]))
    .map(|_| ())
    .map_err(|e| StoreError::sqlite("writing the sync buffer", e))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
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

    #[test]
    fn newer_receipt_replaces_and_merges_do_not_collide() {
        let s = Store::open_in_memory().unwrap();
        let up = |data| Incoming::Upsert {
            table: "item",
            id: "A1",
            data,
        };
        put(s.conn(), &up(r#"{"ID":"A1","v":1}"#)).unwrap();
        put(s.conn(), &up(r#"{"ID":"A1","v":2}"#)).unwrap();
        put(
            s.conn(),
            &Incoming::Merge {
                table: "item",
                keep: "A1".into(),
                drop: "B7".into(),
            },
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
        let bad = [
            r#"{"ID":"OTHER"}"#,
            r#"{"ID":"A2","store_ID":"S","store_ID":"X"}"#,
            r#"[1]"#,
        ];
        for data in bad {
            put(
                s.conn(),
                &Incoming::Upsert {
                    table: "item",
                    id: "A2",
                    data,
                },
            )
            .unwrap();
            assert_eq!(
                counts(s.conn()).unwrap(),
                Counts {
                    pending: 0,
                    failed: 1
                },
                "{data}"
            );
        }
        put(
            s.conn(),
            &Incoming::Invalid {
                table: "item",
                id: "A1",
                why: "unknown action \"x\"".into(),
            },
        )
        .unwrap();
        let errs = first_errors(s.conn(), 10).unwrap();
        assert!(errs[0].2.contains("must be a JSON object"), "{errs:?}");
        assert!(errs[1].2.contains("unknown action"), "{errs:?}");
        let data: Option<String> = s
            .conn()
            .query_row("SELECT data FROM buffer WHERE record_id = 'A2'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            data, None,
            "an invalid row's text is not kept for integration"
        );
    }
}
