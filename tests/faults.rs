//! Proven under faults (issues 7, 17): an agent and the reference central
//! exchanging records in both directions through the link emulator with random
//! faults; agents killed with SIGKILL at every named step of the cycle (aimed:
//! `testkit::crash`, whatever the machine's speed) and at random moments;
//! afterwards a few clean syncs converge to exactly the same records on both sides.
//!
//! CI runs a seeded slice. The long version:
//!   FIELDSYNC_LONG=1 cargo test --release --test faults -- --nocapture
//! FIELDSYNC_SEED=N replays a run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{drain, final_push, init_and_drain, push, sql, upd, Env};
use fieldsync::testkit::linkem::{Linkem, Plan, Shape};
use serde_json::{json, Value};

fn long() -> bool {
    std::env::var_os("FIELDSYNC_LONG").is_some()
}

fn seed() -> u64 {
    std::env::var("FIELDSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122)
}

/// xorshift for the test's own choices (edits, kill times).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn is_initialised(db: &Path) -> bool {
    common::state_value(db, "init_state").as_deref() == Some("initialised")
}

/// Exit codes a sync may end with under faults; anything else (a panic's 101, a
/// signal) is a bug.
const ACCEPTABLE: &[i32] = &[0, 10, 11, 15, 17];

fn rows_of(c: &rusqlite::Connection, t: &str) -> BTreeMap<String, Value> {
    let mut stmt = c
        .prepare("SELECT record_id, data FROM record WHERE table_name = ?1")
        .unwrap();
    stmt.query_map([t], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (id, d) = r.unwrap();
        (id, serde_json::from_str(&d).unwrap())
    })
    .collect()
}

fn table(db: &Path, t: &str) -> BTreeMap<String, Value> {
    rows_of(&sql(db), t)
}

fn central_table(env: &Env, t: &str) -> BTreeMap<String, Value> {
    let c = env.central.conn().unwrap();
    let mut stmt = c
        .prepare("SELECT record_id, data FROM record WHERE table_name = ?1")
        .unwrap();
    stmt.query_map([t], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (id, d) = r.unwrap();
        (id, serde_json::from_str(&d).unwrap())
    })
    .collect()
}

/// The central's rows of `t` as it sends them: whole, in legacy formats (§10.2).
fn sent_table(env: &Env, t: &str) -> BTreeMap<String, Value> {
    let mut rows = central_table(env, t);
    for row in rows.values_mut() {
        fieldsync::legacy::columns::outgoing(t, row);
    }
    rows
}

/// Clean syncs until the outbox is empty and a sync is ok; then both sides hold
/// exactly the same records, nothing is left in flight, and the file is sound.
fn assert_converged(env: &Env, db: &Path, expected_local: &BTreeMap<String, Value>) {
    let mut last = String::new();
    for _ in 0..6 {
        let (code, report, stderr) = env.sync(db);
        last = format!("{code} {report} {stderr}");
        if code == 0
            && report["outbox_left"] == 0
            && report["pushed"] == 0
            && report["pulled_queue"] == 0
        {
            break;
        }
    }
    let c = sql(db);
    let outbox: i64 = c
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    let buffer: i64 = common::state(db)
        .query_row("SELECT count(*) FROM buffer", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (outbox, buffer),
        (0, 0),
        "nothing left in flight; last sync: {last}"
    );
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // Pushed: every local record is on the central, identical; none lost, none extra.
    let local = table(db, "item_line");
    assert_eq!(
        &local, expected_local,
        "local store holds exactly what was written"
    );
    assert_eq!(
        central_table(env, "item_line"),
        local,
        "central holds exactly the site's records"
    );
    // Pulled: central data and central store data arrived, each exactly once.
    assert_eq!(table(db, "item"), sent_table(env, "item"));
    let central_prefs: BTreeMap<_, _> = sent_table(env, "pref");
    assert_eq!(table(db, "pref"), central_prefs);
    let queued: i64 = env
        .central
        .conn()
        .unwrap()
        .query_row("SELECT count(*) FROM sync_out", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0, "every queued record acknowledged");
}

fn put_local(env: &Env, db: &Path, rows: &[Value]) {
    let file = env.dir.join("batch.jsonl");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let out = env.agent(
        db,
        &["import", file.to_str().unwrap(), "--table", "item_line"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn random_link_faults_then_convergence() {
    let rounds = if long() { 500 } else { 60 };
    let mut rng = Rng(seed());
    let env = Env::new("converge");
    env.site("kaw", "S_KAW");
    let link = Linkem::start(env.addr, Shape::LOOPBACK, Plan::clean()).unwrap();
    let db = env.db("kaw");
    let out = common::agent_env(
        &db,
        &[
            "init",
            "--url",
            &format!("http://{}", link.addr),
            "--site",
            "kaw",
            "--password-env",
            "P",
        ],
        &[("P", "pw-kaw")],
    );
    assert!(out.status.success());
    env.config(&db, "retry_base_ms", "5");
    env.config(&db, "init_poll_secs", "1");
    env.config(&db, "batch_records", "50");
    for i in 0..300 {
        env.central
            .put(
                "item",
                &json!({"ID": format!("I{i}"), "item_name": format!("item {i}")}),
            )
            .unwrap();
    }
    link.set_plan(Plan {
        seed: seed(),
        fault_rate: 0.5,
        scripted: Default::default(),
    });
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut next = 0u64;
    let mut codes: BTreeMap<i32, u32> = BTreeMap::new();
    for round in 0..rounds {
        // Central side: new and changed central data and central store data.
        for _ in 0..rng.below(20) {
            let i = rng.below(400);
            env.central
                .put(
                    "item",
                    &json!({"ID": format!("I{i}"), "item_name": format!("item {i} r{round}")}),
                )
                .unwrap();
        }
        for _ in 0..rng.below(15) {
            let i = rng.below(200);
            env.central
                .put(
                    "pref",
                    &json!({"ID": format!("P{i}"), "store_ID": "S_KAW", "v": round}),
                )
                .unwrap();
        }
        // Local side, once initialised: new records and edits of earlier ones.
        let initialised = is_initialised(&db);
        if initialised {
            let mut rows = Vec::new();
            for _ in 0..(20 + rng.below(60)) {
                let id = if next > 0 && rng.below(4) == 0 {
                    format!("IL{}", rng.below(next))
                } else {
                    next += 1;
                    format!("IL{}", next - 1)
                };
                let row = json!({"ID": id, "store_ID": "S_KAW", "item_ID": format!("I{}", rng.below(300)), "quantity": rng.below(1000), "round": round});
                let merged = match expected.get(&id) {
                    Some(Value::Object(old)) => {
                        let mut m = old.clone();
                        for (k, v) in row.as_object().unwrap() {
                            m.insert(k.clone(), v.clone());
                        }
                        Value::Object(m)
                    }
                    _ => row.clone(),
                };
                expected.insert(id, merged);
                rows.push(row);
            }
            put_local(&env, &db, &rows);
        }
        let (code, _, stderr) = env.sync(&db);
        assert!(
            ACCEPTABLE.contains(&code),
            "round {round}: exit {code}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        *codes.entry(code).or_default() += 1;
    }
    let faults = link.faults();
    link.set_plan(Plan::clean());
    assert_converged(&env, &db, &expected);
    eprintln!(
        "convergence: seed {}, {rounds} rounds, {faults} faults injected over {} connections, {} local records, {} items, exit codes {codes:?}; lost 0, duplicated 0",
        seed(),
        link.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        expected.len(),
        central_table(&env, "item").len()
    );
    assert!(
        faults >= if long() { 300 } else { 30 },
        "too few faults to mean anything: {faults}"
    );
}

#[test]
fn sigkill_at_random_points_then_convergence() {
    let kills = if long() { 300 } else { 30 };
    let mut rng = Rng(seed() ^ 0x5eed);
    let env = Env::new("crash");
    env.site("kaw", "S_KAW");
    for i in 0..1500 {
        env.central
            .put(
                "item",
                &json!({"ID": format!("I{i}"), "item_name": format!("item {i}")}),
            )
            .unwrap();
    }
    for i in 0..1500 {
        env.central
            .put("pref", &json!({"ID": format!("P{i}"), "store_ID": "S_KAW"}))
            .unwrap();
    }
    let db = env.db("kaw");
    env.init(&db, "kaw");
    env.config(&db, "batch_records", "200");
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut next = 0u64;
    let mut killed = 0;
    for k in 0..kills {
        let initialised = is_initialised(&db);
        if initialised {
            let rows: Vec<Value> = (0..(200 + rng.below(800)))
                .map(|_| {
                    next += 1;
                    let row = json!({"ID": format!("IL{}", next - 1), "store_ID": "S_KAW", "item_ID": "I1", "quantity": k});
                    expected.insert(format!("IL{}", next - 1), row.clone());
                    row
                })
                .collect();
            put_local(&env, &db, &rows);
            for _ in 0..rng.below(30) {
                let i = rng.below(2000);
                env.central
                    .put(
                        "item",
                        &json!({"ID": format!("I{i}"), "item_name": format!("kill {k}")}),
                    )
                    .unwrap();
            }
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
            .args(["--db", db.to_str().unwrap(), "sync"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // One run in four finishes, so the site gets through initialisation and
        // pushes; the others die somewhere in their first ~150 ms (a sync here
        // takes tens to hundreds of milliseconds).
        if rng.below(4) == 0 {
            child.wait().unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(2 + rng.below(150)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            child.wait().unwrap();
        }
        let ok: String = sql(&db)
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "after kill {k}");
    }
    assert_converged(&env, &db, &expected);
    eprintln!(
        "crash: seed {}, {kills} runs, {killed} SIGKILLs mid-sync, {} local records pushed, {} items pulled; lost 0, duplicated 0",
        seed(),
        expected.len(),
        central_table(&env, "item").len()
    );
    // No floor on `killed`: how many random moments land mid-sync depends on the
    // machine's speed. Coverage of every step is the aimed test's job.
}

/// One agent run aimed at a crash point; returns whether it was killed there.
fn run_aimed(db: &Path, point: &str, n: u32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
        .args(["--db", db.to_str().unwrap(), "sync"])
        .env("FIELDSYNC_CRASH_AT", format!("{point}#{n}"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let killed = out.status.signal() == Some(9);
    assert!(
        !killed || said.contains(&format!("crash point {point}#{n}")),
        "killed elsewhere than {point}: {said}"
    );
    killed
}

fn quick_check(db: &Path, what: &str) {
    let ok: String = sql(db)
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{what}");
}

/// Issue 17: a SIGKILL at every named step of the cycle (`testkit::crash::POINTS`:
/// site info, initialisation and its polls, each push batch, the final push, the
/// wait, each central page, the queue page, the ack, integration, transfer
/// numbering), each one certain to land because the agent kills itself there;
/// the long run adds random points and repeats until 300 kills. After each kill
/// `quick_check`; at the end clean syncs converge, every transfer numbered once.
#[test]
fn aimed_kills_at_every_step_then_convergence() {
    use fieldsync::testkit::crash::POINTS;
    const FRESH: &[&str] = &[
        "site-answered",
        "initialise-answered",
        "init-poll",
        "init-finished",
    ];
    let mut rng = Rng(seed() ^ 0xa1ed);
    let env = Env::new("aimed");
    env.site("kaw", "S_KAW");
    env.site("opu", "S_OPU");
    for i in 0..300 {
        env.central
            .put(
                "item",
                &json!({"ID": format!("I{i}"), "item_name": format!("item {i}")}),
            )
            .unwrap();
    }
    init_and_drain(&env, "opu", "HO");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    env.config(&db, "batch_records", "50");
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");

    // Every point once, in cycle order; the long run then adds random points (and
    // random repeats of the push points) up to 300 kills.
    let mut plan: Vec<(&str, u32)> = POINTS.iter().map(|p| (*p, 1)).collect();
    let target = if long() { 300 } else { POINTS.len() };
    while plan.len() < target {
        let p = POINTS[rng.below(POINTS.len() as u64) as usize];
        let n = if p.starts_with("push-") {
            1 + rng.below(4) as u32
        } else {
            1
        };
        plan.push((p, n));
    }
    let mut landed: BTreeMap<&str, u32> = POINTS.iter().map(|p| (*p, 0)).collect();
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut fresh_sites = Vec::new();
    let mut next = 0u64;
    for (k, (point, n)) in plan.iter().enumerate() {
        if FRESH.contains(point) {
            // A site's first sync: a new site and device each time.
            let name = format!("f{k}");
            env.site(&name, &format!("S_F{k}"));
            let fdb = env.db(&name);
            env.init(&fdb, &name);
            if *point == "init-poll" {
                // The central still building this site's data when the agent asks.
                env.central
                    .conn()
                    .unwrap()
                    .execute(
                        "UPDATE site SET init_status = 'started' WHERE name = ?1",
                        [&name],
                    )
                    .unwrap();
            }
            assert!(
                run_aimed(&fdb, point, *n),
                "kill {k}: {point}#{n} was never reached"
            );
            env.central
                .conn()
                .unwrap()
                .execute(
                    "UPDATE site SET init_status = 'new' WHERE name = ?1 AND init_status = 'started'",
                    [&name],
                )
                .unwrap();
            quick_check(&fdb, &format!("after kill {k} at {point}"));
            fresh_sites.push(fdb);
        } else {
            // Work for every step: 200 local rows (four push batches), central
            // changes (central records), a store preference (the queue) and a
            // transfer from the other site (numbering).
            let rows: Vec<Value> = (0..200)
                .map(|_| {
                    next += 1;
                    let id = format!("IL{}", next - 1);
                    let row =
                        json!({"ID": id, "store_ID": "S_KAW", "item_ID": "I1", "quantity": k});
                    expected.insert(id, row.clone());
                    row
                })
                .collect();
            put_local(&env, &db, &rows);
            for _ in 0..5 {
                let i = rng.below(300);
                env.central
                    .put(
                        "item",
                        &json!({"ID": format!("I{i}"), "item_name": format!("kill {k}")}),
                    )
                    .unwrap();
            }
            env.central
                .put("pref", &json!({"ID": format!("P{k}"), "store_ID": "S_KAW"}))
                .unwrap();
            let ci = format!("CI{k}");
            push(
                &env,
                "opu",
                "HO",
                json!([
                    upd(
                        "1",
                        "transact",
                        json!({"ID": ci, "store_ID": "S_OPU", "name_ID": "N_S_KAW",
                        "type": "ci", "status": "fn", "invoice_num": k + 1, "linked_transaction_id": ""})
                    ),
                    upd(
                        "2",
                        "trans_line",
                        json!({"ID": format!("CL{k}"), "transaction_ID": ci,
                        "item_ID": "I1", "quantity": 1})
                    ),
                ]),
            );
            assert!(final_push(&env, "opu", "HO"));
            assert!(
                run_aimed(&db, point, *n),
                "kill {k}: {point}#{n} was never reached"
            );
            quick_check(&db, &format!("after kill {k} at {point}#{n}"));
        }
        *landed.get_mut(point).unwrap() += 1;
    }

    for fdb in &fresh_sites {
        let mut done = false;
        for _ in 0..4 {
            let (code, _, stderr) = env.sync(fdb);
            assert!(ACCEPTABLE.contains(&code), "{code}: {stderr}");
            if code == 0 && is_initialised(fdb) {
                done = true;
                break;
            }
        }
        assert!(done, "{} initialises after its kill", fdb.display());
        assert_eq!(
            table(fdb, "item"),
            sent_table(&env, "item"),
            "{}",
            fdb.display()
        );
        quick_check(fdb, "fresh site after convergence");
    }
    // Until the site has pushed its numbers, the other site keeps receiving the
    // supplier invoices' updates: settle the site first, then drain the other.
    for _ in 0..4 {
        let (code, report, _) = env.sync(&db);
        if code == 0 && report["outbox_left"] == 0 && report["pushed"] == 0 {
            break;
        }
    }
    drain(&env, "opu", "HO");
    let left: Vec<(i64, i64)> = env
        .central
        .conn()
        .unwrap()
        .prepare("SELECT site_id, count(*) FROM sync_out GROUP BY site_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        left.is_empty(),
        "queued and not acknowledged, by site id: {left:?}"
    );
    assert_converged(&env, &db, &expected);
    // Every transfer arrived once and was numbered once, with distinct numbers.
    let si: Vec<Value> = table(&db, "transact")
        .into_values()
        .filter(|t| t["type"] == "si")
        .collect();
    let ci_count = plan.iter().filter(|(p, _)| !FRESH.contains(p)).count();
    assert_eq!(
        si.len(),
        ci_count,
        "one supplier invoice per customer invoice"
    );
    let mut numbers: Vec<i64> = si
        .iter()
        .map(|t| t["invoice_num"].as_i64().unwrap())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), ci_count, "distinct numbers: {numbers:?}");
    assert!(numbers.iter().all(|n| *n > 0), "all numbered: {numbers:?}");
    let central_si = central_table(&env, "transact");
    for t in &si {
        let id = t["ID"].as_str().unwrap();
        assert_eq!(
            central_si.get(id),
            Some(t),
            "the central holds {id} as numbered here"
        );
    }

    eprintln!(
        "aimed kills: seed {}, {} kills, every one mid-sync at its point",
        seed(),
        plan.len()
    );
    eprintln!("| step | kills |\n|---|---|");
    for p in POINTS {
        eprintln!("| {p} | {} |", landed[p]);
    }
    eprintln!(
        "{} local records pushed, {} supplier invoices numbered, {} first syncs killed; lost 0, duplicated 0",
        expected.len(),
        si.len(),
        fresh_sites.len()
    );
}
