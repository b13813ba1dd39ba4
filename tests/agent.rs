//! End to end: the real `fieldsync` binary against the reference central over
//! loopback HTTP, one SQLite file per site.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{sql, Env};
use serde_json::json;

fn outbox_len(db: &std::path::Path) -> i64 {
    sql(db)
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn initialise_push_ten_thousand_in_batches_and_pull_central_data() {
    let env = Env::new("bulk");
    env.site("kaw", "S_KAW");
    env.central
        .put("item", &json!({"ID": "I1", "item_name": "Paracetamol"}))
        .unwrap();
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["initialised"], true);
    assert_eq!(report["pulled_central"], 2, "item + the store's name");
    let out = env.agent(&db, &["get", "item", "I1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paracetamol"));

    let file = env.dir.join("records.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..10_000 {
        writeln!(f, "{}", json!({"ID": format!("IL{i:05}"), "store_ID": "S_KAW", "item_ID": "I1", "quantity": i, "batch": "B-2026-11"})).unwrap();
    }
    drop(f);
    let out = env.agent(
        &db,
        &["import", file.to_str().unwrap(), "--table", "item_line"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outbox_len(&db), 10_000);
    // On a slow or loaded machine the central may still be integrating when the
    // agent's wait ends (exit 11, "integration in progress"): the next sync
    // goes on. What counts is where the syncs converge, not one sync's timing.
    let runs = env.sync_until_settled(&db, 10);
    let (code, report, stderr) = runs.first().cloned().unwrap();
    assert!(code == 0 || code == 11, "{stderr}");
    let pushed: u64 = runs.iter().map(|r| r.1["pushed"].as_u64().unwrap()).sum();
    assert_eq!(pushed, 10_000);
    assert!(
        report["push_batches"].as_u64().unwrap() >= 10,
        "bounded by 1024 records: {report}"
    );
    assert_eq!(env.central_count("item_line"), 10_000);
    assert_eq!(outbox_len(&db), 0);
    // Idle sync: nothing moves.
    let (code, report, _) = env.sync(&db);
    assert_eq!(
        (
            code,
            report["pushed"].as_u64(),
            report["pulled_queue"].as_u64()
        ),
        (0, Some(0), Some(0))
    );
    assert!(stderr.contains("pushed 10000 record(s)"), "{stderr}");
    for secret in [
        "pw-kaw",
        "Basic ",
        fieldsync::wire::credentials::password_digest("pw-kaw").expose(),
    ] {
        assert!(!stderr.contains(secret), "log leaks a secret: {secret}");
    }
}

#[test]
fn failed_integration_keeps_its_error_and_succeeds_when_the_parent_arrives() {
    let env = Env::new("integ");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    assert_eq!(env.sync(&db).0, 0);
    // The central queues a line whose header has not arrived yet, plus a good row.
    let c = env.central.conn().unwrap();
    let q = |table: &str, id: &str, data: serde_json::Value| {
        c.execute(
            "INSERT INTO sync_out (site_id, table_name, record_id, action, data) VALUES (2, ?1, ?2, 'update', ?3)",
            fieldsync::central::db::params![table, id, data.to_string()],
        )
        .unwrap();
    };
    q(
        "trans_line",
        "L9",
        json!({"ID": "L9", "transaction_ID": "T9"}),
    );
    q(
        "name_note",
        "NN1",
        json!({"ID": "NN1", "store_ID": "S_OTHER"}),
    );
    let (code, report, _) = env.sync(&db);
    assert_eq!(
        code, 17,
        "partial success with integration errors: {report}"
    );
    assert_eq!(report["integration_failed"], 1);
    let status = env.agent(&db, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        v["integration_errors"][0]
            .as_str()
            .unwrap()
            .contains("missing parent transact"),
        "{v}"
    );
    assert_eq!(v["led"], "attention");
    q("transact", "T9", json!({"ID": "T9", "store_ID": "S_OTHER"}));
    let (code, report, _) = env.sync(&db);
    assert_eq!(code, 0, "{report}");
    let out = env.agent(&db, &["get", "trans_line", "L9"]);
    assert!(out.status.success());
    assert_eq!(outbox_len(&db), 0, "pulled rows never enter the outbox");
}

#[test]
fn transfer_is_numbered_by_the_receiving_site() {
    let env = Env::new("xfer");
    env.site("kaw", "S_KAW");
    env.site("opua", "S_OPUA");
    let (kaw, opua) = (env.db("kaw"), env.db("opua"));
    for (db, name) in [(&kaw, "kaw"), (&opua, "opua")] {
        env.init(db, name);
        env.config(db, "hardware_id", &format!("HW-{name}"));
        assert_eq!(env.sync(db).0, 0);
    }
    // Opua already has supplier invoice 4.
    let put = |db: &std::path::Path, t: &str, v: serde_json::Value| {
        let out = env.agent(db, &["put", t, &v.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    put(
        &opua,
        "transact",
        json!({"ID": "OLD", "store_ID": "S_OPUA", "type": "si", "invoice_num": 4, "linked_transaction_id": ""}),
    );
    put(
        &kaw,
        "transact",
        json!({"ID": "CI1", "store_ID": "S_KAW", "name_ID": "N_S_OPUA", "type": "ci", "status": "fn", "invoice_num": 57}),
    );
    put(
        &kaw,
        "trans_line",
        json!({"ID": "CL1", "transaction_ID": "CI1", "item_ID": "I1", "quantity": 5, "sell_price": 1.5}),
    );
    assert_eq!(env.sync(&kaw).0, 0);
    let (code, report, stderr) = env.sync(&opua);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["numbered"][0]["number"], 5, "{report}");
    assert!(stderr.contains("numbered received transact"), "{stderr}");
    let c = env.central.conn().unwrap();
    let num: i64 = c
        .query_row("SELECT json_extract(data,'$.invoice_num') FROM record WHERE table_name='transact' AND json_extract(data,'$.linked_transaction_id')='CI1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(num, 5, "central holds the numbered invoice");
    assert_eq!(env.sync(&kaw).0, 0);
    let si: i64 = sql(&kaw)
        .query_row("SELECT json_extract(data,'$.invoice_num') FROM record WHERE table_name='transact' AND json_extract(data,'$.linked_transaction_id')='CI1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(si, 5, "initiating site sees the numbered, linked invoice");
    // A re-sync never renumbers.
    let (_, report, _) = env.sync(&opua);
    assert_eq!(report["numbered"].as_array().unwrap().len(), 0);
}

#[test]
fn offline_ends_quickly_with_its_own_exit_code() {
    let env = Env::new("offline");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = env.db("off");
    let out = common::agent_env(
        &db,
        &[
            "init",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--site",
            "x",
            "--password-env",
            "P",
        ],
        &[("P", "pw")],
    );
    assert!(out.status.success());
    let t = Instant::now();
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 10, "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(report["class"], "offline");
    assert!(stderr.contains("cannot be reached"), "{stderr}");
}

#[test]
fn one_sync_at_a_time() {
    let env = Env::new("single");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(fieldsync::agent::runner::lock_path(&db))
        .unwrap();
    f.try_lock().unwrap();
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 18, "{stderr}");
    assert!(stderr.contains("another fieldsync sync is running"));
    f.unlock().unwrap();
    assert_eq!(env.sync(&db).0, 0);
}

#[test]
fn replaced_device_needs_a_hardware_id_reset() {
    let env = Env::new("device");
    env.site("kaw", "S_KAW");
    let (old, new) = (env.db("old"), env.db("new"));
    env.init(&old, "kaw");
    env.init(&new, "kaw");
    env.config(&new, "hardware_id", "NEW-DEVICE");
    assert_eq!(env.sync(&old).0, 0);
    let (code, report, stderr) = env.sync(&new);
    assert_eq!(code, 13, "{stderr}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("site_incorrect_hardware_id"),
        "{report}"
    );
    assert!(
        report["hint"]
            .as_str()
            .unwrap()
            .contains("reset the hardware id"),
        "{report}"
    );
    let st = env.agent(&new, &["status"]);
    assert!(String::from_utf8_lossy(&st.stdout)
        .contains("ask the administrator to reset the hardware id"));
    env.central.reset_hardware_id("kaw").unwrap();
    assert_eq!(env.sync(&new).0, 0);
}

#[test]
fn any_program_writing_the_file_obeys_ownership_and_is_captured() {
    let env = Env::new("foreign");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    assert_eq!(env.sync(&db).0, 0);
    let c = sql(&db);
    c.execute("INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'APP1', '{\"ID\":\"APP1\",\"store_ID\":\"S_KAW\"}')", []).unwrap();
    let e = c
        .execute("INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'APP2', '{\"ID\":\"APP2\",\"store_ID\":\"S_X\"}')", [])
        .unwrap_err();
    assert!(e.to_string().contains("belongs to another store"), "{e}");
    let e = c
        .execute(
            "UPDATE record SET data = json_set(data, '$.name', 'x') WHERE table_name = 'store'",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("central data is read-only"), "{e}");
    assert_eq!(outbox_len(&db), 1);
    // The sqlite3 shell, an older SQLite, obeys the same triggers.
    if let Some(out) = common::have("sqlite3").then(|| std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO record (table_name, record_id, data) VALUES ('transact','SH1','{\"ID\":\"SH1\",\"store_ID\":\"S_KAW\"}'); \
              INSERT INTO record (table_name, record_id, data) VALUES ('item','SH2','{\"ID\":\"SH2\"}');")
        .output()
        .unwrap())
    {
        assert!(String::from_utf8_lossy(&out.stderr).contains("central data is read-only"));
        assert_eq!(outbox_len(&db), 2);
    }
    let (code, report, _) = env.sync(&db);
    assert_eq!(code, 0, "{report}");
    assert!(env.central.get("transact", "APP1").unwrap().is_some());
}

#[test]
fn status_answers_while_another_program_holds_a_write_lock_and_leds_follow() {
    let env = Env::new("status");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let leds = env.dir.join("leds");
    std::fs::create_dir_all(leds.join("ACT")).unwrap();
    env.config(&db, "led", "ACT");
    let out = common::agent_env(
        &db,
        &["sync"],
        &[("FIELDSYNC_LED_DIR", leds.to_str().unwrap())],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(leds.join("ACT/trigger")).unwrap(),
        "timer"
    );
    assert_eq!(
        std::fs::read_to_string(leds.join("ACT/delay_off")).unwrap(),
        "0",
        "steady on: all synced"
    );
    let app = sql(&db);
    app.execute_batch("BEGIN IMMEDIATE; INSERT INTO record (table_name, record_id, data) VALUES ('number','N1','{\"ID\":\"N1\"}');").unwrap();
    let t = Instant::now();
    let out = env.agent(&db, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["site"].as_str(),
            v["active_store"].as_str(),
            v["initialised"].as_bool()
        ),
        (Some("kaw"), Some("S_KAW"), Some(true))
    );
    assert_eq!(v["last_attempt"]["outcome"], "ok");
    app.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn bad_input_is_named_and_nothing_is_half_written() {
    let env = Env::new("badinput");
    let db = env.db("b");
    let out = env.agent(
        &db,
        &["dev", "set-identity", "--site-id", "2", "--store", "S"],
    );
    assert!(out.status.success());
    let file = env.dir.join("bad.jsonl");
    std::fs::write(&file, "{\"table\":\"transact\",\"record\":{\"ID\":\"T1\",\"store_ID\":\"S\"}}\n{\"table\":\"transact\",\"record\":{\"ID\":\"T2\",\"store_ID\":\"S\"}}\n{not json\n").unwrap();
    let out = env.agent(&db, &["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("not JSON"), "{err}");
    assert_eq!(outbox_len(&db), 0, "nothing half-written");
    for (args, want) in [
        (vec!["put", "transact", "{\"store_ID\":\"S\"}"], "no \"ID\""),
        (
            vec!["put", "transact", "{\"ID\":\"T\",\"store_ID\":\"OTHER\"}"],
            "belongs to another store",
        ),
        (vec!["put", "mystery", "{\"ID\":\"T\"}"], "unknown table"),
        (vec!["put", "transact", "{\"ID\":1}"], "must be a string"),
    ] {
        let out = env.agent(&db, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let big = format!(
        "{{\"ID\":\"T\",\"store_ID\":\"S\",\"x\":\"{}\"}}\n",
        "a".repeat(50 << 20)
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
        .args([
            "--db",
            db.to_str().unwrap(),
            "import",
            "-",
            "--table",
            "transact",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(big.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record limit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outbox_len(&db), 0);
}

#[test]
fn kill_during_initialisation_then_resume_without_duplicates() {
    let env = Env::new("resume");
    env.site("kaw", "S_KAW");
    for i in 0..3000 {
        env.central
            .put(
                "item",
                &json!({"ID": format!("I{i}"), "item_name": format!("item {i}")}),
            )
            .unwrap();
    }
    for i in 0..2000 {
        env.central
            .put("pref", &json!({"ID": format!("P{i}"), "store_ID": "S_KAW"}))
            .unwrap();
    }
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let mut killed = 0;
    for delay_ms in [30u64, 60, 120] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
            .args(["--db", db.to_str().unwrap(), "sync"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["initialised"], true);
    let c = sql(&db);
    let items: i64 = c
        .query_row(
            "SELECT count(*) FROM record WHERE table_name='item'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let prefs: i64 = c
        .query_row(
            "SELECT count(*) FROM record WHERE table_name='pref'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((items, prefs), (3000, 2000), "killed {killed} time(s)");
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let queued: i64 = env
        .central
        .conn()
        .unwrap()
        .query_row("SELECT count(*) FROM sync_out WHERE site_id = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(queued, 0, "everything acknowledged");
}

#[test]
fn under_journald_lines_carry_syslog_priorities_and_no_timestamp() {
    let env = Env::new("journal");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = env.db("j");
    let url = format!("http://127.0.0.1:{port}");
    assert!(common::agent_env(
        &db,
        &["init", "--url", &url, "--site", "x", "--password-env", "P"],
        &[("P", "secret-pw")]
    )
    .status
    .success());
    let out = common::agent_env(&db, &["sync"], &[("JOURNAL_STREAM", "8:1234")]);
    assert_eq!(out.status.code(), Some(10));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("fieldsync:"))
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>sync started")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<4>sync offline")),
        "{err}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "every journald line has a priority: {err}"
    );
    assert!(
        !err.contains("secret-pw") && !err.contains("Basic "),
        "{err}"
    );
}

fn import_peak_rss(env: &Env, name: &str, n: usize) -> u64 {
    let db = env.db(name);
    env.identity(&db);
    let file = env.dir.join(format!("{name}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..n {
        writeln!(
            f,
            "{}",
            json!({"table": "transact", "record": {"ID": format!("T{i:07}"), "store_ID": "S", "type": "ci", "status": "fn",
                   "invoice_num": i, "comment": "imported from the old system", "entry_date": "2026-11-22"}})
        )
        .unwrap();
    }
    drop(f);
    let out = common::agent_env(
        &db,
        &["import", file.to_str().unwrap()],
        &[("FIELDSYNC_PEAK_RSS", "1")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outbox_len(&db), n as i64);
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_100k_import_does_not_grow_memory_with_the_file() {
    let env = Env::new("importrss");
    let small = import_peak_rss(&env, "small", 10_000);
    let large = import_peak_rss(&env, "large", 100_000);
    eprintln!("import peak RSS: {small} KiB for 10,000 records, {large} KiB for 100,000");
    // Ten times the records, (almost) the same memory: streaming plus SQLite's
    // bounded page cache. 2 MiB of slack covers allocator noise.
    assert!(
        large < small + 2048,
        "peak RSS grew with the file: {small} KiB for 10k, {large} KiB for 100k"
    );
}
