//! Open mSupply remote sites (issue 28, protocol §10.1–10.8, conformance
//! cases 42–47): raw v5 and v6 calls shaped exactly as Open mSupply's server
//! makes them, against the reference central over loopback HTTP (the real
//! `fieldsync-central serve` binary where its options matter), and what every
//! other site then receives, value by value.

mod common;

use common::{drain, final_push, init, init_and_drain, pull_all, push, raw, upd, v5, Env, Served};
use fieldsync::legacy::columns;
use fieldsync::wire::credentials;
use serde_json::{json, Value};

/// Open mSupply's v6 body: its v5 credentials inside (`syncV5Settings`).
fn v6_body(site: &str, password: &str, hw: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "syncV5Settings": {
            "serverUrl": "http://ignored", "username": site,
            "passwordSha256": credentials::password_digest(password).expose(),
            "siteUuid": hw, "appVersion": "2.20.0", "appName": "Open mSupply Desktop",
            "syncVersion": "14"
        },
        "syncV6Version": 5
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    body.to_string().into_bytes()
}

fn v6(env: &Env, route: &str, body: &[u8]) -> Value {
    let r = raw(
        env.addr,
        "POST",
        &format!("/central/sync/{route}"),
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The records of `table` in `site`'s queue, by ID.
fn queued(env: &Env, site: &str, hw: &str, table: &str) -> Vec<Value> {
    pull_all(env, site, hw)
        .into_iter()
        .filter(|r| r["tableName"] == table)
        .map(|r| r["recordData"].clone())
        .collect()
}

fn one(rows: &[Value], f: impl Fn(&Value) -> bool, what: &str) -> Value {
    let found: Vec<&Value> = rows.iter().filter(|r| f(r)).collect();
    assert_eq!(found.len(), 1, "{what}: {rows:?}");
    found[0].clone()
}

/// Case 42: `/site` names an absolute v6 address, which answers Open
/// mSupply's v6 calls "nothing"/"idle", authenticated like v5; a site the
/// administrator marks as the Open mSupply central server is named instead.
#[test]
fn c42_an_absolute_v6_address_answered_nothing_and_idle() {
    let s = Served::start("c42");
    s.env.site("a", "SA");
    s.env.site("b", "SB");
    init(&s.env, "a", "HW-A");
    let site = v5(&s.env, "a", "HW-A", "GET", "/site", b"").json();
    let url = site["omSupplyCentralServerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(url, format!("http://{}", s.env.addr), "{site}");
    assert_eq!(site["isOmSupplyCentralServer"], false);

    // Open mSupply's remote: url.join("central/sync/") + route, credentials in the body.
    let status = v6(
        &s.env,
        "site_status",
        &v6_body("a", "pw-a", "HW-A", json!({})),
    );
    assert_eq!(status, json!({"data": {"is_integrating": false}}));
    let pull = v6(
        &s.env,
        "pull",
        &v6_body(
            "a",
            "pw-a",
            "HW-A",
            json!({"cursor": 7, "batchSize": 500, "isInitialised": true}),
        ),
    );
    assert_eq!(
        pull,
        json!({"data": {"end_cursor": 0, "total_records": 0, "records": [], "is_last_batch": true}})
    );
    let record = json!({"cursor": 1, "record": {"tableName": "asset", "recordId": "AS1",
        "action": "UPSERT", "recordData": {"id": "AS1", "store_id": "SA"}}});
    let pushed = v6(
        &s.env,
        "push",
        &v6_body(
            "a",
            "pw-a",
            "HW-A",
            json!({"batch": {"end_cursor": 1, "total_records": 1,
            "records": [record], "is_last_batch": true}}),
        ),
    );
    assert_eq!(pushed, json!({"data": {"records_pushed": 1}}));
    let kept: String = s
        .env
        .central
        .conn()
        .unwrap()
        .query_row(
            "SELECT data FROM v6_record WHERE table_name = 'asset' AND record_id = 'AS1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&kept).unwrap()["store_id"],
        "SA"
    );

    // Wrong password and unknown site: v5's answer inside v6's envelope.
    for (who, pw) in [("a", "guess"), ("ghost", "pw-ghost")] {
        let refused = v6(&s.env, "site_status", &v6_body(who, pw, "HW-A", json!({})));
        assert_eq!(
            refused["error"]["legacyServerError"]["code"], "site_incorrect_password",
            "{refused}"
        );
    }
    // Not a v6 body at all: a v6 error, nothing read as credentials.
    let junk = v6(&s.env, "pull", b"{\"cursor\":1}");
    assert!(junk["error"]["otherServerError"]
        .as_str()
        .unwrap()
        .contains("syncV5Settings"));

    // The administrator marks b as the Open mSupply central server.
    let out = s.admin(&[
        "site",
        "om-central",
        "b",
        "--url",
        "https://om.example.org/",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let site = v5(&s.env, "a", "HW-A", "GET", "/site", b"").json();
    assert_eq!(site["omSupplyCentralServerUrl"], "https://om.example.org");
    assert_eq!(site["isOmSupplyCentralServer"], false);
    let b = v5(&s.env, "b", "HW-B", "GET", "/site", b"").json();
    assert_eq!(b["isOmSupplyCentralServer"], true);
    let bad = s.admin(&["site", "om-central", "b", "--url", "om.example.org"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an absolute URL"));
    // Unmarked: the public URL the central was given, or the address asked.
    let out = s.admin(&["site", "om-central", "--none"]);
    assert!(out.status.success());
    let site = v5(&s.env, "a", "HW-A", "GET", "/site", b"").json();
    assert_eq!(site["omSupplyCentralServerUrl"], url.as_str());
}

/// Case 43: every row sent carries its table's whole column list with legacy
/// defaults (a `store add` row included); a pushed unknown key survives.
#[test]
fn c43_every_row_sent_is_whole() {
    let env = Env::new("c43");
    env.site("a", "SA");
    init(&env, "a", "HW-A");
    let stores = queued(&env, "a", "HW-A", "store");
    let store = one(&stores, |r| r["ID"] == "SA", "store SA");
    for c in columns::columns("store") {
        assert!(
            store.get(c.name).is_some(),
            "store.{} missing: {store}",
            c.name
        );
        if !["ID", "code", "name_ID", "sync_id_remote_site", "disabled"].contains(&c.name) {
            assert_eq!(store[c.name], c.default_value(), "store.{}", c.name);
        }
    }
    assert_eq!(store["logo"], "");
    assert_eq!(store["name"], "Store SA");
    // The store's name row, central data, whole as well.
    env.central
        .put(
            "item",
            &json!({"ID": "I1", "code": "AMX", "name": "Amoxicillin"}),
        )
        .unwrap();
    let page = v5(
        &env,
        "a",
        "HW-A",
        "GET",
        "/central_records?cursor=0&limit=1000",
        b"",
    )
    .json();
    let data = page["data"].as_array().unwrap();
    for (table, id) in [("name", "N_SA"), ("item", "I1")] {
        let row = &one(data, |r| r["tableName"] == table && r["recordId"] == id, id)["recordData"];
        for c in columns::columns(table) {
            assert!(
                row.get(c.name).is_some(),
                "{table}.{} missing: {row}",
                c.name
            );
        }
    }
}

/// Open mSupply's own shapes: ISO date-times, "hh:mm:ss" times, `null` keys,
/// `om_*` fields, lines before their header, a non-final empty batch.
fn om_invoice() -> Vec<Value> {
    vec![
        upd(
            "1",
            "trans_line",
            json!({"ID": "L1", "transaction_ID": "T1", "item_ID": "I1", "quantity": 3,
                   "sell_price": 2.5, "expiry_date": "2027-01-31T00:00:00", "location_ID": null,
                   "item_line_ID": null, "om_item_variant_id": null, "x_clinic_note": "cold chain"}),
        ),
        upd(
            "2",
            "transact",
            json!({"ID": "T1", "store_ID": "SA", "name_ID": "N_SB", "type": "ci", "status": "fn",
                   "invoice_num": 5, "entry_date": "2026-12-03T00:00:00", "entry_time": "20:50:54",
                   "confirm_date": "2026-12-03T10:15:00", "requisition_ID": null, "user_ID": null,
                   "om_created_datetime": "2026-12-03T20:50:54", "x_clinic_note": "urgent"}),
        ),
    ]
}

/// Case 44 and the value-by-value test: what an Open mSupply site pushes is
/// accepted; the supplier invoice built from it and the collector's copy
/// carry §3 formats, every key the site set kept, `om_*` of a built document empty.
#[test]
fn c44_open_msupply_shapes_reach_every_other_site_in_legacy_formats() {
    let env = Env::new("c44");
    env.site("a", "SA");
    env.site("b", "SB");
    env.site("c", "SC");
    env.central.set_copy("SA", "c", "collector").unwrap();
    env.central
        .put(
            "item",
            &json!({"ID": "I1", "code": "AMX", "name": "Amoxicillin"}),
        )
        .unwrap();
    for (s, hw) in [("a", "HW-A"), ("b", "HW-B"), ("c", "HW-C")] {
        init_and_drain(&env, s, hw);
    }
    // A change only v6 carries: queueLength 1, no data; not the final push.
    let r = v5(
        &env,
        "a",
        "HW-A",
        "POST",
        "/queued_records",
        br#"{"queueLength":1,"data":[]}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["integrationStarted"], false);
    let r = push(&env, "a", "HW-A", Value::from(om_invoice()));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(final_push(&env, "a", "HW-A"));

    // b: the supplier invoice, built from a's, in §3's formats.
    let headers = queued(&env, "b", "HW-B", "transact");
    let si = one(&headers, |r| r["type"] == "si", "si");
    assert_eq!(si["store_ID"], "SB");
    assert_eq!(si["invoice_num"], -1);
    assert_eq!(si["entry_date"], "2026-12-03");
    assert_eq!(si["entry_time"], 75_054);
    assert_eq!(si["confirm_date"], "0000-00-00");
    assert_eq!(si["requisition_ID"], "");
    assert_eq!(si["user_ID"], "");
    assert_eq!(si["om_created_datetime"], Value::Null, "{si}");
    assert_eq!(si["x_clinic_note"], "urgent");
    let lines = queued(&env, "b", "HW-B", "trans_line");
    let line = one(&lines, |r| r["transaction_ID"] == si["ID"], "si line");
    assert_eq!(line["expiry_date"], "2027-01-31");
    assert_eq!(line["location_ID"], "");
    assert_eq!(line["item_line_ID"], "");
    assert_eq!(line["cost_price"], 2.5);
    assert_eq!(line["quantity"], 3);
    assert_eq!(line["x_clinic_note"], "cold chain");
    for (table, row) in [("transact", &si), ("trans_line", &line)] {
        for c in columns::columns(table) {
            assert!(
                row.get(c.name).is_some(),
                "{table}.{} missing: {row}",
                c.name
            );
        }
    }
    // b also holds a's ci (the other half of the transfer), legacy-shaped.
    let ci = one(&headers, |r| r["ID"] == "T1", "ci on b");
    assert_eq!(ci["entry_date"], "2026-12-03");

    // c, the collector: a's documents value by value.
    let copy = one(
        &queued(&env, "c", "HW-C", "transact"),
        |r| r["ID"] == "T1",
        "ci on c",
    );
    let expect = json!({"ID": "T1", "store_ID": "SA", "name_ID": "N_SB", "type": "ci",
        "status": "fn", "invoice_num": 5, "entry_date": "2026-12-03", "entry_time": 75_054,
        "confirm_date": "2026-12-03", "requisition_ID": "", "user_ID": "",
        "om_created_datetime": "2026-12-03T20:50:54", "x_clinic_note": "urgent"});
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&copy[k], v, "transact.{k} on the collector");
    }
    let copy_line = one(
        &queued(&env, "c", "HW-C", "trans_line"),
        |r| r["ID"] == "L1",
        "line on c",
    );
    let expect = json!({"ID": "L1", "transaction_ID": "T1", "item_ID": "I1", "quantity": 3,
        "sell_price": 2.5, "expiry_date": "2027-01-31", "location_ID": "", "item_line_ID": "",
        "x_clinic_note": "cold chain"});
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&copy_line[k], v, "trans_line.{k} on the collector");
    }
    // The central keeps what a sent, as sent (§7.4).
    let stored = env.central.get("transact", "T1").unwrap().unwrap();
    assert_eq!(stored["entry_time"], "20:50:54");
}

/// Sites a (store SA) and b (store SB), initialised, their queues drained.
fn two_sites(name: &str) -> Env {
    let env = Env::new(name);
    env.site("a", "SA");
    env.site("b", "SB");
    for (s, hw) in [("a", "HW-A"), ("b", "HW-B")] {
        init_and_drain(&env, s, hw);
    }
    env
}

/// Case 45: the responding requisition line carries `om_snapshot_datetime`
/// (empty); a site trading with store B holds B's `store` row.
#[test]
fn c45_responding_lines_whole_and_trading_partners_known() {
    let env = two_sites("c45");
    // The hub's name becomes visible in a's store: a learns it is a store.
    env.central
        .put(
            "name_store_join",
            &json!({"ID": "J_SA_NSB", "store_ID": "SA", "name_ID": "N_SB", "inactive": false}),
        )
        .unwrap();
    let stores = queued(&env, "a", "HW-A", "store");
    let sb = one(&stores, |r| r["ID"] == "SB", "store SB on a");
    assert_eq!(sb["name_ID"], "N_SB");
    drain(&env, "a", "HW-A");

    let r = push(
        &env,
        "a",
        "HW-A",
        json!([
            upd(
                "1",
                "requisition_line",
                json!({"ID": "RL1", "requisition_ID": "R1",
                "item_ID": "I1", "Cust_stock_order": 10,
                "om_snapshot_datetime": "2026-12-03T20:50:54"})
            ),
            upd(
                "2",
                "requisition",
                json!({"ID": "R1", "store_ID": "SA", "name_ID": "N_SB",
                "type": "request", "status": "fn", "serial_number": 3,
                "date_entered": "2026-12-03T00:00:00"})
            ),
        ]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(final_push(&env, "a", "HW-A"));
    let responses = queued(&env, "b", "HW-B", "requisition");
    let response = one(
        &responses,
        |r| r["type"] == "response",
        "response requisition",
    );
    assert_eq!(response["date_entered"], "2026-12-03");
    let lines = queued(&env, "b", "HW-B", "requisition_line");
    let line = one(
        &lines,
        |r| r["requisition_ID"] == response["ID"],
        "response line",
    );
    assert!(
        line.as_object()
            .unwrap()
            .contains_key("om_snapshot_datetime"),
        "{line}"
    );
    assert_eq!(line["om_snapshot_datetime"], Value::Null);
    assert_eq!(line["Cust_stock_order"], 10);
    // A new site initialised later gets its partners' stores too.
    env.central
        .put(
            "name_store_join",
            &json!({"ID": "J_SB_NSA", "store_ID": "SB", "name_ID": "N_SA", "inactive": false}),
        )
        .unwrap();
    let r = env.central.request_reinitialise("b");
    assert!(r.is_ok());
    init(&env, "b", "HW-B");
    assert!(queued(&env, "b", "HW-B", "store")
        .iter()
        .any(|r| r["ID"] == "SA"));
}

/// Case 46: a join that makes a patient visible queues the patient with its
/// `nameInsuranceJoin` and `om_document` rows; `requeue` sends a table again.
#[test]
fn c46_a_patient_made_visible_comes_whole_and_requeue_resends() {
    let env = two_sites("c46");
    let r = push(
        &env,
        "a",
        "HW-A",
        json!([
            upd(
                "1",
                "name",
                json!({"ID": "P1", "type": "patient", "name": "Aroha",
                "supplying_store_id": "SA", "date_of_birth": "1990-05-01T00:00:00"})
            ),
            upd(
                "2",
                "name_store_join",
                json!({"ID": "J_P1_SA", "name_ID": "P1", "store_ID": "SA"})
            ),
            upd(
                "3",
                "nameInsuranceJoin",
                json!({"ID": "NI1", "nameID": "P1",
                "insuranceProviderID": "IP1", "policyNumberFull": "77"})
            ),
            upd(
                "4",
                "om_document",
                json!({"ID": "D1", "owner_name_ID": "P1",
                "name": "P1/encounter", "data": {"weight": 61}})
            ),
        ]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(final_push(&env, "a", "HW-A"));
    drain(&env, "b", "HW-B");

    env.central
        .put(
            "name_store_join",
            &json!({"ID": "J_P1_SB", "name_ID": "P1", "store_ID": "SB"}),
        )
        .unwrap();
    let got = pull_all(&env, "b", "HW-B");
    let ids: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                r["tableName"].as_str().unwrap().into(),
                r["recordId"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("name", "P1"),
        ("nameInsuranceJoin", "NI1"),
        ("om_document", "D1"),
        ("name_store_join", "J_P1_SB"),
    ] {
        assert!(
            ids.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not queued to b: {ids:?}"
        );
    }
    let patient = one(
        &queued(&env, "b", "HW-B", "name"),
        |r| r["ID"] == "P1",
        "P1",
    );
    assert_eq!(patient["date_of_birth"], "1990-05-01");
    drain(&env, "b", "HW-B");

    // requeue SITE --table T: b could not read its stores; they come again.
    let n = env.central.requeue_site("b", Some("store")).unwrap();
    assert!(n >= 1, "{n}");
    assert!(queued(&env, "b", "HW-B", "store")
        .iter()
        .any(|r| r["ID"] == "SB"));
    // Central data too, with --table (b read it from the change log once).
    env.central
        .put(
            "item",
            &json!({"ID": "I9", "code": "PCM", "name": "Paracetamol"}),
        )
        .unwrap();
    assert_eq!(env.central.requeue_site("b", Some("item")).unwrap(), 1);
    assert!(env
        .central
        .requeue_site("b", Some("no_such_table"))
        .is_err());
    drain(&env, "b", "HW-B");
    // Without a table: everything b should hold, as initialisation would.
    let all = env.central.requeue_site("b", None).unwrap();
    let again = pull_all(&env, "b", "HW-B");
    assert_eq!(all as usize, again.len());
    assert!(again.iter().any(|r| r["recordId"] == "P1"));
}

/// Case 47: in test mode, `test/create_site`, `test/upsert` and `test/delete`
/// as Open mSupply's integration tests call them; outside it, 404.
#[test]
fn c47_test_endpoints_only_in_test_mode() {
    let call = |s: &Served, who: &str, path: &str, body: Value| {
        v5(
            &s.env,
            who,
            &format!("HW-{who}"),
            "POST",
            path,
            body.to_string().as_bytes(),
        )
    };
    let plain = Served::start("c47-off");
    plain.env.site("t", "ST");
    let out = plain.admin(&["site", "test-site", "t"]);
    assert!(out.status.success());
    let r = call(
        &plain,
        "t",
        "/test/create_site",
        json!({"visibleNameIds": []}),
    );
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    drop(plain);

    let s = Served::start_with("c47-on", &["--test-mode"]);
    assert!(s.log_text().contains("TEST MODE"), "{}", s.log_text());
    s.env.site("t", "ST");
    s.env.site("u", "SU");
    // Not marked: 404 even in test mode.
    let r = call(&s, "t", "/test/upsert", json!({"item": [{"ID": "I1"}]}));
    assert_eq!(r.status, 404);
    let out = s.admin(&["site", "test-site", "t"]);
    assert!(out.status.success());

    let r = call(
        &s,
        "t",
        "/test/create_site",
        json!({"visibleNameIds": ["N_SU"]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let made = r.json();
    let (name, digest) = (
        made["site"]["name"].as_str().unwrap().to_string(),
        made["site"]["password"].as_str().unwrap().to_string(),
    );
    assert_eq!(digest.len(), 64);
    assert!(made["site"]["site_ID"].as_u64().unwrap() > 1);
    let store = made["store"]["ID"].as_str().unwrap().to_string();
    // The new site logs in with that digest, as Open mSupply's settings hold it.
    let auth = format!(
        "Basic {}",
        credentials::base64(format!("{name}:{digest}").as_bytes())
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("msupply-site-uuid", "HW-NEW"),
        ("version", "14"),
    ];
    let r = raw(s.env.addr, "GET", "/sync/v5/site", &headers, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = raw(s.env.addr, "POST", "/sync/v5/initialise", &headers, b"{}");
    assert_eq!(r.status, 200);
    let r = raw(
        s.env.addr,
        "GET",
        "/sync/v5/queued_records?limit=1000",
        &headers,
        b"",
    );
    let data = r.json()["data"].as_array().cloned().unwrap();
    assert!(data
        .iter()
        .any(|e| e["tableName"] == "store" && e["recordId"] == store.as_str()));
    assert!(data
        .iter()
        .any(|e| e["tableName"] == "name_store_join" && e["recordData"]["name_ID"] == "N_SU"));

    let r = call(
        &s,
        "t",
        "/test/upsert",
        json!({"item": [{"ID": "I1", "code": "AMX", "name": "Amoxicillin"}],
                                                "unit": [{"ID": "U1", "units": "tab"}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        s.env.central.get("item", "I1").unwrap().unwrap()["code"],
        "AMX"
    );
    let r = call(&s, "t", "/test/delete", json!({"item": [{"ID": "I1"}]}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(s.env.central.get("item", "I1").unwrap().is_none());
    // Store data is not the administrator's to write this way.
    let r = call(
        &s,
        "t",
        "/test/upsert",
        json!({"transact": [{"ID": "T1", "store_ID": "ST"}]}),
    );
    assert_ne!(r.status, 200);
    assert!(s.log_text().contains("calls test/upsert"));
}

/// `fieldsync-central requeue` as the administrator runs it.
#[test]
fn requeue_from_the_command_line() {
    let s = Served::start("requeue");
    s.env.site("a", "SA");
    init_and_drain(&s.env, "a", "HW-A");
    let out = s.admin(&["requeue", "a", "--table", "store"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 record(s) queued to site a"
    );
    let out = s.admin(&["requeue", "a", "--table", "Store"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a table sites receive"));
    let out = s.admin(&["requeue", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no site named"));
}
