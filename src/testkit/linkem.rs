//! The link emulator: a userspace TCP proxy put between the agent and the central
//! (the kernel's netem is not available here). Test and bench support only; not in
//! device builds (feature `testkit`).
//!
//! Per direction it delays every chunk by the one-way latency and paces it to the
//! bandwidth (a queue of timestamped chunks, so latency and bandwidth compose as on
//! a real link). Per connection it may inject one fault, chosen by a seeded PRNG
//! (so a failing run replays with the same seed) or taken from a scripted queue:
//! refuse, cut after N bytes either way, stall, reset mid-response, truncate the
//! response, answer 500/502/503/504, answer a body that is not JSON or is JSON of
//! the wrong shape, or slow-drip the response.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One injected fault (at most one per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Accept, then close at once.
    Refuse,
    /// Forward this many client→central bytes, then close.
    CutUp(usize),
    /// Forward this many central→client bytes, then close.
    CutDown(usize),
    /// Forward nothing back for this long, then close.
    Stall(Duration),
    /// Answer with this HTTP status (and a non-v5 body), never reaching the central.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    NotJson,
    /// Answer 200 with valid JSON of the wrong shape.
    WrongShape,
    /// Forward the response 16 bytes every this many milliseconds.
    SlowDrip(u64),
}

/// Link shape, each direction.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Bytes per second; 0 = unlimited.
    pub up_bps: u64,
    pub down_bps: u64,
    pub up_latency: Duration,
    pub down_latency: Duration,
}

impl Shape {
    pub const LOOPBACK: Shape = Shape {
        up_bps: 0,
        down_bps: 0,
        up_latency: Duration::ZERO,
        down_latency: Duration::ZERO,
    };

    /// The 2G link of the benchmarks: 256 kbit/s each way, 600 ms round trip.
    pub fn two_g() -> Shape {
        Shape {
            up_bps: 32_000,
            down_bps: 32_000,
            up_latency: Duration::from_millis(300),
            down_latency: Duration::from_millis(300),
        }
    }
}

/// What faults to inject.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// Probability (0..=1) that a new connection gets a random fault.
    pub fault_rate: f64,
    /// Faults taken in order before any random ones.
    pub scripted: VecDeque<Fault>,
}

impl Plan {
    pub fn clean() -> Plan {
        Plan {
            seed: 1,
            fault_rate: 0.0,
            scripted: VecDeque::new(),
        }
    }
}

/// Counters a test reads after a run.
#[derive(Debug, Default)]
pub struct Stats {
    /// When the first connection arrived (cold start measurements).
    pub first_connection: Mutex<Option<Instant>>,
    pub connections: AtomicU64,
    pub faults: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

struct State {
    plan: Plan,
    rng: u64,
}

pub struct Linkem {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    state: Arc<Mutex<State>>,
    shape: Arc<Mutex<Shape>>,
    stop: Arc<AtomicBool>,
}

impl Linkem {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, shape: Shape, plan: Plan) -> std::io::Result<Linkem> {
        Linkem::start_on("127.0.0.1:0", upstream, shape, plan)
    }

    /// [`Linkem::start`] listening on `listen` (`HOST:PORT`; port 0: any).
    pub fn start_on(
        listen: &str,
        upstream: SocketAddr,
        shape: Shape,
        plan: Plan,
    ) -> std::io::Result<Linkem> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let rng = plan.seed.max(1);
        let state = Arc::new(Mutex::new(State { plan, rng }));
        let stats = Arc::new(Stats::default());
        let shape = Arc::new(Mutex::new(shape));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sh, stt, stop2) = (state.clone(), shape.clone(), stats.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                stt.connections.fetch_add(1, Ordering::Relaxed);
                stt.first_connection
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
                let fault = next_fault(&st);
                if fault.is_some() {
                    stt.faults.fetch_add(1, Ordering::Relaxed);
                }
                let shape = *sh.lock().unwrap_or_else(|p| p.into_inner());
                let stats = stt.clone();
                std::thread::spawn(move || {
                    let _ = handle(client, upstream, shape, fault, &stats);
                });
            }
        });
        Ok(Linkem {
            addr,
            stats,
            state,
            shape,
            stop,
        })
    }

    /// Changes the fault plan (e.g. faults off for the convergence phase).
    pub fn set_plan(&self, plan: Plan) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.rng = plan.seed.max(1);
        s.plan = plan;
    }

    pub fn set_shape(&self, shape: Shape) {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = shape;
    }

    pub fn faults(&self) -> u64 {
        self.stats.faults.load(Ordering::Relaxed)
    }
}

impl Drop for Linkem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// xorshift64*: small, seedable, good enough to pick faults.
fn next_u64(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn next_fault(state: &Mutex<State>) -> Option<Fault> {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = s.plan.scripted.pop_front() {
        return Some(f);
    }
    let roll = (next_u64(&mut s.rng) % 1_000_000) as f64 / 1_000_000.0;
    if roll >= s.plan.fault_rate {
        return None;
    }
    let pick = next_u64(&mut s.rng);
    let n = (next_u64(&mut s.rng) % 4000) as usize;
    Some(match pick % 11 {
        0 => Fault::Refuse,
        1 => Fault::CutUp(n),
        2 | 3 => Fault::CutDown(n),
        4 => Fault::Stall(Duration::from_millis(300 + (n as u64 % 700))),
        5 => Fault::Status(500),
        6 => Fault::Status([502, 503, 504][n % 3]),
        7 => Fault::NotJson,
        8 => Fault::WrongShape,
        9 => Fault::SlowDrip(1),
        _ => Fault::CutDown(n / 10),
    })
}

fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    shape: Shape,
    fault: Option<Fault>,
    stats: &Stats,
) -> std::io::Result<()> {
    match fault {
        Some(Fault::Refuse) => {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(f @ (Fault::Status(_) | Fault::NotJson | Fault::WrongShape)) => {
            return answer(client, f)
        }
        _ => {}
    }
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (up_limit, down_limit) = match fault {
        Some(Fault::CutUp(n)) => (Some(n), None),
        Some(Fault::CutDown(n)) => (None, Some(n)),
        _ => (None, None),
    };
    let stall = match fault {
        Some(Fault::Stall(d)) => Some(d),
        _ => None,
    };
    let drip = match fault {
        Some(Fault::SlowDrip(ms)) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    // Both directions at once: a kept-alive request must see its response while
    // the client's side stays open.
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let (up_bps, up_latency) = (shape.up_bps, shape.up_latency);
    let stats_up = Arc::new(AtomicU64::new(0));
    let su = stats_up.clone();
    let up =
        std::thread::spawn(move || pump(c2, s2, up_bps, up_latency, up_limit, None, None, &su));
    let down = pump(
        server,
        client,
        shape.down_bps,
        shape.down_latency,
        down_limit,
        stall,
        drip,
        &stats.bytes_down,
    );
    let _ = up.join();
    stats
        .bytes_up
        .fetch_add(stats_up.load(Ordering::Relaxed), Ordering::Relaxed);
    let _ = down;
    Ok(())
}

/// Reads the request (head and Content-Length body), then answers by itself.
fn answer(mut client: TcpStream, fault: Fault) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (status, body): (u16, &[u8]) = match fault {
        Fault::Status(s) => (s, b"<html><body>Bad gateway</body></html>"),
        Fault::NotJson => (200, b"this is not json {"),
        _ => (200, br#"{"surprise":[1,2,3],"data":"not an array"}"#),
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(resp.as_bytes())?;
    client.write_all(body)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Forwards one direction in its own pair of threads: a reader that timestamps
/// chunks, a writer that releases each at arrival + latency, paced to `bps`.
#[allow(clippy::too_many_arguments)]
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    bps: u64,
    latency: Duration,
    limit: Option<usize>,
    stall: Option<Duration>,
    drip: Option<Duration>,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut writer_to = to.try_clone()?;
    let reader_from = from.try_clone()?;
    let writer = std::thread::spawn(move || {
        let mut next_free = Instant::now();
        let mut sent = 0usize;
        if let Some(d) = stall {
            std::thread::sleep(d);
            let _ = writer_to.shutdown(Shutdown::Both);
            let _ = reader_from.shutdown(Shutdown::Both);
            return;
        }
        for (arrived, bytes) in rx {
            let due = arrived + latency;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let mut data = &bytes[..];
            if let Some(max) = limit {
                let room = max.saturating_sub(sent);
                data = &data[..data.len().min(room)];
            }
            let ok = if let Some(d) = drip {
                // A trickle: 16 bytes per tick (16 KB/s at 1 ms), so a response
                // arrives in many tiny reads without taking minutes.
                data.chunks(16).all(|c| {
                    std::thread::sleep(d);
                    writer_to.write_all(c).is_ok()
                })
            } else {
                if bps > 0 {
                    next_free = next_free.max(Instant::now())
                        + Duration::from_secs_f64(data.len() as f64 / bps as f64);
                    let now = Instant::now();
                    if next_free > now {
                        std::thread::sleep(next_free - now);
                    }
                }
                writer_to.write_all(data).is_ok()
            };
            sent += data.len();
            if !ok || limit.is_some_and(|m| sent >= m) {
                let _ = writer_to.shutdown(Shutdown::Both);
                let _ = reader_from.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = writer_to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let pick = |seed| {
            let st = Mutex::new(State {
                plan: Plan {
                    seed,
                    fault_rate: 0.5,
                    scripted: VecDeque::new(),
                },
                rng: seed,
            });
            (0..50).map(|_| next_fault(&st)).collect::<Vec<_>>()
        };
        assert_eq!(pick(7), pick(7));
        assert_ne!(pick(7), pick(8));
        let n = pick(7).iter().filter(|f| f.is_some()).count();
        assert!((10..=40).contains(&n), "{n} faults of 50 at rate 0.5");
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn latency_and_bandwidth_shape_the_link_both_ways() {
        let shape = Shape {
            up_bps: 0,
            down_bps: 64_000,
            up_latency: Duration::from_millis(50),
            down_latency: Duration::from_millis(50),
        };
        let link = Linkem::start(echo_server(), shape, Plan::clean()).unwrap();
        let mut c = TcpStream::connect(link.addr).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "round trip includes both latencies"
        );
        // 32 KB back at 64 KB/s: at least half a second.
        let t = Instant::now();
        c.write_all(&[7u8; 32_000]).unwrap();
        let mut back = vec![0u8; 32_000];
        c.read_exact(&mut back).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn scripted_faults_hit_in_order() {
        let plan = Plan {
            seed: 1,
            fault_rate: 0.0,
            scripted: VecDeque::from([Fault::Refuse, Fault::Status(502)]),
        };
        let link = Linkem::start(echo_server(), Shape::LOOPBACK, plan).unwrap();
        let mut c = TcpStream::connect(link.addr).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(buf.is_empty(), "refused");
        let mut c = TcpStream::connect(link.addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
        let mut c = TcpStream::connect(link.addr).unwrap();
        c.write_all(b"clean").unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"clean");
        assert_eq!(link.faults(), 2);
    }
}
