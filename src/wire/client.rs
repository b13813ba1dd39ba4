//! The v5 client: typed calls of protocol §3 over a [`Transport`], with the headers
//! every request carries (§2), the retry rule for transient failures, what counts
//! as the network answering instead of the central (§9.4), and counters of what
//! crossed the link for the sync report.
//!
//! It knows nothing of the store: pulls hand each decoded record to a callback, so
//! the cycle decides where records go and memory holds one record at a time. The
//! callback's error type is the caller's; every failure of the call itself becomes
//! that type through `From<WireError>`, so errors keep their type end to end.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::wire::credentials::Secret;
use crate::wire::decode::{self, Broken, Partial, PullError, PullHeader};
use crate::wire::protocol::{self, Acknowledge, SyncRecord};
use crate::wire::transport::{Method, Request, Response, Timeouts, Transport};
use crate::wire::{ProtocolError, TransportError, WireError};

/// Retry delays for connection errors, timeouts, 408, 502 and 504 (§2: three
/// retries after 2, 4 and 8 s, plus jitter).
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];
/// `POST /initialise` blocks while the central builds the queue (§5 step 2): no
/// byte moves for up to 10 minutes.
pub const INITIALISE_TIMEOUTS: Timeouts = Timeouts {
    no_progress: Duration::from_secs(600),
    total: Duration::from_secs(600),
};
/// Largest JSON answer decoded whole (site, status, push answers): they are tiny.
const MAX_SMALL_BODY: u64 = 1 << 20;
/// Bytes one record may take on the wire (escapes included) before decoding is
/// abandoned: twice the store's record limit. Bounds memory whatever a central sends.
pub const MAX_RECORD_BYTES_ON_WIRE: u64 = 2 * crate::store::row::MAX_ROW_BYTES as u64;

/// What crossed the link, for the report and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A pulled record that could not be read (over the per-record limit, or not a
/// record envelope) and that the cycle can set aside by its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub record: Partial,
    /// Records of the page decoded before it.
    pub before: u64,
    pub why: String,
}

/// What this agent knows of the central's gzip request bodies (§9.1, RFC 7694).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gzip {
    /// Never advertised: bodies go plain (a legacy central never sees gzip).
    Unknown,
    /// The central said `Accept-Encoding: gzip` on an answer.
    Advertised,
    /// It refused a gzip body (415): plain from now on, whatever it says.
    Refused,
}

/// Push bodies above this are gzipped for a central that takes them (§9.1).
pub const GZIP_PUSH_ABOVE: usize = 1024;

pub struct Client<T: Transport> {
    transport: T,
    auth: Secret,
    hardware_id: String,
    retry_delays: Vec<Duration>,
    clock: Arc<dyn Clock>,
    pub traffic: Traffic,
    /// Bytes of the pull page being decoded, as they arrive (added to `traffic`
    /// when the page ends): a progress line moves during a long page.
    in_flight: Rc<Cell<u64>>,
    /// Kept by the cycle between syncs (local data).
    pub gzip: Gzip,
}

impl<T: Transport> Client<T> {
    pub fn new(
        transport: T,
        auth: Secret,
        hardware_id: String,
        clock: Arc<dyn Clock>,
    ) -> Client<T> {
        Client {
            transport,
            auth,
            hardware_id,
            retry_delays: RETRY_DELAYS.to_vec(),
            clock,
            traffic: Traffic::default(),
            in_flight: Rc::default(),
            gzip: Gzip::Unknown,
        }
    }

    /// Replaces the retry delays (tests use none, or short ones).
    pub fn with_retry_delays(mut self, delays: Vec<Duration>) -> Client<T> {
        self.retry_delays = delays;
        self
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// One request with the §2 headers; retried on transient link failures and on
    /// 408/502/504 (every v5 request is safe to repeat).
    fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeouts: Timeouts,
    ) -> Result<Response, WireError> {
        self.request_with(method, path, body, timeouts, None)
    }

    /// A request whose body is gzipped (`Content-Encoding: gzip`) when `encoding` says so.
    fn request_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeouts: Timeouts,
        encoding: Option<&str>,
    ) -> Result<Response, WireError> {
        let version = protocol::API_VERSION.to_string();
        let mut headers = vec![
            ("Authorization", self.auth.expose()),
            ("msupply-site-uuid", self.hardware_id.as_str()),
            ("app-version", protocol::APP_VERSION),
            ("app-name", protocol::APP_NAME),
            ("version", version.as_str()),
        ];
        if let Some(e) = encoding {
            headers.push(("Content-Encoding", e));
        }
        let full_path = format!("{}{path}", protocol::PREFIX);
        let mut attempt = 0;
        loop {
            self.traffic.requests += 1;
            self.traffic.bytes_sent += body.map_or(0, |b| b.len() as u64);
            let outcome = self.transport.call(&Request {
                method,
                path: &full_path,
                headers: &headers,
                body,
                timeouts,
            });
            let retryable = match &outcome {
                Ok(r) => matches!(r.status, 408 | 502 | 504),
                Err(TransportError::Interrupted { .. }) => true,
                Err(_) => false,
            };
            if retryable && attempt < self.retry_delays.len() {
                let delay = self.retry_delays[attempt];
                log::debug!(
                    "{path}: transient failure, retry {} in {delay:?}",
                    attempt + 1
                );
                self.clock.sleep(delay + jitter(delay));
                attempt += 1;
                continue;
            }
            let resp = outcome?;
            // §9.1: a central that takes gzip bodies says so on its answers.
            if self.gzip == Gzip::Unknown
                && resp
                    .header("accept-encoding")
                    .is_some_and(|a| a.split(',').any(|e| e.trim().eq_ignore_ascii_case("gzip")))
            {
                self.gzip = Gzip::Advertised;
            }
            // §9.4: a redirect is a captive portal or a proxy, never the central.
            if (300..400).contains(&resp.status) {
                let to = resp.header("location").unwrap_or("elsewhere");
                return Err(TransportError::Intercepted(format!(
                    "a redirect to {}",
                    protocol::sanitize(to)
                ))
                .into());
            }
            return Ok(resp);
        }
    }

    /// A request whose answer is a small JSON object.
    fn json<R: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeouts: Timeouts,
    ) -> Result<R, WireError> {
        self.json_with(method, path, body, timeouts, None)
    }

    fn json_with<R: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeouts: Timeouts,
        encoding: Option<&str>,
    ) -> Result<R, WireError> {
        let resp = self.request_with(method, path, body, timeouts, encoding)?;
        let (status, html) = (resp.status, is_html(&resp));
        let bytes = self.read_body(resp.body, MAX_SMALL_BODY)?;
        if !(200..300).contains(&status) {
            return Err(failure(status, html || looks_like_html(&bytes), &bytes));
        }
        if html || looks_like_html(&bytes) {
            return Err(intercepted_page(&bytes).into());
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ProtocolError::NotV5 {
                path: path.to_string(),
                detail: e.to_string(),
            }
            .into()
        })
    }

    fn read_body(&mut self, reader: Box<dyn Read>, limit: u64) -> Result<Vec<u8>, WireError> {
        let mut bytes = Vec::new();
        let n = reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e, "reading the answer"))?;
        self.traffic.bytes_received += n as u64;
        if n as u64 > limit {
            return Err(TransportError::TooLarge(limit).into());
        }
        Ok(bytes)
    }

    pub fn site(&mut self) -> Result<protocol::SiteInfo, WireError> {
        self.json(Method::Get, "/site", None, Timeouts::DEFAULT)
    }

    pub fn initialise(&mut self) -> Result<protocol::InitialiseResponse, WireError> {
        self.json(
            Method::Post,
            "/initialise",
            Some(b"{}"),
            INITIALISE_TIMEOUTS,
        )
    }

    pub fn site_status(&mut self) -> Result<protocol::SiteStatus, WireError> {
        self.json(Method::Get, "/site_status", None, Timeouts::DEFAULT)
    }

    /// Sends one push body (already encoded by the batch) and returns
    /// `integrationStarted` and the bytes that crossed the link. Gzipped for a
    /// central that advertised it (§9.1); a 415, or a 400 naming the encoding,
    /// turns that off for good and the same body goes again plain.
    pub fn push(&mut self, body: &[u8]) -> Result<(bool, usize), WireError> {
        if self.gzip == Gzip::Advertised && body.len() > GZIP_PUSH_ABOVE {
            let packed = gzip(body);
            let sent = packed.len();
            match self.json_with::<protocol::PushResponse>(
                Method::Post,
                "/queued_records",
                Some(&packed),
                Timeouts::DEFAULT,
                Some("gzip"),
            ) {
                Ok(r) => return Ok((r.integration_started, sent)),
                Err(WireError::Protocol(ProtocolError::Server {
                    status, message, ..
                })) if status == 415
                    || (status == 400 && message.to_ascii_lowercase().contains("encoding")) =>
                {
                    log::warn!(
                        "the central refused a gzip body ({status}); sending plain from now on"
                    );
                    self.gzip = Gzip::Refused;
                }
                Err(e) => return Err(e),
            }
        }
        let r: protocol::PushResponse = self.json(
            Method::Post,
            "/queued_records",
            Some(body),
            Timeouts::DEFAULT,
        )?;
        Ok((r.integration_started, body.len()))
    }

    /// The counter of the page being decoded (see `in_flight`).
    pub fn in_flight(&self) -> Rc<Cell<u64>> {
        self.in_flight.clone()
    }

    pub fn central_records<E: From<WireError> + From<Unreadable>>(
        &mut self,
        cursor: u64,
        limit: u32,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
    ) -> Result<PullHeader, E> {
        let path = format!("/central_records?cursor={cursor}&limit={limit}");
        self.pull(&path, each)
    }

    pub fn queued_records<E: From<WireError> + From<Unreadable>>(
        &mut self,
        limit: u32,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
    ) -> Result<PullHeader, E> {
        let path = format!("/queued_records?limit={limit}");
        self.pull(&path, each)
    }

    fn pull<E: From<WireError> + From<Unreadable>>(
        &mut self,
        path: &str,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
    ) -> Result<PullHeader, E> {
        let resp = self.request(Method::Get, path, None, Timeouts::DEFAULT)?;
        let html = is_html(&resp);
        let status = resp.status;
        if !(200..300).contains(&status) {
            let bytes = self.read_body(resp.body, MAX_SMALL_BODY)?;
            return Err(failure(status, html || looks_like_html(&bytes), &bytes).into());
        }
        // Per-record byte budget: once one record has taken more than
        // MAX_RECORD_BYTES_ON_WIRE without completing, the reader refuses to read
        // on, so a single giant or endless record cannot grow memory.
        let since = Rc::new(Cell::new(0u64));
        self.in_flight.set(0);
        let mut counted = BufReader::new(Counting::new(
            resp.body,
            since.clone(),
            self.in_flight.clone(),
        ));
        if html || counted.fill_buf().is_ok_and(looks_like_html) {
            let mut start = Vec::new();
            let _ = (&mut counted).take(4096).read_to_end(&mut start);
            self.traffic.bytes_received += counted.get_ref().n;
            return Err(WireError::from(intercepted_page(&start)).into());
        }
        let mut per_record = |rec: SyncRecord| {
            since.set(0);
            each(rec)
        };
        let result = decode::decode_pull(&mut counted, &mut per_record);
        let reader = counted.into_inner();
        self.traffic.bytes_received += reader.n;
        self.in_flight.set(0);
        match result {
            Ok(h) => Ok(h),
            Err(PullError::Stopped(e)) => Err(e),
            Err(PullError::Broken {
                kind,
                detail,
                inside,
                before,
            }) => {
                if reader.record_too_large {
                    if let Some(record) = inside {
                        return Err(Unreadable {
                            record,
                            before,
                            why: format!("over {MAX_RECORD_BYTES_ON_WIRE} bytes on the wire"),
                        }
                        .into());
                    }
                }
                Err(match (kind, inside) {
                    // A record whose envelope has the wrong shape is that record's
                    // problem, not the page's: it is set aside by its ids.
                    (Broken::Data, Some(record)) => Unreadable {
                        record,
                        before,
                        why: detail,
                    }
                    .into(),
                    (Broken::Io, _) => WireError::from(
                        reader
                            .io_error
                            .unwrap_or_else(|| TransportError::interrupted(detail)),
                    )
                    .into(),
                    (Broken::Eof, _) => WireError::from(TransportError::interrupted(format!(
                        "{path}: the answer was cut off ({detail})"
                    )))
                    .into(),
                    (Broken::Syntax | Broken::Data, _) => WireError::from(ProtocolError::NotV5 {
                        path: path.to_string(),
                        detail,
                    })
                    .into(),
                })
            }
        }
    }

    pub fn acknowledge(&mut self, ids: &[String]) -> Result<(), WireError> {
        let body = serde_json::to_vec(&Acknowledge {
            sync_ids: ids.to_vec(),
        })
        .map_err(|e| ProtocolError::Violation(format!("encoding acknowledgement: {e}")))?;
        let resp = self.request(
            Method::Post,
            "/acknowledged_records",
            Some(&body),
            Timeouts::DEFAULT,
        )?;
        let (status, html) = (resp.status, is_html(&resp));
        let bytes = self.read_body(resp.body, MAX_SMALL_BODY)?;
        if !(200..300).contains(&status) {
            return Err(failure(status, html || looks_like_html(&bytes), &bytes));
        }
        Ok(())
    }
}

/// A non-2xx answer: an HTML page from something on the way (§9.4) unless it is
/// a gateway error of a proxy in front of the central, else the v5 error.
fn failure(status: u16, html: bool, body: &[u8]) -> WireError {
    if status == 511 || (html && !matches!(status, 500..=599)) {
        return intercepted_page(body).into();
    }
    protocol::error_from_response(status, body).into()
}

fn is_html(resp: &Response) -> bool {
    resp.header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().contains("html"))
}

/// A body whose first non-blank byte is `<`: a page, never a v5 answer.
fn looks_like_html(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<')
}

/// Names the page in a few words (its title when it has one) for the log.
fn intercepted_page(body: &[u8]) -> TransportError {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .and_then(|s| lower[s + 7..].find("</title>").map(|e| (s + 7, s + 7 + e)))
        .map(|(s, e)| protocol::sanitize(text[s..e].trim()));
    TransportError::Intercepted(match title {
        Some(t) => format!("an HTML page titled {t:?}"),
        None => "an HTML page".into(),
    })
}

/// A failed body read: our own transport's errors pass through; the rest is a cut link.
fn read_error(e: std::io::Error, what: &str) -> WireError {
    if e.get_ref().is_some_and(|i| i.is::<TransportError>()) {
        let inner = e.into_inner().expect("checked above");
        return WireError::Transport(*inner.downcast::<TransportError>().expect("checked above"));
    }
    TransportError::Interrupted {
        detail: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
    .into()
}

/// Counts body bytes, keeps the first read failure, and enforces the per-record
/// byte budget.
struct Counting<R> {
    inner: R,
    n: u64,
    io_error: Option<TransportError>,
    record_too_large: bool,
    since_record: Rc<Cell<u64>>,
    /// The same count as `n`, seen by the progress observer.
    seen: Rc<Cell<u64>>,
}

impl<R> Counting<R> {
    fn new(inner: R, since_record: Rc<Cell<u64>>, seen: Rc<Cell<u64>>) -> Self {
        Counting {
            inner,
            n: 0,
            io_error: None,
            record_too_large: false,
            since_record,
            seen,
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_RECORD_BYTES_ON_WIRE {
            self.record_too_large = true;
            return Err(std::io::Error::other(format!(
                "a single record is over {MAX_RECORD_BYTES_ON_WIRE} bytes; refusing to read on"
            )));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.n += n as u64;
                self.seen.set(self.n);
                self.since_record.set(self.since_record.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                let msg = e.to_string();
                if let WireError::Transport(t) = read_error(e, "reading the answer") {
                    self.io_error.get_or_insert(t);
                }
                Err(std::io::Error::other(msg))
            }
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// Up to a quarter of `d`, from the OS's random source; spreads a fleet.
pub fn jitter(d: Duration) -> Duration {
    let r = crate::wire::credentials::random_bytes()
        .map(|b| u64::from(b[0]) << 8 | u64::from(b[1]))
        .unwrap_or(0);
    let quarter = d.as_millis() as u64 / 4;
    if quarter == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(r % quarter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_recognised_and_named() {
        assert!(looks_like_html(b"  \n<!DOCTYPE html>"));
        assert!(!looks_like_html(br#"{"data":[]}"#));
        let e = intercepted_page(b"<html><head><TITLE>Hotel Wi-Fi login</TITLE></head>");
        assert!(e.to_string().contains("\"Hotel Wi-Fi login\""), "{e}");
        assert!(e.advice().unwrap().contains("sign in to the Wi-Fi"), "{e}");
        let e = failure(200, true, b"");
        assert_eq!(e.class(), crate::error::Class::Offline);
        assert_eq!(
            failure(502, true, b"<html>").class(),
            crate::error::Class::Transient
        );
        assert_eq!(
            failure(511, false, b"").class(),
            crate::error::Class::Offline
        );
    }
}
