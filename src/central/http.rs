//! A small HTTP/1.1 server for the reference central: a thread per connection,
//! keep-alive, `Content-Length` bodies up to 16 MiB (413 above), gzip answers above
//! 1 KiB when the client accepts them [PC]. TLS for a pilot belongs in a reverse
//! proxy in front of it (README), not here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::api::{Reply, Request};
use super::Central;

/// Largest request body (§3 [PC]: 16 MiB → 413 `request_too_large`).
pub const MAX_BODY: usize = 16 << 20;
/// Largest request head; a v5 client sends well under 1 KiB.
const MAX_HEAD: usize = 64 << 10;
/// Answers above this are gzipped for clients that accept it [PC].
const GZIP_ABOVE: usize = 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(60);

/// Serves until the listener fails. Takes an already-bound listener, so tests and
/// the demo can bind `127.0.0.1:0` and learn the port first.
pub fn serve(central: Central, listener: TcpListener) -> std::io::Result<()> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let central = central.clone();
        std::thread::spawn(move || {
            if let Err(e) = connection(&central, stream) {
                log::debug!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

/// Serves in a background thread; returns the bound address.
pub fn spawn(central: Central, addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || serve(central, listener));
    Ok(local)
}

fn connection(central: &Central, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let keep_alive = version == "HTTP/1.1"
            && !header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let gzip_ok = central.gzip
            && header("accept-encoding")
                .is_some_and(|a| a.split(',').any(|e| e.trim().starts_with("gzip")));
        if header("transfer-encoding").is_some() {
            write_reply(
                &mut writer,
                &Reply::error(
                    411,
                    "length_required",
                    "send Content-Length",
                    serde_json::Value::Null,
                ),
                false,
                false,
            )?;
            return Ok(());
        }
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            let reply = Reply::error(
                413,
                "request_too_large",
                "request body over 16 MiB",
                serde_json::Value::Null,
            );
            write_reply(&mut writer, &reply, false, false)?;
            return Ok(());
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let req = Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body,
        };
        let reply = central.handle(&req);
        write_reply(&mut writer, &reply, gzip_ok, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len().min(MAX_HEAD)) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue;
            }
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn write_reply(
    w: &mut TcpStream,
    reply: &Reply,
    gzip_ok: bool,
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
        body.len()
    );
    if reply.status != 204 {
        head.push_str("Content-Type: application/json\r\n");
    }
    if gzipped {
        head.push_str("Content-Encoding: gzip\r\n");
    }
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
