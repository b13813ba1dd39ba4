//! The reference central's HTTP/1.1 server: `httparse` (already in the tree
//! through ureq) for the request head, under our own loop.
//!
//! Why not a server crate: what the central needs is small and specific — a
//! bounded pool of blocking workers (SQLite work is blocking), authentication
//! from the headers *before* a body is read (so a 16 MiB body from a stranger
//! costs nothing), a strict `Content-Length`, gzip request bodies inflated under a
//! cap (§9.1), and a shutdown that finishes requests in flight. `tiny_http` would
//! add its own thread pool and dependencies and still leave the body handling to
//! us.
//!
//! Limits: 16 MiB per body, compressed or not (413 `request_too_large`, nothing
//! staged); 64 KiB per head; a worker per connection, keep-alive idle 5 s; a full
//! pool answers 503 at once. TLS for a pilot belongs in a reverse proxy in front
//! of it (README).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::api::{Reply, Request};
use super::Central;

/// Largest request body, before or after inflating (§3 [PC]: 16 MiB → 413).
pub const MAX_BODY: usize = 16 << 20;
/// Largest request head; a v5 client sends well under 1 KiB.
const MAX_HEAD: usize = 64 << 10;
/// Answers above this are gzipped for clients that accept it [PC].
const GZIP_ABOVE: usize = 1024;
/// Worker threads, each serving one connection at a time.
pub const WORKERS: usize = 16;
/// An idle keep-alive connection is closed after this long, freeing its worker.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);
/// A request whose bytes stop arriving for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server; [`Server::stop`] ends it after the requests in flight.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves on an already-bound listener, so tests and the demo bind
    /// `127.0.0.1:0` and learn the port first.
    pub fn start(
        central: Central,
        listener: TcpListener,
        workers: usize,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<TcpStream>(workers * 4);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..workers.max(1) {
            let (rx, central, stop) = (rx.clone(), central.clone(), stop.clone());
            threads.push(std::thread::spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(stream) = next else { return };
                if let Err(e) = connection(&central, stream, &stop) {
                    log::debug!("connection ended: {e}");
                }
            }));
        }
        let stop2 = stop.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Err(mpsc::TrySendError::Full(mut s)) = tx.try_send(stream) {
                    let reply = Reply::error(
                        503,
                        "server_busy",
                        "the central is busy; try again shortly",
                        Value::Null,
                    );
                    let _ = write_reply(&mut s, &reply, false, false, false);
                }
            }
            // Dropping `tx` ends the workers once the queue is empty.
        }));
        if let Err(e) = central.resume() {
            log::error!("resuming integrations: {e}");
        }
        Ok(Server {
            addr,
            stop,
            threads,
        })
    }

    /// Stops accepting, lets the requests in flight finish, and returns when
    /// every worker has ended.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Serves in background threads on `addr`; returns the running server.
pub fn spawn(central: Central, addr: &str) -> std::io::Result<Server> {
    Server::start(central, TcpListener::bind(addr)?, WORKERS)
}

/// Serves until SIGTERM or SIGINT, then finishes the requests in flight.
pub fn serve(central: Central, listener: TcpListener) -> std::io::Result<()> {
    let signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, signal.clone())?;
    }
    let server = Server::start(central, listener, WORKERS)?;
    while !signal.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    log::info!("stopping: finishing the requests in flight");
    server.stop();
    Ok(())
}

/// One parsed request head.
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    headers: Vec<(String, String)>,
    length: usize,
}

enum Parsed {
    Head(Head, usize),
    Reject(Reply),
}

fn parse_head(buf: &[u8]) -> Option<Parsed> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let bad = |m: &str| {
        Some(Parsed::Reject(Reply::error(
            400,
            "bad_request",
            m,
            Value::Null,
        )))
    };
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => return bad(&format!("malformed request: {e}")),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some() {
        return Some(Parsed::Reject(Reply::error(
            411,
            "length_required",
            "send the body with a Content-Length",
            Value::Null,
        )));
    }
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let length = match lengths.as_slice() {
        [] => 0,
        [one, rest @ ..] if rest.iter().all(|r| r == one) => {
            if one.is_empty() || one.len() > 12 || !one.bytes().all(|b| b.is_ascii_digit()) {
                return bad("Content-Length must be a whole number");
            }
            one.parse().unwrap_or(usize::MAX)
        }
        _ => return bad("conflicting Content-Length headers"),
    };
    let version = req.version.unwrap_or(1);
    let keep_alive = match header("connection").map(|c| c.to_ascii_lowercase()) {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == 1,
    };
    Some(Parsed::Head(
        Head {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            keep_alive,
            headers,
            length,
        },
        used,
    ))
}

fn connection(central: &Central, mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Wait for the next request: a short idle wait, then a longer one per read.
        stream.set_read_timeout(Some(if buf.is_empty() {
            KEEP_ALIVE_IDLE
        } else {
            READ_TIMEOUT
        }))?;
        let (head, used) = loop {
            if let Some(p) = parse_head(&buf) {
                match p {
                    Parsed::Head(h, used) => break (h, used),
                    Parsed::Reject(reply) => {
                        return write_reply(&mut stream, &reply, false, false, false)
                    }
                }
            }
            if buf.len() > MAX_HEAD {
                let reply = Reply::error(
                    431,
                    "head_too_large",
                    "request head over 64 KiB",
                    Value::Null,
                );
                return write_reply(&mut stream, &reply, false, false, false);
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            stream.set_read_timeout(Some(READ_TIMEOUT))?;
        };
        buf.drain(..used);
        let header = |n: &str| {
            head.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        let gzip_ok = central.gzip
            && header("accept-encoding")
                .is_some_and(|a| a.split(',').any(|e| e.trim().starts_with("gzip")));
        let advertise = central.gzip_requests;
        if head.length > MAX_BODY {
            let reply = Reply::error(
                413,
                "request_too_large",
                "request body over 16 MiB",
                Value::Null,
            );
            return write_reply(&mut stream, &reply, gzip_ok, advertise, false);
        }
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        // Authenticate from the headers before reading the body.
        let site = if path.starts_with("/sync/v5/") {
            let auth = central
                .conn()
                .and_then(|c| central.authenticate(&c, &|n| header(n)));
            match auth {
                Ok(Ok(site)) => Some(site),
                Ok(Err(reply)) => {
                    // The body is not read: the connection cannot be reused.
                    let keep = head.keep_alive && head.length <= buf.len();
                    write_reply(&mut stream, &reply, gzip_ok, advertise, keep)?;
                    if !keep {
                        return Ok(());
                    }
                    buf.drain(..head.length);
                    continue;
                }
                Err(e) => {
                    log::error!("authentication: {e}");
                    let reply = Reply::error(
                        500,
                        "internal_error",
                        "the central failed; see its log",
                        Value::Null,
                    );
                    return write_reply(&mut stream, &reply, gzip_ok, advertise, false);
                }
            }
        } else {
            None
        };
        while buf.len() < head.length {
            let mut chunk = vec![0u8; (head.length - buf.len()).min(64 << 10)];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let raw: Vec<u8> = buf.drain(..head.length).collect();
        let body = match header("content-encoding").map(|e| e.to_ascii_lowercase()) {
            None => raw,
            Some(e) if e == "identity" => raw,
            Some(e) if e == "gzip" && central.gzip_requests => match inflate(&raw) {
                Ok(b) => b,
                Err(reply) => return write_reply(&mut stream, &reply, gzip_ok, advertise, false),
            },
            Some(e) => {
                let reply = Reply::error(
                    415,
                    "unsupported_encoding",
                    &format!("Content-Encoding {e} is not accepted; send the body plain"),
                    Value::Null,
                );
                write_reply(&mut stream, &reply, gzip_ok, advertise, head.keep_alive)?;
                continue;
            }
        };
        let req = Request {
            method: head.method,
            path: path.to_string(),
            query: query.to_string(),
            headers: head.headers.clone(),
            body,
        };
        let reply = match &site {
            Some(site) => central.serve(site, &req),
            None => Reply::error(404, "not_found", "unknown path", Value::Null),
        };
        let keep = head.keep_alive && !stop.load(Ordering::SeqCst);
        write_reply(&mut stream, &reply, gzip_ok, advertise, keep)?;
        if !keep {
            return Ok(());
        }
    }
}

/// Inflates a gzip body, refusing more than [`MAX_BODY`] bytes of it.
fn inflate(raw: &[u8]) -> Result<Vec<u8>, Reply> {
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(raw).take(MAX_BODY as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        Reply::error(
            400,
            "bad_request",
            &format!("the gzip body does not inflate: {e}"),
            Value::Null,
        )
    })?;
    if out.len() > MAX_BODY {
        return Err(Reply::error(
            413,
            crate::wire::protocol::code::REQUEST_TOO_LARGE,
            "request body over 16 MiB once inflated",
            Value::Null,
        ));
    }
    Ok(out)
}

fn write_reply(
    w: &mut TcpStream,
    reply: &Reply,
    gzip_ok: bool,
    advertise: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let (body, gzipped) = if gzip_ok && reply.body.len() > GZIP_ABOVE {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&reply.body)?;
        (enc.finish()?, true)
    } else {
        (reply.body.clone(), false)
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\n",
        reply.status,
        if reply.status == 204 { 0 } else { body.len() }
    );
    if reply.status != 204 {
        head.push_str("Content-Type: application/json\r\n");
    }
    if gzipped {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    if advertise {
        // RFC 7694: this server accepts gzip request bodies (§9.1).
        head.push_str("Accept-Encoding: gzip\r\n");
    }
    // This project's verification extension [PC] (central::verify).
    head.push_str(&format!(
        "{}: {}\r\n",
        super::verify::HEADER,
        super::verify::EXTENSIONS
    ));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    w.write_all(head.as_bytes())?;
    if reply.status != 204 {
        w.write_all(&body)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(raw: &str) -> u16 {
        match parse_head(raw.as_bytes()) {
            Some(Parsed::Reject(r)) => r.status,
            Some(Parsed::Head(..)) => 0,
            None => 1,
        }
    }

    #[test]
    fn heads_are_parsed_strictly() {
        assert_eq!(reject("GET / HTTP/1.1\r\nHost: x\r\n"), 1, "partial");
        assert_eq!(reject("GET / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n"), 400);
        assert_eq!(reject("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            reject("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            reject("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(reject("BAD\x01 / HTTP/1.1\r\n\r\n"), 400);
        match parse_head(b"POST /sync/v5/site HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello") {
            Some(Parsed::Head(h, used)) => {
                assert_eq!((h.length, h.keep_alive, used), (5, false, 50));
            }
            _ => panic!(),
        }
    }

    #[test]
    fn gzip_bodies_inflate_under_the_cap() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"queueLength\":0,\"data\":[]}").unwrap();
        assert_eq!(
            inflate(&enc.finish().unwrap()).unwrap(),
            b"{\"queueLength\":0,\"data\":[]}"
        );
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b' '; MAX_BODY + 10]).unwrap();
        assert_eq!(inflate(&enc.finish().unwrap()).unwrap_err().status, 413);
        assert_eq!(inflate(b"not gzip").unwrap_err().status, 400);
    }
}
