//! The fleet bench (issue 31): N sites against one reference central over
//! loopback. Each site is the real release agent binary, one process per
//! sync as a systemd timer runs it, with its own database; the central runs
//! in the bench process (its CPU is this process's, the agents' are their
//! own). Three scenarios:
//!
//! - **burst**: up to 100 sites initialising at once (all first syncs started
//!   together);
//! - **steady**: every site pushes a day's records (written as the clinic's
//!   app writes them, through the triggers) and pulls what is queued for it,
//!   `CONCURRENCY` syncs in flight: the central's capacity in syncs/s;
//! - **backlog**: one site pushes a large backlog (a year from a USB stick's
//!   worth) while every other site syncs a day's records again.
//!
//! Reported per scenario: syncs/s, p50/p99 sync time, central CPU per record
//! moved, and for the run the central's peak memory and database size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::generator::{central_row, site_records, Gen};
use crate::central::{self, Central};

/// Syncs in flight in the steady and backlog rounds.
const CONCURRENCY: usize = 8;
/// Records each site writes for one day.
const PER_DAY: usize = 50;
/// Central data every site reads at initialisation.
const CENTRAL_ROWS: usize = 200;

fn agent_bin() -> PathBuf {
    std::env::current_exe()
        .expect("bench binary")
        .with_file_name("fieldsync")
}

fn name(i: usize) -> String {
    format!("site{i:04}")
}

fn store(i: usize) -> String {
    format!("S{i:04}")
}

/// This process's CPU time so far (the central's work, in the bench).
pub(super) fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 14th
    // field of the line, the 12th after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU of the PostgreSQL server's processes (each live one's, and what the
/// server's exited children used): on a PostgreSQL central the statements'
/// work is there, not in the bench process.
fn postgres_cpu() -> Duration {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime, stime, cutime, cstime: the 12th to 15th fields after `)`.
        ticks += f.get(11..15).map_or(0, |t| t.iter().sum());
    }
    Duration::from_millis(ticks * 10)
}

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Fleet {
    dir: PathBuf,
    central: Central,
    url: String,
    postgres: bool,
}

impl Fleet {
    fn db(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.sqlite", name(i)))
    }

    /// One agent command for site `i`; its exit code and how long it took.
    fn agent(&self, i: usize, args: &[&str]) -> (i32, Duration) {
        let t = Instant::now();
        let out = Command::new(agent_bin())
            .arg("--db")
            .arg(self.db(i))
            .arg("-q")
            .args(args)
            .env("FIELDSYNC_PW", format!("pw-{}", name(i)))
            .output()
            .expect("the agent binary runs");
        (out.status.code().unwrap_or(-1), t.elapsed())
    }

    /// A sync until it ends well (an 11 is the central still integrating on a
    /// loaded machine: the next sync goes on, and the time counts).
    fn sync(&self, i: usize) -> Duration {
        let mut took = Duration::ZERO;
        for _ in 0..20 {
            let (code, t) = self.agent(i, &["sync"]);
            took += t;
            if code == 0 {
                return took;
            }
            assert!(code == 11 || code == 18, "{}: sync exit {code}", name(i));
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{}: the syncs did not settle", name(i));
    }

    /// Runs `f` for each of `sites` with `width` in flight; the durations.
    fn each(
        &self,
        sites: &[usize],
        width: usize,
        f: impl Fn(usize) -> Duration + Sync,
    ) -> Vec<Duration> {
        let next = AtomicUsize::new(0);
        let out = Mutex::new(Vec::with_capacity(sites.len()));
        std::thread::scope(|s| {
            for _ in 0..width.max(1) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = sites.get(k) else { break };
                    let d = f(i);
                    out.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                });
            }
        });
        out.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// A day's records in site `i`'s file, written as the clinic's app
    /// writes them (plain SQL, captured by the triggers).
    fn day(&self, i: usize, g: &mut Gen, n: usize) {
        let mut c = rusqlite::Connection::open(self.db(i)).expect("site db");
        c.busy_timeout(Duration::from_secs(30)).ok();
        let tx = c.transaction().expect("tx");
        {
            let mut st = tx
                .prepare("INSERT INTO record (table_name, record_id, data) VALUES (?1, ?2, ?3)")
                .expect("insert");
            for (t, r) in site_records(g, &store(i), n) {
                let id = r["ID"].as_str().unwrap_or("").to_string();
                st.execute(rusqlite::params![t, id, r.to_string()])
                    .expect("a site record");
            }
        }
        tx.commit().expect("commit");
    }

    /// The central's CPU so far: the bench process's, and on PostgreSQL the server's too.
    fn cpu(&self) -> Duration {
        if self.postgres {
            cpu() + postgres_cpu()
        } else {
            cpu()
        }
    }

    fn size_mib(&self) -> f64 {
        if self.postgres {
            let bytes: i64 = self
                .central
                .conn()
                .and_then(|c| {
                    Ok(
                        c.query_row("SELECT pg_database_size(current_database())", [], |r| {
                            r.get(0)
                        })?,
                    )
                })
                .unwrap_or(0);
            return bytes as f64 / 1_048_576.0;
        }
        ["central.sqlite", "central.sqlite-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len() as f64)
            .sum::<f64>()
            / 1_048_576.0
    }
}

fn pct(mut d: Vec<Duration>, p: f64) -> f64 {
    if d.is_empty() {
        return 0.0;
    }
    d.sort();
    let k = ((d.len() as f64 * p).ceil() as usize).clamp(1, d.len()) - 1;
    d[k].as_secs_f64()
}

fn scenario(d: &[Duration], wall: Duration, cpu: Duration, records: u64) -> Value {
    json!({
        "syncs": d.len(),
        "secs": wall.as_secs_f64(),
        "syncs_per_sec": d.len() as f64 / wall.as_secs_f64().max(1e-9),
        "p50_secs": pct(d.to_vec(), 0.50),
        "p99_secs": pct(d.to_vec(), 0.99),
        "records": records,
        "central_cpu_ms": cpu.as_millis() as u64,
        "central_cpu_us_per_record": cpu.as_secs_f64() * 1e6 / records.max(1) as f64,
    })
}

/// The three scenarios at `sites` sites, with a backlog of `backlog` records;
/// the central on SQLite, or on a new database of the PostgreSQL server at
/// `postgres` (a base URL whose user may create databases).
pub fn run(root: &Path, sites: usize, backlog: usize, seed: u64, postgres: Option<&str>) -> Value {
    let dir = root.join(format!("fleet-{sites}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let c = match postgres {
        Some(base) => {
            let url = central::db::create_test_database(base, &dir).expect("a bench database");
            Central::open_db(&url).expect("central")
        }
        None => Central::open(&dir.join("central.sqlite")).expect("central"),
    };
    let mut g = Gen(seed ^ sites as u64);
    for i in 0..sites {
        c.add_site(
            &name(i),
            &name(i).to_uppercase(),
            &format!("pw-{}", name(i)),
        )
        .expect("site");
        c.add_store(&store(i), &store(i), &format!("Clinic {i}"), Some(&name(i)))
            .expect("store");
    }
    for i in 0..CENTRAL_ROWS {
        let (t, r) = central_row(&mut g, i);
        c.put(t, &r).expect("central data");
    }
    let addr = central::http::spawn(c.clone(), "127.0.0.1:0")
        .expect("serve")
        .addr;
    let fleet = Fleet {
        dir,
        central: c,
        url: format!("http://{addr}"),
        postgres: postgres.is_some(),
    };
    let all: Vec<usize> = (0..sites).collect();
    eprintln!("bench: fleet of {sites}: configuring the sites");
    fleet.each(&all, CONCURRENCY, |i| {
        let (code, t) = fleet.agent(
            i,
            &[
                "init",
                "--url",
                &fleet.url,
                "--site",
                &name(i),
                "--password-env",
                "FIELDSYNC_PW",
            ],
        );
        assert_eq!(code, 0, "init {}", name(i));
        let (code, _) = fleet.agent(i, &["config", "set", "init_poll_secs", "1"]);
        assert_eq!(code, 0);
        t
    });

    // Burst: up to 100 first syncs at once; then the rest, not measured.
    let burst: Vec<usize> = (0..sites.min(100)).collect();
    eprintln!(
        "bench: fleet of {sites}: {} sites initialising at once",
        burst.len()
    );
    let (cpu0, t0) = (fleet.cpu(), Instant::now());
    let d = fleet.each(&burst, burst.len(), |i| fleet.sync(i));
    let burst_v = scenario(
        &d,
        t0.elapsed(),
        fleet.cpu() - cpu0,
        (burst.len() * (CENTRAL_ROWS + 1)) as u64,
    );
    let rest: Vec<usize> = (burst.len()..sites).collect();
    fleet.each(&rest, CONCURRENCY, |i| fleet.sync(i));

    // Steady: a day's records each, then every site syncs.
    eprintln!("bench: fleet of {sites}: a day of syncs");
    for &i in &all {
        fleet.day(i, &mut g, PER_DAY);
    }
    let (cpu0, t0) = (fleet.cpu(), Instant::now());
    let d = fleet.each(&all, CONCURRENCY, |i| fleet.sync(i));
    let steady = scenario(
        &d,
        t0.elapsed(),
        fleet.cpu() - cpu0,
        (sites * PER_DAY) as u64,
    );

    // Backlog: site 0 pushes `backlog` records while the others sync a day.
    eprintln!("bench: fleet of {sites}: a backlog of {backlog} records beside the others");
    fleet.day(0, &mut g, backlog);
    let others: Vec<usize> = (1..sites).collect();
    for &i in &others {
        fleet.day(i, &mut g, PER_DAY);
    }
    let (cpu0, t0) = (fleet.cpu(), Instant::now());
    let (backlog_took, d) = std::thread::scope(|s| {
        let big = s.spawn(|| fleet.sync(0));
        let d = fleet.each(&others, CONCURRENCY - 1, |i| fleet.sync(i));
        (big.join().expect("backlog sync"), d)
    });
    let mut backlog_v = scenario(
        &d,
        t0.elapsed(),
        fleet.cpu() - cpu0,
        (backlog + others.len() * PER_DAY) as u64,
    );
    backlog_v["backlog_records"] = json!(backlog);
    backlog_v["backlog_secs"] = json!(backlog_took.as_secs_f64());
    let pushed: i64 = fleet
        .central
        .conn()
        .and_then(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM record WHERE table_name IN ('transact', 'trans_line', 'item_line')",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap_or(0);
    let expected = (sites * PER_DAY * 2 + backlog) as i64 - PER_DAY as i64;
    json!({
        "sites": sites,
        "store": if postgres.is_some() { "PostgreSQL" } else { "SQLite" },
        "agent": "the release fieldsync binary, one process per sync; central in the bench process over loopback HTTP",
        "concurrency": CONCURRENCY,
        "per_day": PER_DAY,
        "burst": burst_v,
        "steady": steady,
        "backlog": backlog_v,
        "central_peak_mib": peak_mib(),
        "database_mib": fleet.size_mib(),
        "records_on_central": pushed,
        "records_pushed": expected,
    })
}
