//! The bench's runs: the release agent binary against the reference central on
//! loopback, through the link emulator (which counts wire bytes), one process per
//! sync as a systemd timer runs it; PouchDB side by side when it is installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::generator::{central_row, site_records, Gen};
use super::report::{plot, report};
use crate::central::{self, Central};
use crate::testkit::linkem::{Linkem, Plan, Shape};

struct Env {
    dir: PathBuf,
    central: Central,
    link: Linkem,
}

fn setup(root: &Path, name: &str, shape: Shape) -> Env {
    setup_with(root, name, shape, |_| {})
}

/// [`setup`] with the central configured before it serves (e.g. gzip bodies off).
fn setup_with(root: &Path, name: &str, shape: Shape, configure: impl FnOnce(&mut Central)) -> Env {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Central::open(&dir.join("central.sqlite")).unwrap();
    configure(&mut c);
    c.add_site("bench", "BENCH", "bench-password").unwrap();
    c.add_store("S_BENCH", "BENCH", "Bench clinic", Some("bench"))
        .unwrap();
    c.add_store("S_HUB", "HUB", "Regional hub", None).unwrap();
    c.set_copy("S_HUB", "bench", "collector").unwrap();
    let addr = central::http::spawn(c.clone(), "127.0.0.1:0").unwrap().addr;
    let link = Linkem::start(addr, shape, Plan::clean()).unwrap();
    Env {
        dir,
        central: c,
        link,
    }
}

struct Run {
    secs: f64,
    report: Value,
    rss_kib: u64,
    cpu_ms: u64,
    write_bytes: u64,
    up: u64,
    down: u64,
    connections: u64,
    exit: i32,
}

fn agent_bin() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("fieldsync")
}

fn agent(env: &Env, args: &[&str]) -> Run {
    let db = env.dir.join("agent.sqlite");
    let up0 = env.link.stats.bytes_up.load(Ordering::Relaxed);
    let down0 = env.link.stats.bytes_down.load(Ordering::Relaxed);
    let c0 = env.link.stats.connections.load(Ordering::Relaxed);
    let t = Instant::now();
    let out = Command::new(agent_bin())
        .arg("--db")
        .arg(&db)
        .arg("-q")
        .args(args)
        .env("FIELDSYNC_PEAK_RSS", "1")
        .env("FIELDSYNC_PW", "bench-password")
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    let num = |k: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // Let the proxy finish counting the last bytes of the exchange.
    std::thread::sleep(Duration::from_millis(50));
    Run {
        secs,
        report: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        rss_kib: num("peak-rss-kib: "),
        cpu_ms: num("cpu-ms: "),
        write_bytes: num("write-bytes: "),
        up: env.link.stats.bytes_up.load(Ordering::Relaxed) - up0,
        down: env.link.stats.bytes_down.load(Ordering::Relaxed) - down0,
        connections: env.link.stats.connections.load(Ordering::Relaxed) - c0,
        exit: out.status.code().unwrap_or(-1),
    }
}

fn init_agent(env: &Env) {
    let url = format!("http://{}", env.link.addr);
    let r = agent(
        env,
        &[
            "init",
            "--url",
            &url,
            "--site",
            "bench",
            "--password-env",
            "FIELDSYNC_PW",
        ],
    );
    assert_eq!(r.exit, 0, "init failed");
}

fn sync(env: &Env) -> Run {
    let r = agent(env, &["sync", "--json"]);
    assert!(r.exit == 0, "sync failed: {}", r.report);
    r
}

fn write_import(path: &Path, rows: &[(&str, Value)]) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut raw = 0u64;
    for (t, r) in rows {
        let text = r.to_string();
        raw += text.len() as u64;
        writeln!(f, "{{\"table\":\"{t}\",\"record\":{text}}}").unwrap();
    }
    raw
}

/// Fills the central with `n` records for the site: half central data (change
/// log), half store data of a store the site collects (queued at initialisation).
/// Returns the raw JSON bytes of the rows.
fn fill_central(env: &Env, g: &mut Gen, n: usize) -> u64 {
    let mut conn = env.central.conn().unwrap();
    let tx = conn.write_transaction().unwrap();
    let mut raw = 0u64;
    for i in 0..n / 2 {
        let (t, row) = central_row(g, i);
        let text = row.to_string();
        raw += text.len() as u64;
        tx.execute(
            "INSERT INTO record (table_name, record_id, data) VALUES (?1, ?2, ?3)",
            crate::central::db::params![t, row["ID"].as_str().unwrap(), text],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO changelog (table_name, record_id, action, data) VALUES (?1, ?2, 'update', ?3)",
            crate::central::db::params![t, row["ID"].as_str().unwrap(), text],
        )
        .unwrap();
    }
    for (t, row) in site_records(g, "S_HUB", n - n / 2) {
        let text = row.to_string();
        raw += text.len() as u64;
        tx.execute(
            "INSERT INTO record (table_name, record_id, data) VALUES (?1, ?2, ?3)",
            crate::central::db::params![t, row["ID"].as_str().unwrap(), text],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    raw
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Size {
    pub records: usize,
    pub push_secs: f64,
    pub push_rps: f64,
    pub push_rss_kib: u64,
    pub push_requests: u64,
    pub push_up_bytes: u64,
    pub push_raw_bytes: u64,
    pub push_write_bytes: u64,
    #[serde(default)]
    pub push_cpu_ms: u64,
    /// `fieldsync import` of the same rows (a process: start-up included).
    #[serde(default)]
    pub import_secs: f64,
    #[serde(default)]
    pub import_rps: f64,
    /// The same rows as plain INSERTs through the store's triggers, one
    /// transaction, a prepared statement: what the import is measured against.
    #[serde(default)]
    pub raw_insert_rps: f64,
    pub pull_secs: f64,
    pub pull_rps: f64,
    pub pull_rss_kib: u64,
    pub pull_requests: u64,
    pub pull_down_bytes: u64,
    pub pull_raw_bytes: u64,
    pub pull_write_bytes: u64,
    #[serde(default)]
    pub pull_cpu_ms: u64,
}

fn measure_size(root: &Path, n: usize, seed: u64) -> Size {
    let mut g = Gen(seed ^ n as u64);
    let mut s = Size {
        records: n,
        ..Default::default()
    };
    // Push: an initialised site with n local changes.
    let env = setup(root, &format!("push-{n}"), Shape::LOOPBACK);
    init_agent(&env);
    sync(&env);
    let rows = site_records(&mut g, "S_BENCH", n);
    let file = env.dir.join("records.jsonl");
    s.push_raw_bytes = write_import(&file, &rows);
    // The raw INSERT rate through the same triggers, on a copy of the same store.
    let copy = env.dir.join("raw-insert.sqlite");
    {
        let c = rusqlite::Connection::open(env.dir.join("agent.sqlite")).unwrap();
        c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
    }
    s.raw_insert_rps = raw_inserts(&copy, &rows);
    let imp = agent(&env, &["import", file.to_str().unwrap()]);
    assert_eq!(imp.exit, 0);
    s.import_secs = imp.secs;
    s.import_rps = n as f64 / imp.secs;
    let r = sync(&env);
    assert_eq!(r.report["pushed"].as_u64(), Some(n as u64), "{}", r.report);
    s.push_secs = r.secs;
    s.push_rps = n as f64 / r.secs;
    s.push_rss_kib = r.rss_kib;
    s.push_requests = r.report["requests"].as_u64().unwrap_or(0);
    s.push_up_bytes = r.up;
    s.push_write_bytes = r.write_bytes;
    s.push_cpu_ms = r.cpu_ms;
    drop(env);
    // Pull: a new site's first sync with n records waiting on the central.
    let env = setup(root, &format!("pull-{n}"), Shape::LOOPBACK);
    s.pull_raw_bytes = fill_central(&env, &mut g, n);
    init_agent(&env);
    let r = sync(&env);
    let pulled = r.report["pulled_central"].as_u64().unwrap_or(0)
        + r.report["pulled_queue"].as_u64().unwrap_or(0);
    assert!(pulled >= n as u64, "pulled {pulled} of {n}: {}", r.report);
    s.pull_secs = r.secs;
    s.pull_rps = n as f64 / r.secs;
    s.pull_rss_kib = r.rss_kib;
    s.pull_requests = r.report["requests"].as_u64().unwrap_or(0);
    s.pull_down_bytes = r.down;
    s.pull_write_bytes = r.write_bytes;
    s.pull_cpu_ms = r.cpu_ms;
    s
}

/// Issue 30's figure: `n` records the site pushed, compared with the central
/// when identical and after the central lost one, by `fieldsync verify`
/// (requests and bytes as the agent and the link emulator count them).
pub fn compare_leg(root: &Path, n: usize, seed: u64) -> Value {
    let mut g = Gen(seed ^ n as u64);
    let env = setup(root, &format!("compare-{n}"), Shape::LOOPBACK);
    init_agent(&env);
    sync(&env);
    let rows = site_records(&mut g, "S_BENCH", n);
    let file = env.dir.join("records.jsonl");
    write_import(&file, &rows);
    assert_eq!(agent(&env, &["import", file.to_str().unwrap()]).exit, 0);
    sync(&env);
    let verify = |what: &str| {
        let cpu0 = super::fleet::cpu();
        let r = agent(&env, &["verify", "--json"]);
        let central_ms = (super::fleet::cpu() - cpu0).as_millis() as u64;
        assert_eq!(r.exit, 0, "verify ({what}) failed: {}", r.report);
        let c = &r.report["compared"];
        json!({"records": c["records"], "requests": c["requests"], "bytes": c["bytes"],
               "wire_bytes": r.up + r.down, "differences": c["differences"],
               "queued": c["queued"], "secs": r.secs, "cpu_ms": r.cpu_ms, "rss_kib": r.rss_kib,
               "central_cpu_ms": central_ms})
    };
    let same = verify("identical");
    let (table, id) = (
        rows[n / 2].0,
        rows[n / 2].1["ID"].as_str().unwrap_or("").to_string(),
    );
    let lost = env
        .central
        .conn()
        .unwrap()
        .execute(
            "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
            [table, id.as_str()],
        )
        .unwrap();
    assert_eq!(lost, 1);
    let one_lost = verify("one lost");
    json!({"records": n, "identical": same, "one_lost": one_lost})
}

/// `fieldsync-bench --size N`: one push and one pull of `n` records
/// ([`measure_size`]), printed as JSON; nothing is merged into the results.
pub fn size_only(n: usize) {
    let root = std::env::temp_dir().join(format!("fieldsync-bench-{}", std::process::id()));
    let s = measure_size(&root, n, 20261122);
    let _ = std::fs::remove_dir_all(&root);
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
}

/// `fieldsync-bench --compare N`: only [`compare_leg`], merged into DIR's
/// results and report.
pub fn compare_only(out_dir: &Path, n: usize) {
    let root = std::env::temp_dir().join(format!("fieldsync-bench-{}", std::process::id()));
    eprintln!("bench: compare, {n} records");
    let leg = compare_leg(&root, n, 20261122);
    let _ = std::fs::remove_dir_all(&root);
    let path = out_dir.join("results.json");
    let mut results: BTreeMap<String, Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&leg).unwrap());
    results.insert("compare".into(), leg);
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    if results.contains_key("sizes") {
        run(out_dir, true);
    }
}

/// `fieldsync-bench --fleet N[,N…]`: only the fleet bench (issue 31), at each
/// size, merged into DIR's results and report. The backlog is 100 records per
/// site, at most 100,000.
/// `postgres`: a base URL; the central runs on a new database there, and the
/// runs are kept under `fleet_postgres` beside the SQLite ones.
pub fn fleet_only(out_dir: &Path, sizes: &[usize], postgres: Option<&str>) {
    let root = std::env::temp_dir().join(format!("fieldsync-bench-{}", std::process::id()));
    let mut runs = Vec::new();
    for &n in sizes {
        let leg = super::fleet::run(&root, n, (n * 100).min(100_000), 20261122, postgres);
        println!("{}", serde_json::to_string_pretty(&leg).unwrap());
        runs.push(leg);
        let _ = std::fs::remove_dir_all(root.join(format!("fleet-{n}")));
    }
    let _ = std::fs::remove_dir_all(&root);
    let path = out_dir.join("results.json");
    let mut results: BTreeMap<String, Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let key = if postgres.is_some() {
        "fleet_postgres"
    } else {
        "fleet"
    };
    results.insert(key.into(), json!(runs));
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    if results.contains_key("sizes") {
        run(out_dir, true);
    }
}

/// Rows per second of plain INSERTs into `record` through the store's triggers
/// (ownership and change capture), one transaction, one prepared statement.
fn raw_inserts(db: &Path, rows: &[(&str, Value)]) -> f64 {
    let mut c = rusqlite::Connection::open(db).unwrap();
    // The store's own settings (VACUUM INTO leaves a rollback-journal file):
    // WAL, and a commit on the card before it returns.
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    let texts: Vec<(&str, String, String)> = rows
        .iter()
        .map(|(t, r)| {
            (
                *t,
                r["ID"].as_str().unwrap_or("").to_string(),
                r.to_string(),
            )
        })
        .collect();
    let t = Instant::now();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO record (table_name, record_id, data) VALUES (?1, ?2, ?3)")
            .unwrap();
        for (table, id, text) in &texts {
            st.execute(rusqlite::params![table, id, text]).unwrap();
        }
    }
    tx.commit().unwrap();
    rows.len() as f64 / t.elapsed().as_secs_f64()
}

/// Push bodies' gzip ratio over the legacy-shaped corpus (`tests/corpus`), as the
/// agent compresses them (flate2's default level).
fn corpus_ratio() -> f64 {
    let body: String = include_str!("../../../tests/corpus/rows.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            json!({"syncOutId": i.to_string(), "tableName": v["table"], "recordId": v["record"]["ID"],
                   "action": "Update", "recordData": v["record"]})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    let body = format!("{{\"queueLength\":74,\"data\":[{body}]}}");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body.as_bytes()).unwrap();
    enc.finish().unwrap().len() as f64 / body.len() as f64
}

/// One push of `n` generated records over emulated 2G, against a central that
/// takes gzip bodies or not; returns the figures and the physical limit of the
/// bytes that actually crossed the link.
fn two_g_leg(root: &Path, n: usize, seed: u64, gzip_bodies: bool) -> Value {
    let env = setup_with(root, &format!("2g-{gzip_bodies}"), Shape::LOOPBACK, |c| {
        c.gzip_requests = gzip_bodies;
    });
    init_agent(&env);
    sync(&env);
    let rows = site_records(&mut Gen(seed ^ 2), "S_BENCH", n);
    let file = env.dir.join("records.jsonl");
    let raw = write_import(&file, &rows);
    assert_eq!(agent(&env, &["import", file.to_str().unwrap()]).exit, 0);
    env.link.set_shape(Shape::two_g());
    let r = sync(&env);
    let rtt = 0.6;
    let requests = r.report["requests"].as_u64().unwrap_or(0);
    // Each request costs a round trip, each new connection one more (handshake).
    let limit =
        r.up as f64 / 32_000.0 + r.down as f64 / 32_000.0 + (requests + r.connections) as f64 * rtt;
    json!({"records": n, "secs": r.secs, "limit_secs": limit, "ratio": r.secs / limit,
           "up_bytes": r.up, "down_bytes": r.down, "raw_bytes": raw, "requests": requests,
           "connections": r.connections, "cpu_ms": r.cpu_ms})
}

/// Runs the whole bench and writes `report.md`, `results.json` and `plot.svg` into
/// `out_dir`; with `from_results`, only rewrites the report and plot from
/// `out_dir/results.json`.
pub fn run(out_dir: &Path, from_results: bool) {
    if from_results {
        let results: BTreeMap<String, Value> = serde_json::from_slice(
            &std::fs::read(out_dir.join("results.json")).expect("results.json"),
        )
        .expect("json");
        let sizes: Vec<Size> = serde_json::from_value(results["sizes"].clone()).expect("sizes");
        std::fs::write(out_dir.join("report.md"), report(&sizes, &results)).unwrap();
        std::fs::write(out_dir.join("plot.svg"), plot(&sizes, &results)).unwrap();
        return;
    }
    let root = std::env::temp_dir().join(format!("fieldsync-bench-{}", std::process::id()));
    let seed = 20261122u64;
    let sizes: Vec<usize> = std::env::var("FIELDSYNC_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let mut results = BTreeMap::<String, Value>::new();

    let mut per_size = Vec::new();
    for &n in &sizes {
        eprintln!("bench: {n} records");
        per_size.push(measure_size(&root, n, seed));
    }

    // Wire bytes on pull, with and without gzip, against the raw JSON of the rows.
    eprintln!("bench: wire bytes (gzip on/off)");
    let mut wire = BTreeMap::new();
    for gzip in [true, false] {
        let mut env = setup(&root, &format!("wire-{gzip}"), Shape::LOOPBACK);
        env.central.gzip = gzip;
        // Re-serve with the setting (the spawned server holds its own clone).
        let addr = central::http::spawn(env.central.clone(), "127.0.0.1:0")
            .unwrap()
            .addr;
        env.link = Linkem::start(addr, Shape::LOOPBACK, Plan::clean()).unwrap();
        let raw = fill_central(&env, &mut Gen(seed), 10_000);
        init_agent(&env);
        let r = sync(&env);
        wire.insert(
            if gzip { "gzip" } else { "plain" },
            (r.down as f64 / raw as f64, r.down, raw),
        );
        if gzip {
            // Idle sync right after: nothing to do.
            let idle = sync(&env);
            results.insert(
                "idle".into(),
                json!({"requests": idle.report["requests"], "bytes": idle.up + idle.down, "cpu_ms": idle.cpu_ms,
                       "secs": idle.secs, "write_bytes": idle.write_bytes, "rss_kib": idle.rss_kib}),
            );
        }
    }

    // Cold start: process start to the first byte at the central's door.
    eprintln!("bench: cold start");
    let mut cold = Vec::new();
    for i in 0..5 {
        let env = setup(&root, &format!("cold-{i}"), Shape::LOOPBACK);
        init_agent(&env);
        *env.link.stats.first_connection.lock().unwrap() = None;
        let t = Instant::now();
        let _ = agent(&env, &["sync", "--json"]);
        let first = env
            .link
            .stats
            .first_connection
            .lock()
            .unwrap()
            .map(|f| f.duration_since(t).as_secs_f64() * 1000.0);
        cold.push(first.unwrap_or(f64::NAN));
    }
    cold.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // 10,000 records pushed over an emulated 2G link vs the link's physical
    // limit: with gzip bodies (§9.1), and plain as before, in the same run.
    eprintln!("bench: 2G link, compressed and plain pushes (takes several minutes)");
    let two_g_n: usize = std::env::var("FIELDSYNC_BENCH_2G")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let two_g = two_g_leg(&root, two_g_n, seed, true);
    let two_g_plain = two_g_leg(&root, two_g_n, seed, false);

    // PouchDB side by side, when bench/run.sh could install it.
    let pouch: Vec<Value> = std::env::var("FIELDSYNC_POUCH_DIR")
        .ok()
        .map(|d| {
            sizes
                .iter()
                .filter(|n| [10_000, 100_000].contains(*n))
                .filter_map(|&n| {
                    eprintln!("bench: PouchDB side by side, {n} records");
                    pouchdb(&root, Path::new(&d), seed, n)
                })
                .collect()
        })
        .unwrap_or_default();

    results.insert("sizes".into(), serde_json::to_value(&per_size).unwrap());
    results.insert(
        "wire".into(),
        json!({"gzip": wire["gzip"].0, "plain": wire["plain"].0,
        "gzip_bytes": wire["gzip"].1, "plain_bytes": wire["plain"].1, "raw_bytes": wire["gzip"].2}),
    );
    results.insert(
        "cold_start_ms".into(),
        json!({"median": cold[cold.len() / 2], "all": cold}),
    );
    results.insert("two_g".into(), two_g);
    results.insert("two_g_plain".into(), two_g_plain);
    results.insert("corpus_gzip_ratio".into(), json!(corpus_ratio()));
    eprintln!("bench: compare with the central, 100,000 records");
    results.insert("compare".into(), compare_leg(&root, 100_000, seed));
    if !pouch.is_empty() {
        results.insert("pouchdb".into(), json!(pouch));
    }
    // The fleet bench runs apart (`--fleet`, minutes per size): its last
    // figures stay in the results until it runs again.
    if let Some(fleet) = std::fs::read(out_dir.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, Value>>(&b).ok())
        .and_then(|mut old| old.remove("fleet"))
    {
        results.entry("fleet".into()).or_insert(fleet);
    }
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    std::fs::write(out_dir.join("report.md"), report(&per_size, &results)).unwrap();
    std::fs::write(out_dir.join("plot.svg"), plot(&per_size, &results)).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "bench: wrote {}/report.md, results.json, plot.svg",
        out_dir.display()
    );
}

/// PouchDB 9 with the same `n` generated records as fieldsync's push: written
/// locally with `bulkDocs`, replicated to pouchdb-server 4 on loopback through the
/// link emulator (for wire bytes), and pulled into a fresh local database.
fn pouchdb(root: &Path, dir: &Path, seed: u64, n: usize) -> Option<Value> {
    let work = root.join(format!("pouchdb-{n}"));
    std::fs::create_dir_all(&work).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut server = Command::new("node")
        .arg(dir.join("node_modules/pouchdb-server/bin/pouchdb-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(work.join("srv"))
        // pouchdb-server writes log.txt and config.json into its working directory.
        .current_dir(&work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let link = Linkem::start(addr, Shape::LOOPBACK, Plan::clean()).ok()?;
    // The same records and generator as fieldsync's 10,000-record push.
    let rows = site_records(&mut Gen(seed ^ n as u64), "S_BENCH", n);
    let file = work.join("records.jsonl");
    write_import(&file, &rows);
    let out = Command::new("node")
        .arg(dir.join("replicate.js"))
        .arg(&file)
        .arg(format!("http://{}/site", link.addr))
        .current_dir(dir)
        .output()
        .ok();
    std::thread::sleep(Duration::from_millis(100));
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    if !out.status.success() {
        eprintln!(
            "bench: PouchDB run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let mut v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let wire =
        link.stats.bytes_up.load(Ordering::Relaxed) + link.stats.bytes_down.load(Ordering::Relaxed);
    v["wire_bytes"] = json!(wire);
    Some(v)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores, {}", std::env::consts::ARCH)
}
