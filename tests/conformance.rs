//! Protocol §8 conformance cases that concern the server, driven with raw HTTP
//! against the reference central (not through the agent).

mod common;

use common::{final_push, init, init_and_drain, pull_all, push, raw, upd, v5, Env};
use serde_json::{json, Value};

#[test]
fn c2_c4_auth_failures_bind_nothing() {
    let env = Env::new("auth");
    env.site("kaw", "S_KAW");
    let bad_pw = fieldsync::wire::credentials::basic_auth(
        "kaw",
        &fieldsync::wire::credentials::password_digest("nope"),
    );
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[
            ("Authorization", bad_pw.expose()),
            ("msupply-site-uuid", "HW1"),
            ("version", "14"),
        ],
        b"",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "site_incorrect_password")
    );
    let unknown = fieldsync::wire::credentials::basic_auth(
        "ghost",
        &fieldsync::wire::credentials::password_digest("x"),
    );
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[
            ("Authorization", unknown.expose()),
            ("msupply-site-uuid", "HW1"),
            ("version", "14"),
        ],
        b"",
    );
    // §10.9: an outsider cannot tell an unknown name from a wrong password.
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "site_incorrect_password")
    );
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[("msupply-site-uuid", "HW1"), ("version", "14")],
        b"",
    );
    assert_eq!(r.code(), "site_incorrect_password");
    let auth = env.auth("kaw");
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[("Authorization", &auth), ("version", "14")],
        b"",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "site_incorrect_hardware_id")
    );
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[
            ("Authorization", &auth),
            ("msupply-site-uuid", "HW1"),
            ("version", "13"),
        ],
        b"",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "api_version_incompatible")
    );
    assert_eq!(
        r.json()["error"]["data"],
        json!({"major": 5, "minor": 0, "minVersion": 14, "maxVersion": 14})
    );
    // None of these bound a hardware id: a fresh device binds now.
    assert_eq!(v5(&env, "kaw", "HW2", "GET", "/site", b"").status, 200);
    // Names match case-insensitively.
    let upper = fieldsync::wire::credentials::basic_auth(
        "KAW",
        &fieldsync::wire::credentials::password_digest("pw-kaw"),
    );
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/site",
        &[
            ("Authorization", upper.expose()),
            ("msupply-site-uuid", "HW2"),
            ("version", "14"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn c3_second_device_rejected_until_reset() {
    let env = Env::new("hw");
    env.site("kaw", "S_KAW");
    assert_eq!(v5(&env, "kaw", "DEVICE-A", "GET", "/site", b"").status, 200);
    let r = v5(&env, "kaw", "DEVICE-B", "GET", "/site", b"");
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "site_incorrect_hardware_id")
    );
    env.central.reset_hardware_id("kaw").unwrap();
    assert_eq!(v5(&env, "kaw", "DEVICE-B", "GET", "/site", b"").status, 200);
    assert_eq!(
        v5(&env, "kaw", "DEVICE-A", "GET", "/site", b"").code(),
        "site_incorrect_hardware_id"
    );
}

#[test]
fn c5_site_without_store() {
    let env = Env::new("nostore");
    env.central.add_site("empty", "EMP", "pw-empty").unwrap();
    let r = v5(&env, "empty", "HW", "GET", "/site", b"");
    assert_eq!((r.status, r.code().as_str()), (401, "site_has_no_store"));
}

#[test]
fn c6_no_content_type_and_gzip_only_when_asked() {
    let env = Env::new("gzip");
    env.site("kaw", "S_KAW");
    for i in 0..50 {
        env.central.put("item", &json!({"ID": format!("I{i}"), "item_name": format!("Item number {i} with a long name")})).unwrap();
    }
    let auth = env.auth("kaw");
    let base = [
        ("Authorization", auth.as_str()),
        ("msupply-site-uuid", "HW"),
        ("version", "14"),
    ];
    let r = raw(env.addr, "POST", "/sync/v5/initialise", &base, b"{}");
    assert_eq!(r.status, 200, "POST without Content-Type accepted");
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/central_records?cursor=0&limit=100",
        &base,
        b"",
    );
    assert!(r.header("Content-Encoding").is_none());
    assert_eq!(
        r.json()["data"].as_array().unwrap().len(),
        51,
        "50 items + the store's name"
    );
    let mut gz = base.to_vec();
    gz.push(("Accept-Encoding", "gzip"));
    let r = raw(
        env.addr,
        "GET",
        "/sync/v5/central_records?cursor=0&limit=100",
        &gz,
        b"",
    );
    assert_eq!(r.header("Content-Encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut text)
        .unwrap();
    assert!(text.contains("\"maxCursor\":"));
}

#[test]
fn c8_c23_initialisation_and_queue_redelivery() {
    let env = Env::new("init");
    env.site("kaw", "S_KAW");
    env.central
        .put(
            "pref",
            &json!({"ID": "P1", "store_ID": "S_KAW", "data": {}}),
        )
        .unwrap();
    let site = v5(&env, "kaw", "HW", "GET", "/site", b"").json();
    assert_eq!(site["initialisationStatus"], "new");
    for key in [
        "id",
        "siteId",
        "code",
        "name",
        "isOmSupplyCentralServer",
        "omSupplyCentralServerUrl",
        "mSupplyCentralSiteId",
    ] {
        assert!(site.get(key).is_some(), "site info has {key}");
    }
    let n = init(&env, "kaw", "HW");
    assert_eq!(n, 2, "store row + pref");
    assert_eq!(
        v5(&env, "kaw", "HW", "GET", "/site", b"").json()["initialisationStatus"],
        "completed"
    );
    let first = v5(&env, "kaw", "HW", "GET", "/queued_records?limit=1", b"").json();
    assert_eq!(first["queueLength"], 2);
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        first["data"][0]["tableName"], "store",
        "rank order: store before pref"
    );
    // Unacknowledged entries come back identical.
    let again = v5(&env, "kaw", "HW", "GET", "/queued_records?limit=1", b"").json();
    assert_eq!(first, again);
    let id = first["data"][0]["syncOutId"].as_str().unwrap().to_string();
    let ack = json!({"syncIDs": [id, "999999", "not-a-number"]}).to_string();
    let r = v5(
        &env,
        "kaw",
        "HW",
        "POST",
        "/acknowledged_records",
        ack.as_bytes(),
    );
    assert_eq!(r.status, 204);
    let rest = v5(&env, "kaw", "HW", "GET", "/queued_records", b"").json();
    assert_eq!(rest["queueLength"], 1);
    assert_eq!(rest["data"][0]["tableName"], "pref");
}

#[test]
fn c12_c13_c16_c18_push_idempotent_and_final_push() {
    let env = Env::new("push");
    env.site("kaw", "S_KAW");
    env.central.add_site("hub", "HUB", "pw-hub").unwrap();
    env.central
        .add_store("S_HUB", "HUB", "Hub", Some("hub"))
        .unwrap();
    env.central.set_copy("S_KAW", "hub", "collector").unwrap();
    init(&env, "hub", "HWH");
    let _ = pull_all(&env, "hub", "HWH");
    let v = v5(&env, "hub", "HWH", "GET", "/queued_records", b"").json();
    let ids: Vec<Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["syncOutId"].clone())
        .collect();
    v5(
        &env,
        "hub",
        "HWH",
        "POST",
        "/acknowledged_records",
        json!({"syncIDs": ids}).to_string().as_bytes(),
    );
    init(&env, "kaw", "HW");
    assert!(
        final_push(&env, "kaw", "HW"),
        "final push with nothing staged starts integration"
    );
    // Lines before their header in one push sequence; the same batch twice.
    let batch = json!([
        upd("2", "trans_line", json!({"ID": "L1", "transaction_ID": "T1", "item_ID": "I1"})),
        upd("1", "transact", json!({"ID": "T1", "store_ID": "S_KAW", "type": "ci", "status": "cn"})),
        {"syncOutId": "3", "tableName": "trans_line", "recordId": "NEVER", "action": "Delete", "recordData": null}
    ]);
    for _ in 0..2 {
        let r = push(&env, "kaw", "HW", batch.clone());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["integrationStarted"], false);
    }
    let r = v5(
        &env,
        "kaw",
        "HW",
        "POST",
        "/queued_records",
        br#"{"queueLength":3,"data":[]}"#,
    );
    assert_eq!(
        r.json()["integrationStarted"],
        false,
        "empty data with queueLength > 0"
    );
    assert!(final_push(&env, "kaw", "HW"));
    assert_eq!(env.central_count("transact"), 1);
    assert_eq!(
        env.central_count("trans_line"),
        1,
        "line integrated after its header"
    );
    let hub = pull_all(&env, "hub", "HWH");
    let t1: Vec<_> = hub.iter().filter(|r| r["recordId"] == "T1").collect();
    assert_eq!(t1.len(), 1, "one queue entry per recipient: {hub:?}");
    // C25: nothing echoes back to the pushing site.
    assert!(pull_all(&env, "kaw", "HW")
        .iter()
        .all(|r| r["recordId"] != "T1" && r["recordId"] != "L1"));
}

#[test]
fn c14_not_owned_rejects_whole_batch() {
    let env = Env::new("owned");
    env.site("kaw", "S_KAW");
    env.site("opua", "S_OPUA");
    init(&env, "kaw", "HW");
    let r = push(
        &env,
        "kaw",
        "HW",
        json!([
            upd("1", "transact", json!({"ID": "OK1", "store_ID": "S_KAW"})),
            upd("2", "transact", json!({"ID": "BAD1", "store_ID": "S_OPUA"})),
            upd("3", "item", json!({"ID": "AB12", "item_name": "x"})),
        ]),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "record_not_owned_by_site")
    );
    let listed = &r.json()["error"]["data"]["records"];
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        listed[0],
        json!({"syncOutId": "2", "tableName": "transact", "recordId": "BAD1", "reason": "other_store"})
    );
    assert_eq!(listed[1]["reason"], "central_data");
    final_push(&env, "kaw", "HW");
    assert_eq!(
        env.central_count("transact"),
        0,
        "nothing from the batch kept"
    );
    let r = push(
        &env,
        "kaw",
        "HW",
        json!([{"syncOutId": "9", "tableName": "transact", "recordId": "X", "action": "Frob"}]),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_sync_record"));
    assert_eq!(
        r.json()["error"]["data"]["records"][0]["reason"],
        "unknown_action"
    );
}

#[test]
fn c19_c20_actions_any_case_and_central_records() {
    let env = Env::new("records");
    env.site("kaw", "S_KAW");
    init(&env, "kaw", "HW");
    for (i, action) in ["update", "UPDATE", "Insert"].iter().enumerate() {
        let rec = json!([{"syncOutId": "1", "tableName": "transact", "recordId": format!("T{i}"), "action": action,
                          "recordData": {"ID": format!("T{i}"), "store_ID": "S_KAW"}}]);
        assert_eq!(push(&env, "kaw", "HW", rec).status, 200);
    }
    final_push(&env, "kaw", "HW");
    assert_eq!(env.central_count("transact"), 3);
    for i in 0..5 {
        env.central
            .put("unit", &json!({"ID": format!("U{i}"), "units": "x"}))
            .unwrap();
    }
    env.central
        .put("unit", &json!({"ID": "U0", "units": "changed"}))
        .unwrap();
    let r = v5(
        &env,
        "kaw",
        "HW",
        "GET",
        "/central_records?cursor=0&limit=2",
        b"",
    )
    .json();
    let ids: Vec<u64> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["ID"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let max = r["maxCursor"].as_u64().unwrap();
    assert!(max >= ids[1]);
    let r = v5(
        &env,
        "kaw",
        "HW",
        "GET",
        &format!("/central_records?cursor={max}&limit=10"),
        b"",
    )
    .json();
    assert_eq!(r["data"].as_array().unwrap().len(), 0);
    assert_eq!(r["maxCursor"].as_u64().unwrap(), max);
    let r = v5(
        &env,
        "kaw",
        "HW",
        "GET",
        "/central_records?cursor=0&limit=100",
        b"",
    )
    .json();
    let tables: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tableName"].as_str().unwrap())
        .collect();
    assert!(
        tables
            .iter()
            .all(|t| !["store", "transact", "pref"].contains(t)),
        "{tables:?}"
    );
    assert_eq!(
        r["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["recordId"] == "U0")
            .count(),
        1,
        "older entry dropped"
    );
}

#[test]
fn c26_c27_collector_vs_transfer_copy_patients_messages() {
    let env = Env::new("routing");
    env.site("kaw", "S_KAW");
    env.site("hub", "S_HUB");
    env.site("far", "S_FAR");
    env.central.set_copy("S_KAW", "hub", "collector").unwrap();
    env.central.set_copy("S_KAW", "far", "transfer").unwrap();
    for (s, hw) in [("kaw", "K"), ("hub", "H"), ("far", "F")] {
        init_and_drain(&env, s, hw);
    }
    let r = push(
        &env,
        "kaw",
        "K",
        json!([
            upd(
                "1",
                "item_line",
                json!({"ID": "IL1", "store_ID": "S_KAW", "item_ID": "I1"})
            ),
            upd(
                "2",
                "name",
                json!({"ID": "PAT1", "type": "patient", "supplying_store_id": "S_KAW"})
            ),
            upd(
                "3",
                "name_store_join",
                json!({"ID": "NSJ1", "name_ID": "PAT1", "store_ID": "S_KAW"})
            ),
            upd(
                "4",
                "message",
                json!({"ID": "M1", "fromStoreID": "S_KAW", "toStoreID": "S_FAR", "body": "hi"})
            ),
        ]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    final_push(&env, "kaw", "K");
    let ids = |s: &str, hw: &str| -> Vec<String> {
        pull_all(&env, s, hw)
            .iter()
            .map(|r| r["recordId"].as_str().unwrap().to_string())
            .collect()
    };
    let hub = ids("hub", "H");
    let far = ids("far", "F");
    assert!(
        hub.contains(&"IL1".to_string()) && hub.contains(&"PAT1".to_string()),
        "collector gets store data: {hub:?}"
    );
    assert!(
        !far.contains(&"IL1".to_string()),
        "transfer copy gets no store data: {far:?}"
    );
    assert!(
        !far.contains(&"PAT1".to_string()),
        "patient not visible at far"
    );
    assert!(
        far.contains(&"M1".to_string()),
        "message reaches the receiving store's site"
    );
}

#[test]
fn c31_c32_c33_transfer_created_once_numbered_and_forwarded() {
    let env = Env::new("transfer");
    env.site("kaw", "S_KAW");
    env.site("opua", "S_OPUA");
    env.central.add_site("coll", "COLL", "pw-coll").unwrap();
    env.central
        .add_store("S_COLL", "COLL", "Collector site store", Some("coll"))
        .unwrap();
    env.central.set_copy("S_OPUA", "coll", "collector").unwrap();
    for (s, hw) in [("kaw", "K"), ("opua", "O"), ("coll", "C")] {
        init_and_drain(&env, s, hw);
    }
    let ci = |status: &str| {
        json!([
            upd(
                "1",
                "transact",
                json!({"ID": "CI1", "store_ID": "S_KAW", "name_ID": "N_S_OPUA", "type": "ci",
                 "status": status, "invoice_num": 57, "hold": false, "linked_transaction_id": "", "om_x": 1})
            ),
            upd(
                "2",
                "trans_line",
                json!({"ID": "CL1", "transaction_ID": "CI1", "item_ID": "I1", "sell_price": 2.5, "quantity": 10})
            ),
        ])
    };
    push(&env, "kaw", "K", ci("cn"));
    final_push(&env, "kaw", "K");
    let c = env.central.conn().unwrap();
    let si_count = || -> i64 {
        c.query_row("SELECT count(*) FROM record WHERE table_name='transact' AND json_extract(data,'$.type')='si'", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(si_count(), 0, "a ci in cn creates nothing");
    push(&env, "kaw", "K", ci("fn"));
    final_push(&env, "kaw", "K");
    assert_eq!(si_count(), 1);
    push(
        &env,
        "kaw",
        "K",
        json!([upd(
            "1",
            "transact",
            json!({"ID": "CI1", "store_ID": "S_KAW", "comment": "re-push"})
        )]),
    );
    final_push(&env, "kaw", "K");
    assert_eq!(si_count(), 1, "re-pushing adds none");
    let si: Value = c.query_row("SELECT data FROM record WHERE table_name='transact' AND json_extract(data,'$.type')='si'", [], |r| r.get::<_, String>(0)).map(|t| serde_json::from_str(&t).unwrap()).unwrap();
    assert_eq!(
        (
            si["invoice_num"].as_i64(),
            si["status"].as_str(),
            si["hold"].as_bool()
        ),
        (Some(-1), Some("nw"), Some(true))
    );
    assert_eq!(
        (
            si["linked_transaction_id"].as_str(),
            si["store_ID"].as_str(),
            si["name_ID"].as_str()
        ),
        (Some("CI1"), Some("S_OPUA"), Some("N_S_KAW"))
    );
    assert!(si.get("om_x").is_none(), "om_* keys stripped");
    let opua = pull_all(&env, "opua", "O");
    let si_id = si["ID"].as_str().unwrap();
    assert!(
        opua.iter().any(|r| r["recordId"] == si_id),
        "si queued to B"
    );
    assert!(opua.iter().any(|r| r["tableName"] == "trans_line"
        && r["recordData"]["transaction_ID"] == si_id
        && r["recordData"]["cost_price"] == 2.5));
    assert!(
        pull_all(&env, "kaw", "K")
            .iter()
            .any(|r| r["recordId"] == si_id),
        "si queued to A"
    );
    // B numbers it and pushes it back: forwarded to B's collector and to A.
    let mut numbered = si.clone();
    numbered["invoice_num"] = json!(1);
    let r = push(&env, "opua", "O", json!([upd("5", "transact", numbered)]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    final_push(&env, "opua", "O");
    let from_b: Vec<Value> = pull_all(&env, "opua", "O")
        .into_iter()
        .filter(|r| r["recordId"] == si_id)
        .collect();
    assert!(
        from_b.is_empty(),
        "C33: B's stale -1 entry dropped after its push: {from_b:?}"
    );
    let coll = pull_all(&env, "coll", "C");
    assert!(coll
        .iter()
        .any(|r| r["recordId"] == si_id && r["recordData"]["invoice_num"] == 1));
    let kaw: Vec<Value> = pull_all(&env, "kaw", "K")
        .into_iter()
        .filter(|r| r["recordId"] == si_id)
        .collect();
    assert_eq!(kaw.len(), 1, "newer change replaced A's older entry");
    assert_eq!(kaw[0]["recordData"]["invoice_num"], 1);
}

#[test]
fn c10_busy_site_gets_503() {
    let env = Env::new("busy");
    env.site("kaw", "S_KAW");
    init(&env, "kaw", "HW");
    env.central
        .activity_for_test(2, fieldsync::central::Activity::Initialising);
    let r = v5(&env, "kaw", "HW", "GET", "/queued_records", b"");
    assert_eq!((r.status, r.code().as_str()), (503, "sync_is_running"));
    assert_eq!(
        v5(&env, "kaw", "HW", "GET", "/site_status", b"").json()["code"],
        "initialisation_in_progress"
    );
}
