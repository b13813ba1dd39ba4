//! Issue 26: the shared database. Whatever a clinic app in the agent's group
//! writes in the file — carelessly or on purpose, through the bundled engine or
//! the `sqlite3` shell — must never send the site credential elsewhere, make
//! the agent write a file at a path the app chose, lose a record silently, or
//! pass the rules unseen; and an app's ordinary bugs must not stop sync. Each
//! numbered finding of the issue is a test here, against the real binary and
//! the real central.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::fake::{self, Reply};
use common::{sql, Env};
use serde_json::{json, Value};

/// A site `kaw` with active store `S_KAW`, initialised and synced; the central
/// holds item I1 and user U1.
fn synced(env: &Env) -> PathBuf {
    env.site("kaw", "S_KAW");
    env.central
        .put("item", &json!({"ID": "I1", "item_name": "Paracetamol"}))
        .unwrap();
    env.central
        .put("user", &json!({"ID": "U1", "name": "nurse"}))
        .unwrap();
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let (code, _, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    db
}

fn put(env: &Env, db: &Path, table: &str, row: Value) {
    let out = env.agent(db, &["put", table, &row.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sync_ok(env: &Env, db: &Path) -> Value {
    let (code, report, err) = env.sync(db);
    assert_eq!(code, 0, "{err}");
    report
}

fn central(env: &Env, table: &str, id: &str) -> Option<Value> {
    env.central.get(table, id).unwrap()
}

fn local(db: &Path, table: &str, id: &str) -> Option<Value> {
    common::record(db, table, id)
}

/// Runs `sql` as the app would: through the bundled engine, or through the
/// `sqlite3` shell when `shell` (skipped where there is none).
fn app(db: &Path, shell: bool, sql: &str) -> Result<(), String> {
    if shell {
        let o = Command::new("sqlite3")
            .arg("-bail")
            .arg(db)
            .arg(sql)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        return if o.status.success() && err.is_empty() {
            Ok(())
        } else {
            Err(err)
        };
    }
    let c = common::sql(db);
    c.execute_batch(sql).map_err(|e| e.to_string())
}

/// The two engines an app may use, the shell where it is installed.
fn engines() -> Vec<bool> {
    if common::have("sqlite3") {
        vec![false, true]
    } else {
        eprintln!("note: no sqlite3 shell; its half of these tests is skipped");
        vec![false]
    }
}

/// A server that answers nothing useful and counts who called it.
fn thief() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        if req.header("authorization").is_some() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Reply::json(500, json!({}))
    }));
    (addr, calls)
}

#[test]
fn f1_the_credential_goes_only_where_the_configuration_says() {
    let env = Env::new("shared-credential");
    let db = synced(&env);
    let (addr, calls) = thief();
    let ca = env.dir.join("app-ca.pem");
    std::fs::write(&ca, "not a CA").unwrap();
    app(
        &db,
        false,
        &format!(
            "INSERT OR REPLACE INTO setting (key, value) VALUES ('central_url', 'http://{addr}'), \
             ('dns', '127.0.0.1:1'), ('ca_file', '{}'), ('allow_insecure_http', '1');
             CREATE TRIGGER app_keeps_it AFTER UPDATE ON setting BEGIN
               UPDATE setting SET value = 'http://{addr}' WHERE key = 'central_url';
             END;",
            ca.display()
        ),
    )
    .unwrap();
    sync_ok(&env, &db);
    let out = env.agent(&db, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A password rotation, as the README says: the new digest goes nowhere else either.
    env.central.set_password("kaw", "pw-kaw").unwrap();
    env.init(&db, "kaw");
    sync_ok(&env, &db);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the app's server was sent the credential"
    );
}

#[test]
fn f2_no_file_is_written_at_a_path_the_app_chose() {
    let env = Env::new("shared-files");
    let db = synced(&env);
    let planted = env.dir.join("authorized_keys");
    let leds = env.dir.join("leds");
    std::fs::create_dir_all(leds.join("ACT")).unwrap();
    app(
        &db,
        false,
        &format!(
            "INSERT OR REPLACE INTO setting (key, value) VALUES ('credential_file', '{}'), \
             ('password_digest', 'ssh-ed25519 AAAA app@clinic'), ('metrics_file', '{}'), \
             ('led_dir', '{}'), ('led', 'ACT');",
            planted.display(),
            db.display(),
            leds.display()
        ),
    )
    .unwrap();
    sync_ok(&env, &db);
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T_AFTER", "store_ID": "S_KAW"}),
    );
    sync_ok(&env, &db);
    assert!(!planted.exists(), "a file was written where the app said");
    assert!(
        !leds.join("ACT").join("trigger").exists() && !leds.join("ACT").join("brightness").exists(),
        "the LED the app named was driven"
    );
    assert!(
        central(&env, "transact", "T_AFTER").is_some(),
        "the database is still the database"
    );
    let credential = std::fs::read_to_string(db.with_extension("sqlite.credential")).unwrap();
    assert!(!credential.contains("ssh-ed25519"));
}

#[test]
fn f3_the_state_an_app_can_reach_loses_nothing() {
    let env = Env::new("shared-state");
    let db = synced(&env);
    // The outbox deleted, marked sent, marked held: each record still arrives.
    for (id, sql) in [
        ("T_DEL", "DELETE FROM outbox"),
        ("T_SENT", "UPDATE outbox SET state = 'sent'"),
        ("T_HELD", "UPDATE outbox SET state = 'held'"),
    ] {
        put(
            &env,
            &db,
            "transact",
            json!({"ID": id, "store_ID": "S_KAW"}),
        );
        app(&db, false, sql).unwrap();
        sync_ok(&env, &db);
        assert!(
            central(&env, "transact", id).is_some(),
            "{id} was lost after `{sql}`"
        );
    }
    // The cursor moved on, the initialisation state deleted: nothing skipped,
    // nothing initialised again.
    env.central
        .put("item", &json!({"ID": "I2", "item_name": "Amoxicillin"}))
        .unwrap();
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "K1", "store_ID": "S_KAW", "comment": "v2"}),
    );
    app(
        &db,
        false,
        "INSERT OR REPLACE INTO setting (key, value) VALUES ('central_cursor', '1000000'); \
         DELETE FROM setting WHERE key = 'init_state';",
    )
    .unwrap();
    let report = sync_ok(&env, &db);
    assert_eq!(report["initialised"], true, "{report}");
    assert!(local(&db, "item", "I2").is_some(), "item I2 was skipped");
    assert_eq!(central(&env, "transact", "K1").unwrap()["comment"], "v2");
    // Every setting deleted, then `init` as the README says: the edit stays.
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "K1", "store_ID": "S_KAW", "comment": "v3"}),
    );
    app(&db, false, "DELETE FROM setting").unwrap();
    env.init(&db, "kaw");
    sync_ok(&env, &db);
    assert_eq!(local(&db, "transact", "K1").unwrap()["comment"], "v3");
    assert_eq!(central(&env, "transact", "K1").unwrap()["comment"], "v3");
}

#[test]
fn f4_writes_behind_the_rules_are_found_and_judged() {
    for shell in engines() {
        let env = Env::new(if shell {
            "shared-behind-shell"
        } else {
            "shared-behind"
        });
        let db = synced(&env);
        put(
            &env,
            &db,
            "transact",
            json!({"ID": "OWN", "store_ID": "S_KAW", "comment": "v1"}),
        );
        sync_ok(&env, &db);
        // Triggers off for the app's connection: the shell's `.dbconfig`, or
        // the connection setting every driver offers.
        let behind = |sql: &str| {
            if shell {
                let o = Command::new("sqlite3")
                    .args(["-bail", "-cmd", ".dbconfig enable_trigger off"])
                    .arg(&db)
                    .arg(sql)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            } else {
                let c = common::sql(&db);
                c.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
                    false,
                )
                .unwrap();
                c.execute_batch(sql).unwrap();
            }
        };
        behind(
            r#"UPDATE record SET data = json_set(data, '$.comment', 'v2 behind') WHERE record_id = 'OWN';
               UPDATE record SET data = json_set(data, '$.item_name', 'Paracetamol 5000mg') WHERE record_id = 'I1';
               DELETE FROM record WHERE table_name = 'user' AND record_id = 'U1';"#,
        );
        let report = sync_ok(&env, &db);
        let checked = &report["checked"];
        assert_eq!(checked["queued"], 1, "{report}");
        assert_eq!(checked["restore"], 2, "{report}");
        assert_eq!(
            central(&env, "transact", "OWN").unwrap()["comment"],
            "v2 behind",
            "the site's own change reaches the central"
        );
        assert_eq!(
            local(&db, "item", "I1").unwrap()["item_name"],
            "Paracetamol",
            "central data changed behind the rules is restored"
        );
        assert!(
            local(&db, "user", "U1").is_some(),
            "a received user deleted behind the rules is restored"
        );
        assert_eq!(
            central(&env, "item", "I1").unwrap()["item_name"],
            "Paracetamol"
        );

        // A forged buffer row: there is no buffer in the shared file any more.
        let forged = app(
            &db,
            shell,
            r#"INSERT INTO buffer (table_name, record_id, action, data, rank, received)
               VALUES ('user', 'U_ADMIN', 'upsert', '{"ID":"U_ADMIN"}', 5, 1);"#,
        );
        assert!(forged.unwrap_err().contains("no such table"));

        // The triggers' inputs switched around a write, and a local edit forged
        // to unlock a received user: captured, but not the site's to change.
        app(
            &db,
            shell,
            r#"INSERT INTO local_edit VALUES ('user', 'U1');
               UPDATE record SET data = json_set(data, '$.name', 'admin') WHERE table_name = 'user' AND record_id = 'U1';
               UPDATE setting SET value = 'S_OTHER' WHERE key = 'active_store_id';
               INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'THEIRS', '{"ID":"THEIRS","store_ID":"S_OTHER"}');
               UPDATE setting SET value = 'S_KAW' WHERE key = 'active_store_id';"#,
        )
        .unwrap();
        // A trigger dropped, a write, the same trigger back.
        let trigger: String = sql(&db)
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'fieldsync_update'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        app(
            &db,
            shell,
            &format!(
                "DROP TRIGGER fieldsync_update; \
                 UPDATE record SET data = json_set(data, '$.item_name', 'Ibuprofen') WHERE record_id = 'I1'; \
                 {trigger};"
            ),
        )
        .unwrap();
        let report = sync_ok(&env, &db);
        assert_eq!(
            local(&db, "user", "U1").unwrap()["name"],
            "nurse",
            "{report}"
        );
        assert_eq!(
            local(&db, "item", "I1").unwrap()["item_name"],
            "Paracetamol"
        );
        assert_eq!(central(&env, "user", "U1").unwrap()["name"], "nurse");
        assert!(central(&env, "transact", "THEIRS").is_none());
        let out = env.agent(&db, &["queue", "--rejected", "--json"]);
        let q: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            q.to_string().contains("THEIRS") && q.to_string().contains("behind fieldsync's rules"),
            "another store's row written here waits for a person: {q}"
        );
        let st = env.agent(&db, &["status", "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        assert!(
            v["check"]["set_aside"].as_u64() >= Some(1),
            "status shows what the check found: {v}"
        );
        let text = env.agent(&db, &["status"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("changed behind rules") && text.contains("transact THEIRS"),
            "{text}"
        );
        // A person discards it: asked to confirm first, then gone for good.
        let ask = env.agent(&db, &["queue", "drop", "transact", "THEIRS"]);
        assert_eq!(ask.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&ask.stderr).contains("--yes"));
        assert!(local(&db, "transact", "THEIRS").is_some());
        let done = env.agent(&db, &["queue", "drop", "transact", "THEIRS", "--yes"]);
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(String::from_utf8_lossy(&done.stdout).contains("removed here"));
        assert!(local(&db, "transact", "THEIRS").is_none());
        let again = env.agent(&db, &["queue", "drop", "transact", "THEIRS", "--yes"]);
        assert_eq!(again.status.code(), Some(2), "nothing left to drop");
        sync_ok(&env, &db);
        assert!(central(&env, "transact", "THEIRS").is_none());

        // A view replaced, the CHECK taken off: found on the next open.
        app(
            &db,
            shell,
            "DROP VIEW v_item; CREATE VIEW v_item AS SELECT 'I1' AS ID, 'fake' AS item_name;",
        )
        .unwrap();
        sync_ok(&env, &db);
        let text: String = sql(&db)
            .query_row("SELECT item_name FROM v_item WHERE ID = 'I1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(text, "Paracetamol", "the view is fieldsync's again");
        let st = env.agent(&db, &["status", "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        assert!(
            v["rules"].as_str().unwrap_or("").contains("view v_item"),
            "{v}"
        );
    }
}

#[test]
fn f4_a_check_taken_off_the_record_table_is_reported() {
    let env = Env::new("shared-check");
    let db = synced(&env);
    let c = sql(&db);
    let ddl: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'record'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rule =
        "coalesce(json_type(data, '$.ID') = 'text' AND json_extract(data, '$.ID') = record_id, 0)";
    assert!(ddl.contains(rule), "{ddl}");
    let without = ddl.replace(rule, "1");
    c.execute_batch("PRAGMA writable_schema = ON").unwrap();
    c.execute(
        "UPDATE sqlite_master SET sql = ?1 WHERE type = 'table' AND name = 'record'",
        [&without],
    )
    .unwrap();
    c.execute_batch("PRAGMA writable_schema = OFF").unwrap();
    drop(c);
    let (code, _, err) = env.sync(&db);
    let st = env.agent(&db, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: sync {code} {err}; status {}",
            String::from_utf8_lossy(&st.stderr)
        )
    });
    assert!(
        v["rules"]
            .as_str()
            .unwrap_or("")
            .contains("CHECK was taken off"),
        "{v}"
    );
}

#[test]
fn f5_an_app_s_own_bugs_do_not_stop_sync() {
    let env = Env::new("shared-bugs");
    let db = synced(&env);
    // An app that uses user_version for its own migrations.
    for v in [1, 3, 5, 0, 77] {
        app(&db, false, &format!("PRAGMA user_version = {v}")).unwrap();
        put(
            &env,
            &db,
            "transact",
            json!({"ID": format!("UV{v}"), "store_ID": "S_KAW"}),
        );
        sync_ok(&env, &db);
        assert!(central(&env, "transact", &format!("UV{v}")).is_some());
    }
    // The outbox counter reset, deleted, or set to text.
    for sql in [
        "UPDATE counter SET value = 0 WHERE name = 'outbox_seq'",
        "DELETE FROM counter WHERE name = 'outbox_seq'",
        "UPDATE counter SET value = 'lots' WHERE name = 'outbox_seq'",
    ] {
        app(&db, false, sql).unwrap();
        for i in 0..2 {
            put(
                &env,
                &db,
                "transact",
                json!({"ID": format!("C{}{i}", sql.len()), "store_ID": "S_KAW"}),
            );
        }
        sync_ok(&env, &db);
        assert!(central(&env, "transact", &format!("C{}1", sql.len())).is_some());
    }
}

#[test]
fn f6_no_write_lock_is_held_while_a_page_is_on_the_link() {
    let env = Env::new("shared-lock");
    let db = synced(&env);
    // A central whose queue answers take 4 s to start (a slow link, a busy
    // central): the app writes meanwhile with a 1 s busy timeout.
    let central = env.central.clone();
    let stalled = Arc::new(AtomicUsize::new(0));
    let seen = stalled.clone();
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        if req.method == "GET" && req.endpoint() == "/queued_records" {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(4));
        }
        fake::forward(&central, req, req.body.clone())
    }));
    env.config(&db, "central_url", &format!("http://{addr}"));
    let dbs = db.clone();
    let syncing = std::thread::spawn(move || common::agent_env(&dbs, &["sync"], &[]));
    while stalled.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(1)).unwrap();
    c.execute(
        "INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'DURING', '{\"ID\":\"DURING\",\"store_ID\":\"S_KAW\"}')",
        [],
    )
    .expect("the app's write waited on the agent's lock while a page was on the link");
    let out = syncing.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn f7_a_change_waiting_in_the_outbox_wins_over_a_received_copy() {
    let env = Env::new("shared-race");
    let db = synced(&env);
    for id in ["NI_P", "NI_Q"] {
        put(
            &env,
            &db,
            "name",
            json!({"ID": id, "type": "patient", "supplying_store_id": "S_KAW", "code": "C-1"}),
        );
        put(
            &env,
            &db,
            "name_store_join",
            json!({"ID": format!("J_{id}"), "name_ID": id, "store_ID": "S_KAW"}),
        );
    }
    sync_ok(&env, &db);
    // The central queues its (older) copies again, and the app writes between
    // the agent's push and its pull: the app edits NI_P and deletes NI_Q.
    env.central.resync_patients("S_KAW").unwrap();
    let central = env.central.clone();
    let dbs = db.clone();
    let once = Arc::new(AtomicUsize::new(0));
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        if req.method == "GET"
            && req.endpoint() == "/queued_records"
            && once.fetch_add(1, Ordering::SeqCst) == 0
        {
            let c = common::sql(&dbs);
            c.execute_batch(
                "UPDATE record SET data = json_set(data, '$.code', 'C-3') WHERE record_id = 'NI_P';
                 DELETE FROM record WHERE table_name = 'name_store_join' AND record_id = 'J_NI_Q';
                 DELETE FROM record WHERE table_name = 'name' AND record_id = 'NI_Q';",
            )
            .unwrap();
        }
        fake::forward(&central, req, req.body.clone())
    }));
    env.config(&db, "central_url", &format!("http://{addr}"));
    sync_ok(&env, &db);
    sync_ok(&env, &db);
    assert_eq!(local(&db, "name", "NI_P").unwrap()["code"], "C-3");
    assert_eq!(
        env.central.get("name", "NI_P").unwrap().unwrap()["code"],
        "C-3",
        "the app's last write reached the central"
    );
    assert!(
        local(&db, "name", "NI_Q").is_none(),
        "a delete stays a delete"
    );
    assert!(env.central.get("name", "NI_Q").unwrap().is_none());
}

#[test]
fn f8_numbers_outside_64_bits_reach_the_central_as_written() {
    let env = Env::new("shared-numbers");
    let db = synced(&env);
    // Written as the app would, in SQL: the literals are the record.
    app(
        &db,
        false,
        r#"INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'BIG',
           '{"ID":"BIG","store_ID":"S_KAW","big":12345678901234567890123,"neg":-98765432109876543210,"tiny":1e-400,"exact":0.1000000000000000055511151231257827}');"#,
    )
    .unwrap();
    sync_ok(&env, &db);
    let row = central(&env, "transact", "BIG").expect("pushed");
    for (k, literal) in [
        ("big", "12345678901234567890123"),
        ("neg", "-98765432109876543210"),
        ("tiny", "1e-400"),
        ("exact", "0.1000000000000000055511151231257827"),
    ] {
        assert_eq!(row[k].to_string(), literal, "{k} kept as sent: {row}");
    }
}
