//! Field interop (protocol §9, conformance cases 34–41) through the real `fieldsync`
//! binary over loopback: a recording front of the reference central, centrals
//! that send only what §9.2 requires, networks that answer instead of the central
//! (HTML, redirects, TLS certificates that are not the central's, a device clock
//! in 1970), a slow link through the link emulator, `fieldsync check`, fidelity
//! of received rows, and a dispensary store holding its transactions.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::fake::{self, front, Reply};
use common::{agent_env, sql, Env};
use serde_json::{json, Value};

fn long() -> bool {
    std::env::var_os("FIELDSYNC_LONG").is_some()
}

/// `fieldsync init` of site `name` against `url` (password pw-NAME), fast polls.
fn init_at(env: &Env, db: &Path, name: &str, url: &str) {
    env.init_url(db, name, url);
    env.config(db, "retry_base_ms", "10");
}

fn sync_with(db: &Path, vars: &[(&str, &str)]) -> (i32, Value, String) {
    let out = agent_env(db, &["sync", "--json"], vars);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn c34_an_idle_cycle_waits_before_it_pulls() {
    let env = Env::new("c34");
    env.site("kaw", "S_KAW");
    let f = front(env.central.clone(), true, false);
    let db = env.db("kaw");
    init_at(&env, &db, "kaw", &format!("http://{}", f.addr));
    assert_eq!(env.sync(&db).0, 0);
    f.seen.lock().unwrap().clear();
    let (code, report, _) = env.sync(&db);
    assert_eq!(code, 0);
    assert_eq!(
        *f.seen.lock().unwrap(),
        [
            "GET /site",
            "POST /queued_records",
            "GET /site_status",
            "GET /central_records",
            "GET /queued_records"
        ],
        "the final push, the wait, then the pulls"
    );
    assert_eq!(report["requests"], 5);
    // As the link carries them: five request heads (credential, site uuid,
    // versions) and five answers; an idle sync costs a few KB of airtime.
    let bytes = report["bytes_sent"].as_u64().unwrap() + report["bytes_received"].as_u64().unwrap();
    assert!(bytes < 4096, "{bytes} B for an idle sync: {report}");
}

#[test]
fn c35_pushes_are_gzipped_only_for_a_central_that_said_so() {
    let env = Env::new("c35");
    env.site("kaw", "S_KAW");
    let rows = |db: &Path, prefix: &str| {
        for i in 0..20 {
            let row = json!({"ID": format!("{prefix}{i}"), "store_ID": "S_KAW", "note": "some clinic stock note ".repeat(10)});
            assert!(env
                .agent(db, &["put", "item_line", &row.to_string()])
                .status
                .success());
        }
    };
    for (name, advertise, refuse) in [
        ("adv", true, false),
        ("legacy", false, false),
        ("proxy", true, true),
    ] {
        let f = front(env.central.clone(), advertise, refuse);
        env.central.reset_hardware_id("kaw").unwrap();
        let db = env.db(name);
        init_at(&env, &db, "kaw", &format!("http://{}", f.addr));
        assert_eq!(env.sync(&db).0, 0, "{name}");
        rows(&db, &format!("{name}-"));
        let (code, report, stderr) = env.sync(&db);
        assert_eq!(
            (code, report["pushed"].as_u64()),
            (0, Some(20)),
            "{name}: {stderr}"
        );
        let pushes: Vec<String> = f
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with("POST /queued_records"))
            .cloned()
            .collect();
        let gzipped = pushes.iter().filter(|s| s.ends_with("gzip")).count();
        match name {
            "adv" => assert_eq!(gzipped, 1, "{pushes:?}"),
            "legacy" => assert_eq!(gzipped, 0, "never to a central that did not say so"),
            _ => {
                // 415: the same batch again, plain, in the same cycle; and remembered.
                assert_eq!(gzipped, 1, "{pushes:?}");
                assert!(stderr.contains("sending plain from now on"), "{stderr}");
                f.seen.lock().unwrap().clear();
                rows(&db, "again-");
                assert_eq!(env.sync(&db).0, 0);
                assert!(f.seen.lock().unwrap().iter().all(|s| !s.ends_with("gzip")));
            }
        }
        assert!(
            env.central
                .get("item_line", &format!("{name}-7"))
                .unwrap()
                .is_some(),
            "{name}"
        );
    }
}

#[test]
fn c36_a_central_that_sends_only_what_is_required() {
    let env = Env::new("c36");
    let served = Arc::new(std::sync::Mutex::new((0u32, 0u32)));
    let s2 = served.clone();
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        let mut n = s2.lock().unwrap();
        let body = match (req.method.as_str(), req.endpoint()) {
            // No code, no name, no omSupplyCentralServerUrl (§9.2).
            ("GET", "/site") => {
                json!({"id": "LEGACY", "siteId": 2, "initialisationStatus": "completed"})
            }
            ("POST", "/queued_records") => json!({"integrationStarted": true}),
            // An unknown code first: busy, try later.
            ("GET", "/site_status") => {
                n.0 += 1;
                if n.0 < 3 {
                    json!({"code": "thinking", "message": null, "data": {"eta": 1}})
                } else {
                    json!({"code": "idle"})
                }
            }
            // A page without data.
            ("GET", "/central_records") => json!({"maxCursor": null}),
            // A page longer than the limit asked for, then an empty one.
            ("GET", "/queued_records") => {
                n.1 += 1;
                if n.1 == 1 {
                    // More than any limit the agent asks for (at most 1000).
                    let rows: Vec<Value> = (0..1100)
                        .map(|i| json!({"syncOutId": i.to_string(), "tableName": "unit", "recordId": format!("U{i}"), "action": "insert", "recordData": {"ID": format!("U{i}")}}))
                        .collect();
                    json!({"data": rows})
                } else {
                    json!({"data": null})
                }
            }
            ("POST", "/acknowledged_records") => return Reply::raw(204, vec![]),
            _ => return Reply::json(404, json!({})),
        };
        Reply::json(200, body)
    }));
    let db = env.db("legacy");
    init_at(&env, &db, "kaw", &format!("http://{addr}"));
    assert!(env
        .agent(
            &db,
            &[
                "dev",
                "set-identity",
                "--site-id",
                "2",
                "--store",
                "S",
                "--site-uuid",
                "LEGACY"
            ]
        )
        .status
        .success());
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["pulled_queue"], 1100, "{report}");
    assert_eq!(
        stderr.matches("queued records for a limit of").count(),
        1,
        "logged once: {stderr}"
    );
    assert!(
        served.lock().unwrap().0 >= 3,
        "it waited out the unknown code"
    );
}

#[test]
fn c37_a_slow_gprs_link_still_delivers_within_a_quarter_of_its_limit() {
    use fieldsync::testkit::linkem::{Linkem, Plan, Shape};
    let n = if long() { 2_000 } else { 200 };
    let mut env = Env::new("c37");
    env.central.gzip = false;
    let server = fieldsync::central::http::spawn(env.central.clone(), "127.0.0.1:0").unwrap();
    env.addr = server.addr;
    env.site("kaw", "S_KAW");
    let pad = "x".repeat(900);
    let mut c = env.central.conn().unwrap();
    let tx = c.write_transaction().unwrap();
    for i in 0..n {
        let row = json!({"ID": format!("I{i:05}"), "item_name": format!("Item {i}"), "note": pad});
        tx.execute(
            "INSERT INTO record (table_name, record_id, data) VALUES ('item', ?1, ?2)",
            fieldsync::central::db::params![format!("I{i:05}"), row.to_string()],
        )
        .unwrap();
        tx.execute("INSERT INTO changelog (table_name, record_id, action, data) VALUES ('item', ?1, 'update', ?2)", fieldsync::central::db::params![format!("I{i:05}"), row.to_string()]).unwrap();
    }
    tx.commit().unwrap();
    // 40 kbit/s each way, 1 s round trip.
    let shape = Shape {
        up_bps: 5_000,
        down_bps: 5_000,
        up_latency: std::time::Duration::from_millis(500),
        down_latency: std::time::Duration::from_millis(500),
    };
    let link = Linkem::start(env.addr, shape, Plan::clean()).unwrap();
    let db = env.db("kaw");
    init_at(&env, &db, "kaw", &format!("http://{}", link.addr));
    let started = Instant::now();
    let (code, report, stderr) = env.sync(&db);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{stderr}");
    assert!(report["pulled_central"].as_u64().unwrap() >= n as u64);
    let up = link
        .stats
        .bytes_up
        .load(std::sync::atomic::Ordering::Relaxed) as f64;
    let down = link
        .stats
        .bytes_down
        .load(std::sync::atomic::Ordering::Relaxed) as f64;
    let trips = (report["requests"].as_u64().unwrap()
        + link
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)) as f64;
    let limit = up / 5_000.0 + down / 5_000.0 + trips * 1.0;
    eprintln!("c37: {n} records of ~1 KB at 40 kbit/s: {secs:.1} s against a physical limit of {limit:.1} s ({:.2}×)", secs / limit);
    assert!(secs <= 1.25 * limit, "{secs:.1} s > 1.25 × {limit:.1} s");
    let page = common::state_value(&db, "pull_limit").unwrap();
    assert_ne!(page, "100", "the page size moved with the link");
}

/// A test CA and a certificate it signs for `name`, valid from 1975 (rcgen's default).
fn tls_chain(name: &str) -> (String, Vec<Vec<u8>>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (
        ca.pem(),
        vec![cert.der().to_vec(), ca.der().to_vec()],
        key.serialize_der(),
    )
}

#[test]
fn c38_networks_that_answer_instead_of_the_central_are_offline_not_support_calls() {
    let env = Env::new("c38");
    env.site("kaw", "S_KAW");
    let leds = env.dir.join("leds");
    std::fs::create_dir_all(leds.join("ACT")).unwrap();
    let led = leds.to_str().unwrap().to_string();
    let check = |db: &Path, vars: &[(&str, &str)], hint: &str| {
        let mut all = vec![
            ("FIELDSYNC_LED_DIR", led.as_str()),
            ("FIELDSYNC_LED", "ACT"),
        ];
        all.extend_from_slice(vars);
        let (code, report, stderr) = sync_with(db, &all);
        assert_eq!(code, 10, "offline class: {stderr}");
        assert!(report["hint"].as_str().unwrap().contains(hint), "{report}");
        let on = std::fs::read_to_string(leds.join("ACT/delay_on")).unwrap();
        let off = std::fs::read_to_string(leds.join("ACT/delay_off")).unwrap();
        assert_eq!(
            (on.as_str(), off.as_str()),
            ("100", "1900"),
            "the offline light, not attention"
        );
    };
    // An HTML page with 200, and a redirect to a login page.
    let portal = fake::serve(Arc::new(|req: &fake::Request| {
        if req.target.contains("site_status") {
            return Reply::raw(302, vec![]).with("Location", "http://login.hotspot.example/");
        }
        Reply::raw(
            200,
            b"<html><head><title>Sign in to Hotel Wi-Fi</title></head></html>".to_vec(),
        )
        .with("Content-Type", "text/html")
    }));
    let db = env.db("portal");
    init_at(&env, &db, "kaw", &format!("http://{portal}"));
    check(&db, &[], "sign in to the Wi-Fi");
    let redirect = fake::serve(Arc::new(|_: &fake::Request| {
        Reply::raw(302, vec![]).with("Location", "http://login.hotspot.example/")
    }));
    let db = env.db("redirect");
    init_at(&env, &db, "kaw", &format!("http://{redirect}"));
    check(&db, &[], "airtime");
    // TLS: the central behind a certificate the device trusts only with the CA file.
    let (ca, chain, key) = tls_chain("localhost");
    let ca_file = env.dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let central = env.central.clone();
    let handler: fake::Handler =
        Arc::new(move |req: &fake::Request| fake::forward(&central, req, req.body.clone()));
    let tls = fake::serve_tls(handler.clone(), chain, key);
    let db = env.db("tls");
    init_at(
        &env,
        &db,
        "kaw",
        &format!("https://localhost:{}", tls.port()),
    );
    check(&db, &[], "private CA");
    env.config(&db, "ca_file", ca_file.to_str().unwrap());
    let (code, _, stderr) = sync_with(&db, &[]);
    assert_eq!(code, 0, "trusted with the CA file: {stderr}");
    // The same certificate seen by a device whose clock says 1970.
    if common::have("faketime") {
        let out = std::process::Command::new("faketime")
            .args([
                "1970-01-02 00:00:00",
                env!("CARGO_BIN_EXE_fieldsync"),
                "--db",
            ])
            .arg(&db)
            .args(["sync", "--json"])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(
            out.status.code(),
            Some(10),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            report["hint"]
                .as_str()
                .unwrap()
                .contains("the device clock says 1970-01-02"),
            "{report}"
        );
    } else {
        eprintln!("note: no faketime; the 1970 clock case is skipped");
    }
    // A certificate for another name: a network in between.
    let (_, chain, key) = tls_chain("intercept.example");
    let other = fake::serve_tls(handler, chain, key);
    let db = env.db("other");
    init_at(
        &env,
        &db,
        "kaw",
        &format!("https://localhost:{}", other.port()),
    );
    env.config(&db, "ca_file", ca_file.to_str().unwrap());
    check(&db, &[], "a network in between");
}

#[test]
fn c39_check_says_which_step_fails() {
    let env = Env::new("c39");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    assert_eq!(env.sync(&db).0, 0);
    let snapshot = |db: &Path| -> (i64, i64) {
        let c = sql(db);
        (
            c.query_row("SELECT count(*) FROM record", [], |r| r.get(0))
                .unwrap(),
            common::state(db)
                .query_row("SELECT count(*) FROM state", [], |r| r.get(0))
                .unwrap(),
        )
    };
    let run = |db: &Path| {
        let before = snapshot(db);
        let out = env.agent(db, &["check"]);
        assert_eq!(before, snapshot(db), "check writes nothing");
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(&db);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with('✔')).count(),
        9,
        "{text}"
    );
    // A wrong password.
    let bad = env.db("badpw");
    let out = agent_env(
        &bad,
        &[
            "init",
            "--url",
            &env.url(),
            "--site",
            "kaw",
            "--password-env",
            "P",
        ],
        &[("P", "wrong")],
    );
    assert!(out.status.success());
    let (code, text) = run(&bad);
    assert_eq!(code, 12, "{text}");
    assert!(text.contains("✘ credentials"), "{text}");
    // A replaced device.
    env.config(&bad, "hardware_id", "ANOTHER-PI");
    let out = agent_env(
        &bad,
        &[
            "init",
            "--url",
            &env.url(),
            "--site",
            "kaw",
            "--password-env",
            "P",
        ],
        &[("P", "pw-kaw")],
    );
    assert!(out.status.success());
    let (code, text) = run(&bad);
    assert_eq!(code, 13, "{text}");
    assert!(
        text.contains("✘ hardware id") && text.contains("✔ credentials"),
        "{text}"
    );
    // A closed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.config(&db, "central_url", &format!("http://127.0.0.1:{port}"));
    let (code, text) = run(&db);
    assert_eq!(code, 10, "{text}");
    assert!(text.contains("✘ TCP"), "{text}");
    let out = env.agent(&db, &["check", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["class"].as_str()),
        (Some(false), Some("offline"))
    );
}

#[test]
fn c40_received_rows_are_kept_as_received_and_local_numbers_stay() {
    let env = Env::new("c40");
    env.site("kaw", "S_KAW");
    env.site("opua", "S_OPUA");
    env.central.set_copy("S_OPUA", "kaw", "collector").unwrap();
    let db = env.db("kaw");
    env.init(&db, "kaw");
    assert_eq!(env.sync(&db).0, 0);
    // Opua's invoice line, with a stock line and location Kawakawa will never hold.
    let line = r#"{"ID":"OL1","transaction_ID":"OT1","item_line_ID":"IL_OPUA_ONLY","location_ID":"LOC_OPUA","quantity":5.0,"batch":"Ā-1"}"#;
    // Whole already (§10.2), so the central sends the text as it is: the
    // agent must keep it byte for byte (5.0 stays 5.0).
    let mut whole: serde_json::Value = serde_json::from_str(line).unwrap();
    fieldsync::legacy::columns::outgoing("trans_line", &mut whole);
    let line = whole.to_string();
    assert!(line.contains(r#""quantity":5.0"#), "{line}");
    let line = line.as_str();
    let c = env.central.conn().unwrap();
    for (t, id, data) in [
        (
            "transact",
            "OT1",
            r#"{"ID":"OT1","store_ID":"S_OPUA","type":"ci"}"#,
        ),
        ("trans_line", "OL1", line),
    ] {
        c.execute("INSERT INTO sync_out (site_id, table_name, record_id, action, data) VALUES (2, ?1, ?2, 'update', ?3)", fieldsync::central::db::params![t, id, data]).unwrap();
    }
    assert_eq!(env.sync(&db).0, 0);
    let kept: String = sql(&db)
        .query_row("SELECT data FROM record WHERE record_id = 'OL1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, line, "stored exactly as received");
    // A response requisition written here with serial 0 is pushed with 0.
    let r = json!({"ID": "R0", "store_ID": "S_KAW", "type": "response", "serial_number": 0, "linked_requisition_id": "REQ9"});
    assert!(env
        .agent(&db, &["put", "requisition", &r.to_string()])
        .status
        .success());
    let (code, report, _) = env.sync(&db);
    assert_eq!(code, 0);
    assert!(report["numbered"].as_array().unwrap().is_empty());
    assert_eq!(
        env.central.get("requisition", "R0").unwrap().unwrap()["serial_number"],
        0
    );
}

#[test]
fn c41_a_dispensary_keeps_its_transactions_until_the_preference_is_on() {
    let env = Env::new("c41");
    env.site("disp", "S_D");
    let mut store = env.central.get("store", "S_D").unwrap().unwrap();
    store["store_mode"] = json!("dispensary");
    env.central.put("store", &store).unwrap();
    let pref = |on: bool| json!({"ID": "PREF_D", "item": "store_preferences", "store_ID": "S_D", "data": {"sync_include_transactions": on}});
    env.central.put("pref", &pref(false)).unwrap();
    env.central
        .put(
            "abbreviation",
            &json!({"ID": "AB1", "abbreviation": "bd", "expansion": "twice a day"}),
        )
        .unwrap();
    let f = front(env.central.clone(), false, false);
    let db = env.db("disp");
    init_at(&env, &db, "disp", &format!("http://{}", f.addr));
    assert_eq!(env.sync(&db).0, 0);
    assert!(
        sql(&db)
            .query_row("SELECT 1 FROM record WHERE record_id = 'AB1'", [], |r| r
                .get::<_, i64>(0))
            .is_ok(),
        "dispensary-only central data reaches a dispensary"
    );
    let put =
        |t: &str, v: Value| assert!(env.agent(&db, &["put", t, &v.to_string()]).status.success());
    put(
        "transact",
        json!({"ID": "PX1", "store_ID": "S_D", "type": "ci", "status": "fn"}),
    );
    put(
        "trans_line",
        json!({"ID": "PXL1", "transaction_ID": "PX1", "item_ID": "I1"}),
    );
    put(
        "item_line",
        json!({"ID": "IL1", "store_ID": "S_D", "item_ID": "I1"}),
    );
    put("Stock_take", json!({"ID": "ST1", "store_ID": "S_D"}));
    put("Location", json!({"ID": "LOC1", "store_ID": "S_D"}));
    let out = env.agent(&db, &["queue", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("1 record(s) waiting to be pushed, 0 set aside, 4 local only"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .skip(1)
            .filter(|l| l.contains("local only"))
            .count(),
        4,
        "{text}"
    );
    assert_eq!(env.sync(&db).0, 0);
    for id in ["PX1", "PXL1", "IL1", "ST1"] {
        assert!(
            env.central
                .get(
                    if id.starts_with("PXL") {
                        "trans_line"
                    } else if id.starts_with('P') {
                        "transact"
                    } else if id.starts_with("IL") {
                        "item_line"
                    } else {
                        "Stock_take"
                    },
                    id
                )
                .unwrap()
                .is_none(),
            "{id} stays on the site"
        );
    }
    assert!(env.central.get("Location", "LOC1").unwrap().is_some());
    // The preference turns on: the next sync receives it, the one after pushes all, once.
    env.central.put("pref", &pref(true)).unwrap();
    f.seen.lock().unwrap().clear();
    assert_eq!(env.sync(&db).0, 0);
    assert_eq!(env.sync(&db).0, 0);
    assert!(env.central.get("transact", "PX1").unwrap().is_some());
    assert!(env.central.get("trans_line", "PXL1").unwrap().is_some());
    assert!(env.central.get("item_line", "IL1").unwrap().is_some());
    assert!(env.central.get("Stock_take", "ST1").unwrap().is_some());
    let out = env.agent(&db, &["queue", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["pending"].as_u64(), v["local_only"].as_u64()),
        (Some(0), Some(0))
    );
    // A site without a dispensary store never reads the dispensary-only data.
    env.site("plain", "S_P");
    let plain = env.db("plain");
    env.init(&plain, "plain");
    assert_eq!(env.sync(&plain).0, 0);
    assert!(sql(&plain)
        .query_row("SELECT 1 FROM record WHERE record_id = 'AB1'", [], |r| r
            .get::<_, i64>(0))
        .is_err());
}
