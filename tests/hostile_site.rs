//! Issue 18, the central half: a hostile (or merely careless) remote site with
//! valid credentials, speaking raw v5 to the reference central. Each case asserts
//! the refusal and that nothing was staged, integrated or routed.

mod common;

use common::{final_push, init_and_drain, pull_all, push, raw, upd, v5, Env};
use serde_json::{json, Value};

/// Two sites: `a` (store A) and `b` (store B), both initialised and drained.
fn two_sites(name: &str) -> Env {
    let env = Env::new(name);
    env.site("a", "A");
    env.site("b", "B");
    init_and_drain(&env, "a", "HA");
    init_and_drain(&env, "b", "HB");
    env
}

fn staged(env: &Env, site: u32) -> i64 {
    env.central
        .conn()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM staging WHERE site_id = ?1",
            [site],
            |r| r.get(0),
        )
        .unwrap()
}

fn refused_reasons(env: &Env) -> Vec<String> {
    env.central
        .conn()
        .unwrap()
        .prepare("SELECT table_name || ' ' || record_id || ': ' || reason FROM refused ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn del(sync_out: &str, table: &str, id: &str) -> Value {
    json!({"syncOutId": sync_out, "tableName": table, "recordId": id, "action": "Delete", "recordData": null})
}

#[test]
fn staged_rows_are_judged_again_when_integrated() {
    // Item 9: a staged delete or update of ids that do not exist yet; another
    // site then creates them; the first site's final push must take nothing.
    let env = two_sites("rejudge");
    let r = push(
        &env,
        "a",
        "HA",
        json!([
            del("1", "transact", "BT1"),
            upd("2", "transact", json!({"ID": "BT2", "store_ID": "A"})),
            upd(
                "3",
                "name",
                json!({"ID": "BP1", "type": "patient", "supplying_store_id": "A"})
            ),
        ]),
    );
    assert_eq!(
        r.status,
        200,
        "nothing to refuse yet: {}",
        String::from_utf8_lossy(&r.body)
    );
    push(
        &env,
        "b",
        "HB",
        json!([
            upd("1", "transact", json!({"ID": "BT1", "store_ID": "B"})),
            upd("2", "transact", json!({"ID": "BT2", "store_ID": "B"})),
            upd(
                "3",
                "name",
                json!({"ID": "BP1", "type": "patient", "supplying_store_id": "B"})
            ),
        ]),
    );
    assert!(final_push(&env, "b", "HB"));
    assert!(final_push(&env, "a", "HA"));
    let get = |t: &str, id: &str| env.central.get(t, id).unwrap();
    assert_eq!(
        get("transact", "BT1").unwrap()["store_ID"],
        "B",
        "not deleted by a"
    );
    assert_eq!(
        get("transact", "BT2").unwrap()["store_ID"],
        "B",
        "not taken over by a"
    );
    assert_eq!(
        get("name", "BP1").unwrap()["supplying_store_id"],
        "B",
        "patient not re-homed"
    );
    let refused = refused_reasons(&env);
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("other_store") || r.contains("patient_not_homed_here")),
        "{refused:?}"
    );
    assert!(
        pull_all(&env, "b", "HB").is_empty(),
        "nothing of a's routed to b"
    );
    let report = env.central.report(0).unwrap();
    assert_eq!(report.iter().find(|s| s.name == "a").unwrap().refused, 3);

    // After a store moves, what its old site staged for it is not integrated
    // (b keeps a second store, so it can still send its final push).
    env.central
        .add_store("B2", "B2", "Second store", Some("b"))
        .unwrap();
    push(
        &env,
        "b",
        "HB",
        json!([upd("4", "transact", json!({"ID": "BT3", "store_ID": "B"}))]),
    );
    env.central.move_store("B", Some("a")).unwrap();
    assert!(final_push(&env, "b", "HB"));
    assert!(get("transact", "BT3").is_none(), "b no longer has store B");
    assert!(refused_reasons(&env)
        .last()
        .unwrap()
        .contains("BT3: other_store"));
}

#[test]
fn staging_without_a_final_push_expires() {
    let env = two_sites("expire");
    push(
        &env,
        "a",
        "HA",
        json!([upd("1", "transact", json!({"ID": "OLD", "store_ID": "A"}))]),
    );
    assert_eq!(staged(&env, 2), 1);
    env.central
        .conn()
        .unwrap()
        .execute_batch("UPDATE staging SET staged_at = 0; UPDATE staged_total SET first_at = 0;")
        .unwrap();
    push(
        &env,
        "a",
        "HA",
        json!([upd("2", "transact", json!({"ID": "NEW", "store_ID": "A"}))]),
    );
    assert_eq!(staged(&env, 2), 1, "a week-old unsealed staging is dropped");
    assert!(final_push(&env, "a", "HA"));
    assert!(env.central.get("transact", "OLD").unwrap().is_none());
    assert!(env.central.get("transact", "NEW").unwrap().is_some());
}

#[test]
fn orphaned_lines_stay_their_writers() {
    // Item 10: after a deletes its header, b may not touch its lines.
    let env = two_sites("orphans");
    push(
        &env,
        "a",
        "HA",
        json!([
            upd("1", "transact", json!({"ID": "H", "store_ID": "A"})),
            upd(
                "2",
                "trans_line",
                json!({"ID": "L1", "transaction_ID": "H"})
            ),
            upd(
                "3",
                "trans_line",
                json!({"ID": "L2", "transaction_ID": "H"})
            ),
        ]),
    );
    assert!(final_push(&env, "a", "HA"));
    push(&env, "a", "HA", json!([del("4", "transact", "H")]));
    assert!(final_push(&env, "a", "HA"));
    push(
        &env,
        "b",
        "HB",
        json!([upd("1", "transact", json!({"ID": "BH", "store_ID": "B"}))]),
    );
    assert!(final_push(&env, "b", "HB"));
    let r = push(
        &env,
        "b",
        "HB",
        json!([
            del("2", "trans_line", "L1"),
            upd(
                "3",
                "trans_line",
                json!({"ID": "L2", "transaction_ID": "BH"})
            )
        ]),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "record_not_owned_by_site")
    );
    let body = r.json();
    let reasons: Vec<&str> = body["error"]["data"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["other_store", "other_store"]);
    assert_eq!(staged(&env, 3), 0);
    assert!(env.central.get("trans_line", "L1").unwrap().is_some());
}

#[test]
fn rows_no_agent_could_read_are_refused_on_push() {
    // Item 11: a 3 MiB message would poison its recipients' queues.
    let env = two_sites("bigmsg");
    let big = "x".repeat(3 << 20);
    let r = push(
        &env,
        "a",
        "HA",
        json!([upd(
            "1",
            "message",
            json!({"ID": "M", "fromStoreID": "A", "toStoreID": "B", "body": big})
        )]),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_sync_record"));
    assert_eq!(
        r.json()["error"]["data"]["records"][0]["reason"],
        "too_large"
    );
    // Duplicate keys and depth, the other two ways readers disagree.
    let body = br#"{"queueLength":1,"data":[{"syncOutId":"2","tableName":"transact","recordId":"D","action":"Update","recordData":{"ID":"D","store_ID":"A","store_ID":"B"}}]}"#;
    let r = v5(&env, "a", "HA", "POST", "/queued_records", body);
    assert_eq!(
        r.json()["error"]["data"]["records"][0]["reason"],
        "duplicate_key"
    );
    assert_eq!(staged(&env, 2), 0);
    // A record already queued that no site can read can be taken out of every queue.
    env.central.put("unit", &json!({"ID": "U"})).unwrap();
    env.central.set_copy("A", "b", "collector").unwrap();
    assert!(env.central.unqueue("store", "A").unwrap() >= 1);
}

#[test]
fn insurance_joins_only_for_patients() {
    // Item 12: a customer whose supplying store is a's is not a's patient.
    let env = two_sites("insurance");
    env.central
        .put(
            "name",
            &json!({"ID": "CUST", "type": "customer", "supplying_store_id": "A"}),
        )
        .unwrap();
    let r = push(
        &env,
        "a",
        "HA",
        json!([upd(
            "1",
            "nameInsuranceJoin",
            json!({"ID": "NI", "nameID": "CUST"})
        )]),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "record_not_owned_by_site")
    );
    assert_eq!(
        r.json()["error"]["data"]["records"][0]["reason"],
        "patient_not_homed_here"
    );
    assert_eq!(staged(&env, 2), 0);
}

#[test]
fn the_minor_holes() {
    // Item 13.
    let env = Env::new("minor");
    env.site("a", "A");
    let auth = env.auth("a");
    let with = |version: &str| {
        raw(
            env.addr,
            "GET",
            "/sync/v5/site",
            &[
                ("Authorization", &auth),
                ("msupply-site-uuid", "HW1"),
                ("version", version),
            ],
            b"",
        )
    };
    // (Spaces around a header value are not part of it, RFC 9110 §5.5.)
    for v in ["+14", "014", "14.0", "1e1", "0x0e"] {
        let r = with(v);
        assert_eq!(
            (r.status, r.code().as_str()),
            (409, "api_version_incompatible"),
            "version {v:?}"
        );
    }
    let bound: String = env
        .central
        .conn()
        .unwrap()
        .query_row("SELECT hardware_id FROM site WHERE name = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(bound, "", "a refused version binds nothing");
    // A push before initialisation.
    let r = push(
        &env,
        "a",
        "HW1",
        json!([upd("1", "transact", json!({"ID": "T", "store_ID": "A"}))]),
    );
    assert_eq!((r.status, r.code().as_str()), (409, "site_not_initialised"));
    init_and_drain(&env, "a", "HW1");
    // A cursor that is no SQLite integer.
    let r = v5(
        &env,
        "a",
        "HW1",
        "GET",
        "/central_records?cursor=9223372036854775808",
        b"",
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_cursor"));
    // A 16 MiB body announced by a stranger is answered before it is read.
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(env.addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"POST /sync/v5/queued_records HTTP/1.1\r\nContent-Length: 16000000\r\nAuthorization: Basic eDp5\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Repeated wrong passwords never lock the site's own agent out (§10.9).
    let wrong = fieldsync::wire::credentials::basic_auth(
        "a",
        &fieldsync::wire::credentials::password_digest("guess"),
    );
    for _ in 0..5 {
        let r = raw(
            env.addr,
            "GET",
            "/sync/v5/site",
            &[
                ("Authorization", wrong.expose()),
                ("msupply-site-uuid", "HW1"),
                ("version", "14"),
            ],
            b"",
        );
        assert_eq!(r.code(), "site_incorrect_password");
    }
    let r = v5(
        &env,
        "a",
        "HW1",
        "GET",
        "/sync/v5/site".trim_start_matches("/sync/v5"),
        b"",
    );
    assert_eq!(r.status, 200, "the right password is never refused");
}
