//! The bench's report: the Markdown table with each target met or not, what
//! limits the figures, and a small SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use serde_json::Value;

use super::runner::{machine, Size};

/// What limits the figures, from profiling runs (see the issue notes); kept with
/// the report so a reader of the table sees it.
const LIMITS: &str = r#"
## What limits the figures

- Loopback throughput is bounded by the reference central, not the agent. Pushing 10,000 rows (release build, `fieldsync -v sync` against `fieldsync-central serve`), the agent used 80 ms of CPU in a 0.73 s sync; 0.24 s went to the central integrating and routing them (its log: "integrated 10000 record(s) in 240 ms"), and the remaining ~0.4 s (by difference, not timed on its own) to the central judging and staging the batches and to the wire. The central is a development and pilot server; its next steps are parsing push bodies without building a JSON tree per row and routing in bulk.
- Pull includes the central building the new site's queue (routing every row) and the agent storing each row twice (sync buffer, then store) with durable commits before acknowledging: about 5.7 KB written per 925 B row.
- Found and fixed by measuring: the outbox was sorted whole for every batch (quadratic; 198 MB of temp-file writes for a 10,000-record push) and confirmed entries were deleted batch by batch through the random-keyed (table, ID) index (280 MB written for 100,000 records). Schema 2 reads batches from a push-order index and deletes confirmed entries once per push: 6.0 MB and 84 MB.
"#;

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

pub fn report(sizes: &[Size], r: &BTreeMap<String, Value>) -> String {
    let mut md = String::new();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "# fieldsync benchmark\n\n{date} · {} · release build · `bench/run.sh`\n",
        machine()
    );
    let _ = writeln!(md, "Loopback HTTP through the link emulator (which counts wire bytes); the agent is the release `fieldsync` binary, one process per sync, as a systemd timer runs it.\n");
    let _ = writeln!(md, "| records | push s | push rec/s | pull s | pull rec/s | push RSS MiB | pull RSS MiB | push requests | pull requests | push B/rec (wire) | pull B/rec (wire, gzip) | SD writes push MiB | SD writes pull MiB |");
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in sizes {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} |",
            s.records, s.push_secs, s.push_rps, s.pull_secs, s.pull_rps,
            s.push_rss_kib as f64 / 1024.0, s.pull_rss_kib as f64 / 1024.0, s.push_requests, s.pull_requests,
            s.push_up_bytes as f64 / s.records as f64, s.pull_down_bytes as f64 / s.records as f64,
            s.push_write_bytes as f64 / 1048576.0, s.pull_write_bytes as f64 / 1048576.0
        );
    }
    let w = &r["wire"];
    let idle = &r["idle"];
    let two = &r["two_g"];
    let _ = writeln!(md, "\nPush time is the sync that sends the records (the import before it is not timed). Pull time is a new site's first sync: the central builds its queue, the agent pulls, stores durably, acknowledges and integrates.\n");
    let _ = writeln!(md, "- Wire bytes on pull (10,000 records) vs raw JSON of the rows ({} B): plain {:.3}×, gzip {:.3}×", w["raw_bytes"], w["plain"].as_f64().unwrap_or(0.0), w["gzip"].as_f64().unwrap_or(0.0));
    if let Some(s) = sizes.last() {
        let _ = writeln!(
            md,
            "- Average raw JSON size of a generated row: {:.0} B (legacy rows with their full field lists)",
            s.push_raw_bytes as f64 / s.records as f64
        );
    }
    let _ = writeln!(
        md,
        "- Push wire bytes vs raw JSON: {:.3}× (requests are never compressed, §2)",
        sizes
            .last()
            .map(|s| s.push_up_bytes as f64 / s.push_raw_bytes as f64)
            .unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "- Idle sync: {} requests, {} bytes on the wire, {} ms CPU, {} bytes written to storage",
        idle["requests"], idle["bytes"], idle["cpu_ms"], idle["write_bytes"]
    );
    let _ = writeln!(
        md,
        "- Cold start to first request: median {:.1} ms",
        r["cold_start_ms"]["median"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(md, "- {} records over 2G (256 kbit/s each way, 600 ms RTT): {:.1} s; physical limit {:.1} s (bytes ÷ bandwidth + {} round trips × RTT); ratio {:.2}", two["records"], two["secs"].as_f64().unwrap_or(0.0), two["limit_secs"].as_f64().unwrap_or(0.0), two["requests"].as_u64().unwrap_or(0) + two["connections"].as_u64().unwrap_or(0), two["ratio"].as_f64().unwrap_or(0.0));

    let min_rps = sizes
        .iter()
        .map(|s| s.push_rps.min(s.pull_rps))
        .fold(f64::INFINITY, f64::min);
    let rss_100k = sizes
        .iter()
        .find(|s| s.records == 100_000)
        .map(|s| s.push_rss_kib.max(s.pull_rss_kib));
    let rss_1k = sizes
        .iter()
        .find(|s| s.records == 1_000)
        .map(|s| s.push_rss_kib.max(s.pull_rss_kib));
    let _ = writeln!(md, "\n## Targets\n\n| target | figure | |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| push and pull ≥ 20,000 records/s on loopback | slowest {min_rps:.0} rec/s | {} |",
        met(min_rps >= 20_000.0)
    );
    if let Some(p) = r.get("pouchdb") {
        let ratio = sizes
            .iter()
            .find(|s| s.records == p["records"].as_u64().unwrap_or(0) as usize)
            .map(|s| s.push_rps / p["rps"].as_f64().unwrap_or(f64::INFINITY));
        let _ = writeln!(
            md,
            "| ≥ 10× PouchDB's throughput | {:.1}× at {} records | {} |",
            ratio.unwrap_or(0.0),
            p["records"],
            met(ratio.unwrap_or(0.0) >= 10.0)
        );
    } else {
        let _ = writeln!(md, "| ≥ 10× PouchDB's throughput | PouchDB could not be installed on this machine (see below) | not measured |");
    }
    let plain = w["plain"].as_f64().unwrap_or(9.0);
    let gz = w["gzip"].as_f64().unwrap_or(9.0);
    let _ = writeln!(
        md,
        "| pull wire bytes ≤ 1.15× raw JSON without gzip | {plain:.3}× | {} |",
        met(plain <= 1.15)
    );
    let _ = writeln!(
        md,
        "| pull wire bytes ≤ 0.35× raw JSON with gzip | {gz:.3}× | {} |",
        met(gz <= 0.35)
    );
    let idle_req = idle["requests"].as_u64().unwrap_or(99);
    let idle_bytes = idle["bytes"].as_u64().unwrap_or(u64::MAX);
    let _ = writeln!(
        md,
        "| idle sync ≤ 5 requests (§5.4 rev 2 waits after every final push) and ≤ 4 KB | {idle_req} requests, {idle_bytes} B | {} |",
        met(idle_req <= 5 && idle_bytes <= 4096)
    );
    if let (Some(big), Some(small)) = (rss_100k, rss_1k) {
        let ok = big <= 16 * 1024 && (big as f64) <= 1.5 * small as f64;
        let _ = writeln!(md, "| peak RSS ≤ 16 MB at 100,000 and ≤ 1.5× its 1,000 value | {:.1} MiB vs {:.1} MiB ({:.2}×) | {} |", big as f64 / 1024.0, small as f64 / 1024.0, big as f64 / small as f64, met(ok));
    }
    let ratio = two["ratio"].as_f64().unwrap_or(9.0);
    let _ = writeln!(
        md,
        "| 2G sync within 1.25× of the physical limit | {ratio:.2}× | {} |",
        met(ratio <= 1.25)
    );
    md.push_str(LIMITS);
    if let Some(p) = r.get("pouchdb") {
        let st = |k: &str| p[k].as_str().unwrap_or("?").to_string();
        let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            md,
            "\n## PouchDB side by side\n\nPouchDB {} (Node {}) replicating the same {} generated records from a local LevelDB database to pouchdb-server {} on loopback, through the same link emulator: {:.2} s ({:.0} rec/s), {} bytes on the wire, client peak RSS {:.1} MiB.\n",
            st("pouchdb_version"), st("node"), p["records"], st("server_version"), f("secs"), f("rps"), p["wire_bytes"], f("rss_kib") / 1024.0
        );
        if let Some(s) = sizes.iter().find(|s| s.records as f64 == f("records")) {
            let _ = writeln!(md, "| fieldsync ÷ PouchDB | ratio |\n|---|---:|");
            let _ = writeln!(md, "| throughput | {:.2}× |", s.push_rps / f("rps"));
            let _ = writeln!(
                md,
                "| bytes on the wire | {:.2}× |",
                s.push_up_bytes as f64 / p["wire_bytes"].as_f64().unwrap_or(1.0)
            );
            let _ = writeln!(
                md,
                "| client peak RSS | {:.3}× |",
                s.push_rss_kib as f64 / f("rss_kib")
            );
        }
    }
    md
}

/// A small SVG: throughput (left) and peak RSS (right) against record count.
pub fn plot(sizes: &[Size], pouch: Option<&Value>) -> String {
    let (w, h) = (900.0, 360.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let panels = [("records/s (log scale)", 0.0), ("peak RSS, MiB", 450.0)];
    let xs: Vec<f64> = sizes.iter().map(|s| (s.records as f64).log10()).collect();
    let (xmin, xmax) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min) - 0.2,
        xs.iter().cloned().fold(0.0, f64::max) + 0.2,
    );
    for (i, (title, x0)) in panels.iter().enumerate() {
        let (left, top, pw, ph) = (x0 + 60.0, 40.0, 360.0, 260.0);
        let _ = write!(
            svg,
            r#"<text x="{}" y="24" font-weight="bold">{title}</text><rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#,
            left
        );
        let series: Vec<(&str, &str, Vec<f64>)> = if i == 0 {
            vec![
                (
                    "fieldsync push",
                    "#1f77b4",
                    sizes.iter().map(|s| s.push_rps.log10()).collect(),
                ),
                (
                    "fieldsync pull",
                    "#2ca02c",
                    sizes.iter().map(|s| s.pull_rps.log10()).collect(),
                ),
            ]
        } else {
            vec![
                (
                    "fieldsync push",
                    "#1f77b4",
                    sizes
                        .iter()
                        .map(|s| s.push_rss_kib as f64 / 1024.0)
                        .collect(),
                ),
                (
                    "fieldsync pull",
                    "#2ca02c",
                    sizes
                        .iter()
                        .map(|s| s.pull_rss_kib as f64 / 1024.0)
                        .collect(),
                ),
            ]
        };
        let mut ymax: f64 = series
            .iter()
            .flat_map(|s| s.2.iter().cloned())
            .fold(0.0, f64::max);
        let mut extra: Option<(f64, f64)> = None;
        if let Some(p) = pouch {
            let px = (p["records"].as_f64().unwrap_or(1.0)).log10();
            let py = if i == 0 {
                p["rps"].as_f64().unwrap_or(1.0).log10()
            } else {
                p["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            };
            ymax = ymax.max(py);
            extra = Some((px, py));
        }
        let ymax = ymax * 1.1;
        // Throughput on a log axis from 1,000 rec/s; RSS from 0.
        let ymin = if i == 0 { 3.0 } else { 0.0 };
        let sx = |x: f64| left + (x - xmin) / (xmax - xmin) * pw;
        let sy = |y: f64| top + ph - (y - ymin) / (ymax - ymin) * ph;
        for (k, (name, color, ys)) in series.iter().enumerate() {
            let pts: Vec<String> = xs
                .iter()
                .zip(ys)
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            for (x, y) in xs.iter().zip(ys) {
                let label = if i == 0 {
                    format!("{:.0}", 10f64.powf(*y))
                } else {
                    format!("{y:.1}")
                };
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}">{label}</text>"#,
                    sx(*x),
                    sy(*y),
                    sx(*x) + 4.0,
                    if k == 0 { sy(*y) + 16.0 } else { sy(*y) - 8.0 }
                );
            }
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
                left + 10.0,
                top + 16.0 + 14.0 * k as f64
            );
        }
        if let Some((px, py)) = extra {
            let label = if i == 0 {
                format!("PouchDB {:.0}", 10f64.powf(py))
            } else {
                format!("PouchDB {py:.1}")
            };
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="#d62728"/><text x="{:.1}" y="{:.1}" fill="#d62728">{label}</text>"##,
                sx(px) - 3.5,
                sy(py) - 3.5,
                sx(px) + 6.0,
                sy(py) + 12.0
            );
        }
        for (x, s) in xs.iter().zip(sizes) {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                sx(*x),
                top + ph + 16.0,
                s.records
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">records</text>"#,
            left + pw / 2.0,
            top + ph + 34.0
        );
    }
    svg.push_str("</svg>");
    svg
}
