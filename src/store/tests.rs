//! The store's own tests: local writes through the rules, the outbox they fill.

use super::*;
use serde_json::json;

fn initialised() -> Store {
    let mut s = Store::open_in_memory().unwrap();
    s.set_site_identity(12, "S_KAW", None).unwrap();
    s
}

fn outbox(s: &Store) -> Vec<(String, String, String, i64)> {
    let mut stmt = s
        .conn()
        .prepare("SELECT table_name, record_id, action, version FROM outbox ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn before_initialisation_only_local_data_is_writable() {
    let mut s = Store::open_in_memory().unwrap();
    let e = s
        .put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
        .unwrap_err();
    assert!(e.to_string().contains("site not initialised"), "{e}");
    assert!(e.to_string().contains("transact T1"), "{e}");
    s.put("number", &json!({"ID": "N1", "value": 3})).unwrap();
    assert!(outbox(&s).is_empty(), "local data is never captured");
}

#[test]
fn own_store_data_is_captured_others_refused() {
    let mut s = initialised();
    s.put(
        "transact",
        &json!({"ID": "T1", "store_ID": "S_KAW", "invoice_num": 1}),
    )
    .unwrap();
    let e = s
        .put("transact", &json!({"ID": "T2", "store_ID": "S_OTHER"}))
        .unwrap_err();
    assert!(e.to_string().contains("belongs to another store"), "{e}");
    let e = s
        .put("item", &json!({"ID": "I1", "name": "Paracetamol"}))
        .unwrap_err();
    assert!(e.to_string().contains("central data is read-only"), "{e}");
    let e = s.put("store", &json!({"ID": "S_KAW"})).unwrap_err();
    assert!(e.to_string().contains("central data is read-only"), "{e}");
    let e = s.put("mystery", &json!({"ID": "X"})).unwrap_err();
    assert!(e.to_string().contains("unknown table"), "{e}");
    assert_eq!(
        outbox(&s),
        vec![("transact".into(), "T1".into(), "Update".into(), 1)]
    );
}

#[test]
fn lines_follow_their_parent() {
    let mut s = initialised();
    s.put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
        .unwrap();
    s.put("trans_line", &json!({"ID": "L1", "transaction_ID": "T1"}))
        .unwrap();
    let e = s
        .put("trans_line", &json!({"ID": "L2", "transaction_ID": "NOPE"}))
        .unwrap_err();
    assert!(e.to_string().contains("belongs to another store"), "{e}");
}

#[test]
fn an_edit_cannot_take_over_or_give_away() {
    let mut s = initialised();
    let tx = s.receiving().unwrap();
    tx.write_received("transact", "F1", r#"{"ID":"F1","store_ID":"S_OTHER"}"#)
        .unwrap();
    tx.commit().unwrap();
    assert!(outbox(&s).is_empty(), "sync writes are not captured");
    let e = s
        .put("transact", &json!({"ID": "F1", "store_ID": "S_KAW"}))
        .unwrap_err();
    assert!(e.to_string().contains("another store"), "{e}");
    s.put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
        .unwrap();
    let e = s
        .put("transact", &json!({"ID": "T1", "store_ID": "S_OTHER"}))
        .unwrap_err();
    assert!(e.to_string().contains("another store"), "{e}");
    assert!(s.delete("transact", "F1").is_err());
}

#[test]
fn outbox_keeps_one_entry_with_the_latest_action() {
    let mut s = initialised();
    for i in 0..10 {
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S_KAW", "comment": i.to_string()}),
        )
        .unwrap();
    }
    assert_eq!(
        outbox(&s),
        vec![("transact".into(), "T1".into(), "Update".into(), 10)]
    );
    s.put("transact", &json!({"ID": "T2", "store_ID": "S_KAW"}))
        .unwrap();
    assert!(s.delete("transact", "T2").unwrap());
    let o = outbox(&s);
    assert_eq!(o[1], ("transact".into(), "T2".into(), "Delete".into(), 2));
    // An identical rewrite is not a change.
    s.put("transact", &json!({"ID": "T1", "comment": "9"}))
        .unwrap();
    assert_eq!(outbox(&s)[0].3, 10);
}

#[test]
fn overlay_keeps_unknown_keys() {
    let mut s = initialised();
    s.put(
        "transact",
        &json!({"ID": "T1", "store_ID": "S_KAW", "om_extra": {"a": 1}}),
    )
    .unwrap();
    s.put("transact", &json!({"ID": "T1", "comment": "x"}))
        .unwrap();
    let row = s.get("transact", "T1").unwrap().unwrap();
    assert_eq!(row["om_extra"], json!({"a": 1}));
    assert_eq!(row["comment"], "x");
}

#[test]
fn patients_messages_and_joins() {
    let mut s = initialised();
    s.put(
        "name",
        &json!({"ID": "P1", "type": "patient", "supplying_store_id": "S_KAW"}),
    )
    .unwrap();
    let e = s
        .put(
            "name",
            &json!({"ID": "P2", "type": "patient", "supplying_store_id": "S_X"}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("another store"), "{e}");
    let e = s
        .put("name", &json!({"ID": "P1", "type": "customer"}))
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    s.put(
        "name_store_join",
        &json!({"ID": "J1", "name_ID": "P1", "store_ID": "S_KAW"}),
    )
    .unwrap();
    let e = s
        .put(
            "name_store_join",
            &json!({"ID": "J2", "name_ID": "C1", "store_ID": "S_KAW"}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("name_store_join"), "{e}");
    s.put(
        "message",
        &json!({"ID": "M1", "fromStoreID": "S_KAW", "toStoreID": "S_X", "body": "hi"}),
    )
    .unwrap();
    let e = s
        .put("message", &json!({"ID": "M1", "body": "edited"}))
        .unwrap_err();
    assert!(e.to_string().contains("cannot be edited"), "{e}");
    let e = s
        .put("message", &json!({"ID": "M2", "fromStoreID": "S_X"}))
        .unwrap_err();
    assert!(e.to_string().contains("another store"), "{e}");
}

#[test]
fn bad_records_are_named() {
    let mut s = initialised();
    let e = s
        .put("transact", &json!({"store_ID": "S_KAW"}))
        .unwrap_err();
    assert_eq!(e.to_string(), "record: transact record has no \"ID\" field");
    let e = s.put("transact", &json!({"ID": 5})).unwrap_err();
    assert!(
        e.to_string().contains("must be a string, not number"),
        "{e}"
    );
    let e = s
        .put(
            "transact",
            &json!({"ID": "T", "store_ID": "S_KAW", "invoice_num": "7"}),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("\"invoice_num\" has the wrong type"),
        "{e}"
    );
    let e = s.put("transact", &json!([1])).unwrap_err();
    assert!(e.to_string().contains("must be a JSON object"), "{e}");
    assert_eq!(s.count_records(None).unwrap(), 0);
}

#[test]
fn a_dispensary_keeps_its_transactions_until_the_preference_turns_on() {
    let mut s = initialised();
    let pref = |include: serde_json::Value| {
        json!({"ID": "PREF1", "item": "store_preferences", "store_ID": "S_KAW",
               "data": {"sync_include_transactions": include}})
    };
    let receive = |s: &mut Store, t: &str, row: serde_json::Value| {
        let tx = s.receiving().unwrap();
        tx.write_received(t, row["ID"].as_str().unwrap(), &row.to_string())
            .unwrap();
        tx.commit().unwrap();
    };
    receive(
        &mut s,
        "store",
        json!({"ID": "S_KAW", "store_mode": "dispensary"}),
    );
    receive(&mut s, "pref", pref(json!(false)));
    assert_eq!(s.refresh_hold().unwrap(), Some(Hold::Holding));
    s.put(
        "transact",
        &json!({"ID": "P1", "store_ID": "S_KAW", "type": "ci"}),
    )
    .unwrap();
    s.put("trans_line", &json!({"ID": "PL1", "transaction_ID": "P1"}))
        .unwrap();
    s.put("Location", &json!({"ID": "LOC", "store_ID": "S_KAW"}))
        .unwrap();
    assert_eq!(s.outbox_counts().unwrap().held, 2, "transactions kept here");
    assert_eq!(
        s.outbox_pending().unwrap(),
        1,
        "other store data still syncs"
    );
    receive(&mut s, "pref", pref(json!(true)));
    assert_eq!(s.refresh_hold().unwrap(), Some(Hold::Released(2)));
    let mut order = vec![];
    outbox::for_each_pending(s.conn(), 10, |e| {
        order.push(e.id);
        true
    })
    .unwrap();
    assert_eq!(order, ["LOC", "P1", "PL1"], "released in push order");
    assert_eq!(s.refresh_hold().unwrap(), None, "no change, nothing to do");
}

#[test]
fn a_field_is_read_as_the_rules_read_it() {
    let mut s = initialised();
    s.put(
        "transact",
        &json!({"ID": "T1", "store_ID": "S_KAW", "invoice_num": 7, "name_ID": null}),
    )
    .unwrap();
    let tx = s.tx().unwrap();
    assert_eq!(
        tx.get_field("transact", "T1", "store_ID")
            .unwrap()
            .as_deref(),
        Some("S_KAW")
    );
    // Not a string, null, or absent: "" (as `owner::field`); no record: None.
    for name in ["invoice_num", "name_ID", "comment"] {
        assert_eq!(
            tx.get_field("transact", "T1", name).unwrap().as_deref(),
            Some(""),
            "{name}"
        );
    }
    assert_eq!(tx.get_field("transact", "T2", "store_ID").unwrap(), None);
}
