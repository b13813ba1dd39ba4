//! Hostile input (issue 7): a central that answers the v5 endpoints with crafted
//! bodies. Each case gives a clear error or a quarantined record, never a crash,
//! never unbounded memory, never a lost local change.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{agent_env, fake, sql, Env};
use serde_json::json;

type Body = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// A fake central: the site is initialised and in order; `central` and `queue`
/// give the bodies of the two pulls (called with the request path).
struct Fake {
    addr: SocketAddr,
    acks: Arc<Mutex<Vec<String>>>,
}

fn fake(central: Body, queue: Body) -> Fake {
    let acks: Arc<Mutex<Vec<String>>> = Arc::default();
    let acks2 = acks.clone();
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        let path = req.target.strip_prefix("/sync/v5").unwrap_or(&req.target);
        let (status, out): (u16, Vec<u8>) = match (req.method.as_str(), req.endpoint()) {
            ("GET", "/site") => (200, json!({"id": "FAKE", "siteId": 2, "code": "K", "name": "kaw", "initialisationStatus": "completed",
                     "isOmSupplyCentralServer": false, "omSupplyCentralServerUrl": "", "mSupplyCentralSiteId": 1}).to_string().into_bytes()),
            ("GET", "/queued_records") => (200, queue(path)),
            ("POST", "/queued_records") => (200, br#"{"integrationStarted":true}"#.to_vec()),
            ("GET", "/site_status") => (200, br#"{"code":"idle","message":"idle","data":null}"#.to_vec()),
            ("GET", "/central_records") => (200, central(path)),
            ("POST", "/acknowledged_records") => {
                let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                for id in v["syncIDs"].as_array().unwrap() {
                    acks2.lock().unwrap().push(id.as_str().unwrap().to_string());
                }
                (204, vec![])
            }
            _ => (404, b"{}".to_vec()),
        };
        let mut r = fake::Reply::raw(status, out);
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r
    }));
    Fake { addr, acks }
}

fn empty_central() -> Body {
    Arc::new(|_| br#"{"maxCursor":0,"data":[]}"#.to_vec())
}

/// Serves the body once, then an empty queue (so the cycle ends).
fn once(body: Vec<u8>) -> Body {
    let served = Arc::new(Mutex::new(false));
    Arc::new(move |_| {
        let mut s = served.lock().unwrap();
        if *s {
            br#"{"queueLength":0,"data":[]}"#.to_vec()
        } else {
            *s = true;
            body.clone()
        }
    })
}

/// An initialised agent database pointing at the fake, with one local change
/// waiting (which must survive every case).
fn agent(env: &Env, fake: &Fake, name: &str) -> std::path::PathBuf {
    let db = env.db(name);
    let out = agent_env(
        &db,
        &[
            "init",
            "--url",
            &format!("http://{}", fake.addr),
            "--site",
            "kaw",
            "--password-env",
            "P",
        ],
        &[("P", "pw")],
    );
    assert!(out.status.success());
    assert!(env
        .agent(
            &db,
            &[
                "dev",
                "set-identity",
                "--site-id",
                "2",
                "--store",
                "S_KAW",
                "--site-uuid",
                "FAKE"
            ]
        )
        .status
        .success());
    env.config(&db, "retry_base_ms", "1");
    let c = sql(&db);
    c.execute("INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'MINE', '{\"ID\":\"MINE\",\"store_ID\":\"S_KAW\",\"comment\":\"local\"}')", []).unwrap();
    db
}

fn sync_rss(db: &Path) -> (i32, String, u64) {
    let out = agent_env(db, &["sync"], &[("FIELDSYNC_PEAK_RSS", "1")]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = err
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap_or(-1), err, rss)
}

/// Peak RSS of a sync of one small record through the same runner: the
/// allowance below is measured from it, so the check means the same natively
/// and under an emulator (whose own memory counts in the process's RSS).
fn baseline_rss(env: &Env) -> u64 {
    let small = r#"{"maxCursor":4,"data":[{"ID":4,"tableName":"unit","recordId":"OK","action":"update","recordData":{"ID":"OK"}}]}"#;
    let f = fake(
        by_cursor(small.to_string(), 4, 4),
        once(br#"{"queueLength":0,"data":[]}"#.to_vec()),
    );
    let db = agent(env, &f, "baseline");
    let (code, err, rss) = sync_rss(&db);
    assert_eq!(code, 0, "{err}");
    assert!(rss > 0, "the agent reports its peak RSS: {err}");
    rss
}

/// What a 40 MB record may add to the baseline: far less than itself.
const RSS_ALLOWANCE_KIB: u64 = 24 << 10;

fn local_change_survives(db: &Path) {
    let c = sql(db);
    let comment: String = c
        .query_row(
            "SELECT json_extract(data,'$.comment') FROM record WHERE record_id='MINE'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(comment, "local");
}

fn setting(db: &Path, key: &str) -> Option<String> {
    common::state(db)
        .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .ok()
}

fn buffer_error(db: &Path, id: &str) -> String {
    common::state(db)
        .query_row(
            "SELECT coalesce(error, '') FROM buffer WHERE record_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap_or_default()
}

/// A central page by cursor: `first` while the cursor is below `until`, then
/// an empty page (the change log's maximum stays `max`).
fn by_cursor(first: String, until: u64, max: u64) -> Body {
    Arc::new(move |path: &str| {
        let cursor: u64 = path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("cursor="))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if cursor < until {
            first.clone().into_bytes()
        } else {
            format!(r#"{{"maxCursor":{max},"data":[]}}"#).into_bytes()
        }
    })
}

#[test]
fn huge_record_is_set_aside_with_bounded_memory_and_the_pull_goes_on() {
    let env = Env::new("huge");
    // One 40 MB string inside a central record, after a good one.
    let big = format!(
        r#"{{"maxCursor":9,"data":[{{"ID":4,"tableName":"unit","recordId":"OK","action":"update","recordData":{{"ID":"OK"}}}},{{"ID":5,"tableName":"unit","recordId":"U","action":"update","recordData":{{"ID":"U","x":"{}"}}}}]}}"#,
        "a".repeat(40 << 20)
    );
    let f = fake(
        by_cursor(big, 5, 9),
        once(br#"{"queueLength":0,"data":[]}"#.to_vec()),
    );
    let base = baseline_rss(&env);
    let db = agent(&env, &f, "huge");
    let (code, err, rss) = sync_rss(&db);
    assert_eq!(
        code, 17,
        "set aside, shown as a record that could not be applied: {err}"
    );
    assert!(err.contains("unit U cannot be read"), "{err}");
    assert!(
        rss < base + RSS_ALLOWANCE_KIB,
        "peak RSS {rss} KiB against {base} KiB for a small record: memory must not follow the record"
    );
    local_change_survives(&db);
    assert_eq!(
        setting(&db, "central_cursor").as_deref(),
        Some("9"),
        "the pull went past it"
    );
    assert!(sql(&db)
        .query_row("SELECT 1 FROM record WHERE record_id = 'OK'", [], |r| r
            .get::<_, i64>(0))
        .is_ok());
    assert!(buffer_error(&db, "U").contains("set aside, cannot be read"));
    let status = env.agent(&db, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("set aside, cannot be read"));

    // The same in the queue: recorded, acknowledged, the rest integrates.
    let big = format!(
        r#"{{"queueLength":2,"data":[{{"syncOutId":"31","tableName":"unit","recordId":"Q1","action":"update","recordData":{{"ID":"Q1"}}}},{{"syncOutId":"32","tableName":"unit","recordId":"Q2","action":"update","recordData":{{"ID":"Q2","x":"{}"}}}}]}}"#,
        "b".repeat(40 << 20)
    );
    let f = fake(empty_central(), once(big.into_bytes()));
    let db = agent(&env, &f, "hugeq");
    let (code, err, rss) = sync_rss(&db);
    assert_eq!(code, 17, "{err}");
    assert!(
        rss < base + RSS_ALLOWANCE_KIB,
        "peak RSS {rss} KiB against {base} KiB for a small record"
    );
    let mut acks = f.acks.lock().unwrap().clone();
    acks.sort();
    assert_eq!(
        acks,
        ["31", "32"],
        "the unreadable entry is acknowledged too"
    );
    assert!(buffer_error(&db, "Q2").contains("set aside, cannot be read"));
    local_change_survives(&db);
}

#[test]
fn deeply_nested_records_are_quarantined_and_garbage_pages_retried() {
    let env = Env::new("nested");
    let nested = format!(
        r#"{{"maxCursor":1,"data":[{{"ID":1,"tableName":"unit","recordId":"U","action":"update","recordData":{{"ID":"U","x":{}1{}}}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let f = fake(by_cursor(nested, 1, 1), once(b"{}".to_vec()));
    let db = agent(&env, &f, "nested");
    let (code, err, _) = sync_rss(&db);
    assert_eq!(code, 17, "quarantined, visible, never integrated: {err}");
    assert!(buffer_error(&db, "U").contains("nested deeper than 64 levels"));
    assert_eq!(setting(&db, "central_cursor").as_deref(), Some("1"));
    local_change_survives(&db);

    // Not a v5 answer (§9.4): retried, never "call support".
    let f = fake(
        Arc::new(|_| br#"{"maxCursor":"nine","data":[]}"#.to_vec()),
        once(b"{}".to_vec()),
    );
    let db = agent(&env, &f, "types");
    let (code, err, _) = sync_rss(&db);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("not a v5 answer"), "{err}");
    local_change_survives(&db);
}

#[test]
fn cursor_going_backwards_is_refused_and_nothing_is_stored() {
    let env = Env::new("backwards");
    let calls = Arc::new(Mutex::new(0));
    let central: Body = Arc::new(move |_| {
        let mut n = calls.lock().unwrap();
        *n += 1;
        if *n == 1 {
            br#"{"maxCursor":10,"data":[{"ID":10,"tableName":"unit","recordId":"U1","action":"update","recordData":{"ID":"U1"}}]}"#.to_vec()
        } else {
            br#"{"maxCursor":10,"data":[{"ID":11,"tableName":"unit","recordId":"U2","action":"update","recordData":{"ID":"U2"}},{"ID":3,"tableName":"unit","recordId":"U3","action":"update","recordData":{"ID":"U3"}}]}"#.to_vec()
        }
    });
    let f = fake(central, once(b"{}".to_vec()));
    let db = agent(&env, &f, "backwards");
    let (code, err, _) = sync_rss(&db);
    assert_eq!(code, 15, "{err}");
    assert!(err.contains("must ascend"), "{err}");
    let cursor = setting(&db, "central_cursor").unwrap();
    assert_eq!(cursor, "10", "the good page committed, the bad one not");
    let u2: i64 = common::state(&db)
        .query_row(
            "SELECT count(*) FROM buffer WHERE record_id IN ('U2','U3')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(u2, 0);
    local_change_survives(&db);
}

#[test]
fn odd_but_harmless_queues_integrate() {
    let env = Env::new("odd");
    // queueLength below the batch, a duplicated syncOutId, unknown fields, an
    // unknown table, an unknown action, and a record claiming our own store.
    let body = json!({"queueLength": 1, "extra": {"x": 1}, "data": [
        {"syncOutId": "7", "tableName": "mystery_table", "recordId": "Q1", "action": "insert", "recordData": {"ID": "Q1", "v": 1}, "unexpected": true},
        {"syncOutId": "7", "tableName": "unit", "recordId": "U1", "action": "INSERT", "recordData": {"ID": "U1"}},
        {"syncOutId": "8", "tableName": "unit", "recordId": "U2", "action": "explode", "recordData": {"ID": "U2"}},
        {"syncOutId": "9", "tableName": "transact", "recordId": "MINE", "action": "update", "recordData": {"ID": "MINE", "store_ID": "S_KAW", "comment": "central overwrote you"}}
    ]}).to_string().into_bytes();
    let f = fake(empty_central(), once(body));
    let db = agent(&env, &f, "odd");
    let (code, err, _) = sync_rss(&db);
    assert_eq!(
        code, 17,
        "the unknown action is quarantined, visible as an integration error: {err}"
    );
    assert!(err.contains("queueLength 1 but sent 4"), "{err}");
    let mut acks = f.acks.lock().unwrap().clone();
    acks.sort();
    assert_eq!(
        acks,
        ["7", "8", "9"],
        "each id acknowledged once, after storing"
    );
    let c = sql(&db);
    assert_eq!(
        c.query_row(
            "SELECT count(*) FROM record WHERE table_name='mystery_table'",
            [],
            |r| r.get::<_, i64>(0)
        )
        .unwrap(),
        1,
        "unknown tables kept as read-only central data"
    );
    local_change_survives(&db);
    // The local change was pushed (this fake accepts pushes) and the pulled
    // "update" of it was ignored: the row still holds the local value.
    let outbox: i64 = c
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outbox, 0);
    let status = env.agent(&db, &["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("unknown action"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}
