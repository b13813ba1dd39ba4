//! Issue 18, the store half: a hostile or careless program writing the agent's
//! SQLite file. Every attempt runs twice — through the bundled engine (rusqlite)
//! and through the `sqlite3` shell, an older SQLite as found on devices — on a
//! fresh copy of the same site, with `recursive_triggers` off and on; each must be
//! refused with its reason and leave the records and the outbox as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fieldsync::store::Store;
use serde_json::json;

/// A site with active store `S` holding: received rows of other stores and of the
/// central, its own rows, and a patient of its own.
fn site(dir: &Path, name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = dir.join(format!("{name}-{n}.sqlite"));
    let _ = std::fs::remove_file(&db);
    let mut s = Store::open(&db).unwrap();
    s.set_site_identity(2, "S", None).unwrap();
    let tx = s.receiving().unwrap();
    {
        for (t, row) in [
            (
                "store",
                json!({"ID": "S", "name_ID": "N_S", "sync_id_remote_site": 2}),
            ),
            ("item", json!({"ID": "I1", "item_name": "Paracetamol"})),
            (
                "transact",
                json!({"ID": "FX1", "store_ID": "X", "type": "ci"}),
            ),
            (
                "trans_line",
                json!({"ID": "FXL1", "transaction_ID": "FX1", "item_ID": "I1"}),
            ),
            (
                "name",
                json!({"ID": "C1", "type": "customer", "supplying_store_id": "S"}),
            ),
            (
                "name",
                json!({"ID": "P_AWAY", "type": "patient", "supplying_store_id": "X"}),
            ),
            ("user", json!({"ID": "U1", "name": "nurse"})),
            (
                "name_store_join",
                json!({"ID": "J_C", "name_ID": "C1", "store_ID": "S"}),
            ),
            (
                "message",
                json!({"ID": "M_X", "fromStoreID": "X", "toStoreID": "S", "body": "hello"}),
            ),
        ] {
            tx.write_received(t, row["ID"].as_str().unwrap(), &row.to_string())
                .unwrap();
        }
    }
    tx.commit().unwrap();
    for (t, row) in [
        (
            "transact",
            json!({"ID": "OWN1", "store_ID": "S", "type": "ci"}),
        ),
        (
            "trans_line",
            json!({"ID": "OL1", "transaction_ID": "OWN1", "item_ID": "I1"}),
        ),
        (
            "name",
            json!({"ID": "P_HERE", "type": "patient", "supplying_store_id": "S"}),
        ),
        (
            "name_store_join",
            json!({"ID": "J_P", "name_ID": "P_HERE", "store_ID": "S"}),
        ),
        (
            "message",
            json!({"ID": "M_OWN", "fromStoreID": "S", "toStoreID": "X", "body": "hi"}),
        ),
    ] {
        s.put(t, &row).unwrap();
    }
    drop(s);
    db
}

/// Every record (table, id, data) and every outbox entry (table, id, action, state).
type Snapshot = (
    Vec<(String, String, String)>,
    Vec<(String, String, String, String)>,
);

/// Everything an attempt could change: every record and the outbox.
fn snapshot(db: &Path) -> Snapshot {
    let c = rusqlite::Connection::open(db).unwrap();
    let records = c
        .prepare("SELECT table_name, record_id, CAST(data AS TEXT) FROM record ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let outbox = c
        .prepare("SELECT table_name, record_id, action, state FROM outbox ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (records, outbox)
}

fn shell() -> bool {
    common::have("sqlite3")
}

/// Runs `sql` on a fresh site through each engine and mode; returns the errors.
fn attempt(sql: &str) -> Vec<(String, String, bool)> {
    let dir = fieldsync::testkit::tempdir::TempDir::new("hostile-writer");
    let mut out = Vec::new();
    for recursive in [false, true] {
        for engine in ["bundled", "shell"] {
            if engine == "shell" && !shell() {
                eprintln!("note: no sqlite3 shell; its half of the test is skipped");
                continue;
            }
            let db = site(&dir, &format!("{engine}-{recursive}"));
            let before = snapshot(&db);
            let pragma = format!("PRAGMA recursive_triggers = {};", recursive as u8);
            let (ok, err) = if engine == "bundled" {
                let c = rusqlite::Connection::open(&db).unwrap();
                c.execute_batch(&pragma).unwrap();
                match c.execute_batch(sql) {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e.to_string()),
                }
            } else {
                let o = Command::new("sqlite3")
                    .arg("-bail")
                    .arg(&db)
                    .arg(format!("{pragma} {sql}"))
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&o.stderr).into_owned();
                (o.status.success() && err.is_empty(), err)
            };
            let after = snapshot(&db);
            if !ok {
                assert_eq!(
                    before, after,
                    "{engine} (recursive {recursive}): a refused write changed something: {sql}"
                );
            }
            out.push((format!("{engine}, recursive_triggers {recursive}"), err, ok));
        }
    }
    out
}

fn refused(sql: &str, reason: &str) {
    for (how, err, ok) in attempt(sql) {
        assert!(!ok, "{how}: accepted: {sql}");
        assert!(
            err.contains(reason),
            "{how}: {sql}\n  refused with {err:?}, want {reason:?}"
        );
    }
}

const FOREIGN: &str = "belongs to another store";
const CENTRAL: &str = "central data is read-only";

#[test]
fn replace_and_upsert_cannot_take_over_rows() {
    // Item 1: INSERT OR REPLACE (the "save" of many ORMs) and upserts onto rows
    // this site does not own, whatever they claim.
    for (sql, reason) in [
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('transact','FX1','{"ID":"FX1","store_ID":"S"}')"#,
            FOREIGN,
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('trans_line','FXL1','{"ID":"FXL1","transaction_ID":"OWN1"}')"#,
            FOREIGN,
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('name','C1','{"ID":"C1","type":"patient","supplying_store_id":"S"}')"#,
            CENTRAL,
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('name','P_AWAY','{"ID":"P_AWAY","type":"patient","supplying_store_id":"S"}')"#,
            FOREIGN,
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('user','U1','{"ID":"U1","name":"admin"}')"#,
            "received from the central are read-only",
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('name_store_join','J_C','{"ID":"J_C","name_ID":"P_HERE","store_ID":"S"}')"#,
            "name_store_join",
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('message','M_OWN','{"ID":"M_OWN","fromStoreID":"S","toStoreID":"X","body":"edited"}')"#,
            "messages cannot be edited",
        ),
        (
            r#"REPLACE INTO record(table_name,record_id,data) VALUES ('message','M_X','{"ID":"M_X","fromStoreID":"S","toStoreID":"X","body":"forged"}')"#,
            "messages cannot be edited",
        ),
        (
            r#"INSERT INTO record(table_name,record_id,data) VALUES ('transact','FX1','{"ID":"FX1","store_ID":"S"}') ON CONFLICT DO UPDATE SET data = excluded.data"#,
            FOREIGN,
        ),
        (
            r#"INSERT OR IGNORE INTO record(table_name,record_id,data) VALUES ('transact','FX1','{"ID":"FX1","store_ID":"S"}')"#,
            FOREIGN,
        ),
        (
            r#"UPDATE record SET data = '{"ID":"FX1","store_ID":"S"}' WHERE record_id = 'FX1'"#,
            FOREIGN,
        ),
    ] {
        refused(sql, reason);
    }
}

#[test]
fn an_unchanged_resave_of_a_received_row_is_no_change() {
    // An ORM re-saving what it read: allowed, nothing queued, still "received".
    let dir = fieldsync::testkit::tempdir::TempDir::new("resave");
    let db = site(&dir, "resave");
    let before = snapshot(&db);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "REPLACE INTO record(table_name,record_id,data) SELECT table_name, record_id, data FROM record WHERE record_id = 'FX1'; \
         INSERT OR IGNORE INTO record(table_name,record_id,data) SELECT table_name, record_id, data FROM record WHERE record_id = 'U1';",
    )
    .unwrap();
    let after = snapshot(&db);
    assert_eq!(before.1, after.1, "nothing queued");
    assert_eq!(before.0, after.0);
    let local: i64 = c
        .query_row(
            "SELECT count(*) FROM local_edit WHERE record_id IN ('FX1', 'U1')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(local, 0, "still received, not a local edit");
    // And an owned row re-saved unchanged under recursive_triggers keeps no
    // Delete in the outbox (REPLACE deletes first there).
    c.execute_batch(
        "PRAGMA recursive_triggers = 1; \
         REPLACE INTO record(table_name,record_id,data) SELECT table_name, record_id, data FROM record WHERE record_id = 'OWN1';",
    )
    .unwrap();
    let action: String = c
        .query_row(
            "SELECT action FROM outbox WHERE record_id = 'OWN1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(action, "Update");
}

#[test]
fn duplicate_keys_missing_ids_and_odd_joins_are_refused() {
    for (sql, reason) in [
        // Item 2: SQLite reads the first key, the central the last.
        (r#"INSERT INTO record(table_name,record_id,data) VALUES ('transact','T20','{"ID":"T20","store_ID":"S","store_ID":"X"}')"#, "key twice"),
        (r#"UPDATE record SET data = '{"ID":"OWN1","store_ID":"S","store_ID":"X"}' WHERE record_id = 'OWN1'"#, "key twice"),
        // Item 3: joins are judged by what they join.
        ("DELETE FROM record WHERE record_id = 'J_C'", "name_store_join"),
        (r#"UPDATE record SET data = json_set(data, '$.store_ID', 'S2') WHERE record_id = 'J_C'"#, "name_store_join"),
        // Item 4: nameInsuranceJoin only for patients homed here.
        (r#"INSERT INTO record(table_name,record_id,data) VALUES ('nameInsuranceJoin','NI1','{"ID":"NI1","nameID":"C1"}')"#, "patients homed here"),
        (r#"INSERT INTO record(table_name,record_id,data) VALUES ('nameInsuranceJoin','NI2','{"ID":"NI2","nameID":"P_AWAY"}')"#, "patients homed here"),
        // Item 5: rows without an ID (NULL passes a CHECK; this one does not).
        (r#"INSERT INTO record(table_name,record_id,data) VALUES ('transact','T21','{"store_ID":"S"}')"#, "CHECK constraint failed"),
        (r#"INSERT INTO record(table_name,record_id,data) VALUES ('transact','T22','{"ID":null,"store_ID":"S"}')"#, "CHECK constraint failed"),
        ("UPDATE record SET data = json_remove(data, '$.ID') WHERE record_id = 'OWN1'", "CHECK constraint failed"),
        // Item 6, at write time: data stored as a BLOB.
        ("INSERT INTO record(table_name,record_id,data) VALUES ('transact','T23',CAST('{\"ID\":\"T23\",\"store_ID\":\"S\"}' AS BLOB))", "CHECK constraint failed"),
    ] {
        refused(sql, reason);
    }
    // A patient's own insurance join is fine.
    for (how, err, ok) in attempt(
        r#"INSERT INTO record(table_name,record_id,data) VALUES ('nameInsuranceJoin','NI3','{"ID":"NI3","nameID":"P_HERE"}')"#,
    ) {
        assert!(ok, "{how}: {err}");
    }
}

#[test]
fn a_header_deleted_before_its_lines_leaves_lines_its_writer_can_delete() {
    // Item 8: our own lines stay deletable; another store's orphan does not.
    let dir = fieldsync::testkit::tempdir::TempDir::new("orphans");
    let db = site(&dir, "orphans");
    let mut s = Store::open(&db).unwrap();
    assert!(s.delete("transact", "OWN1").unwrap());
    assert!(s.delete("trans_line", "OL1").unwrap(), "our orphan line");
    let tx = s.receiving().unwrap();
    tx.delete_received("transact", "FX1").unwrap();
    tx.commit().unwrap();
    let e = s.delete("trans_line", "FXL1").unwrap_err();
    assert!(e.to_string().contains(FOREIGN), "{e}");
}

#[test]
fn bad_rows_are_set_aside_and_never_block_the_rest() {
    // Item 6: rows that pass SQLite's own checks but no strict JSON reader would
    // take. Whatever gets past the triggers is set aside at push, with its
    // reason, and the good rows go.
    let env = common::Env::new("badrows");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    assert_eq!(env.sync(&db).0, 0);
    let c = common::sql(&db);
    let deep = format!(
        r#"{{"ID":"B2","store_ID":"S_KAW","d":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let attempts: Vec<(&str, String)> = vec![
        ("B1", r#"'{"ID":"B1","store_ID":"S_KAW","n":"\ud83d"}'"#.into()),
        ("B2", format!("'{deep}'")),
        ("B3", r#"'{"ID":"B3","store_ID":"S_KAW","n":"a' || char(0) || 'b"}'"#.into()),
        ("B4", r#"CAST(X'7B224944223A224234222C2273746F72655F4944223A22535F4B4157222C226E223A22FF227D' AS TEXT)"#.into()),
    ];
    let mut stored = Vec::new();
    for (id, value) in &attempts {
        let sql = format!(
            "INSERT INTO record (table_name, record_id, data) VALUES ('transact', '{id}', {value})"
        );
        if c.execute(&sql, []).is_ok() {
            stored.push(*id);
        }
    }
    c.execute(r#"INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'GOOD', '{"ID":"GOOD","store_ID":"S_KAW"}')"#, [])
        .unwrap();
    assert!(
        stored.contains(&"B1") && stored.contains(&"B2"),
        "SQLite takes these: {stored:?}"
    );
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 16, "set aside, not stuck: {stderr}");
    assert_eq!(report["pushed"], 1, "{report}");
    assert!(env.central.get("transact", "GOOD").unwrap().is_some());
    let out = env.agent(&db, &["queue", "--rejected", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let aside: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for id in &stored {
        assert!(aside.contains(id), "{id} set aside: {v}");
    }
    let reasons = v.to_string();
    assert!(
        reasons.contains("bad_type") && reasons.contains("too_deep"),
        "{reasons}"
    );
    // The next sync is clean; they wait for a person, shown by status and the LED.
    let (code, report, _) = env.sync(&db);
    assert_eq!((code, report["pushed"].as_u64()), (0, Some(0)), "{report}");
    let st = env.agent(&db, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        (v["outbox_rejected"].as_u64(), v["led"].as_str()),
        (Some(stored.len() as u64), Some("attention"))
    );
}

#[test]
fn a_dropped_trigger_is_found_restored_and_shown() {
    // Item 7: the rules are checked on every open.
    let env = common::Env::new("tamper");
    let db = env.db("t");
    env.identity(&db);
    let drop = "DROP TRIGGER fieldsync_insert; DROP TRIGGER fieldsync_update_capture;";
    if shell() {
        let o = Command::new("sqlite3").arg(&db).arg(drop).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    } else {
        common::sql(&db).execute_batch(drop).unwrap();
    }
    // A write while the rules are gone is not stopped: that is why it is reported.
    common::sql(&db)
        .execute(r#"INSERT INTO record (table_name, record_id, data) VALUES ('item', 'I9', '{"ID":"I9"}')"#, [])
        .unwrap();
    let st = env.agent(&db, &["status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("changed by another program (trigger fieldsync_insert was missing"),
        "{text}"
    );
    // Any command that opens the store for writing restores them.
    let out = env.agent(&db, &["queue"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another program changed fieldsync's rules")
    );
    let e = common::sql(&db)
        .execute(r#"INSERT INTO record (table_name, record_id, data) VALUES ('item', 'I10', '{"ID":"I10"}')"#, [])
        .unwrap_err();
    assert!(e.to_string().contains(CENTRAL), "{e}");
    let st = env.agent(&db, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["rules"].as_str().unwrap().starts_with("restored"), "{v}");
    // There is no flag left to switch the rules off.
    let e = common::sql(&db)
        .execute("UPDATE sync_guard SET applying = 1", [])
        .unwrap_err();
    assert!(e.to_string().contains("no such table"), "{e}");
}
