//! `fieldsync-linkem`: the link emulator as a process, for benches and by hand.
//! Says where it listens and what it forwards on its first line, then runs
//! until killed.

use std::time::Duration;

use argh::FromArgs;
use fieldsync::testkit::linkem::{Linkem, Plan, Shape};

/// A userspace link between a client and HOST:PORT: bandwidth and latency per
/// direction, and seeded faults.
#[derive(FromArgs)]
struct Cli {
    /// the upstream address, HOST:PORT (e.g. the central's)
    #[argh(positional)]
    upstream: std::net::SocketAddr,
    /// where to listen, HOST:PORT (default 127.0.0.1:0: a free port on loopback)
    #[argh(option, default = "String::from(\"127.0.0.1:0\")")]
    listen: String,
    /// client→upstream bytes per second (0: unlimited)
    #[argh(option, default = "0")]
    up_bps: u64,
    /// upstream→client bytes per second (0: unlimited)
    #[argh(option, default = "0")]
    down_bps: u64,
    /// round-trip time in milliseconds (half each way)
    #[argh(option, default = "0")]
    rtt_ms: u64,
    /// probability (0..1) that a connection gets a random fault
    #[argh(option, default = "0.0")]
    fault_rate: f64,
    /// seed of the fault generator (a failing run replays with the same seed)
    #[argh(option, default = "1")]
    seed: u64,
}

fn main() {
    let cli: Cli = argh::from_env();
    let half = Duration::from_millis(cli.rtt_ms) / 2;
    let shape = Shape {
        up_bps: cli.up_bps,
        down_bps: cli.down_bps,
        up_latency: half,
        down_latency: half,
    };
    let plan = Plan {
        seed: cli.seed,
        fault_rate: cli.fault_rate,
        scripted: Default::default(),
    };
    let link = Linkem::start_on(&cli.listen, cli.upstream, shape, plan).unwrap_or_else(|e| {
        eprintln!("fieldsync-linkem: listen on {}: {e}", cli.listen);
        std::process::exit(1)
    });
    let rate = |bps: u64| {
        if bps == 0 {
            "unlimited".to_string()
        } else {
            format!("{bps} B/s")
        }
    };
    println!(
        "fieldsync-linkem: listening on {} and forwarding to {} (up {}, down {}, RTT {} ms, fault rate {}); \
         point the agent at http://{}",
        link.addr,
        cli.upstream,
        rate(cli.up_bps),
        rate(cli.down_bps),
        cli.rtt_ms,
        cli.fault_rate,
        link.addr
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
