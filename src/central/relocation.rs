//! Moving a central from one store to another (issue 31): an SQLite file to a
//! PostgreSQL database when the deployment outgrows one file, or back. Every
//! table is copied as it is, ids included, so the sites notice nothing: their
//! cursors, acknowledgements and queued ids mean the same on the new store.
//!
//! What must hold:
//! - the source is read in one snapshot, the target written in one
//!   transaction: a copy cut off half-way leaves the target as it was (empty);
//! - a target that holds a site or a record already is refused: a copy never
//!   merges two centrals;
//! - an id the source ever gave (change log, queues, refusals) is never given
//!   again by the target: each id counter moves to the source's high-water
//!   mark, not to the largest id still stored (acknowledged queue entries are
//!   deleted, their ids are not free);
//! - memory stays bounded: rows move in chunks read in key order.

use super::db::{Connection, Dialect, Value};
use super::{Central, CentralError, Result};

/// Rows read per statement from the source.
const CHUNK: usize = 500;

/// Each table: its columns (the key first) and how many of them make the key.
/// `meta` comes last: it overwrites the record-write count the target's
/// trigger counted while the records were copied.
const TABLES: &[(&str, &[&str], usize)] = &[
    (
        "site",
        &[
            "site_id",
            "uuid",
            "code",
            "name",
            "password_hash",
            "password_gen",
            "hardware_id",
            "init_status",
            "last_seen",
            "failed_logins",
            "locked_until",
            "init_allowed",
            "om_central_url",
            "test_site",
            "added_at",
        ],
        1,
    ),
    (
        "record",
        &["table_name", "record_id", "data", "site_id", "owner_store"],
        2,
    ),
    (
        "changelog",
        &[
            "id",
            "table_name",
            "record_id",
            "action",
            "data",
            "origin_site",
        ],
        1,
    ),
    (
        "sync_out",
        &[
            "id",
            "site_id",
            "table_name",
            "record_id",
            "action",
            "data",
            "is_merge",
        ],
        1,
    ),
    (
        "staging",
        &[
            "site_id",
            "table_name",
            "record_id",
            "action",
            "data",
            "seq",
            "staged_at",
            "out_seq",
            "ord",
            "bytes",
        ],
        3,
    ),
    ("copy", &["store_id", "site_id", "kind"], 2),
    (
        "integration",
        &["site_id", "state", "attempts", "last_error", "updated"],
        1,
    ),
    (
        "refused",
        &["id", "site_id", "table_name", "record_id", "reason", "at"],
        1,
    ),
    (
        "pushed",
        &["site_id", "table_name", "record_id", "out_seq"],
        3,
    ),
    (
        "login_backoff",
        &["site_name", "address", "failures", "last"],
        2,
    ),
    ("staged_total", &["site_id", "rows", "bytes", "first_at"], 1),
    ("respond", &["site_id", "table_name", "record_id"], 3),
    (
        "v6_record",
        &["table_name", "record_id", "site_id", "action", "data"],
        2,
    ),
    ("meta", &["key", "value"], 1),
];

/// Tables whose `id` counts up and is never given twice.
const COUNTERS: &[&str] = &["changelog", "sync_out", "refused"];

/// Keys of `meta` that belong to a store, not to the central: not copied.
const STORE_META: &[&str] = &["schema_version"];

/// Rows copied per table, in [`TABLES`] order.
pub type Copied = Vec<(&'static str, u64)>;

impl Central {
    /// Copies this central's whole state into `target`, a new store; the
    /// central must not be serving meanwhile (what it wrote after the
    /// snapshot would not be in the copy).
    pub fn copy_to(&self, target: &Central) -> Result<Copied> {
        let source = self.conn()?;
        let read = source.read_transaction()?;
        let mut into = target.conn()?;
        let tx = super::write_tx(&mut into)?;
        let used: i64 = tx.query_row(
            "SELECT (SELECT count(*) FROM site) + (SELECT count(*) FROM record)",
            [],
            |r| r.get(0),
        )?;
        if used > 0 {
            return Err(CentralError::refused(
                "the target store already holds a central (sites or records): copy into a new, \
                 empty SQLite file or PostgreSQL database",
            ));
        }
        let mut copied = Vec::with_capacity(TABLES.len());
        for &(table, columns, key) in TABLES {
            copied.push((table, copy_table(&read, &tx, table, columns, key)?));
        }
        for table in COUNTERS {
            let mark = high_water(&read, table)?;
            set_high_water(&tx, table, mark)?;
        }
        tx.commit()?;
        drop(into);
        // The target answers with the source's epoch from now on: to the
        // sites it is the same central.
        *target.epoch.lock().unwrap_or_else(|p| p.into_inner()) =
            super::epoch::load(&target.conn()?)?;
        Ok(copied)
    }
}

fn copy_table(
    from: &Connection,
    to: &Connection,
    table: &str,
    columns: &[&str],
    key: usize,
) -> Result<u64> {
    let cols = columns.join(", ");
    let keys = columns[..key].join(", ");
    let marks: Vec<String> = (1..=key).map(|i| format!("?{i}")).collect();
    let first = format!("SELECT {cols} FROM {table} ORDER BY {keys} LIMIT {CHUNK}");
    // Row values compare column by column on both engines: the next chunk
    // starts after the last key read.
    let next = format!(
        "SELECT {cols} FROM {table} WHERE ({keys}) > ({}) ORDER BY {keys} LIMIT {CHUNK}",
        marks.join(", ")
    );
    let values: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let insert = if table == "meta" {
        format!(
            "INSERT INTO meta ({cols}) VALUES ({}) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            values.join(", ")
        )
    } else {
        format!(
            "INSERT INTO {table} ({cols}) VALUES ({})",
            values.join(", ")
        )
    };
    let mut last: Option<Vec<Value>> = None;
    let mut n = 0u64;
    loop {
        let mut rows: Vec<Vec<Value>> = Vec::with_capacity(CHUNK);
        {
            let mut stmt = from.prepare_cached(if last.is_some() { &next } else { &first })?;
            let after: &[Value] = last.as_deref().unwrap_or(&[]);
            let mut found = stmt.query(after)?;
            while let Some(r) = found.next()? {
                let row = (0..columns.len())
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                rows.push(row);
            }
        }
        let Some(end) = rows.last() else {
            return Ok(n);
        };
        last = Some(end[..key].to_vec());
        let got = rows.len();
        let mut stmt = to.prepare_cached(&insert)?;
        for row in rows {
            if table == "meta"
                && matches!(&row[0], Value::Text(k) if STORE_META.contains(&k.as_str()))
            {
                continue;
            }
            stmt.execute(row.as_slice())?;
            n += 1;
        }
        if got < CHUNK {
            return Ok(n);
        }
    }
}

/// The largest id `table` ever gave (its counter), whatever is still stored.
fn high_water(conn: &Connection, table: &str) -> Result<i64> {
    let stored: i64 = conn.query_row(
        &format!("SELECT coalesce(max(id), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )?;
    let counter: Option<i64> = match conn.dialect() {
        Dialect::Sqlite => conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                super::db::Error::NoRows => Ok(None),
                e => Err(e),
            })?,
        Dialect::Postgres => conn.query_row(
            &format!(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence('{table}', 'id')::regclass)"
            ),
            [],
            |r| r.get(0),
        )?,
    };
    Ok(stored.max(counter.unwrap_or(0)))
}

fn set_high_water(conn: &Connection, table: &str, mark: i64) -> Result<()> {
    if mark <= 0 {
        return Ok(());
    }
    match conn.dialect() {
        Dialect::Sqlite => {
            let moved = conn.execute(
                "UPDATE sqlite_sequence SET seq = ?2 WHERE name = ?1 AND seq < ?2",
                super::db::params![table, mark],
            )?;
            let known: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?1)",
                [table],
                |r| r.get(0),
            )?;
            if moved == 0 && !known {
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                    super::db::params![table, mark],
                )?;
            }
        }
        Dialect::Postgres => {
            conn.query_row(
                &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?1)"),
                [mark],
                |r| r.get::<_, i64>(0),
            )?;
        }
    }
    Ok(())
}
