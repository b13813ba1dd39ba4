//! `fieldsync-linkem`: the link emulator as a process, for benches and by hand.
//!
//!   fieldsync-linkem UPSTREAM [--up-bps N] [--down-bps N] [--rtt-ms N] [--fault-rate P] [--seed S]
//!
//! Prints the listening address on the first line, then runs until killed.

use std::time::Duration;

use fieldsync::testkit::linkem::{Linkem, Plan, Shape};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let take = |args: &mut Vec<String>, name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        let v = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        v
    };
    let num = |v: Option<String>, d: f64| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(d);
    let up = num(take(&mut args, "--up-bps"), 0.0) as u64;
    let down = num(take(&mut args, "--down-bps"), 0.0) as u64;
    let rtt = num(take(&mut args, "--rtt-ms"), 0.0);
    let rate = num(take(&mut args, "--fault-rate"), 0.0);
    let seed = num(take(&mut args, "--seed"), 1.0) as u64;
    let Some(upstream) = args.first().and_then(|a| a.parse().ok()) else {
        eprintln!("usage: fieldsync-linkem HOST:PORT [--up-bps N] [--down-bps N] [--rtt-ms N] [--fault-rate P] [--seed S]");
        std::process::exit(2);
    };
    let half = Duration::from_secs_f64(rtt / 2000.0);
    let shape = Shape {
        up_bps: up,
        down_bps: down,
        up_latency: half,
        down_latency: half,
    };
    let plan = Plan {
        seed,
        fault_rate: rate,
        scripted: Default::default(),
    };
    let link = Linkem::start(upstream, shape, plan).unwrap_or_else(|e| {
        eprintln!("fieldsync-linkem: {e}");
        std::process::exit(1)
    });
    println!("{}", link.addr);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
