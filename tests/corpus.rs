//! The realistic record corpus (issue 21, item 9; `tests/corpus/`): one row or
//! more of every legacy table with the full field list the legacy central writes —
//! nulls, nested objects, floats such as 5.0, `0000-00-00` dates, empty strings,
//! non-ASCII names — through the real agent and central and through a second
//! site's collector copy, compared value by value (key order may change, values
//! may not).
//!
//! Who writes what follows the data types: central and central store rows are
//! the central's (administration), everything a site edits is written on site A
//! with `fieldsync import` and pushed. Site A then holds the central's rows, the
//! central holds A's, and site B (a collector of store A) holds what a collector
//! receives.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::{sql, Env};
use fieldsync::legacy::columns;
use fieldsync::legacy::registry::{self, Kind};
use serde_json::{json, Value};

fn corpus() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/rows.jsonl"
    ))
    .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["table"].as_str().unwrap().to_string(),
                v["record"].clone(),
            )
        })
        .collect()
}

/// Whether the central writes this row (central and central store data, and a
/// `name_store_join` that is not a patient's).
fn central_writes(table: &str, row: &Value, patients: &[String]) -> bool {
    match registry::row_kind(table, row) {
        Kind::Central | Kind::CentralStore => true,
        Kind::NameStoreJoin => {
            !patients.contains(&row["name_ID"].as_str().unwrap_or("").to_string())
        }
        _ => false,
    }
}

fn site_rows(db: &std::path::Path) -> BTreeMap<(String, String), Value> {
    let c = sql(db);
    let mut stmt = c
        .prepare("SELECT table_name, record_id, data FROM record")
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| {
            let (k, d) = r.unwrap();
            (k, serde_json::from_str(&d).unwrap())
        })
        .collect()
}

/// `legacy` is `v` in §3's form: a `null` key or text as `""`, a date-time as
/// its date, a time of day as seconds.
fn is_legacy_form(v: &Value, legacy: &Value) -> bool {
    match (v, legacy) {
        (Value::Null, _) => true,
        (Value::String(s), Value::String(d)) => s.starts_with(d.as_str()) && d.len() == 10,
        (Value::String(s), Value::Number(_)) => s.contains(':'),
        _ => false,
    }
}

#[test]
fn every_table_travels_with_every_value_intact() {
    let rows = corpus();
    let tables: std::collections::BTreeSet<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    for t in registry::tables().filter(|t| t.kind != Kind::Local) {
        assert!(tables.contains(t.name), "the corpus has no {} row", t.name);
    }
    let env = Env::new("corpus");
    env.central.add_site("a", "A", "pw-a").unwrap();
    env.central.add_site("b", "B", "pw-b").unwrap();
    env.central
        .add_store("S_HUB", "HUB", "Hub", Some("b"))
        .unwrap();
    let patients: Vec<String> = rows
        .iter()
        .filter(|(t, r)| t == "name" && r["type"] == "patient")
        .map(|(_, r)| r["ID"].as_str().unwrap().to_string())
        .collect();
    // The central's rows, in rank order; the store rows active where the test wants them.
    let mut central_rows: Vec<&(String, Value)> = rows
        .iter()
        .filter(|(t, r)| central_writes(t, r, &patients))
        .collect();
    central_rows.sort_by_key(|(t, _)| registry::order(t));
    for (t, r) in &central_rows {
        let mut r = r.clone();
        if t == "store" && r["ID"] == "S_CORPUS_A" {
            r["sync_id_remote_site"] = json!(2);
        }
        if t == "store" && r["ID"] == "S_CORPUS_B" {
            r["sync_id_remote_site"] = json!(1);
        }
        env.central.put(t, &r).unwrap();
    }
    env.central
        .set_copy("S_CORPUS_A", "b", "collector")
        .unwrap();
    let (a, b) = (env.db("a"), env.db("b"));
    env.init(&a, "a");
    env.init(&b, "b");
    env.config(&b, "hardware_id", "HW-B");
    let (code, _, stderr) = env.sync(&a);
    assert_eq!(code, 0, "{stderr}");
    // Site A writes its own rows, as the clinic's app would, in rank order.
    let mut own: Vec<&(String, Value)> = rows
        .iter()
        .filter(|(t, r)| !central_writes(t, r, &patients))
        .collect();
    own.sort_by_key(|(t, _)| registry::order(t));
    let file = env.dir.join("own.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for (t, r) in &own {
        writeln!(f, "{}", json!({"table": t, "record": r})).unwrap();
    }
    drop(f);
    let out = env.agent(&a, &["import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, report, stderr) = env.sync(&a);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        report["pushed"].as_u64().unwrap() as usize,
        own.len(),
        "{report}"
    );
    let (code, _, stderr) = env.sync(&b);
    assert_eq!(code, 0, "{stderr}");

    let at_a = site_rows(&a);
    let at_b = site_rows(&b);
    let mut checked = 0;
    for (t, r) in &rows {
        let id = r["ID"].as_str().unwrap().to_string();
        let key = (t.clone(), id.clone());
        let mut want = r.clone();
        if t == "store" {
            want["sync_id_remote_site"] = json!(if id == "S_CORPUS_A" { 2 } else { 1 });
        }
        // The central holds everything, value by value.
        let central = env
            .central
            .get(t, &id)
            .unwrap()
            .unwrap_or_else(|| panic!("central lacks {t} {id}"));
        assert_eq!(central, want, "central's {t} {id}");
        // What the central sends: the row whole and in legacy formats (§10.2,
        // §10.3): every value as written, the columns nobody set at their defaults.
        let mut sent = want.clone();
        columns::outgoing(t, &mut sent);
        for (k, v) in want.as_object().unwrap() {
            let legacy = &sent[k];
            assert!(
                legacy == v || is_legacy_form(v, legacy),
                "{t}.{k}: {v} went out as {legacy}"
            );
        }
        let a_wrote = !central_writes(t, r, &patients);
        // Site A holds everything but another store's record (§6: a store row goes to
        // its active site and its copy sites): its own rows as written, the central's as sent.
        if t == "store" && id != "S_CORPUS_A" {
            assert_eq!(at_a.get(&key), None, "site A's {t} {id}");
        } else if a_wrote {
            assert_eq!(at_a.get(&key), Some(&want), "site A's {t} {id}");
        } else {
            assert_eq!(at_a.get(&key), Some(&sent), "site A's {t} {id}");
        }
        // Site B holds what a collector of store A receives.
        let kind = registry::row_kind(t, r);
        // Site B's active store is not a dispensary: no dispensary-only data (§9.7).
        let b_should = match kind {
            Kind::Central => !registry::DISPENSARY_ONLY.contains(&t.as_str()),
            // Of the store records, only the one it collects (S_CORPUS_B is the central's).
            Kind::CentralStore => t == "store" && id == "S_CORPUS_A",
            _ => true,
        };
        if b_should {
            assert_eq!(at_b.get(&key), Some(&sent), "site B's {t} {id}");
        }
        checked += 1;
    }
    eprintln!(
        "corpus: {checked} rows of {} tables compared on the central and two sites",
        tables.len()
    );
    // Issue 30: the comparison agrees — both sites hold, digest for digest,
    // what the central says they should, every table's canonical form included.
    for db in [&a, &b] {
        let out = env.agent(db, &["verify", "--json"]);
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
            "{}: {}",
            db.display(),
            v["compared"]
        );
    }
}
