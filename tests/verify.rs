//! Issue 30: nothing lost even when the central loses data. The site and the
//! real central binary compare what the site holds ([PC] compare extension)
//! and repair by the normal paths: a central that answered pushes and lost
//! them, a central restored from a backup taken mid-way (with and without
//! its restore note), and a site file edited behind the rules. Every central
//! here is the real `fieldsync-central serve` process, stopped with SIGTERM
//! and started again on the same port, the way an operator restores one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent_env, patience, sql};
use serde_json::{json, Value};

/// A central database and the server process serving it.
struct Central {
    dir: PathBuf,
    db: PathBuf,
    log: PathBuf,
    listen: String,
    child: Option<Child>,
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Central {
    /// A central with site `kaw` (store S_KAW) and item I1, not yet serving.
    fn new(name: &str) -> Central {
        let dir =
            std::env::temp_dir().join(format!("fieldsync-verify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Central {
            db: dir.join("central.sqlite"),
            log: dir.join("central.log"),
            dir,
            listen: "127.0.0.1:0".into(),
            child: None,
        };
        c.admin_env(
            &["site", "add", "kaw", "--password-env", "PW"],
            &[("PW", "pw-kaw")],
        );
        c.admin(&["store", "add", "S_KAW", "--site", "kaw"]);
        c.admin(&["put", "item", r#"{"ID":"I1","item_name":"Paracetamol"}"#]);
        c
    }

    fn admin(&self, args: &[&str]) -> String {
        self.admin_env(args, &[])
    }

    fn admin_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldsync-central"));
        cmd.arg("--db").arg(&self.db).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "fieldsync-central {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Serves on the same address as before (a fresh one the first time).
    fn start(&mut self) {
        let before = self.starts();
        let child = Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
            .arg("--db")
            .arg(&self.db)
            .args(["serve", "--listen", &self.listen])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30 * u64::from(patience()));
        while self.starts() == before {
            assert!(
                Instant::now() < deadline,
                "the central did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = self.log_text();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        self.listen = whole
            .lines()
            .filter_map(|l| l.split("serving v5 on http://").nth(1))
            .next_back()
            .unwrap()
            .trim()
            .to_string();
    }

    /// How many times a server said it serves, in whole log lines (a line
    /// may be read half written).
    fn starts(&self) -> usize {
        let text = self.log_text();
        text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .matches("serving v5 on http://")
            .count()
    }

    /// SIGTERM, as systemd stops it, and waits for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "the central did not stop cleanly: {status}"
        );
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn conn(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn count(&self, table: &str) -> i64 {
        self.conn()
            .query_row(
                "SELECT count(*) FROM record WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn has(&self, table: &str, id: &str) -> bool {
        self.conn()
            .query_row(
                "SELECT count(*) FROM record WHERE table_name = ?1 AND record_id = ?2",
                [table, id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    }

    /// A backup taken while it serves (`VACUUM INTO`: one consistent copy).
    fn backup(&self) -> PathBuf {
        let to = self.dir.join("backup.sqlite");
        self.conn()
            .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
            .unwrap();
        to
    }

    /// What an operator does with the server stopped: the backup put back in
    /// place of the database (its WAL files go: they belong to the other file).
    fn restore(&self, backup: &Path) {
        for ext in ["sqlite-wal", "sqlite-shm"] {
            let _ = std::fs::remove_file(self.db.with_extension(ext));
        }
        std::fs::copy(backup, &self.db).unwrap();
    }
}

fn agent(db: &Path, args: &[&str]) -> std::process::Output {
    agent_env(db, args, &[])
}

/// The site kaw's device, initialised and synced against `c`.
fn device(c: &Central) -> PathBuf {
    let db = c.dir.join("kaw.sqlite");
    let out = agent_env(
        &db,
        &[
            "init",
            "--url",
            &c.url(),
            "--site",
            "kaw",
            "--password-env",
            "FS_PW",
        ],
        &[("FS_PW", "pw-kaw")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent(&db, &["config", "set", "init_poll_secs", "1"]);
    assert!(out.status.success());
    sync(&db);
    db
}

/// A sync that must succeed; its report.
fn sync(db: &Path) -> Value {
    for _ in 0..10 {
        let out = agent(db, &["sync", "--json"]);
        let code = out.status.code().unwrap_or(-1);
        if code == 0 {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        // 11: the central still integrates on a loaded machine; go on.
        assert_eq!(code, 11, "sync: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the syncs did not settle");
}

/// `fieldsync verify --json`, which must succeed; (its JSON, stderr).
fn verify(db: &Path) -> (Value, String) {
    let out = agent(db, &["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Transactions of the site's own store written as the clinic's app writes
/// them (plain SQL, captured by the triggers).
fn write_own(db: &Path, from: u32, to: u32) {
    let c = sql(db);
    for i in from..to {
        c.execute(
            "INSERT INTO record (table_name, record_id, data) VALUES ('transact', ?1, ?2)",
            [
                format!("T{i:04}"),
                json!({"ID": format!("T{i:04}"), "store_ID": "S_KAW", "comment": format!("visit {i}")})
                    .to_string(),
            ],
        )
        .unwrap();
    }
}

fn local_count(db: &Path, table: &str) -> i64 {
    sql(db)
        .query_row(
            "SELECT count(*) FROM record WHERE table_name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn identical_records_compare_in_one_request() {
    let mut c = Central::new("same");
    c.start();
    let db = device(&c);
    write_own(&db, 0, 300);
    sync(&db);
    let (out, _) = verify(&db);
    let compared = &out["compared"];
    assert_eq!(compared["differences"], 0, "{out}");
    assert_eq!(compared["reason"], "asked");
    assert!(compared["records"].as_u64().unwrap() >= 301, "{out}");
    assert_eq!(
        compared["requests"], 1,
        "one request when all is well: {out}"
    );
    assert!(
        compared["bytes"].as_u64().unwrap() < 4_000,
        "a few hundred bytes per table: {out}"
    );
    // The plain output says so too.
    let out = agent(&db, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("with the central: the same"), "{text}");
}

#[test]
fn records_a_central_answered_and_lost_are_sent_again() {
    let mut c = Central::new("lost");
    c.start();
    let db = device(&c);
    write_own(&db, 0, 200);
    sync(&db);
    assert_eq!(c.count("transact"), 200);
    // The central answered the pushes, then lost some (a disk that lied
    // about fsync, an operator's mistake): gone behind its back.
    let lost = c
        .conn()
        .execute(
            "DELETE FROM record WHERE table_name = 'transact' AND record_id IN ('T0003', 'T0050', 'T0051', 'T0199')",
            [],
        )
        .unwrap();
    assert_eq!(lost, 4);
    // And changed one in place.
    c.conn()
        .execute(
            "UPDATE record SET data = json_set(data, '$.comment', 'garbled') WHERE record_id = 'T0100'",
            [],
        )
        .unwrap();
    let metrics = c.dir.join("fieldsync.prom");
    let set = agent(
        &db,
        &["config", "set", "metrics_file", metrics.to_str().unwrap()],
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let (out, _) = verify(&db);
    let compared = &out["compared"];
    assert_eq!(compared["differences"], 5, "{out}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("fieldsync_compare_differences 5\n"), "{prom}");
    assert!(prom.contains("fieldsync_compare_owed 0\n"), "{prom}");
    assert_eq!(compared["queued"], 5, "{out}");
    assert!(
        compared["requests"].as_u64().unwrap() <= 10,
        "a difference narrows to its records in a few requests: {out}"
    );
    assert_eq!(c.count("transact"), 200, "every record is back, each once");
    for id in ["T0003", "T0050", "T0051", "T0199"] {
        assert!(c.has("transact", id), "{id} is back");
    }
    let comment: String = c
        .conn()
        .query_row(
            "SELECT json_extract(data, '$.comment') FROM record WHERE record_id = 'T0100'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(comment, "visit 100");
    // `status` says what the last comparison found.
    let status = agent(&db, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("compared") && text.contains("5 differed — 5 sent again"),
        "{text}"
    );
    // Nothing left to find.
    let (out, _) = verify(&db);
    assert_eq!(out["compared"]["differences"], 0, "{out}");
}

/// A central backed up (while serving) once the site had pushed `before` of
/// its records; after the backup the site pushed up to `after`, and the
/// central changed central data the site read (item I2).
fn backed_up(name: &str, before: u32, after: u32) -> (Central, PathBuf, PathBuf) {
    let mut c = Central::new(name);
    c.start();
    let db = device(&c);
    write_own(&db, 0, before);
    sync(&db);
    let backup = c.backup();
    write_own(&db, before, after);
    c.admin(&["put", "item", r#"{"ID":"I2","item_name":"Ibuprofen"}"#]);
    sync(&db);
    (c, db, backup)
}

#[test]
fn a_central_restored_from_a_backup_is_found_and_repaired_without_a_person() {
    let (mut c, db, backup) = backed_up("restored", 20, 45);
    assert_eq!(c.count("transact"), 45);
    assert!(common::record(&db, "item", "I2").is_some());
    // Restored by an operator: stop, put the backup in place, start.
    c.stop();
    c.restore(&backup);
    c.start();
    assert!(
        c.log_text().contains("restored from a backup"),
        "the central says what happened: {}",
        c.log_text()
    );
    assert_eq!(
        c.count("transact"),
        20,
        "the backup lacks what came after it"
    );
    // A central change after the restore: numbered again from where the
    // restored change log ends, below the site's cursor.
    c.admin(&["put", "item", r#"{"ID":"I3","item_name":"Zinc"}"#]);
    // The next sync, started by its timer: no person involved.
    let out = agent(&db, &["sync", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the central was restored"), "{stderr}");
    let compared = &report["compared"];
    assert_eq!(compared["reason"], "central_restored", "{report}");
    assert_eq!(
        compared["queued"], 25,
        "the records sent since the backup: {report}"
    );
    assert_eq!(
        c.count("transact"),
        45,
        "every record is back on the central, each once"
    );
    assert!(
        common::record(&db, "item", "I3").is_some(),
        "the central's change after the restore reached the site"
    );
    assert_eq!(local_count(&db, "transact"), 45);
    // I2 exists only on the site now: not the site's to send, never deleted
    // by verification alone.
    assert_eq!(compared["unmatched"], 1, "{report}");
    assert!(common::record(&db, "item", "I2").is_some());
    // Owed no more: the next sync does not compare again.
    let report = sync(&db);
    assert!(report["compared"].is_null(), "{report}");
}

#[test]
fn a_central_restored_with_its_note_is_found_by_the_cursor() {
    let (mut c, db, backup) = backed_up("cursor", 10, 15);
    c.stop();
    // The whole directory restored: the note is as old as the database, so
    // the central cannot tell; its change log now ends before the site's cursor.
    c.restore(&backup);
    std::fs::remove_file(c.db.with_extension("sqlite.epoch")).unwrap();
    c.start();
    assert!(!c.log_text().contains("restored from a backup"));
    let out = agent(&db, &["sync", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("its change log ends at"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared"]["queued"], 5, "{report}");
    assert_eq!(c.count("transact"), 15);
    // The cursor moved back to where the central's log ends: its next
    // change reaches the site.
    c.admin(&["put", "item", r#"{"ID":"I4","item_name":"ORS"}"#]);
    sync(&db);
    assert!(common::record(&db, "item", "I4").is_some());
}

#[test]
fn a_site_file_edited_behind_the_rules_is_repaired() {
    let mut c = Central::new("behind");
    c.start();
    let db = device(&c);
    write_own(&db, 0, 5);
    sync(&db);
    // Another program, triggers off: an own record written and its outbox
    // entry deleted, central data edited in place.
    let app = sql(&db);
    app.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .unwrap();
    app.execute_batch(
        r#"INSERT INTO record (table_name, record_id, data) VALUES
               ('transact', 'T_HIDDEN', '{"ID":"T_HIDDEN","store_ID":"S_KAW","comment":"never queued"}');
           DELETE FROM outbox;
           UPDATE record SET data = json_set(data, '$.item_name', 'Paracetamol 5000mg') WHERE record_id = 'I1';"#,
    )
    .unwrap();
    drop(app);
    let (out, _) = verify(&db);
    assert_eq!(out["checked"]["queued"], 1, "{out}");
    assert_eq!(out["checked"]["restore"], 1, "{out}");
    assert!(c.has("transact", "T_HIDDEN"));
    assert_eq!(
        common::record(&db, "item", "I1").unwrap()["item_name"],
        "Paracetamol"
    );
    // After the local half, the two sides agree.
    assert_eq!(out["compared"]["differences"], 0, "{out}");
}

#[test]
fn against_a_central_without_the_extension_only_the_device_is_checked() {
    // A real central behind a front that passes none of its fieldsync
    // headers on: to the agent, a legacy central.
    let env = common::Env::new("verify-legacy");
    env.site("kaw", "S_KAW");
    let f = common::fake::front(env.central.clone(), false, false);
    let db = env.db("kaw");
    env.init_url(&db, "kaw", &format!("http://{}", f.addr));
    sync(&db);
    write_own(&db, 0, 3);
    sync(&db);
    let out = agent(&db, &["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checked "), "{text}");
    assert!(
        text.contains("not compared with the central: it lacks this project's compare extension"),
        "{text}"
    );
    let seen = f.seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|s| s.contains("fieldsync/")),
        "never tried against a central that did not advertise it: {seen:?}"
    );
    let (json, _) = verify(&db);
    assert_eq!(json["compare_unavailable"], true, "{json}");
    assert!(json["compared"].is_null());
}

#[test]
fn the_check_and_the_comparison_come_every_n_syncs_counted_across_processes() {
    // The counters are saved with each sync's record of its attempt (one
    // commit of the state file per idle sync, issue 31): each sync is its own
    // process, so a count that was not saved would never come round.
    let mut c = Central::new("every");
    c.start();
    let db = device(&c);
    for (key, n) in [("check_every_syncs", "2"), ("compare_every_syncs", "3")] {
        let out = agent(&db, &["config", "set", key, n]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (mut checked, mut compared) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let r = sync(&db);
        if !r["checked"].is_null() {
            checked.push(i);
        }
        if !r["compared"].is_null() {
            compared.push(i);
        }
    }
    assert_eq!(checked.len(), 3, "checks at syncs {checked:?}");
    assert!(checked.windows(2).all(|w| w[1] - w[0] == 2), "{checked:?}");
    assert_eq!(compared.len(), 2, "comparisons at syncs {compared:?}");
    assert_eq!(compared[1] - compared[0], 3, "{compared:?}");
    // The last check is saved with the attempt, for `status` in another process.
    let out = agent(&db, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["check"]["records"].as_u64().is_some_and(|n| n >= 2),
        "{status}"
    );
}
