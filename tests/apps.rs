//! The people around the agent (issue 14): the clinic app's contract, run as the
//! README's two examples against a real store synced with the real central, and
//! the fleet metrics file read by a Prometheus/OpenMetrics parser.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Env;
use serde_json::json;

/// A site synced once: it holds central item I1 and its active store S_KAW.
fn synced_site(env: &Env) -> PathBuf {
    env.site("kaw", "S_KAW");
    env.central
        .put(
            "item",
            &json!({"ID": "I1", "code": "PARA", "item_name": "Paracetamol"}),
        )
        .unwrap();
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let (code, report, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["initialised"], true);
    db
}

/// The examples print the same lines; checks them and returns the stocktake id.
fn check_example(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let count_id = lines[0]
        .strip_prefix("recorded stock count ")
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert_eq!(
        lines[1],
        format!("queued: Stock_take {count_id} Update pending"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("queued: Stock_take_lines ") && lines[2].ends_with(" Update pending"),
        "{text}"
    );
    assert_eq!(
        lines[3],
        "refused: fieldsync: central data is read-only on a remote site; change it on the central server",
        "{text}"
    );
    assert_eq!(lines[4], "view: snapshot 40, counted 38", "{text}");
    assert_eq!(lines[5], "waiting to send: 2", "{text}");
    count_id
}

/// What the central holds of a stocktake after the next sync.
fn delivered(env: &Env, db: &Path, count_id: &str) {
    let (code, report, err) = env.sync(db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["pushed"], 2);
    let row = env.central.get("Stock_take", count_id).unwrap().unwrap();
    assert_eq!(row["store_ID"], "S_KAW");
    assert_eq!(row["Description"], "monthly count");
    let item = env.central.get("item", "I1").unwrap().unwrap();
    assert_eq!(
        item["item_name"], "Paracetamol",
        "the refused edit went nowhere"
    );
}

/// A Python 3 that has the `prometheus_client` parser, if any: the one on PATH,
/// else Debian's (CI installs python3-prometheus-client).
fn python_with(module: &str) -> Option<String> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

#[test]
fn the_python_example_records_a_count_that_the_sync_delivers() {
    let env = Env::new("app-python");
    let db = synced_site(&env);
    // Python is not the Rust toolchain: where it is missing the Rust example
    // below still checks the same contract (CI has python3).
    let Some(python) = python_with("sqlite3") else {
        eprintln!("note: no python3 with sqlite3; the Python example is not run here");
        return;
    };
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/clinic_app.py"
        ))
        .arg(&db)
        .arg("I1")
        .output()
        .unwrap();
    let id = check_example(&out);
    delivered(&env, &db, &id);
}

#[test]
fn the_rust_example_records_a_count_that_the_sync_delivers() {
    let env = Env::new("app-rust");
    let db = synced_site(&env);
    // `cargo test` builds the examples beside the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/clinic_app");
    if !example.exists() {
        // A filtered run (`cargo test --test apps`) does not build examples.
        let built = Command::new(env!("CARGO"))
            .args(["build", "--example", "clinic_app"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success());
    }
    assert!(example.exists(), "{}", example.display());
    let out = Command::new(&example).arg(&db).arg("I1").output().unwrap();
    let id = check_example(&out);
    delivered(&env, &db, &id);
}

/// The metrics file through two parsers written by others: the OpenMetrics one
/// and the Prometheus text one of the `openmetrics-parser` crate, as a map of
/// `name{label=value,…}` (labels sorted) to value; both must agree. Where Python's
/// prometheus_client is installed (CI), its two parsers must read the same.
fn metrics(file: &Path) -> std::collections::HashMap<String, f64> {
    let text = std::fs::read_to_string(file).unwrap();
    let om = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    let mut seen = std::collections::HashMap::new();
    for (name, family) in &om.families {
        assert_eq!(
            family.family_type,
            openmetrics_parser::OpenMetricsType::Gauge,
            "{name}"
        );
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().unwrap();
            let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            let value = match &sample.value {
                openmetrics_parser::OpenMetricsValue::Gauge(n) => n.as_f64(),
                other => panic!("{name}: not a gauge: {other:?}"),
            };
            seen.insert(format!("{name}{{{}}}", l.join(",")), value);
        }
    }
    let prom = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e:?}\n{text}"));
    let samples: usize = prom
        .families
        .values()
        .map(|f| f.iter_samples().count())
        .sum();
    assert_eq!(samples, seen.len(), "both parsers read every sample");
    if let Some(python) = python_with("prometheus_client") {
        assert_eq!(
            python_metrics(&python, file),
            seen,
            "prometheus_client agrees"
        );
    }
    seen
}

/// Parses the metrics file with both of prometheus_client's parsers (the
/// OpenMetrics one and node_exporter's text format) and prints `name{labels} value`.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = open(sys.argv[1]).read()
list(prom(text))
for family in om(text):
    assert family.type == "gauge", family
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value!r}")
"#;

fn python_metrics(python: &str, file: &Path) -> std::collections::HashMap<String, f64> {
    let out = Command::new(python)
        .args(["-c", PARSE])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the parser refused the file: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn fleet_metrics_parse_and_follow_each_sync() {
    let env = Env::new("metrics");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let file = env.dir.join("textfile/fieldsync.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    assert!(!file.exists());
    env.config(&db, "metrics_file", file.to_str().unwrap());
    let (code, _, err) = env.sync(&db);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&file);
    assert_eq!(m["fieldsync_last_attempt_exit_code{}"], 0.0);
    assert_eq!(m["fieldsync_last_attempt_outcome{outcome=ok}"], 1.0);
    assert_eq!(m["fieldsync_attempts_since_success{}"], 0.0);
    assert_eq!(m["fieldsync_outbox_records{}"], 0.0);
    assert_eq!(m["fieldsync_version{site=kaw,version=0.1.0}"], 1.0, "{m:?}");
    assert!(m["fieldsync_last_sync_requests{}"] >= 5.0, "{m:?}");
    assert!(m["fieldsync_last_sync_received_bytes{}"] > 0.0);
    assert!(m.contains_key("fieldsync_last_success_timestamp_seconds{}"));

    // Two local changes, then the central goes away: offline twice.
    for id in ["T1", "T2"] {
        let out = env.agent(
            &db,
            &[
                "put",
                "transact",
                &json!({"ID": id, "store_ID": "S_KAW"}).to_string(),
            ],
        );
        assert!(out.status.success());
    }
    env.config(&db, "central_url", "http://127.0.0.1:9");
    for _ in 0..2 {
        let (code, _, _) = env.sync(&db);
        assert_eq!(code, 10);
    }
    let m = metrics(&file);
    assert_eq!(m["fieldsync_last_attempt_exit_code{}"], 10.0);
    assert_eq!(m["fieldsync_last_attempt_class{class=offline}"], 1.0);
    assert_eq!(m["fieldsync_last_attempt_class{class=transient}"], 0.0);
    assert_eq!(m["fieldsync_last_attempt_outcome{outcome=ok}"], 0.0);
    assert_eq!(m["fieldsync_attempts_since_success{}"], 2.0);
    assert_eq!(m["fieldsync_outbox_records{}"], 2.0);
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["fieldsync.prom"], "no temporary file is left");
}
