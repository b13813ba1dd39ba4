//! Local faults (issue 7): disk full, a read-only database, the clinic's app holding
//! the write lock, a clock set to 1970 or to next year. Each gives a clear message,
//! its exit code, and no corruption.

mod common;

use std::path::Path;
use std::process::Command;

use common::{agent_env, sql, Env};
use serde_json::json;

fn integrity(db: &Path) -> String {
    sql(db)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A small tmpfs, when this machine lets us mount one (root in a VM; skipped elsewhere).
fn small_fs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

#[test]
fn disk_full_and_read_only_give_clear_errors_and_no_corruption() {
    let env = Env::new("disk");
    let mnt = env.dir.join("small");
    if !small_fs(&mnt, "1M") {
        eprintln!("skipped: cannot mount a small tmpfs here");
        return;
    }
    let db = mnt.join("f.sqlite");
    env.identity(&db);
    let line = |i: usize| {
        json!({"table": "transact", "record": {"ID": format!("T{i:06}"), "store_ID": "S", "comment": "x".repeat(400)}}).to_string()
    };
    let mut written = 0;
    let mut full = None;
    for chunk in 0..40 {
        let file = env.dir.join("chunk.jsonl");
        std::fs::write(
            &file,
            (0..100)
                .map(|i| line(chunk * 100 + i) + "\n")
                .collect::<String>(),
        )
        .unwrap();
        let out = env.agent(&db, &["import", file.to_str().unwrap()]);
        if out.status.success() {
            written += 100;
        } else {
            full = Some(out);
            break;
        }
    }
    let out = full.expect("a 1 MB filesystem fills up");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("disk full"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(integrity(&db), "ok");
    let count: i64 = sql(&db)
        .query_row("SELECT count(*) FROM record", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        count, written,
        "the failed import left nothing half-written"
    );

    // Read-only: the same filesystem remounted read-only.
    let remount = Command::new("mount")
        .args(["-o", "remount,ro", mnt.to_str().unwrap()])
        .status();
    if remount.map(|s| s.success()).unwrap_or(false) {
        let out = env.agent(&db, &["put", "transact", r#"{"ID":"RO","store_ID":"S"}"#]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("readonly") || err.contains("unable to open"),
            "{err}"
        );
        let st = env.agent(&db, &["queue", "--json"]);
        assert!(st.status.success() || st.status.code() == Some(4));
    }
    umount(&mnt);
}

#[test]
fn an_app_holding_the_write_lock_is_waited_for_then_reported() {
    let env = Env::new("lock");
    let db = env.db("l");
    env.identity(&db);
    let app = sql(&db);
    app.execute_batch("BEGIN IMMEDIATE; INSERT INTO record (table_name, record_id, data) VALUES ('number','N1','{\"ID\":\"N1\"}');").unwrap();
    let out = agent_env(
        &db,
        &["put", "transact", r#"{"ID":"T1","store_ID":"S"}"#],
        &[("FIELDSYNC_BUSY_TIMEOUT_MS", "300")],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked by another program"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Released in time: the write waits and goes through.
    let handle = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        app.execute_batch("COMMIT").unwrap();
    });
    let out = agent_env(
        &db,
        &["put", "transact", r#"{"ID":"T1","store_ID":"S"}"#],
        &[("FIELDSYNC_BUSY_TIMEOUT_MS", "5000")],
    );
    handle.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn a_clock_in_1970_or_next_year_changes_nothing() {
    let faketime = common::have("faketime") || Path::new("/usr/bin/faketime").exists();
    let env = Env::new("clock");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let mut n = 0;
    for when in [
        "1970-01-01 00:00:10",
        "2027-11-22 12:00:00",
        "2016-01-01 00:00:00",
    ] {
        n += 1;
        let out = env.agent(
            &db,
            &[
                "put",
                "item_line",
                &json!({"ID": format!("IL{n}"), "store_ID": "S_KAW", "item_ID": "I"}).to_string(),
            ],
        );
        // The first loop runs before initialisation: the put is refused, synced after.
        let _ = out;
        let status = if faketime {
            Command::new("faketime")
                .arg(when)
                .arg(env!("CARGO_BIN_EXE_fieldsync"))
                .args(["--db", db.to_str().unwrap(), "sync"])
                .output()
                .unwrap()
        } else {
            env.agent(&db, &["sync"])
        };
        assert_eq!(
            status.status.code(),
            Some(0),
            "clock {when}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let st = env.agent(&db, &["status"]);
        assert!(st.status.success());
    }
    for id in ["IL2", "IL3"] {
        assert!(
            env.central.get("item_line", id).unwrap().is_some(),
            "{id} pushed whatever the clock said"
        );
    }
    if !faketime {
        eprintln!("note: faketime not installed; ran with the real clock");
    }
}
