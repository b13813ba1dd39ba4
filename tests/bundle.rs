//! Sync by USB stick (issue 14): bundles written by `fieldsync export` and
//! `fieldsync-central export-bundle`, carried as files, applied by the real
//! binaries. The site syncs once over loopback to be initialised (as a device is
//! at the depot), then its link is cut: nothing after that goes over the network.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{sql, Env};
use serde_json::{json, Value};

fn central_cli(env: &Env, args: &[&str], password: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
        .arg("--db")
        .arg(&env.central_db)
        .args(args)
        .env("SITE_PW", password)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An initialised site `name` with store `store`, its link then cut.
fn field_site(env: &Env, name: &str, store: &str) -> PathBuf {
    env.site(name, store);
    let db = env.db(name);
    env.init(&db, name);
    let (code, report, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["initialised"], true);
    env.config(&db, "central_url", "http://127.0.0.1:9");
    db
}

fn put(env: &Env, db: &Path, table: &str, row: Value) {
    let out = env.agent(db, &["put", table, &row.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
}

fn stick(env: &Env, name: &str) -> PathBuf {
    let d = env.dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The one bundle in `dir`.
fn only_bundle(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn export(env: &Env, db: &Path, dir: &Path) -> PathBuf {
    let out = env.agent(db, &["export", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    only_bundle(dir)
}

fn central_import(env: &Env, file: &Path, password: &str) -> Output {
    central_cli(
        env,
        &[
            "import-bundle",
            file.to_str().unwrap(),
            "--password-env",
            "SITE_PW",
        ],
        password,
    )
}

fn central_export(env: &Env, site: &str, dir: &Path) -> PathBuf {
    let out = central_cli(
        env,
        &[
            "export-bundle",
            "--site",
            site,
            "--password-env",
            "SITE_PW",
            dir.to_str().unwrap(),
        ],
        &format!("pw-{site}"),
    );
    assert!(out.status.success(), "{}", text(&out));
    only_bundle(dir)
}

fn outbox(db: &Path) -> Vec<(String, String, String)> {
    sql(db)
        .prepare("SELECT record_id, state, coalesce(reason, '') FROM outbox ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn central_state(env: &Env) -> Vec<(String, String, String)> {
    let c = env.central.conn().unwrap();
    let mut rows: Vec<(String, String, String)> = c
        .prepare("SELECT table_name, record_id, data FROM record ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (what, q) in [
        ("changelog", "SELECT count(*) FROM changelog"),
        ("sync_out", "SELECT count(*) FROM sync_out"),
        ("staging", "SELECT count(*) FROM staging"),
    ] {
        let n: i64 = c.query_row(q, [], |r| r.get(0)).unwrap();
        rows.push((what.into(), String::new(), n.to_string()));
    }
    rows
}

fn agent_records(env: &Env, db: &Path) -> String {
    let out = env.agent(db, &["list"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_round_trip_by_stick_with_no_link() {
    let env = Env::new("stick-trip");
    let db = field_site(&env, "kaw", "S_KAW");
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW", "invoice_num": 1}),
    );
    put(
        &env,
        &db,
        "trans_line",
        json!({"ID": "L1", "transaction_ID": "T1", "quantity": 5}),
    );
    let out_stick = stick(&env, "out");
    let b = export(&env, &db, &out_stick);
    assert!(
        b.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("kaw-to-central-"),
        "{b:?}"
    );
    assert_eq!(
        outbox(&db).len(),
        2,
        "export keeps the outbox until the central confirms"
    );

    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("imported 2 record(s) of site kaw")
            && text(&out).contains("integrated: yes"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.central.get("transact", "T1").unwrap().unwrap()["invoice_num"],
        1
    );
    assert_eq!(
        env.central.get("trans_line", "L1").unwrap().unwrap()["quantity"],
        5
    );

    // Meanwhile the central has news for the site.
    env.central
        .put(
            "item",
            &json!({"ID": "I2", "code": "AMOX", "item_name": "Amoxicillin"}),
        )
        .unwrap();
    let back = stick(&env, "back");
    let c = central_export(&env, "kaw", &back);
    let metrics = env.dir.join("fieldsync.prom");
    env.config(&db, "metrics_file", metrics.to_str().unwrap());
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("1 central record(s)"), "{said}");
    assert!(
        said.contains("2 sent record(s) confirmed by the central, 0 refused"),
        "{said}"
    );
    let item = env.agent(&db, &["get", "item", "I2"]);
    assert!(String::from_utf8_lossy(&item.stdout).contains("Amoxicillin"));
    assert!(outbox(&db).is_empty(), "{:?}", outbox(&db));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("\nfieldsync_outbox_records 0\n"), "{m}");

    let status = env.agent(&db, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["bundle_out"]["records"], 2, "{v}");
    assert_eq!(v["bundle_in"]["records"], 1, "{v}");
    assert_eq!(v["bundle_in"]["confirmed"], 2, "{v}");
    assert_eq!(v["outbox_pending"], 0);
    let human = env.agent(&db, &["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("last bundle written"), "{human}");
    assert!(human.contains("last bundle read"), "{human}");

    // The next central bundle starts where the site now is: nothing new.
    let again = stick(&env, "again");
    let c2 = central_export(&env, "kaw", &again);
    assert!(
        c2.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("-from-central-"),
        "{c2:?}"
    );
    let out = env.agent(&db, &["import-bundle", c2.to_str().unwrap()]);
    assert!(
        text(&out).contains("applied") && text(&out).contains(" 0 central record(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bundle_applied_twice_changes_nothing() {
    let env = Env::new("stick-twice");
    let db = field_site(&env, "kaw", "S_KAW");
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW"}),
    );
    put(
        &env,
        &db,
        "Location",
        json!({"ID": "LOC1", "store_ID": "S_KAW", "code": "A1"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    let once = central_state(&env);
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        central_state(&env),
        once,
        "the central after a second import"
    );

    env.central
        .put("item", &json!({"ID": "I9", "item_name": "Zinc"}))
        .unwrap();
    let c = central_export(&env, "kaw", &stick(&env, "back"));
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let site_once = agent_records(&env, &db);
    let cursor = |db: &Path| -> String { common::state_value(db, "central_cursor").unwrap() };
    let cursor_once = cursor(&db);
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(" 0 central record(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(agent_records(&env, &db), site_once);
    assert_eq!(cursor(&db), cursor_once);
    assert!(outbox(&db).is_empty());
}

#[test]
fn a_bundle_then_the_same_records_over_the_link() {
    let env = Env::new("stick-then-link");
    let db = field_site(&env, "kaw", "S_KAW");
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW", "comment": "by stick"}),
    );
    put(
        &env,
        &db,
        "trans_line",
        json!({"ID": "L1", "transaction_ID": "T1"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    let after_stick = central_state(&env);
    // The link comes back before the courier does: the same records go again.
    env.config(&db, "central_url", &env.url());
    let (code, report, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["pushed"], 2);
    assert_eq!(report["rejected"], 0);
    assert_eq!(
        central_state(&env)
            .into_iter()
            .filter(|(t, _, _)| t == "transact" || t == "trans_line")
            .collect::<Vec<_>>(),
        after_stick
            .into_iter()
            .filter(|(t, _, _)| t == "transact" || t == "trans_line")
            .collect::<Vec<_>>()
    );
    assert!(outbox(&db).is_empty());
    // The courier arrives late: the central's bundle confirms what is gone already.
    let c = central_export(&env, "kaw", &stick(&env, "back"));
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 sent record(s) confirmed"),
        "{}",
        text(&out)
    );
}

#[test]
fn records_the_central_refuses_come_back_set_aside() {
    let env = Env::new("stick-refused");
    let db = field_site(&env, "kaw", "S_KAW");
    env.site("moa", "S_MOA");
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    // While the stick travels, the store moves to another site.
    env.central.move_store("S_KAW", Some("moa")).unwrap();
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 refused")
            && text(&out).contains("refused transact T1: record_not_owned_by_site"),
        "{}",
        text(&out)
    );
    assert!(env.central.get("transact", "T1").unwrap().is_none());
    let c = central_export(&env, "kaw", &stick(&env, "back"));
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(
        text(&out).contains("0 sent record(s) confirmed by the central, 1 refused"),
        "{}",
        text(&out)
    );
    let o = outbox(&db);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].1, "rejected");
    assert!(o[0].2.starts_with("record_not_owned_by_site"), "{o:?}");
}

#[test]
fn a_flipped_byte_or_another_site_s_bundle_changes_nothing() {
    let env = Env::new("stick-bad");
    let kaw = field_site(&env, "kaw", "S_KAW");
    let moa = field_site(&env, "moa", "S_MOA");
    put(
        &env,
        &kaw,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW"}),
    );
    put(
        &env,
        &moa,
        "transact",
        json!({"ID": "M1", "store_ID": "S_MOA"}),
    );
    let b = export(&env, &kaw, &stick(&env, "kaw-out"));
    let before = central_state(&env);

    // A byte flipped on the stick.
    let mut bytes = std::fs::read(&b).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let flipped = env.dir.join("flipped.fsb");
    std::fs::write(&flipped, &bytes).unwrap();
    let out = central_import(&env, &flipped, "pw-kaw");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("fails its check") && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    // The right file with another site's password.
    let out = central_import(&env, &b, "pw-moa");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("that is not site kaw's password"),
        "{}",
        text(&out)
    );
    assert_eq!(central_state(&env), before, "nothing reached the central");

    // Another site's bundle on this device; a bundle meant for the central.
    let moa_bundle = central_export(&env, "moa", &stick(&env, "moa-back"));
    let records_before = agent_records(&env, &kaw);
    let out = env.agent(&kaw, &["import-bundle", moa_bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "is for site \"moa\" (id 3), and this is site kaw (id 2); nothing was changed"
        ),
        "{}",
        text(&out)
    );
    let out = env.agent(&kaw, &["import-bundle", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("is a bundle for the central"),
        "{}",
        text(&out)
    );
    // This site's own bundle from the central, damaged.
    env.central
        .put("item", &json!({"ID": "I3", "item_name": "Iron"}))
        .unwrap();
    let c = central_export(&env, "kaw", &stick(&env, "kaw-back"));
    let mut bytes = std::fs::read(&c).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x80;
    std::fs::write(&c, &bytes).unwrap();
    let out = env.agent(&kaw, &["import-bundle", c.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("fails its check"), "{}", text(&out));
    // Not a bundle at all.
    let junk = env.dir.join("junk.fsb");
    std::fs::write(&junk, b"PK\x03\x04 a zip file").unwrap();
    let out = env.agent(&kaw, &["import-bundle", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("is not a fieldsync bundle"),
        "{}",
        text(&out)
    );
    assert_eq!(agent_records(&env, &kaw), records_before);
    assert_eq!(outbox(&kaw).len(), 1);
}

/// The outbox sequence the site gave its latest version of a record.
fn hardware_id(env: &Env, db: &Path) -> String {
    let out = env.agent(db, &["config", "get", "hardware_id"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_bundle_older_than_a_push_over_the_link_changes_nothing() {
    let env = Env::new("stick-stale");
    let db = field_site(&env, "kaw", "S_KAW");
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW", "comment": "first"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    // Edited after the export; the link comes back and pushes the new version.
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "comment": "second"}),
    );
    env.config(&db, "central_url", &env.url());
    let (code, _, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        env.central.get("transact", "T1").unwrap().unwrap()["comment"],
        "second"
    );
    // The courier arrives late with the first version.
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("imported 0 record(s) of site kaw")
            && text(&out).contains("1 already newer here"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.central.get("transact", "T1").unwrap().unwrap()["comment"],
        "second",
        "the late bundle did not overwrite the newer push"
    );
}

#[test]
fn queue_entries_applied_by_stick_are_acknowledged_by_the_next_bundle() {
    let env = Env::new("stick-acks");
    let db = field_site(&env, "kaw", "S_KAW");
    // Central store data for the site's store goes by queue.
    env.central
        .put(
            "pref",
            &json!({"ID": "PREF1", "store_ID": "S_KAW", "item": "store_preferences", "data": {}}),
        )
        .unwrap();
    let queued = |env: &Env| -> i64 {
        env.central
            .conn()
            .unwrap()
            .query_row("SELECT count(*) FROM sync_out WHERE site_id = 2", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert!(queued(&env) >= 1);
    let c = central_export(&env, "kaw", &stick(&env, "back"));
    let out = env.agent(&db, &["import-bundle", c.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&env.agent(&db, &["get", "pref", "PREF1"]).stdout)
            .contains("store_preferences")
    );
    let applied = queued(&env);
    // The next bundle from the site carries the acknowledgements.
    let b = export(&env, &db, &stick(&env, "out"));
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{applied} queue entr(ies) acknowledged")),
        "{}",
        text(&out)
    );
    assert_eq!(queued(&env), 0, "the site's queue is empty on the central");
    // Once the central confirmed that bundle, the site forgets them.
    let c2 = central_export(&env, "kaw", &stick(&env, "back2"));
    let out = env.agent(&db, &["import-bundle", c2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let left: i64 = common::state(&db)
        .query_row("SELECT count(*) FROM bundle_ack", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn an_import_waits_for_a_sync_under_way_and_keeps_the_site_out_while_it_runs() {
    let env = Env::new("stick-lock");
    let db = field_site(&env, "kaw", "S_KAW");
    let hw = hardware_id(&env, &db);
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T1", "store_ID": "S_KAW"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    // The site's own sync has pushed a batch and not yet sent its final push.
    let r = common::push(
        &env,
        "kaw",
        &hw,
        json!([common::upd(
            "900",
            "transact",
            json!({"ID": "T9", "store_ID": "S_KAW"})
        )]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = central_import(&env, &b, "pw-kaw");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("in the middle of a sync over its link"),
        "{}",
        text(&out)
    );
    assert!(env.central.get("transact", "T1").unwrap().is_none());
    assert!(common::final_push(&env, "kaw", &hw));
    // While an import holds the site (here: a lock as another process leaves
    // it), the site's pushes are told to come back later.
    env.central
        .conn()
        .unwrap()
        .execute(
            "INSERT INTO meta (key, value) VALUES ('bundle_import:2', ?1)",
            [format!(
                "T0K3N:{}",
                fieldsync::field::status::now_unix() + 600
            )],
        )
        .unwrap();
    let r = common::push(
        &env,
        "kaw",
        &hw,
        json!([common::upd(
            "901",
            "transact",
            json!({"ID": "T8", "store_ID": "S_KAW"})
        )]),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "sync_is_running");
    let out = central_import(&env, &b, "pw-kaw");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("another bundle of site kaw is being imported"),
        "{}",
        text(&out)
    );
    env.central
        .conn()
        .unwrap()
        .execute("DELETE FROM meta WHERE key = 'bundle_import:2'", [])
        .unwrap();
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.central.get("transact", "T1").unwrap().is_some());
    let lock: i64 = env
        .central
        .conn()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM meta WHERE key LIKE 'bundle_import:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lock, 0, "the import's lock is released");
}

fn good_body() -> String {
    json!({"queueLength": 2, "data": [common::upd("1", "transact", json!({"ID": "T1", "store_ID": "S_KAW"}))]})
        .to_string()
}

#[test]
fn an_import_that_stops_half_way_can_be_finished() {
    use fieldsync::wire::bundle::{self, Body, Direction, Header, Writer};
    let env = Env::new("stick-half");
    let db = field_site(&env, "kaw", "S_KAW");
    // A bundle whose second body the central cannot read (as a bug in a writer
    // would make it): the first is staged, the import stops.
    let header = Header {
        format: bundle::FORMAT,
        direction: Direction::ToCentral,
        id: [9; 16],
        kdf_rounds: 1_000,
        site_id: 2,
        site_name: "kaw".into(),
        store: "S_KAW".into(),
        first_seq: 1,
        last_seq: 2,
        records: 2,
        cursor: 0,
        max_cursor: 0,
        confirms: None,
        created_by: "test".into(),
        hardware_id: env
            .central
            .conn()
            .unwrap()
            .query_row("SELECT hardware_id FROM site WHERE name = 'kaw'", [], |r| {
                r.get(0)
            })
            .unwrap(),
    };
    let digest = fieldsync::wire::credentials::password_digest("pw-kaw");
    let dir = stick(&env, "bad");
    // Written on another device than the one the site is bound to: refused
    // before anything is staged (issue 27, F10).
    let other = Header {
        hardware_id: "ANOTHER-DEVICE".into(),
        ..header.clone()
    };
    let mut w = Writer::create(&dir.join("other.fsb"), &other, &digest).unwrap();
    w.body(Body::Push, good_body().as_bytes()).unwrap();
    let foreign = w.finish().unwrap();
    let out = central_import(&env, &foreign, "pw-kaw");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("written on device"), "{}", text(&out));
    assert!(env.central.get("transact", "T1").unwrap().is_none());
    let mut w = Writer::create(&dir.join("half.fsb"), &header, &digest).unwrap();
    w.body(Body::Push, good_body().as_bytes()).unwrap();
    w.body(Body::Push, b"{\"queueLength\":1,\"data\":[{\"oops\"")
        .unwrap();
    let half = w.finish().unwrap();
    let out = central_import(&env, &half, "pw-kaw");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("1 body(ies) of it were staged and wait"),
        "{}",
        text(&out)
    );
    assert!(env.central.get("transact", "T1").unwrap().is_none());
    // The site's real bundle goes ahead and finishes both.
    put(
        &env,
        &db,
        "transact",
        json!({"ID": "T2", "store_ID": "S_KAW"}),
    );
    let b = export(&env, &db, &stick(&env, "out"));
    let out = central_import(&env, &b, "pw-kaw");
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.central.get("transact", "T1").unwrap().is_some());
    assert!(env.central.get("transact", "T2").unwrap().is_some());
    let left: i64 = env
        .central
        .conn()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM meta WHERE key LIKE 'bundle_partial:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}
