//! The seed scenarios (seed 000 "Remote synchronisation"; seed 001 sync sites) end
//! to end: one reference central, several real `fieldsync` agents, one SQLite file
//! per site, loopback HTTP. Each story asserts on the data every site ends up with.

mod common;

use std::path::{Path, PathBuf};

use common::{sql, Env};
use serde_json::{json, Value};

/// The seed's topology: remote site 1 (store B active), remote site 2 (store C
/// active), a hub site (store H) holding a collector copy of B; C is a transfer
/// copy on site 1 and B on site 2; store A is active on the central itself.
struct Seed {
    env: Env,
    site1: PathBuf,
    site2: PathBuf,
    hub: PathBuf,
}

fn seed(name: &str) -> Seed {
    let env = Env::new(name);
    env.site("site1", "S_B");
    env.site("site2", "S_C");
    env.site("hub", "S_H");
    env.central.add_store("S_A", "A", "Store A", None).unwrap();
    env.central.set_copy("S_B", "hub", "collector").unwrap();
    env.central.set_copy("S_C", "site1", "transfer").unwrap();
    env.central.set_copy("S_B", "site2", "transfer").unwrap();
    env.central
        .put("item", &json!({"ID": "I_PARA", "item_name": "Paracetamol"}))
        .unwrap();
    let s = Seed {
        site1: env.db("site1"),
        site2: env.db("site2"),
        hub: env.db("hub"),
        env,
    };
    for (db, n) in [(&s.site1, "site1"), (&s.site2, "site2"), (&s.hub, "hub")] {
        s.env.init(db, n);
        s.env.config(db, "hardware_id", &format!("HW-{n}"));
        s.sync_ok(db);
    }
    s
}

impl Seed {
    fn sync_ok(&self, db: &Path) -> Value {
        let (code, report, stderr) = self.env.sync(db);
        assert_eq!(code, 0, "sync of {}: {stderr}", db.display());
        report
    }
    fn put(&self, db: &Path, table: &str, row: Value) -> std::process::Output {
        self.env.agent(db, &["put", table, &row.to_string()])
    }
    fn has(&self, db: &Path, table: &str, id: &str) -> Option<Value> {
        common::record(db, table, id)
    }
    /// Issue 30: at the end of a story every site holds what the central
    /// says it should, record for record (`fieldsync verify`: the comparison
    /// finds no difference, so a daily comparison repairs nothing).
    fn all_agree(&self) {
        for db in [&self.site1, &self.site2, &self.hub] {
            self.sync_ok(db);
            let out = self.env.agent(db, &["verify", "--json"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                v["compared"]["differences"],
                0,
                "{} differs from the central: {}",
                db.display(),
                v["compared"]
            );
        }
    }
}

#[test]
fn store_data_reaches_collectors_only_and_transfer_copies_get_only_their_transfers() {
    let s = seed("storedata");
    assert!(s
        .put(
            &s.site1,
            "item_line",
            json!({"ID": "IL_B1", "store_ID": "S_B", "item_ID": "I_PARA", "quantity": 40})
        )
        .status
        .success());
    assert!(s
        .put(
            &s.site1,
            "Stock_take",
            json!({"ID": "ST_B1", "store_ID": "S_B", "status": "nw"})
        )
        .status
        .success());
    s.sync_ok(&s.site1);
    for db in [&s.hub, &s.site2] {
        s.sync_ok(db);
    }
    assert!(
        s.has(&s.hub, "item_line", "IL_B1").is_some(),
        "collector copy receives store data"
    );
    assert!(s.has(&s.hub, "Stock_take", "ST_B1").is_some());
    assert!(
        s.has(&s.site2, "item_line", "IL_B1").is_none(),
        "transfer copy receives no stock lines"
    );
    assert!(
        s.env.central.get("item_line", "IL_B1").unwrap().is_some(),
        "the central holds every store"
    );
    // A transfer addressed to B from site 2 does reach site 1.
    assert!(s.put(&s.site2, "transact", json!({"ID": "CI_C1", "store_ID": "S_C", "name_ID": "N_S_B", "type": "ci", "status": "nw", "invoice_num": 1})).status.success());
    s.sync_ok(&s.site2);
    s.sync_ok(&s.site1);
    assert!(
        s.has(&s.site1, "transact", "CI_C1").is_some(),
        "transfer half reaches the other party"
    );
    s.sync_ok(&s.hub);
    assert!(
        s.has(&s.hub, "transact", "CI_C1").is_none(),
        "a transfer of C is not B's collector's business"
    );
    s.all_agree();
}

#[test]
fn central_data_reaches_every_site_and_no_site_can_change_it() {
    let s = seed("centraldata");
    s.env
        .central
        .put("item", &json!({"ID": "I_AMOX", "item_name": "Amoxicillin"}))
        .unwrap();
    s.env
        .central
        .put(
            "item",
            &json!({"ID": "I_PARA", "item_name": "Paracetamol 500mg"}),
        )
        .unwrap();
    for db in [&s.site1, &s.site2, &s.hub] {
        s.sync_ok(db);
        assert!(s.has(db, "item", "I_AMOX").is_some());
        assert_eq!(
            s.has(db, "item", "I_PARA").unwrap()["item_name"],
            "Paracetamol 500mg"
        );
    }
    let out = s.put(
        &s.site1,
        "item",
        json!({"ID": "I_PARA", "item_name": "local rename"}),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("central data is read-only"));
    // Forced past the agent (raw push): the central refuses it too.
    let body = json!({"queueLength": 1, "data": [{"syncOutId": "1", "tableName": "item", "recordId": "I_PARA",
        "action": "Update", "recordData": {"ID": "I_PARA", "item_name": "forced"}}]});
    let r = common::v5(
        &s.env,
        "site1",
        "HW-site1",
        "POST",
        "/queued_records",
        body.to_string().as_bytes(),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "record_not_owned_by_site")
    );
    assert_eq!(
        s.env.central.get("item", "I_PARA").unwrap().unwrap()["item_name"],
        "Paracetamol 500mg"
    );
    s.all_agree();
}

#[test]
fn stock_transfer_between_remote_sites_is_numbered_and_linked_everywhere() {
    let s = seed("transfer");
    // Site 1 already has supplier invoices up to 11.
    assert!(s.put(&s.site1, "transact", json!({"ID": "SI_OLD", "store_ID": "S_B", "type": "si", "invoice_num": 11, "linked_transaction_id": ""})).status.success());
    s.sync_ok(&s.site1);
    assert!(s.put(&s.site2, "transact", json!({"ID": "CI_C9", "store_ID": "S_C", "name_ID": "N_S_B", "type": "ci", "status": "cn", "invoice_num": 9, "hold": false, "linked_transaction_id": ""})).status.success());
    assert!(s.put(&s.site2, "trans_line", json!({"ID": "CL_C9", "transaction_ID": "CI_C9", "item_ID": "I_PARA", "quantity": 100, "sell_price": 0.05})).status.success());
    assert!(s
        .put(&s.site2, "transact", json!({"ID": "CI_C9", "status": "fn"}))
        .status
        .success());
    s.sync_ok(&s.site2);
    let r1 = s.sync_ok(&s.site1);
    assert_eq!(
        r1["numbered"][0]["number"], 12,
        "next supplier-invoice number at site 1: {r1}"
    );
    let si_id = r1["numbered"][0]["id"].as_str().unwrap().to_string();
    let si = s.has(&s.site1, "transact", &si_id).unwrap();
    assert_eq!(
        (
            si["linked_transaction_id"].as_str(),
            si["store_ID"].as_str(),
            si["status"].as_str()
        ),
        (Some("CI_C9"), Some("S_B"), Some("nw"))
    );
    let line_count: i64 = sql(&s.site1)
        .query_row("SELECT count(*) FROM record WHERE table_name='trans_line' AND json_extract(data,'$.transaction_ID') = ?1", [&si_id], |r| r.get(0))
        .unwrap();
    assert_eq!(line_count, 1, "the supplier invoice arrives with its line");
    assert_eq!(
        s.env.central.get("transact", &si_id).unwrap().unwrap()["invoice_num"],
        12,
        "central holds the numbered invoice"
    );
    s.sync_ok(&s.hub);
    assert_eq!(
        s.has(&s.hub, "transact", &si_id).unwrap()["invoice_num"],
        12,
        "B's collector ends with it"
    );
    s.sync_ok(&s.site2);
    let seen = s.has(&s.site2, "transact", &si_id).unwrap();
    assert_eq!(
        (
            seen["linked_transaction_id"].as_str(),
            seen["invoice_num"].as_i64()
        ),
        (Some("CI_C9"), Some(12)),
        "site 2 sees the link"
    );
    s.all_agree();
}

#[test]
fn requisition_from_site_2_is_answered_and_numbered_by_site_1() {
    // Seed 000, "Transfers" / "Mobile requisitions": store C (site 2) finalises a
    // request requisition to store B (site 1); the central builds the response
    // (serial -1, linked) with its lines; site 1 numbers it and pushes it back;
    // both sites and B's collector end with the numbered, linked pair.
    let s = seed("requisition");
    assert!(s
        .put(&s.site1, "requisition", json!({"ID": "OLD_RESP", "store_ID": "S_B", "type": "response", "serial_number": 6, "linked_requisition_id": ""}))
        .status
        .success());
    s.sync_ok(&s.site1);
    assert!(s.put(&s.site2, "requisition", json!({"ID": "RQ_C", "store_ID": "S_C", "name_ID": "N_S_B", "type": "request", "status": "sg", "serial_number": 3, "linked_requisition_id": ""})).status.success());
    assert!(s.put(&s.site2, "requisition_line", json!({"ID": "RQL_C", "requisition_ID": "RQ_C", "item_ID": "I_PARA", "Cust_stock_order": 250})).status.success());
    s.sync_ok(&s.site2);
    assert!(
        s.sync_ok(&s.site1)["numbered"]
            .as_array()
            .unwrap()
            .is_empty(),
        "not finalised yet"
    );
    assert!(s
        .put(
            &s.site2,
            "requisition",
            json!({"ID": "RQ_C", "status": "fn"})
        )
        .status
        .success());
    s.sync_ok(&s.site2);
    let r1 = s.sync_ok(&s.site1);
    assert_eq!(r1["numbered"][0]["table"], "requisition", "{r1}");
    assert_eq!(
        r1["numbered"][0]["number"], 7,
        "after the store's response 6"
    );
    let resp_id = r1["numbered"][0]["id"].as_str().unwrap().to_string();
    let resp = s.has(&s.site1, "requisition", &resp_id).unwrap();
    assert_eq!(
        (
            resp["linked_requisition_id"].as_str(),
            resp["type"].as_str()
        ),
        (Some("RQ_C"), Some("response"))
    );
    let lines: i64 = sql(&s.site1)
        .query_row("SELECT count(*) FROM record WHERE table_name='requisition_line' AND json_extract(data,'$.requisition_ID') = ?1 AND json_extract(data, '$.Cust_stock_order') = 250", [&resp_id], |r| r.get(0))
        .unwrap();
    assert_eq!(lines, 1, "the response arrives with its line");
    assert_eq!(
        s.env.central.get("requisition", &resp_id).unwrap().unwrap()["serial_number"],
        7
    );
    s.sync_ok(&s.site2);
    assert_eq!(
        s.has(&s.site2, "requisition", &resp_id).unwrap()["serial_number"],
        7,
        "site 2 sees the numbered response"
    );
    s.sync_ok(&s.hub);
    assert_eq!(
        s.has(&s.hub, "requisition", &resp_id).unwrap()["serial_number"],
        7,
        "B's collector too"
    );
    // Pushing the request again creates nothing new; nothing is renumbered.
    assert!(s
        .put(
            &s.site2,
            "requisition",
            json!({"ID": "RQ_C", "comment": "again"})
        )
        .status
        .success());
    s.sync_ok(&s.site2);
    assert!(s.sync_ok(&s.site1)["numbered"]
        .as_array()
        .unwrap()
        .is_empty());
    let responses: i64 = s
        .env
        .central
        .conn()
        .unwrap()
        .query_row("SELECT count(*) FROM record WHERE table_name='requisition' AND json_extract(data,'$.linked_requisition_id')='RQ_C'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(responses, 1);
    s.all_agree();
}

#[test]
fn patients_reach_where_they_are_visible_and_are_edited_only_at_home() {
    let s = seed("patients");
    assert!(s.put(&s.site1, "name", json!({"ID": "PAT1", "type": "patient", "supplying_store_id": "S_B", "name": "Aroha Ngata"})).status.success());
    assert!(s
        .put(
            &s.site1,
            "name_store_join",
            json!({"ID": "NSJ_B", "name_ID": "PAT1", "store_ID": "S_B"})
        )
        .status
        .success());
    s.sync_ok(&s.site1);
    s.sync_ok(&s.hub);
    assert!(
        s.has(&s.hub, "name", "PAT1").is_some(),
        "visible through B's collector copy"
    );
    s.sync_ok(&s.site2);
    assert!(
        s.has(&s.site2, "name", "PAT1").is_none(),
        "not visible at site 2 yet"
    );
    // The central makes the patient visible in store C.
    s.env
        .central
        .put(
            "name_store_join",
            &json!({"ID": "NSJ_C", "name_ID": "PAT1", "store_ID": "S_C"}),
        )
        .unwrap();
    s.sync_ok(&s.site2);
    assert_eq!(
        s.has(&s.site2, "name", "PAT1").unwrap()["name"],
        "Aroha Ngata"
    );
    let out = s.put(
        &s.site2,
        "name",
        json!({"ID": "PAT1", "name": "edited elsewhere"}),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another store"));
    // Edited at home, the change follows.
    assert!(s
        .put(
            &s.site1,
            "name",
            json!({"ID": "PAT1", "name": "Aroha Ngata-Smith"})
        )
        .status
        .success());
    s.sync_ok(&s.site1);
    s.sync_ok(&s.site2);
    assert_eq!(
        s.has(&s.site2, "name", "PAT1").unwrap()["name"],
        "Aroha Ngata-Smith"
    );
    s.all_agree();
}

#[test]
fn moving_a_store_to_another_site() {
    let s = seed("move");
    assert!(s
        .put(
            &s.site1,
            "item_line",
            json!({"ID": "IL_B7", "store_ID": "S_B", "item_ID": "I_PARA", "quantity": 7})
        )
        .status
        .success());
    s.sync_ok(&s.site1);
    // The seed's move: B becomes active on a new site 4; site 1 keeps a transfer copy.
    s.env
        .central
        .add_site("site4", "SITE4", "pw-site4")
        .unwrap();
    s.env.central.move_store("S_B", Some("site4")).unwrap();
    let site4 = s.env.db("site4");
    s.env.init(&site4, "site4");
    s.env.config(&site4, "hardware_id", "HW-site4");
    s.sync_ok(&site4);
    assert_eq!(
        s.has(&site4, "item_line", "IL_B7").unwrap()["quantity"],
        7,
        "new site receives the store's data"
    );
    assert!(s
        .put(
            &site4,
            "item_line",
            json!({"ID": "IL_B8", "store_ID": "S_B", "item_ID": "I_PARA", "quantity": 8})
        )
        .status
        .success());
    // The old site is told, and its edits of B are refused from then on.
    let (code, report, _) = s.env.sync(&s.site1);
    assert_eq!(code, 15, "{report}");
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("store S_B is no longer active on this site"));
    let out = s.put(
        &s.site1,
        "item_line",
        json!({"ID": "IL_B9", "store_ID": "S_B", "item_ID": "I_PARA", "quantity": 9}),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another store"));
    s.sync_ok(&site4);
    assert!(s.env.central.get("item_line", "IL_B8").unwrap().is_some());
}

#[test]
fn replaced_device_and_the_sync_report() {
    let s = seed("device");
    let replacement = s.env.db("site1-new");
    s.env.init(&replacement, "site1");
    s.env.config(&replacement, "hardware_id", "HW-new-pi");
    let (code, _, stderr) = s.env.sync(&replacement);
    assert_eq!(code, 13, "{stderr}");
    assert!(stderr.contains("reset the hardware id"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
        .args([
            "--db",
            s.env.central_db.as_str(),
            "site",
            "reset-hardware-id",
            "site1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = s.sync_ok(&replacement);
    assert_eq!(report["initialised"], true);
    s.env
        .central
        .add_site("silent", "SIL", "pw-silent")
        .unwrap();
    s.env.central.add_site("fresh", "FRS", "pw-fresh").unwrap();
    // "silent" was added five weeks ago and never connected.
    s.env
        .central
        .conn()
        .unwrap()
        .execute(
            "UPDATE site SET added_at = added_at - 35 * 86400 WHERE name = 'silent'",
            [],
        )
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
        .args(["--db", s.env.central_db.as_str(), "report", "--json"])
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |n: &str| {
        rows["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap()
    };
    assert!(row("site1")["last_seen"].as_i64().is_some());
    assert_eq!(row("site1")["silent"], false);
    assert_eq!(row("site1")["stores"], json!(["S_B"]));
    assert_eq!(row("silent")["last_seen"], Value::Null);
    assert_eq!(
        row("silent")["silent"],
        true,
        "never connected in 5 weeks: flagged"
    );
    assert_eq!(row("fresh")["last_seen"], Value::Null);
    assert_eq!(row("fresh")["silent"], false, "added today: not silent yet");
    let twice = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
        .args(["--db", s.env.central_db.as_str()])
        .args(["site", "add", "Fresh", "--password-env", "PW"])
        .env("PW", "pw")
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("a site named fresh already exists"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    assert_eq!(rows["backoffs"], json!([]), "no wrong passwords yet");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
        .args(["--db", s.env.central_db.as_str(), "report"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("site2")
            && text.contains("just now")
            && text.contains("silent for over a month"),
        "{text}"
    );
}
