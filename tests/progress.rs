//! Progress a person can see (issue 20): on a terminal a live line that moves
//! during a long step, in the journal a progress line while a step runs long, and
//! `status` (and `status --watch`) naming the step from another session. The
//! sync is made slow by the link emulator: 200 ms each way, so each of the
//! fifteen push batches takes a round trip.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{sql, Env};
use fieldsync::testkit::linkem::{Linkem, Plan, Shape};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");

/// A site whose next sync pushes 3,000 records in batches of 200 over a link
/// with 400 ms round trips: several seconds of visible work.
fn slow_site(env: &Env, name: &str) -> (std::path::PathBuf, Linkem) {
    env.site(name, &format!("S_{name}"));
    let link = Linkem::start(
        env.addr,
        Shape {
            up_bps: 0,
            down_bps: 0,
            up_latency: Duration::from_millis(200),
            down_latency: Duration::from_millis(200),
        },
        Plan::clean(),
    )
    .unwrap();
    let db = env.db(name);
    env.init_url(&db, name, &format!("http://{}", link.addr));
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    env.config(&db, "batch_records", "200");
    let file = env.dir.join(format!("{name}.jsonl"));
    let rows: String = (0..3000)
        .map(|i| {
            format!(
                "{}\n",
                json!({"ID": format!("{name}-{i}"), "store_ID": format!("S_{name}"), "quantity": i})
            )
        })
        .collect();
    std::fs::write(&file, rows).unwrap();
    let out = env.agent(
        &db,
        &["import", file.to_str().unwrap(), "--table", "item_line"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (db, link)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn a_terminal_sees_the_line_move_then_the_summary() {
    if !common::have("script") {
        eprintln!(
            "note: no `script` (util-linux) for a pseudo-terminal; this test checks nothing here"
        );
        return;
    }
    let env = Env::new("progress-tty");
    let (db, _link) = slow_site(&env, "tty");
    // `script` runs the agent on a pseudo-terminal and copies what it shows.
    let cmd = format!(
        "{} --db {} sync",
        shell_quote(BIN),
        shell_quote(db.to_str().unwrap())
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", shown.replace("\r\x1b[2K", "\n  ↻ "));
    // Each redraw starts with "\r" and clears the row.
    let states: Vec<&str> = shown
        .split("\r\x1b[2K")
        .map(|s| s.split(['\r', '\n']).next().unwrap_or(""))
        .filter(|s| s.starts_with("push "))
        .collect();
    let mut distinct = states.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "at least two progress states on the terminal, saw {distinct:?} in {shown:?}"
    );
    assert!(
        distinct
            .iter()
            .any(|s| s.contains(" / 3,000 records") && s.contains("sent")),
        "{distinct:?}"
    );
    let summary = shown.rfind("sync ok").expect("the summary line");
    let last_progress = shown.rfind("push ").unwrap();
    assert!(
        last_progress < summary,
        "the summary comes after the progress line"
    );
    assert!(
        shown.contains("\r\x1b[2K[INFO] sync ok"),
        "the live line is cleared before the summary: {:?}",
        &shown[summary.saturating_sub(80)..summary]
    );
}

#[test]
fn the_journal_gets_progress_lines_and_status_names_the_step() {
    let env = Env::new("progress-log");
    let (db, _link) = slow_site(&env, "log");
    // Not a terminal: log lines, here every second instead of every 30.
    let child = Command::new(BIN)
        .args(["--db", db.to_str().unwrap(), "sync"])
        .env("FIELDSYNC_PROGRESS_SECS", "1")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // From another session while it runs: `status` and `status --json` name the step.
    let mut seen_text = String::new();
    let mut seen_step = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && seen_step.is_null() {
        std::thread::sleep(Duration::from_millis(300));
        let s = env.agent(&db, &["status"]);
        let text = String::from_utf8_lossy(&s.stdout).into_owned();
        if text.contains("syncing now") && text.contains("push") {
            seen_text = text;
            let j = env.agent(&db, &["status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
            if v["running"] == true {
                seen_step = v["step"].clone();
            }
        }
    }
    assert!(
        seen_text.contains("push ") && seen_text.contains(" / 3,000 records"),
        "{seen_text}"
    );
    assert_eq!(seen_step, "push");
    // `status --watch` follows the sync to its end, then stops by itself.
    let watch = Command::new(BIN)
        .args(["--db", db.to_str().unwrap(), "status", "--watch"])
        .output()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("[INFO] push "))
        .collect();
    assert!(!progress.is_empty(), "a progress line in the log: {log}");
    assert!(
        progress[0].contains("records") && progress[0].contains("sent"),
        "{progress:?}"
    );
    assert!(watch.status.success());
    let views = String::from_utf8_lossy(&watch.stdout);
    assert!(views.matches("syncing now").count() >= 1, "{views}");
    let last = views.rsplit("site ").next().unwrap();
    assert!(
        !last.contains("syncing now"),
        "the last view is after the sync: {last}"
    );
    let pending: i64 = sql(Path::new(&db))
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 0);
}

/// Issue 29, item 11: the bytes a sync reports (progress, report, metrics)
/// are the bytes the link carried — heads included, gzip answers as they
/// came — not the rows after decompression, which made a 32 kB/s link look
/// three or four times faster.
#[test]
fn reported_bytes_are_the_bytes_on_the_link() {
    use std::sync::atomic::Ordering;
    let env = Env::new("wire-bytes");
    env.site("wb", "S_WB");
    let mut raw = 0usize;
    let mut lines = String::new();
    for i in 0..2000 {
        let row = json!({"ID": format!("I{i:05}"), "item_name": format!("Amoxicillin 250mg capsule {i}"),
                         "code": format!("amo{i}"), "note": "store in a cool dry place"});
        raw += row.to_string().len();
        lines.push_str(&format!("{}\n", json!({"table": "item", "record": row})));
    }
    let file = env.dir.join("items.jsonl");
    std::fs::write(&file, lines).unwrap();
    assert_eq!(env.central.import(&file).unwrap(), 2000);
    let link = Linkem::start(env.addr, Shape::LOOPBACK, Plan::clean()).unwrap();
    let db = env.db("wb");
    env.init_url(&db, "wb", &format!("http://{}", link.addr));
    let (up0, down0) = (
        link.stats.bytes_up.load(Ordering::Relaxed),
        link.stats.bytes_down.load(Ordering::Relaxed),
    );
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    std::thread::sleep(Duration::from_millis(100));
    let up = link.stats.bytes_up.load(Ordering::Relaxed) - up0;
    let down = link.stats.bytes_down.load(Ordering::Relaxed) - down0;
    let sent = report["bytes_sent"].as_u64().unwrap();
    let received = report["bytes_received"].as_u64().unwrap();
    assert_eq!(sent, up, "every byte the agent put on the link: {report}");
    assert_eq!(received, down, "every byte the link brought: {report}");
    assert!(
        (received as usize) < raw / 2,
        "gzip answers counted compressed: {received} B for {raw} B of rows"
    );
}
