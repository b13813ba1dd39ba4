//! The sync buffer: received records that could not be applied where they
//! arrived (a line before its header) or cannot be read, waiting for the next
//! integration pass (protocol §5 steps 5–6, §7.4).
//!
//! It lives in the agent's own state file: a row another program put here would
//! be applied with the rules off (issue 26).
//!
//! What must hold: a record is written here in the same transaction that moves
//! the central cursor past it (the state file commits after the shared one), or
//! before its queue entry is acknowledged. Keys make re-delivery harmless: a
//! newer receipt of a record replaces the older one and resets it to `pending`;
//! a merge is keyed by both ids and never replaces an upsert.

use rusqlite::{params, Connection};

use super::{Store, StoreError, Tx};
use crate::legacy::{registry, row};

/// Longest reason kept for a record that cannot be read (characters).
const MAX_REASON_CHARS: usize = 300;

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

/// What a buffered record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Upsert,
    Delete,
    Merge,
}

/// A record waiting in the buffer, or one just received (see
/// [`Buffered::from_incoming`]): its key, what it asks for, and the row text.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub table: String,
    /// The record id; for a merge, the id kept.
    pub id: String,
    /// For a merge, the id merged away; "" otherwise.
    pub merge_drop: String,
    pub action: Action,
    pub data: Option<String>,
    at: Position,
}

impl Buffered {
    /// A received record as integration applies it; `None` for one that cannot
    /// be read or is not a valid row (those go to the buffer as invalid).
    pub fn from_incoming(rec: &Incoming<'_>) -> Option<Buffered> {
        let (table, id, merge_drop, action, data) = match rec {
            Incoming::Invalid { .. } => return None,
            Incoming::Upsert { table, id, data } => {
                row::check(data, Some(id)).ok()?;
                (
                    table,
                    id.to_string(),
                    String::new(),
                    Action::Upsert,
                    Some(data.to_string()),
                )
            }
            Incoming::Delete { table, id } => {
                (table, id.to_string(), String::new(), Action::Delete, None)
            }
            Incoming::Merge { table, keep, drop } => {
                (table, keep.clone(), drop.clone(), Action::Merge, None)
            }
        };
        Some(Buffered {
            table: table.to_string(),
            id,
            merge_drop,
            action,
            data,
            at: Position::START,
        })
    }
}

/// Where a pass over the buffer has got to: (phase, rank key, receipt), the
/// order of §7.4 — upserts by rank, deletes in reverse rank, merges last —
/// stable while rows are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(i64, i64, i64);

impl Position {
    pub const START: Position = Position(-1, i64::MIN, -1);
}

/// Writes one received record into the buffer. Records that cannot be understood
/// (unknown action, missing data, not a valid row) are kept as `invalid` with the
/// reason, visible in status, never integrated: quarantined, not crashed on.
/// Upserted rows are stored as the exact text received (§7.4 rev 2).
fn put(conn: &Connection, rec: &Incoming<'_>) -> Result<(), StoreError> {
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
        Incoming::Invalid { table, id, why } => (
            table,
            id,
            "",
            "invalid",
            None,
            Some(why.chars().take(MAX_REASON_CHARS).collect()),
        ),
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub failed: u64,
}

/// A received record that failed to integrate, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub table: String,
    pub id: String,
    pub error: String,
    pub attempts: i64,
}

impl Store {
    pub fn buffer_counts(&self) -> Result<Counts, StoreError> {
        self.agent()
            .query_row(
                "SELECT coalesce(sum(state = 'pending'), 0), coalesce(sum(state = 'failed'), 0) FROM buffer",
                [],
                |r| Ok(Counts { pending: r.get::<_, i64>(0)? as u64, failed: r.get::<_, i64>(1)? as u64 }),
            )
            .map_err(|e| StoreError::sqlite("counting the sync buffer", e))
    }

    /// The first `n` records that failed to integrate, oldest receipt first.
    pub fn buffer_errors(&self, n: u32) -> Result<Vec<Failed>, StoreError> {
        let err = |e| StoreError::sqlite("reading integration errors", e);
        let mut stmt = self
            .agent()
            .prepare(
                "SELECT table_name, record_id, coalesce(error, ''), attempts FROM buffer \
                 WHERE state = 'failed' ORDER BY received LIMIT ?1",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([n], |r| {
                Ok(Failed {
                    table: r.get(0)?,
                    id: r.get(1)?,
                    error: r.get(2)?,
                    attempts: r.get(3)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The next `n` buffered records after `after` in integration order (not
    /// the invalid ones, which wait for a good copy).
    pub fn buffered(&self, after: Position, n: usize) -> Result<Vec<Buffered>, StoreError> {
        let err = |e| StoreError::sqlite("reading the sync buffer", e);
        let mut stmt = self
            .agent()
            .prepare_cached(
                "SELECT table_name, record_id, merge_drop, action, data, phase, rank_key, received FROM ( \
                   SELECT *, CASE action WHEN 'upsert' THEN 0 WHEN 'delete' THEN 1 ELSE 2 END AS phase, \
                             CASE action WHEN 'upsert' THEN rank WHEN 'delete' THEN -rank ELSE 0 END AS rank_key \
                   FROM buffer WHERE action <> 'invalid') \
                 WHERE (phase, rank_key, received) > (?1, ?2, ?3) \
                 ORDER BY phase, rank_key, received LIMIT ?4",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![after.0, after.1, after.2, n as i64], |r| {
                let action: String = r.get(3)?;
                Ok(Buffered {
                    table: r.get(0)?,
                    id: r.get(1)?,
                    merge_drop: r.get(2)?,
                    action: match action.as_str() {
                        "upsert" => Action::Upsert,
                        "delete" => Action::Delete,
                        _ => Action::Merge,
                    },
                    data: r.get(4)?,
                    at: Position(r.get(5)?, r.get(6)?, r.get(7)?),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

impl Buffered {
    /// Where a pass that has taken this record goes on from.
    pub fn position(&self) -> Position {
        self.at
    }
}

impl Tx<'_> {
    /// Keeps a received record in the buffer (see [`put`]).
    pub fn buffer(&self, rec: &Incoming<'_>) -> Result<(), StoreError> {
        put(self.agent(), rec)
    }

    /// The record was applied (or ignored): any receipt of it waiting is stale.
    pub fn buffer_done(&self, b: &Buffered) -> Result<(), StoreError> {
        self.agent()
            .prepare_cached(
                "DELETE FROM buffer WHERE table_name = ?1 AND record_id = ?2 AND merge_drop = ?3",
            )
            .and_then(|mut st| st.execute(params![b.table, b.id, b.merge_drop]))
            .map(drop)
            .map_err(|e| StoreError::sqlite("clearing the buffer", e))
    }

    /// The record could not be applied this time: kept with the reason, tried
    /// again next pass.
    pub fn buffer_failed(&self, b: &Buffered, why: &str) -> Result<(), StoreError> {
        self.agent()
            .execute(
                "UPDATE buffer SET state = 'failed', error = ?4, attempts = attempts + 1 \
                 WHERE table_name = ?1 AND record_id = ?2 AND merge_drop = ?3",
                params![b.table, b.id, b.merge_drop, why],
            )
            .map(drop)
            .map_err(|e| StoreError::sqlite("recording an integration error", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_receipt_replaces_and_merges_do_not_collide() {
        let s = Store::open_in_memory().unwrap();
        let up = |data| Incoming::Upsert {
            table: "item",
            id: "A1",
            data,
        };
        put(s.agent(), &up(r#"{"ID":"A1","v":1}"#)).unwrap();
        put(s.agent(), &up(r#"{"ID":"A1","v":2}"#)).unwrap();
        put(
            s.agent(),
            &Incoming::Merge {
                table: "item",
                keep: "A1".into(),
                drop: "B7".into(),
            },
        )
        .unwrap();
        let n: i64 = s
            .agent()
            .query_row("SELECT count(*) FROM buffer", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let data: String = s
            .agent()
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
                s.agent(),
                &Incoming::Upsert {
                    table: "item",
                    id: "A2",
                    data,
                },
            )
            .unwrap();
            assert_eq!(
                s.buffer_counts().unwrap(),
                Counts {
                    pending: 0,
                    failed: 1
                },
                "{data}"
            );
        }
        put(
            s.agent(),
            &Incoming::Invalid {
                table: "item",
                id: "A1",
                why: "unknown action \"x\"".into(),
            },
        )
        .unwrap();
        let errs = s.buffer_errors(10).unwrap();
        assert!(errs[0].error.contains("must be a JSON object"), "{errs:?}");
        assert!(errs[1].error.contains("unknown action"), "{errs:?}");
        let data: Option<String> = s
            .agent()
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
