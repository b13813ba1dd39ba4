//! A clinic app's use of the fieldsync store from Rust, with rusqlite only: the
//! same steps as `clinic_app.py` (a stock count recorded and seen queued, an
//! edit of central data refused, the typed views read).
//!
//! ```sh
//! cargo run --example clinic_app -- /var/lib/fieldsync/fieldsync.sqlite ITEM_ID
//! ```

use std::process::ExitCode;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, item] = args.as_slice() else {
        eprintln!("usage: clinic_app DATABASE ITEM_ID");
        return ExitCode::from(2);
    };
    match run(db, item) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("clinic_app: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(db: &str, item: &str) -> rusqlite::Result<u8> {
    let mut conn = Connection::open(db)?;
    // The sync holds the write lock for short transactions: wait, do not fail.
    conn.busy_timeout(Duration::from_secs(30))?;
    let store: Option<String> = conn
        .query_row(
            "SELECT value FROM setting WHERE key = 'active_store_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(store) = store.filter(|s| !s.is_empty()) else {
        println!("not initialised: run the first sync before writing store data");
        return Ok(3);
    };
    // Unique ids without a clock: 16 random bytes from the OS, as hex.
    let id = || -> rusqlite::Result<String> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(b.iter().map(|x| format!("{x:02X}")).collect())
    };
    let (count_id, line_id) = (id()?, id()?);
    // IMMEDIATE: the write lock from the start, never a failed upgrade.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let count = serde_json::json!({"ID": count_id, "store_ID": store, "status": "sg",
                                   "Description": "monthly count", "serial_number": 1});
    let line = serde_json::json!({"ID": line_id, "stock_take_ID": count_id, "item_ID": item,
                                  "snapshot_qty": 40, "stock_take_qty": 38});
    tx.execute(
        "INSERT INTO record (table_name, record_id, data) VALUES ('Stock_take', ?1, ?2)",
        params![count_id, count.to_string()],
    )?;
    tx.execute(
        "INSERT INTO record (table_name, record_id, data) VALUES ('Stock_take_lines', ?1, ?2)",
        params![line_id, line.to_string()],
    )?;
    tx.commit()?;
    println!("recorded stock count {count_id} with line {line_id}");

    let mut queued = conn.prepare(
        "SELECT table_name, record_id, action, state FROM outbox \
         WHERE record_id IN (?1, ?2) ORDER BY seq",
    )?;
    let rows = queued.query_map(params![count_id, line_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (t, r, a, s) = row?;
        println!("queued: {t} {r} {a} {s}");
    }

    match conn.execute(
        "UPDATE record SET data = json_set(data, '$.item_name', 'renamed here') \
         WHERE table_name = 'item' AND record_id = ?1",
        [item],
    ) {
        Ok(_) => {
            println!("edit of central data was accepted (it must not be)");
            return Ok(1);
        }
        // The rules answer with SQLITE_CONSTRAINT and a message that says why.
        Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
            if e.code == ErrorCode::ConstraintViolation =>
        {
            println!("refused: {msg}");
        }
        Err(e) => return Err(e),
    }

    let (snapshot, counted): (f64, f64) = conn.query_row(
        "SELECT snapshot_qty, stock_take_qty FROM v_Stock_take_lines WHERE ID = ?1",
        [&line_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    println!("view: snapshot {snapshot}, counted {counted}");
    let waiting: i64 = conn.query_row(
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )?;
    println!("waiting to send: {waiting}");
    Ok(0)
}
