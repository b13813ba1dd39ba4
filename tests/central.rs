//! The reference central (issue 22): races it must win, its HTTP server, compressed
//! pushes (§9.1), durability of what it answers, mirrored sync, requisition
//! transfers and patient resync. Raw v5 over loopback against the real server.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{final_push, init_and_drain, pull_all, push, raw, upd, v5, Env};
use fieldsync::central::db::Dialect;
use serde_json::{json, Value};

fn long() -> bool {
    std::env::var_os("FIELDSYNC_LONG").is_some()
}

fn count(env: &Env, sql: &str) -> i64 {
    env.central
        .conn()
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Pushes `n` item_line rows of `store` in batches of 1000, then the final push.
fn push_lines(env: &Env, site: &str, hw: &str, store: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|i| {
                upd(
                    &i.to_string(),
                    "item_line",
                    json!({"ID": format!("{store}-{i:06}"), "store_ID": store, "quantity": i}),
                )
            })
            .collect();
        let body = json!({"queueLength": n, "data": rows}).to_string();
        let r = v5(env, site, hw, "POST", "/queued_records", body.as_bytes());
        assert_eq!(
            r.status,
            200,
            "{site}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(final_push(env, site, hw));
}

#[test]
fn integration_wins_its_races_while_other_sites_poll_and_push() {
    // 100,000 rows in the long run; the CI run keeps the same shape smaller.
    let big = if long() { 100_000 } else { 20_000 };
    let env = Env::new("races");
    const SITES: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];
    let sites = SITES;
    for (i, s) in sites.iter().enumerate() {
        env.site(s, &format!("ST{i}"));
        init_and_drain(&env, s, &format!("HW{i}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut others = Vec::new();
    // Starve the machine's CPUs while it runs.
    for _ in 0..2 {
        let stop = stop.clone();
        others.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        }));
    }
    // Four threads poll site_status as sites (each request may write last_seen).
    for (i, s) in sites.iter().enumerate().skip(1) {
        let (stop, addr, auth) = (stop.clone(), env.addr, env.auth(s));
        let hw = format!("HW{i}");
        others.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = raw(
                    addr,
                    "GET",
                    "/sync/v5/site_status",
                    &[
                        ("Authorization", &auth),
                        ("msupply-site-uuid", &hw),
                        ("version", "14"),
                    ],
                    b"",
                );
                assert_eq!(r.status, 200);
            }
        }));
    }
    // Three sites push and integrate at the same time as the big one.
    let env = Arc::new(env);
    let mut pushers = Vec::new();
    for (i, s) in sites.into_iter().enumerate() {
        let env = env.clone();
        let n = if i == 0 { big } else { 3_000 };
        pushers.push(std::thread::spawn(move || {
            push_lines(&env, s, &format!("HW{i}"), &format!("ST{i}"), n)
        }));
    }
    let started = Instant::now();
    for p in pushers {
        p.join().unwrap();
    }
    eprintln!(
        "pushed and integrated {big} + 4×3,000 rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    for o in others {
        o.join().unwrap();
    }
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM record WHERE table_name = 'item_line'"
        ),
        big as i64 + 4 * 3_000
    );
    assert_eq!(count(&env, "SELECT count(*) FROM staging"), 0);
    assert_eq!(count(&env, "SELECT count(*) FROM integration"), 0);
}

#[test]
fn a_failing_integration_is_retried_and_never_reported_idle() {
    let env = Env::new("retry");
    env.site("a", "A");
    init_and_drain(&env, "a", "HA");
    push(
        &env,
        "a",
        "HA",
        json!([upd("1", "transact", json!({"ID": "T1", "store_ID": "A"}))]),
    );
    // The disk fails this one row, for a while.
    let c = env.central.conn().unwrap();
    c.execute_batch(match c.dialect() {
        Dialect::Sqlite => {
            "CREATE TRIGGER sabotage BEFORE INSERT ON record WHEN NEW.record_id = 'T1' \
             BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;"
        }
        Dialect::Postgres => {
            "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'disk trouble'; END $$; \
             CREATE TRIGGER sabotage BEFORE INSERT ON record FOR EACH ROW \
             WHEN (NEW.record_id = 'T1') EXECUTE FUNCTION sabotage();"
        }
    })
    .unwrap();
    let r = v5(
        &env,
        "a",
        "HA",
        "POST",
        "/queued_records",
        br#"{"queueLength":0,"data":[]}"#,
    );
    assert_eq!(r.json()["integrationStarted"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = env.central.report(0).unwrap();
        let state = report[0].integration.clone().unwrap_or_default();
        let code = v5(&env, "a", "HA", "GET", "/site_status", b"").json()["code"].clone();
        assert_eq!(
            code, "integration_in_progress",
            "never idle while its rows wait"
        );
        if state.contains("disk trouble") {
            break; // the report shows the failure with its error
        }
        assert!(
            Instant::now() < deadline,
            "the failure never showed in the report: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.execute_batch(match c.dialect() {
        Dialect::Sqlite => "DROP TRIGGER sabotage",
        Dialect::Postgres => "DROP TRIGGER sabotage ON record",
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while v5(&env, "a", "HA", "GET", "/site_status", b"").json()["code"] != "idle" {
        assert!(
            Instant::now() < deadline,
            "never integrated after the disk recovered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        env.central.get("transact", "T1").unwrap().is_some(),
        "retried by itself"
    );
}

#[test]
fn the_server_keeps_connections_and_refuses_bad_framing() {
    let env = Env::new("server");
    env.site("a", "A");
    let auth = env.auth("a");
    let mut s = std::net::TcpStream::connect(env.addr).unwrap();
    let request = format!(
        "GET /sync/v5/site HTTP/1.1\r\nAuthorization: {auth}\r\nmsupply-site-uuid: H\r\nversion: 14\r\n\r\n"
    );
    // Two requests on one connection, the second sent after the first answer.
    let mut seen = 0;
    for _ in 0..2 {
        s.write_all(request.as_bytes()).unwrap();
        // One whole answer: the head, then Content-Length bytes (they may come
        // in separate reads).
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let complete = |b: &[u8]| -> bool {
            let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
                return false;
            };
            let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            b.len() >= end + 4 + len
        };
        while !complete(&buf) {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the connection closed mid-answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains("Accept-Encoding: gzip"),
            "§9.1: it says it takes gzip bodies"
        );
        seen += 1;
    }
    assert_eq!(seen, 2);
    for (head, status) in [
        (
            "POST /sync/v5/initialise HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
            "400",
        ),
        (
            "POST /sync/v5/initialise HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400",
        ),
        (
            "POST /sync/v5/initialise HTTP/1.1\r\nContent-Length: 20000000\r\n\r\n",
            "413",
        ),
        (
            "POST /sync/v5/initialise HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "411",
        ),
    ] {
        let mut s = std::net::TcpStream::connect(env.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {out}"
        );
    }
}

#[test]
fn the_server_stops_after_the_requests_in_flight() {
    let dir = fieldsync::testkit::tempdir::TempDir::new("stop");
    let central = fieldsync::central::Central::open(&dir.join("c.sqlite")).unwrap();
    let server = fieldsync::central::http::spawn(central, "127.0.0.1:0").unwrap();
    let addr = server.addr;
    // A request in flight: its head arrives, its body trickles in.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /nowhere HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stopping = std::thread::spawn(move || server.stop());
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"cd").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 404"),
        "the request in flight is answered: {out}"
    );
    assert!(out.contains("Connection: close"));
    stopping.join().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "no longer listening"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn c35_compressed_pushes_are_the_same_pushes() {
    let env = Env::new("gzip");
    env.site("a", "A");
    init_and_drain(&env, "a", "HA");
    let rows: Vec<Value> = (0..50)
        .map(|i| {
            upd(
                &i.to_string(),
                "item_line",
                json!({"ID": format!("Z{i}"), "store_ID": "A", "note": "zzzzzzzzzz"}),
            )
        })
        .collect();
    let body = json!({"queueLength": 50, "data": rows}).to_string();
    let auth = env.auth("a");
    let headers = [
        ("Authorization", auth.as_str()),
        ("msupply-site-uuid", "HA"),
        ("version", "14"),
        ("Content-Encoding", "gzip"),
    ];
    let r = raw(
        env.addr,
        "POST",
        "/sync/v5/queued_records",
        &headers,
        &gzip(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("accept-encoding"), Some("gzip"));
    assert!(final_push(&env, "a", "HA"));
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM record WHERE table_name = 'item_line'"
        ),
        50
    );
    let row = env.central.get("item_line", "Z7").unwrap().unwrap();
    assert_eq!(
        row,
        json!({"ID": "Z7", "store_ID": "A", "note": "zzzzzzzzzz"})
    );
    // 17 MiB once inflated: 413, nothing staged.
    let pad = " ".repeat(17 << 20);
    let bomb = format!(r#"{{"queueLength":1,"data":[]{pad}}}"#);
    let r = raw(
        env.addr,
        "POST",
        "/sync/v5/queued_records",
        &headers,
        &gzip(bomb.as_bytes()),
    );
    assert_eq!((r.status, r.code().as_str()), (413, "request_too_large"));
    assert_eq!(count(&env, "SELECT count(*) FROM staging"), 0);
    // Another encoding: 415, so an agent re-sends plain.
    let mut other = headers;
    other[3] = ("Content-Encoding", "br");
    let r = raw(
        env.addr,
        "POST",
        "/sync/v5/queued_records",
        &other,
        body.as_bytes(),
    );
    assert_eq!(r.status, 415);
}

#[test]
fn what_the_central_answers_is_on_disk() {
    let env = Env::new("durable");
    let conn = env.central.conn().unwrap();
    if conn.dialect() == Dialect::Sqlite {
        let mode: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2, "synchronous=FULL on every central connection");
    } else {
        // PostgreSQL: a commit is durable when it returns only with these on.
        for setting in ["fsync", "synchronous_commit"] {
            let v: String = conn
                .query_row(&format!("SHOW {setting}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                v, "on",
                "{setting} must be on for the central's answers to be durable"
            );
        }
    }
    drop(conn);
    // A central process killed right after answering a push loses nothing.
    let proc = CentralProcess::new(&env, &["a"]);
    proc.admin(&["store", "add", "A", "--site", "a"]);
    let db = proc.db.clone();
    let dir = proc.dir.clone();
    let listen = proc.listen.clone();
    let serve = || proc.serve(None);
    let mut child = serve();
    let proc_env = Env::view(
        dir.clone(),
        fieldsync::central::Central::open_db(&db).unwrap(),
        db.clone(),
        listen.parse().unwrap(),
    );
    init_and_drain(&proc_env, "a", "HA");
    let r = push(
        &proc_env,
        "a",
        "HA",
        json!([upd("1", "transact", json!({"ID": "KEPT", "store_ID": "A"}))]),
    );
    assert_eq!(r.status, 200);
    child.kill().unwrap(); // SIGKILL right after the answer
    child.wait().unwrap();
    let mut child = serve();
    assert!(final_push(&proc_env, "a", "HA"));
    assert!(
        proc_env.central.get("transact", "KEPT").unwrap().is_some(),
        "the answered push survived"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn mirrored_sync_the_primary_edits_central_data() {
    let env = Env::new("mirrored");
    env.site("cms", "CMS");
    env.site("r1", "R1");
    env.site("r2", "R2");
    for (s, hw) in [("cms", "HC"), ("r1", "H1"), ("r2", "H2")] {
        init_and_drain(&env, s, hw);
    }
    env.central.set_primary(Some("cms")).unwrap();
    // The central's own edits of central data are refused, naming the primary.
    let e = env
        .central
        .put("item", &json!({"ID": "I1", "item_name": "x"}))
        .unwrap_err();
    assert!(e.to_string().contains("primary site is cms"), "{e}");
    let e = env
        .central
        .add_store("NEW", "NEW", "New", None)
        .unwrap_err();
    assert!(e.to_string().contains("created on the primary site"), "{e}");
    // The primary pushes central data, and a new store with its name.
    let r = push(
        &env,
        "cms",
        "HC",
        json!([
            upd("1", "item", json!({"ID": "I1", "item_name": "Paracetamol"})),
            upd(
                "2",
                "name",
                json!({"ID": "N_S9", "name": "Store nine", "type": "store"})
            ),
            upd(
                "3",
                "store",
                json!({"ID": "S9", "name": "Store nine", "name_ID": "N_S9", "sync_id_remote_site": 1})
            ),
        ]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(final_push(&env, "cms", "HC"));
    // Another site pushing central data is still refused.
    let r = push(
        &env,
        "r1",
        "H1",
        json!([upd(
            "1",
            "item",
            json!({"ID": "I1", "item_name": "renamed"})
        )]),
    );
    assert_eq!(
        (
            r.status,
            r.json()["error"]["data"]["records"][0]["reason"].clone()
        ),
        (403, json!("central_data"))
    );
    // The remote sites read it from the change log; the primary's own edit is not echoed.
    let central_ids = |s: &str, hw: &str| -> Vec<String> {
        v5(
            &env,
            s,
            hw,
            "GET",
            "/central_records?cursor=0&limit=1000",
            b"",
        )
        .json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["recordId"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(central_ids("r1", "H1").contains(&"I1".to_string()));
    assert!(
        !central_ids("cms", "HC").contains(&"I1".to_string()),
        "not echoed to the primary"
    );
    // The central assigns the primary's new store to a site.
    env.central.move_store("S9", Some("r2")).unwrap();
    let got: Vec<String> = pull_all(&env, "r2", "H2")
        .iter()
        .map(|r| r["recordId"].as_str().unwrap().to_string())
        .collect();
    assert!(got.contains(&"S9".to_string()), "{got:?}");
}

#[test]
fn requisition_transfer_is_created_once_and_numbered_by_the_responder() {
    let env = Env::new("requisition");
    env.site("a", "A");
    env.site("b", "B");
    init_and_drain(&env, "a", "HA");
    init_and_drain(&env, "b", "HB");
    let request = |status: &str| {
        json!([
            upd(
                "1",
                "requisition",
                json!({"ID": "RQ1", "store_ID": "A", "name_ID": "N_B", "type": "request",
                                           "status": status, "serial_number": 12, "linked_requisition_id": ""})
            ),
            upd(
                "2",
                "requisition_line",
                json!({"ID": "RL1", "requisition_ID": "RQ1", "item_ID": "I1", "Cust_stock_order": 40})
            ),
        ])
    };
    push(&env, "a", "HA", request("sg"));
    assert!(final_push(&env, "a", "HA"));
    let responses = || {
        count(&env, "SELECT count(*) FROM record WHERE table_name = 'requisition' AND json_extract(data, '$.type') = 'response'")
    };
    assert_eq!(responses(), 0, "not finalised: nothing yet");
    push(&env, "a", "HA", request("fn"));
    assert!(final_push(&env, "a", "HA"));
    push(&env, "a", "HA", request("fn"));
    assert!(final_push(&env, "a", "HA"));
    assert_eq!(responses(), 1, "once, however often pushed");
    let got = pull_all(&env, "b", "HB");
    let resp = got
        .iter()
        .find(|r| r["tableName"] == "requisition" && r["recordData"]["type"] == "response")
        .unwrap();
    assert_eq!(resp["recordData"]["serial_number"], -1);
    assert_eq!(resp["recordData"]["linked_requisition_id"], "RQ1");
    assert_eq!(resp["recordData"]["store_ID"], "B");
    assert!(
        got.iter()
            .any(|r| r["tableName"] == "requisition_line"
                && r["recordData"]["Cust_stock_order"] == 40)
    );
    assert!(pull_all(&env, "a", "HA")
        .iter()
        .any(|r| r["tableName"] == "requisition" && r["recordData"]["type"] == "response"));
}

#[test]
fn patient_resync_queues_the_store_patients_again() {
    let env = Env::new("resync");
    env.site("a", "A");
    init_and_drain(&env, "a", "HA");
    push(
        &env,
        "a",
        "HA",
        json!([
            upd(
                "1",
                "name",
                json!({"ID": "P1", "type": "patient", "supplying_store_id": "A"})
            ),
            upd(
                "2",
                "name_store_join",
                json!({"ID": "J1", "name_ID": "P1", "store_ID": "A"})
            ),
            upd(
                "3",
                "nameInsuranceJoin",
                json!({"ID": "NI1", "nameID": "P1"})
            ),
        ]),
    );
    assert!(final_push(&env, "a", "HA"));
    assert!(pull_all(&env, "a", "HA").is_empty(), "nothing echoed");
    env.central
        .put(
            "insuranceProvider",
            &json!({"ID": "IP1", "providerName": "Hospital fund"}),
        )
        .unwrap();
    let n = env.central.resync_patients("A").unwrap();
    let got: Vec<String> = pull_all(&env, "a", "HA")
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["tableName"].as_str().unwrap(),
                r["recordId"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(n as usize, got.len());
    for want in [
        "name P1",
        "name_store_join J1",
        "nameInsuranceJoin NI1",
        "insuranceProvider IP1",
    ] {
        assert!(got.contains(&want.to_string()), "{want}: {got:?}");
    }
}

/// A power cut, simulated (issue 22, item 6): the central runs under
/// `tests/powercut/shim.c`, so what a file held at its last fsync is all that
/// survives; a site pushes batches without pause; the central is killed at a
/// random moment and its files are put back as they were at their last sync.
/// Every batch the central answered 200 must be there after the restart —
/// whatever the page cache held is gone.
#[test]
fn what_the_central_answers_survives_a_power_cut() {
    let rounds = if long() { 20 } else { 3 };
    let mut rng: u64 = std::env::var("FIELDSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261130);
    eprintln!("power cut: seed {rng} (FIELDSYNC_SEED=N for another)");
    let env = Env::new("powercut");
    if env.central.conn().unwrap().dialect() != Dialect::Sqlite {
        // The shim images SQLite's files at their fsyncs; PostgreSQL's
        // durability is its server's (checked in what_the_central_answers_is_on_disk).
        eprintln!("power cut: SQLite only, skipped on PostgreSQL");
        return;
    }
    let shim = env.dir.join("powercut.so");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/powercut/shim.c"
        ))
        .output()
        .expect("cc runs (the Rust toolchain links with it)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let proc = CentralProcess::new(&env, &["a", "b"]);
    proc.admin(&["store", "add", "A", "--site", "a"]);
    let (db, listen) = (proc.db.clone(), proc.listen.clone());
    let dir = proc.dir.clone();
    let file = |suffix: &str| dir.join(format!("c.sqlite{suffix}"));
    let serve = |shimmed: bool| proc.serve(shimmed.then_some((shim.as_path(), dir.as_path())));
    // Initialised without the shim, stopped cleanly and checkpointed: a start
    // that is on disk for certain.
    {
        let mut child = serve(false);
        let plain = Env::view(
            dir.clone(),
            fieldsync::central::Central::open_db(&db).unwrap(),
            db.clone(),
            listen.parse().unwrap(),
        );
        init_and_drain(&plain, "a", "HA");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(c);
    std::fs::copy(&db, file(".durable")).unwrap();
    let _ = std::fs::remove_file(file("-wal.durable"));

    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let auth = env.auth("a");
    let mut answered: Vec<String> = Vec::new();
    for round in 0..rounds {
        let mut child = serve(true);
        // A reader holding the database open (an administrator's report, a
        // backup): no connection of the central is then the last to close, whose
        // checkpoint would sync the WAL whatever the central's setting.
        let mut reader = common::have("sqlite3").then(|| {
            std::process::Command::new("sqlite3")
                .arg(&db)
                .env("LD_PRELOAD", &shim)
                .env("POWERCUT_DIR", &dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(Killed)
                .unwrap()
        });
        match reader.as_mut().and_then(|r| r.0.stdin.as_mut()) {
            Some(input) => input
                .write_all(b"BEGIN; SELECT count(*) FROM site;\n")
                .unwrap(),
            None => eprintln!(
                "note: no sqlite3 shell; the power cut runs without a reader holding the database"
            ),
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Other sites polling meanwhile keep connections open, so the push's own
        // connection is rarely the last to close (whose checkpoint would sync
        // the WAL whatever the central's setting): the answer must not lean on it.
        let pollers: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                let auth_b = env.auth("b");
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let _ = common::try_raw(
                            addr,
                            "GET",
                            "/sync/v5/site_status",
                            &[
                                ("Authorization", &auth_b),
                                ("msupply-site-uuid", "HB"),
                                ("version", "14"),
                            ],
                            b"",
                        );
                    }
                })
            })
            .collect();
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pusher = {
            let (stop, auth, batches) = (stop.clone(), auth.clone(), batches.clone());
            std::thread::spawn(move || {
                let mut ok = Vec::new();
                for batch in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let ids: Vec<String> =
                        (0..25).map(|j| format!("P{round}-{batch}-{j}")).collect();
                    let rows: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            upd(
                                id,
                                "transact",
                                json!({"ID": id, "store_ID": "A", "comment": "ā"}),
                            )
                        })
                        .collect();
                    let body = json!({"queueLength": 1_000_000, "data": rows}).to_string();
                    let r = common::try_raw(
                        addr,
                        "POST",
                        "/sync/v5/queued_records",
                        &[
                            ("Authorization", &auth),
                            ("msupply-site-uuid", "HA"),
                            ("version", "14"),
                        ],
                        body.as_bytes(),
                    );
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.extend(ids);
                            batches.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
                ok
            })
        };
        // The cut comes after a random number of answered pushes, then a random
        // moment: wherever the central is, whatever the machine's speed.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = 1 + ((rng >> 33) % 40) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while batches.load(Ordering::SeqCst) < after {
            assert!(
                Instant::now() < deadline,
                "round {round}: fewer than {after} pushes answered in 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis((rng >> 40) % 200));
        child.kill().unwrap(); // the power goes
        child.wait().unwrap();
        drop(reader);
        stop.store(true, Ordering::SeqCst);
        let got = pusher.join().unwrap();
        for p in pollers {
            p.join().unwrap();
        }
        assert!(
            !got.is_empty(),
            "round {round}: no push was answered before the cut"
        );
        assert!(
            file("-wal.durable").exists(),
            "round {round}: the shim saw no sync of the WAL (is it loaded?)"
        );
        answered.extend(got);
        // What the disk holds after the cut: the images of the last syncs.
        for suffix in ["", "-wal"] {
            let image = file(&format!("{suffix}.durable"));
            if image.exists() {
                std::fs::copy(&image, file(suffix)).unwrap();
            } else {
                let _ = std::fs::remove_file(file(suffix));
            }
        }
        let _ = std::fs::remove_file(file("-shm"));
    }
    let mut child = serve(false);
    let after = Env::view(
        dir.clone(),
        fieldsync::central::Central::open_db(&db).unwrap(),
        db.clone(),
        addr,
    );
    assert!(
        final_push(&after, "a", "HA"),
        "the staged pushes integrate after the cuts"
    );
    let lost: Vec<&String> = answered
        .iter()
        .filter(|id| after.central.get("transact", id).unwrap().is_none())
        .collect();
    eprintln!(
        "power cut: {rounds} cuts, {} answered rows, {} lost",
        answered.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} answered rows lost in the cuts, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A child process SIGKILLed and reaped when dropped: a test that fails midway
/// leaves no server behind.
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A reference central as its own process (`fieldsync-central serve`) on a
/// database of its own, for tests that kill it: sites added with password
/// `pw-NAME`, served on a fixed free port so a restart comes back at the same
/// address.
struct CentralProcess {
    dir: std::path::PathBuf,
    /// `--db`: `dir/c.sqlite`, or a database of its own on PostgreSQL.
    db: String,
    listen: String,
}

impl CentralProcess {
    fn new(env: &Env, sites: &[&str]) -> CentralProcess {
        let dir = env.dir.join("proc");
        std::fs::create_dir_all(&dir).unwrap();
        let listen = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        };
        let db = match std::env::var("FIELDSYNC_TEST_POSTGRES") {
            Ok(base) if !base.is_empty() => {
                fieldsync::central::db::create_test_database(&base, &dir).unwrap()
            }
            _ => dir.join("c.sqlite").to_string_lossy().into_owned(),
        };
        let p = CentralProcess { db, dir, listen };
        for s in sites {
            p.admin(&["site", "add", s, "--password-env", &format!("PW_{s}")]);
        }
        p
    }

    /// An administration command, which must succeed.
    fn admin(&self, args: &[&str]) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"));
        cmd.arg("--db").arg(&self.db).args(args);
        if let Some(site) = args.get(2) {
            cmd.env(format!("PW_{site}"), format!("pw-{site}"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Serves until killed; `shim`: run under `tests/powercut/shim.c` (the
    /// library, and the directory whose files it images).
    fn serve(&self, shim: Option<(&std::path::Path, &std::path::Path)>) -> Killed {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"));
        // A PostgreSQL central keeps its restore note in its working directory.
        cmd.current_dir(&self.dir)
            .arg("--db")
            .arg(&self.db)
            .args(["serve", "--listen", &self.listen])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((lib, dir)) = shim {
            cmd.env("LD_PRELOAD", lib).env("POWERCUT_DIR", dir);
        }
        let child = Killed(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.listen).is_err() {
            assert!(Instant::now() < deadline, "the central did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
}

/// Issue 31: a central copied whole into another store (SQLite to PostgreSQL
/// when the suites run with `FIELDSYNC_TEST_POSTGRES`, back to SQLite when they
/// run on PostgreSQL, SQLite to SQLite otherwise) holds the same rows, never
/// gives an id twice — not even one acknowledged and deleted — and serves its
/// site as before: what was queued comes with the same ids, what the site
/// pushes integrates.
#[test]
fn a_central_copied_to_another_store_serves_its_site_as_before() {
    let env = Env::new("copy-to");
    env.site("a", "SA");
    init_and_drain(&env, "a", "HA");
    let r = push(
        &env,
        "a",
        "HA",
        json!([
            upd("1", "transact", json!({"ID": "T-1", "store_ID": "SA"})),
            upd("2", "transact", json!({"ID": "T-2", "store_ID": "SA"}))
        ]),
    );
    assert_eq!(r.status, 200);
    assert!(final_push(&env, "a", "HA"));
    env.central
        .put("item", &json!({"ID": "I-1", "item_name": "before"}))
        .unwrap();
    // Two queue entries; the later one acknowledged (deleted), the earlier
    // still queued when the central moves: the largest id given is not stored.
    assert_eq!(env.central.requeue_site("a", Some("transact")).unwrap(), 2);
    let queued = pull_all(&env, "a", "HA");
    assert_eq!(queued.len(), 2, "{queued:?}");
    let id_of = |v: &Value| -> i64 { v["syncOutId"].as_str().unwrap().parse().unwrap() };
    let (first, last) = (id_of(&queued[0]), id_of(&queued[1]));
    assert!(first < last);
    let r = v5(
        &env,
        "a",
        "HA",
        "POST",
        "/acknowledged_records",
        json!({"syncIDs": [last.to_string()]})
            .to_string()
            .as_bytes(),
    );
    assert!(matches!(r.status, 200 | 204));
    let queued_before = pull_all(&env, "a", "HA");
    assert_eq!(queued_before.len(), 1, "{queued_before:?}");

    let on_postgres = env.central.conn().unwrap().dialect() == Dialect::Postgres;
    let target_db = match std::env::var("FIELDSYNC_TEST_POSTGRES") {
        Ok(base) if !base.is_empty() && !on_postgres => {
            fieldsync::central::db::create_test_database(&base, &env.dir.join("copy")).unwrap()
        }
        _ => env.dir.join("copy.sqlite").to_string_lossy().into_owned(),
    };
    let target = fieldsync::central::Central::open_db(&target_db).unwrap();
    let copied = env.central.copy_to(&target).unwrap();
    let count = |c: &fieldsync::central::Central, table: &str| -> i64 {
        c.conn()
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    for (table, n) in &copied {
        if *table != "meta" {
            assert_eq!(count(&env.central, table), *n as i64, "{table}");
            assert_eq!(count(&target, table), *n as i64, "{table}");
        }
    }
    assert!(
        copied.iter().any(|(t, n)| *t == "record" && *n >= 3),
        "{copied:?}"
    );
    assert_eq!(
        target.epoch(),
        env.central.epoch(),
        "the sites see the same central"
    );
    // A copy never merges two centrals.
    let again = env.central.copy_to(&target).unwrap_err().to_string();
    assert!(again.contains("already holds a central"), "{again}");

    let server = fieldsync::central::http::spawn(target.clone(), "127.0.0.1:0").unwrap();
    let moved = Env::view(env.dir.clone(), target.clone(), target_db, server.addr);
    assert_eq!(
        pull_all(&moved, "a", "HA"),
        queued_before,
        "the queue, ids and all"
    );
    common::drain(&moved, "a", "HA");
    // New ids come after every id the old store gave, the deleted one included.
    assert_eq!(
        moved.central.requeue_site("a", Some("transact")).unwrap(),
        2
    );
    let after = pull_all(&moved, "a", "HA");
    assert!(
        after.iter().all(|v| id_of(v) > last),
        "a queue id given again (the old store gave up to {last}): {after:?}"
    );
    let log_max = |c: &fieldsync::central::Central| -> i64 {
        c.conn()
            .unwrap()
            .query_row("SELECT coalesce(max(id), 0) FROM changelog", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let log_before = log_max(&env.central);
    moved
        .central
        .put("item", &json!({"ID": "I-2", "item_name": "after"}))
        .unwrap();
    assert!(log_max(&moved.central) > log_before);
    // And the site's pushes integrate on the new store.
    common::drain(&moved, "a", "HA");
    let r = push(
        &moved,
        "a",
        "HA",
        json!([upd("3", "transact", json!({"ID": "T-3", "store_ID": "SA"}))]),
    );
    assert_eq!(r.status, 200);
    assert!(final_push(&moved, "a", "HA"));
    for id in ["T-1", "T-2", "T-3"] {
        assert!(moved.central.get("transact", id).unwrap().is_some(), "{id}");
    }
    // On a PostgreSQL run the copy above went to SQLite: and back again.
    if on_postgres {
        let base = std::env::var("FIELDSYNC_TEST_POSTGRES").unwrap();
        let back_db =
            fieldsync::central::db::create_test_database(&base, &env.dir.join("back")).unwrap();
        let back = fieldsync::central::Central::open_db(&back_db).unwrap();
        for (table, n) in moved.central.copy_to(&back).unwrap() {
            if table != "meta" {
                assert_eq!(count(&back, table), n as i64, "{table}");
                assert_eq!(count(&moved.central, table), n as i64, "{table}");
            }
        }
        assert_eq!(
            back.get("transact", "T-3").unwrap(),
            moved.central.get("transact", "T-3").unwrap()
        );
    }
}
