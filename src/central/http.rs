//! The reference central's HTTP/1.1 server, made for strangers (protocol
//! §10.9): hyper on a small tokio runtime for the wire, the SQLite work on a
//! bounded pool of blocking workers.
//!
//! Why hyper: a central meets clients that are slow, careless or hostile, and
//! the hand-written loop this replaces gave each connection a worker thread, so
//! sixteen slow heads stopped every site. hyper's HTTP/1 parser is the most
//! used and fuzzed in Rust, an idle or half-sent connection is a parked task
//! that costs no worker, and its builder has the deadline on the whole request
//! head (also the wait for the next request on a kept-alive connection) and the
//! head size cap this needs. The rest is ours, below.
//!
//! What must hold:
//! - a request head arrives whole within [`Limits::head_deadline`], the next one
//!   too, or the connection is closed; heads over 64 KiB get 431;
//! - one address holds at most [`Limits::per_address_connections`] connections
//!   and [`Limits::per_address_workers`] workers; a connection beyond the caps,
//!   or a request when every worker is taken, gets 503 `server_busy` at once;
//! - a body is read only once the headers authenticated, and only while its
//!   bytes keep coming ([`Limits::body_stall`]); an unknown path gets 404 with
//!   its body unread; the bodies held in memory at once are bounded
//!   ([`Limits::body_budget`]); no worker waits on a slow body;
//! - a gzip body inflates whole — every member (RFC 1952), nothing after the
//!   last — under [`MAX_BODY`], or gets 400 naming the encoding;
//! - an answer whose request body was not read closes the connection;
//! - `stop` finishes the requests in flight.
//!
//! TLS for a pilot belongs in a reverse proxy in front of it (README); the
//! address this server sees is then the proxy's, and the per-address caps
//! should be raised to match.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::api::{Reply, Request};
use super::auth::Denied;
use super::Central;
use crate::wire::protocol::code;

/// Largest request body, before or after inflating (§3 [PC]: 16 MiB → 413).
pub const MAX_BODY: usize = 16 << 20;
/// Largest request head; a v5 client sends well under 1 KiB.
pub const MAX_HEAD: usize = 64 << 10;
/// Answers above this are gzipped for clients that accept it [PC].
const GZIP_ABOVE: usize = 1024;
/// Worker threads for the SQLite work of requests.
pub const WORKERS: usize = 16;
/// How long a request whose body was read waits for a worker before 503.
const WORKER_WAIT: Duration = Duration::from_secs(5);
/// How long a body waits for room in the body budget before 503.
const BUDGET_WAIT: Duration = Duration::from_secs(10);
/// How long stopping waits for the requests in flight.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// What one client may take of the server; [`Limits::default`] is what
/// `fieldsync-central serve` runs with.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests doing SQLite work at once.
    pub workers: usize,
    /// Of those, from one address.
    pub per_address_workers: usize,
    /// Open connections from one address (idle ones included).
    pub per_address_connections: usize,
    /// Open connections in all.
    pub connections: usize,
    /// The whole request head must arrive within this, and the next request
    /// on a kept-alive connection must start within it too (§10.9: ≤ 10 s).
    pub head_deadline: Duration,
    /// A body whose bytes stop coming for this long is dropped (408).
    pub body_stall: Duration,
    /// Request bodies held in memory at once, in bytes.
    pub body_budget: usize,
    /// Addresses the per-address caps do not apply to: the central's own host,
    /// where a TLS reverse proxy in front of it (README) sends every site's
    /// requests from. Every other cap holds for them.
    pub unlimited: Vec<IpAddr>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            workers: WORKERS,
            per_address_workers: 4,
            per_address_connections: 32,
            connections: 4096,
            head_deadline: Duration::from_secs(10),
            body_stall: Duration::from_secs(30),
            body_budget: 256 << 20,
            unlimited: vec![
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ],
        }
    }
}

/// A running server; [`Server::stop`] ends it after the requests in flight.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on an already-bound listener, so tests and the demo bind
    /// `127.0.0.1:0` and learn the port first.
    pub fn start(
        central: Central,
        listener: TcpListener,
        limits: Limits,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(limits.workers.max(1) + 2)
            .thread_name("central-http")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        if let Err(e) = central.resume() {
            log::error!("resuming integrations: {e}");
        }
        let shared = Arc::new(Shared::new(central, limits));
        let thread = std::thread::Builder::new()
            .name("central-accept".into())
            .spawn(move || runtime.block_on(accept_loop(shared, listener, stopped)))?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting, lets the requests in flight finish (up to a minute),
    /// and returns when they have.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::stop`] goes on serving for the rest
    /// of the process (the demo's and the tests' central), as a detached
    /// thread would.
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            std::mem::forget(s);
        }
    }
}

/// Serves in the background on `addr` with the default limits.
pub fn spawn(central: Central, addr: &str) -> std::io::Result<Server> {
    Server::start(central, TcpListener::bind(addr)?, Limits::default())
}

/// Serves until SIGTERM or SIGINT, then finishes the requests in flight.
/// How often (in 200 ms steps: 30 s) the restore-detection note is brought up
/// to the database while serving.
const NOTE_EVERY: u32 = 150;

pub fn serve(central: Central, listener: TcpListener) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, signal.clone())?;
    }
    // The caller has checked for a restored database before it said it
    // serves (Central::check_restored); here the note is kept up to date.
    let note = |r: super::Result<()>| {
        if let Err(e) = r {
            log::warn!("restore detection: {e}");
        }
    };
    let keeper = central.clone();
    let server = Server::start(central, listener, Limits::default())?;
    let mut since_note = 0u32;
    while !signal.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        since_note += 1;
        if since_note >= NOTE_EVERY {
            since_note = 0;
            note(keeper.write_note());
        }
    }
    log::info!("stopping: finishing the requests in flight");
    server.stop();
    note(keeper.write_note());
    Ok(())
}

/// What one address holds now.
#[derive(Default, Clone, Copy)]
struct Use {
    connections: usize,
    workers: usize,
}

struct Shared {
    central: Central,
    limits: Limits,
    workers: Arc<Semaphore>,
    /// The body budget, in KiB.
    bodies: Arc<Semaphore>,
    by_address: Mutex<HashMap<IpAddr, Use>>,
}

/// A connection or worker counted against its address until dropped.
struct Held {
    shared: Arc<Shared>,
    ip: IpAddr,
    worker: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get_mut(&self.ip) {
            if self.worker.take().is_some() {
                u.workers -= 1;
            } else {
                u.connections -= 1;
            }
            if u.connections == 0 && u.workers == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn new(central: Central, limits: Limits) -> Shared {
        Shared {
            central,
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            bodies: Arc::new(Semaphore::new((limits.body_budget >> 10).max(1))),
            by_address: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Admits a new connection from `ip`, or `None` when its address or the
    /// server is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().map(|u| u.connections).sum();
        let capped = !self.limits.unlimited.contains(&ip);
        let u = map.entry(ip).or_default();
        if (capped && u.connections >= self.limits.per_address_connections)
            || total >= self.limits.connections
        {
            if u.connections == 0 && u.workers == 0 {
                map.remove(&ip);
            }
            return None;
        }
        u.connections += 1;
        Some(Held {
            shared: self.clone(),
            ip,
            worker: None,
        })
    }

    /// A worker for `ip` now, or `None` when every worker (or the address's
    /// share of them) is taken.
    fn worker(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let capped = !self.limits.unlimited.contains(&ip);
        let u = map.entry(ip).or_default();
        if capped && u.workers >= self.limits.per_address_workers {
            return None;
        }
        let permit = self.workers.clone().try_acquire_owned().ok()?;
        u.workers += 1;
        Some(Held {
            shared: self.clone(),
            ip,
            worker: Some(permit),
        })
    }

    /// A worker for `ip`, waiting up to [`WORKER_WAIT`] (a request whose body
    /// the client already sent is worth a short wait).
    async fn worker_within(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let until = tokio::time::Instant::now() + WORKER_WAIT;
        loop {
            if let Some(w) = self.worker(ip) {
                return Some(w);
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot serve: {e}");
            return;
        }
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let ip = canonical(peer.ip());
        let Some(held) = shared.admit(ip) else {
            tokio::spawn(turn_away(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc_shared = shared.clone();
        let service = service_fn(move |req| {
            let shared = svc_shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, ip, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(shared.limits.head_deadline)
            // Legacy clients may match header names by case.
            .title_case_headers(true)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("connection from {ip} ended: {e}");
            }
            drop(held);
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("stopped with requests still in flight after {STOP_WAIT:?}");
    }
}

/// An IPv4 client seen through an IPv6 socket is the same address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A connection over the caps: 503 at once, then closed.
async fn turn_away(mut stream: tokio::net::TcpStream) {
    let body = busy("too many connections from this address, or to this server").body;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Retry-After: 2\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

fn busy(why: &str) -> Reply {
    Reply::error(
        503,
        code::SERVER_BUSY,
        &format!("the central is busy ({why}); try again shortly"),
        Value::Null,
    )
}

/// 503 `server_busy` with `Retry-After`: the only answer that carries it, so a
/// client may retry it at once where it would not retry other 503s.
fn respond_busy(why: &str, out: Out) -> hyper::Response<Full<Bytes>> {
    let mut r = respond(busy(why), out);
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    r
}

/// How an answer goes out.
#[derive(Clone, Copy)]
struct Out {
    gzip_ok: bool,
    advertise: bool,
    /// The request body was not read: the connection cannot carry another.
    close: bool,
    /// The central's epoch (16 hex digits, central::epoch).
    epoch: [u8; 16],
}

/// The paths with an API behind them; anything else is 404 unread.
fn is_api(path: &str) -> bool {
    path.starts_with("/sync/v5/") || super::v6::is_v6(path)
}

async fn handle(
    shared: Arc<Shared>,
    ip: IpAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
            )
        })
        .collect();
    // hyper bounds its read buffer, not the head: a head that arrived in
    // one read may pass its bound, so it is measured here too.
    let head_size: usize = parts.uri.to_string().len()
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let central = &shared.central;
    let mut out = Out {
        gzip_ok: central.gzip
            && parts
                .headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|a| a.split(',').any(|e| e.trim().starts_with("gzip"))),
        advertise: central.gzip_requests,
        close: false,
        epoch: {
            let mut e = [b'0'; 16];
            let now = central.epoch();
            let n = now.len().min(16);
            e[..n].copy_from_slice(&now.as_bytes()[..n]);
            e
        },
    };
    if head_size > MAX_HEAD {
        out.close = true;
        return respond(
            Reply::error(
                431,
                "head_too_large",
                "request head over 64 KiB",
                Value::Null,
            ),
            out,
        );
    }
    // hyper has refused conflicting or malformed lengths already; a chunked
    // body has no length to judge before reading it.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        out.close = true;
        return respond(
            Reply::error(
                411,
                "length_required",
                "send the body with a Content-Length",
                Value::Null,
            ),
            out,
        );
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    out.close = length > 0;
    if length > MAX_BODY as u64 {
        return respond(
            Reply::error(
                413,
                code::REQUEST_TOO_LARGE,
                "request body over 16 MiB",
                Value::Null,
            ),
            out,
        );
    }
    let length = length as usize;
    let path = parts.uri.path().to_string();
    if !is_api(&path) {
        return respond(
            Reply::error(404, "not_found", "unknown path", Value::Null),
            out,
        );
    }
    let request = Request {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
    };
    if super::v6::is_v6(&request.path) {
        return v6(&shared, ip, request, body, length, out).await;
    }
    let Some(worker) = shared.worker(ip) else {
        return respond_busy("every worker is taken", out);
    };
    if length == 0 {
        // Authenticated and served in one sitting: there is no body to wait for.
        let c = central.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _worker = worker;
            c.authenticated(&request, ip)
                .map(|site| c.serve(&site, &request))
        })
        .await;
        return match done {
            Ok(Ok(reply)) => respond(reply, out),
            Ok(Err(denied)) => refuse(denied, out).await,
            Err(e) => respond(panicked(&e), out),
        };
    }
    let c = central.clone();
    let auth_request = Request {
        body: Vec::new(),
        ..request.clone()
    };
    let auth = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        c.authenticated(&auth_request, ip)
    })
    .await;
    let site = match auth {
        Ok(Ok(site)) => site,
        Ok(Err(denied)) => return refuse(denied, out).await,
        Err(e) => return respond(panicked(&e), out),
    };
    let (raw, worker, _budget) = match body_and_worker(&shared, ip, body, length, &mut out).await {
        Ok(got) => got,
        Err(answer) => return answer,
    };
    let c = central.clone();
    let gzip_requests = c.gzip_requests;
    let done = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        let mut request = request;
        request.body = match decode(&request, raw, gzip_requests) {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        c.serve(&site, &request)
    })
    .await;
    match done {
        Ok(reply) => respond(reply, out),
        Err(e) => respond(panicked(&e), out),
    }
}

/// A v6 call (§10.1): its credentials are in the body, so a bounded body is
/// read first (under the same budget and stall deadline as any), then
/// authenticated and answered in one sitting.
async fn v6(
    shared: &Arc<Shared>,
    ip: IpAddr,
    mut request: Request,
    body: Incoming,
    length: usize,
    mut out: Out,
) -> hyper::Response<Full<Bytes>> {
    if request.method != "POST" || length > super::v6::MAX_BODY {
        return respond(
            Reply::error(
                if request.method != "POST" { 405 } else { 413 },
                "bad_request",
                "v6 calls are POSTs of at most 4 MiB",
                Value::Null,
            ),
            out,
        );
    }
    let (raw, worker, _budget) = match body_and_worker(shared, ip, body, length, &mut out).await {
        Ok(got) => got,
        Err(answer) => return answer,
    };
    let c = shared.central.clone();
    let gzip_requests = c.gzip_requests;
    let done = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        request.body = match decode(&request, raw, gzip_requests) {
            Ok(b) => b,
            Err(reply) => return Ok(reply),
        };
        c.v6(&request, ip)
    })
    .await;
    match done {
        Ok(Ok(reply)) => respond(reply, out),
        Ok(Err(denied)) => refuse(denied, out).await,
        Err(e) => respond(panicked(&e), out),
    }
}

/// The body of a request that may send one, read under the bodies' budget
/// and the stall deadline, with a worker to serve it (the budget is held
/// until the answer); or the answer that ends the request.
async fn body_and_worker(
    shared: &Arc<Shared>,
    ip: IpAddr,
    body: Incoming,
    length: usize,
    out: &mut Out,
) -> Result<(Vec<u8>, Held, tokio::sync::OwnedSemaphorePermit), hyper::Response<Full<Bytes>>> {
    let Ok(Ok(budget)) = tokio::time::timeout(
        BUDGET_WAIT,
        shared
            .bodies
            .clone()
            .acquire_many_owned(length.div_ceil(1024) as u32),
    )
    .await
    else {
        return Err(respond_busy("too many request bodies in flight", *out));
    };
    let raw = read_body(body, length, shared.limits.body_stall)
        .await
        .map_err(|reply| respond(reply, *out))?;
    out.close = false;
    let Some(worker) = shared.worker_within(ip).await else {
        return Err(respond_busy("every worker is taken", *out));
    };
    Ok((raw, worker, budget))
}

/// A refused login: its answer after the back-off it earned (no worker waits).
async fn refuse(denied: Denied, out: Out) -> hyper::Response<Full<Bytes>> {
    if !denied.delay.is_zero() {
        tokio::time::sleep(denied.delay).await;
    }
    respond(denied.reply, out)
}

fn panicked(e: &tokio::task::JoinError) -> Reply {
    log::error!("a request's work failed: {e}");
    Reply::error(
        500,
        "internal_error",
        "the central failed; see its log",
        Value::Null,
    )
}

/// The body of `length` bytes, as long as it keeps coming.
async fn read_body(mut body: Incoming, length: usize, stall: Duration) -> Result<Vec<u8>, Reply> {
    let mut raw = Vec::with_capacity(length);
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(Reply::error(
                    408,
                    "request_timeout",
                    &format!("the body stopped arriving for {} s", stall.as_secs()),
                    Value::Null,
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Reply::error(
                    400,
                    "bad_request",
                    &format!("the body could not be read: {e}"),
                    Value::Null,
                ))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if raw.len() + data.len() > length {
                return Err(Reply::error(
                    400,
                    "bad_request",
                    "the body is longer than its Content-Length",
                    Value::Null,
                ));
            }
            raw.extend_from_slice(&data);
        }
    }
    if raw.len() < length {
        return Err(Reply::error(
            400,
            "bad_request",
            "the body ended before its Content-Length",
            Value::Null,
        ));
    }
    Ok(raw)
}

/// The body as sent, after its `Content-Encoding`.
fn decode(req: &Request, raw: Vec<u8>, gzip_requests: bool) -> Result<Vec<u8>, Reply> {
    match req.header("content-encoding").map(str::to_ascii_lowercase) {
        None => Ok(raw),
        Some(e) if e == "identity" => Ok(raw),
        Some(e) if e == "gzip" && gzip_requests => inflate(&raw),
        Some(e) => Err(Reply::error(
            415,
            "unsupported_encoding",
            &format!("Content-Encoding {e} is not accepted; send the body plain"),
            Value::Null,
        )),
    }
}

/// Inflates a gzip body whole: every member of a multi-member stream (RFC
/// 1952 §2.2), nothing but members, at most [`MAX_BODY`] bytes of it. The
/// refusal names the encoding, so an agent falls back to plain bodies (§9.1).
pub fn inflate(raw: &[u8]) -> Result<Vec<u8>, Reply> {
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(raw).take(MAX_BODY as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        Reply::error(
            400,
            "bad_encoding",
            &format!(
                "the body is marked Content-Encoding: gzip but is not whole gzip members ({e}); send it plain"
            ),
            Value::Null,
        )
    })?;
    if out.len() > MAX_BODY {
        return Err(Reply::error(
            413,
            code::REQUEST_TOO_LARGE,
            "request body over 16 MiB once inflated",
            Value::Null,
        ));
    }
    Ok(out)
}

fn respond(reply: Reply, out: Out) -> hyper::Response<Full<Bytes>> {
    let (body, gzipped) = if out.gzip_ok && reply.body.len() > GZIP_ABOVE {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        match enc.write_all(&reply.body).and_then(|()| enc.finish()) {
            Ok(b) => (b, true),
            Err(_) => (reply.body, false),
        }
    } else {
        (reply.body, false)
    };
    let mut b = hyper::Response::builder().status(reply.status);
    if reply.status != 204 {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    if gzipped {
        b = b.header(header::CONTENT_ENCODING, "gzip");
    }
    if out.advertise {
        // RFC 7694: this server accepts gzip request bodies (§9.1).
        b = b.header(header::ACCEPT_ENCODING, "gzip");
    }
    // This project's verification extension [PC] (central::verify).
    b = b.header(super::verify::HEADER, super::verify::EXTENSIONS);
    if let Some(end) = reply.log_end {
        b = b.header(super::verify::LOG_END_HEADER, end);
    }
    b = b.header(
        super::verify::EPOCH_HEADER,
        std::str::from_utf8(&out.epoch).unwrap_or("0"),
    );
    if out.close {
        b = b.header(header::CONNECTION, "close");
    }
    let body = if reply.status == 204 {
        Vec::new()
    } else {
        body
    };
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(parts: &[&[u8]]) -> Vec<u8> {
        let mut all = Vec::new();
        for p in parts {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(p).unwrap();
            all.extend(enc.finish().unwrap());
        }
        all
    }

    #[test]
    fn gzip_bodies_inflate_whole_under_the_cap() {
        let body = b"{\"queueLength\":0,\"data\":[]}";
        assert_eq!(inflate(&gz(&[body])).unwrap(), body);
        // Two members are one body (RFC 1952).
        assert_eq!(
            inflate(&gz(&[b"{\"queueLength\":0,", b"\"data\":[]}"])).unwrap(),
            body
        );
        let mut trailing = gz(&[body]);
        trailing.extend_from_slice(b"garbage");
        let r = inflate(&trailing).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("Content-Encoding"));
        assert_eq!(
            inflate(&gz(&[&vec![b' '; MAX_BODY + 10]]))
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(inflate(b"not gzip").unwrap_err().status, 400);
    }

    #[test]
    fn mapped_addresses_are_their_ipv4() {
        let v6: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(canonical(v6), "10.0.0.5".parse::<IpAddr>().unwrap());
        let real: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(real), real);
    }
}
