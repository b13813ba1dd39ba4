//! The agent against a deliberately strict fake central: every request must carry
//! exactly the §2 headers (the Authorization value of the protocol's test vector),
//! and every body the exact §3 key spellings and JSON types. Any deviation is
//! answered 400 and recorded, and the test fails listing them.

mod common;

use std::sync::{Arc, Mutex};

use common::{agent_env, fake, Env};
use serde_json::{json, Value};

const AUTH: &str = "Basic dXNlcm5hbWU6NWU4ODQ4OThkYTI4MDQ3MTUxZDBlNTZmOGRjNjI5Mjc3MzYwM2QwZDZhYWJiZGQ2MmExMWVmNzIxZDE1NDJkOA==";

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Checks one request; returns the problems found.
fn check(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<String> {
    let mut bad = Vec::new();
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if h("authorization") != Some(AUTH) {
        bad.push(format!("{path}: Authorization is not the §2 test vector"));
    }
    if h("msupply-site-uuid").is_none_or(|v| v.is_empty()) {
        bad.push(format!("{path}: no msupply-site-uuid"));
    }
    if h("app-name") != Some("fieldsync") {
        bad.push(format!("{path}: app-name"));
    }
    if h("version") != Some("14") {
        bad.push(format!("{path}: version header"));
    }
    if h("app-version").is_none_or(|v| v.split('.').count() != 3) {
        bad.push(format!("{path}: app-version"));
    }
    if method == "POST" && h("content-type") != Some("application/json") {
        bad.push(format!(
            "{path}: POST without Content-Type: application/json"
        ));
    }
    if !path.starts_with("/sync/v5/") {
        bad.push(format!("{path}: not under /sync/v5/"));
    }
    if method == "POST" {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return vec![format!("{path}: body not JSON: {e}")],
        };
        match path {
            "/sync/v5/queued_records" => {
                if keys(&v) != ["data", "queueLength"] || !v["queueLength"].is_u64() {
                    bad.push(format!("push body keys/types: {v}"));
                }
                for r in v["data"].as_array().into_iter().flatten() {
                    if keys(r) != ["action", "recordData", "recordId", "syncOutId", "tableName"] {
                        bad.push(format!("push record keys: {r}"));
                    }
                    let is_delete = r["action"] == "Delete";
                    if !r["syncOutId"].is_string()
                        || !r["recordId"].is_string()
                        || !r["tableName"].is_string()
                    {
                        bad.push(format!("push record types: {r}"));
                    }
                    if !(r["action"] == "Update" || is_delete) {
                        bad.push(format!("push action: {r}"));
                    }
                    if is_delete != r["recordData"].is_null()
                        || (!is_delete && r["recordData"]["ID"] != r["recordId"])
                    {
                        bad.push(format!("push recordData: {r}"));
                    }
                }
            }
            "/sync/v5/acknowledged_records" => {
                if keys(&v) != ["syncIDs"]
                    || !v["syncIDs"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string))
                {
                    bad.push(format!("ack body: {v}"));
                }
            }
            "/sync/v5/initialise" => {}
            other => bad.push(format!("unexpected POST {other}")),
        }
    }
    bad
}

#[test]
fn every_request_has_exact_headers_and_key_spellings() {
    let env = Env::new("strict");
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let state = Arc::new(Mutex::new(("new".to_string(), 0u32)));
    let (p2, s2, st2) = (problems.clone(), seen.clone(), state.clone());
    let addr = fake::serve(Arc::new(move |req: &fake::Request| {
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let bad = check(&req.method, &path, &req.headers, &req.body);
        s2.lock().unwrap().push(format!("{} {path}", req.method));
        if !bad.is_empty() {
            p2.lock().unwrap().extend(bad.clone());
            return fake::Reply::json(
                400,
                json!({"error": {"code": "strict_fake", "message": bad.join("; "), "data": null}}),
            );
        }
        let mut st = st2.lock().unwrap();
        let (status, out) = match (req.method.as_str(), path.as_str()) {
            ("GET", "/sync/v5/site") => (
                200,
                json!({"id": "STRICT", "siteId": 7, "code": "U", "name": "username",
                "initialisationStatus": st.0, "isOmSupplyCentralServer": false, "omSupplyCentralServerUrl": "", "mSupplyCentralSiteId": 1}),
            ),
            ("POST", "/sync/v5/initialise") => {
                st.0 = "completed".into();
                (200, json!({"queueLength": 1}))
            }
            ("GET", "/sync/v5/site_status") => (
                200,
                json!({"code": "idle", "message": "idle", "data": null}),
            ),
            ("GET", "/sync/v5/central_records") => (200, json!({"maxCursor": 0, "data": []})),
            ("GET", "/sync/v5/queued_records") => {
                st.1 += 1;
                if st.1 == 1 {
                    (
                        200,
                        json!({"queueLength": 1, "data": [{"syncOutId": "1", "tableName": "store", "recordId": "S_U", "action": "insert",
                        "recordData": {"ID": "S_U", "name": "U store", "sync_id_remote_site": 7}}]}),
                    )
                } else {
                    (200, json!({"queueLength": 0, "data": []}))
                }
            }
            ("POST", "/sync/v5/queued_records") => {
                (200, json!({"integrationStarted": req.body.len() < 30}))
            }
            ("POST", "/sync/v5/acknowledged_records") => return fake::Reply::raw(204, vec![]),
            _ => (404, json!({})),
        };
        fake::Reply::json(status, out)
    }));
    let db = env.db("strict");
    let out = agent_env(
        &db,
        &[
            "init",
            "--url",
            &format!("http://{addr}/base/path"),
            "--site",
            "username",
            "--password-env",
            "P",
        ],
        &[("P", "password")],
    );
    assert!(out.status.success());
    env.config(&db, "init_poll_secs", "1");
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["initialised"], true);
    let put = |row: Value| {
        assert!(env
            .agent(&db, &["put", "transact", &row.to_string()])
            .status
            .success())
    };
    put(json!({"ID": "T1", "store_ID": "S_U", "invoice_num": 1}));
    put(json!({"ID": "T2", "store_ID": "S_U"}));
    assert!(env
        .agent(&db, &["delete", "transact", "T2"])
        .status
        .success());
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["pushed"], 2, "an Update and a Delete: {report}");
    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "the strict fake refused: {problems:#?}"
    );
    let seen = seen.lock().unwrap();
    for want in [
        "GET /sync/v5/site",
        "POST /sync/v5/initialise",
        "GET /sync/v5/central_records",
        "GET /sync/v5/queued_records",
        "POST /sync/v5/acknowledged_records",
        "POST /sync/v5/queued_records",
        "GET /sync/v5/site_status",
    ] {
        assert!(seen.iter().any(|s| s == want), "never saw {want}: {seen:?}");
    }
}
