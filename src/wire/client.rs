//! The v5 client: typed calls of protocol §3 over a [`Transport`], with the headers
//! every request carries (§2), the retry rule for transient failures, what counts
//! as the network answering instead of the central (§9.4), and counters of what
//! crossed the link for the sync report.
//!
//! It knows nothing of the store: a pull answer comes back as a [`Page`], read
//! whole off the link (bounded, spilled to a temporary file when large), which
//! the cycle then decodes record by record into the store.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::wire::credentials::Secret;
use crate::wire::page::Page;
use crate::wire::protocol::{self, Acknowledge};
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
/// Retries of a request that stalled (no byte for the no-progress timeout).
const MAX_STALL_RETRIES: usize = 1;
/// Largest JSON answer decoded whole (site, status, push answers): they are tiny.
const MAX_SMALL_BODY: u64 = 1 << 20;
/// What crossed the link, for the report and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
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

/// The response header by which a central advertises this project's
/// extensions [PC].
pub const VERIFY_HEADER: &str = "fieldsync-extensions";
/// The response header by which this project's central names its epoch [PC].
pub const EPOCH_HEADER: &str = "fieldsync-epoch";
/// … and where its change log ends, on a `central_records` answer [PC].
pub const LOG_END_HEADER: &str = "fieldsync-log-end";

/// Push bodies above this are gzipped for a central that takes them (§9.1).
pub const GZIP_PUSH_ABOVE: usize = 1024;

pub struct Client<T: Transport> {
    transport: T,
    auth: Secret,
    hardware_id: String,
    retry_delays: Vec<Duration>,
    clock: Arc<dyn Clock>,
    traffic: Traffic,
    /// Bytes of the pull page being read, as they arrive (added to `traffic`
    /// when the page ends): a progress line moves during a long page.
    in_flight: Rc<Cell<u64>>,
    /// What the central said of gzip bodies; the cycle keeps it between syncs
    /// (local data).
    gzip: Gzip,
    /// The central answered with this project's verification extension
    /// advertised [PC] (`Fieldsync-Extensions: verify`).
    verifies: bool,
    /// … and its comparison (`compare` in the same header).
    compares: bool,
    /// The central's epoch (`Fieldsync-Epoch` [PC]) from its last answer.
    epoch: Option<String>,
    /// Where its change log ends (`Fieldsync-Log-End` [PC]), from the last
    /// `central_records` answer.
    log_end: Option<u64>,
    /// The transport's link counts when this cycle's counting started.
    wire_base: Option<crate::wire::transport::Wire>,
}

impl<T: Transport> Client<T> {
    pub fn new(
        transport: T,
        auth: Secret,
        hardware_id: String,
        clock: Arc<dyn Clock>,
    ) -> Client<T> {
        let wire_base = transport.wire();
        Client {
            transport,
            auth,
            hardware_id,
            retry_delays: RETRY_DELAYS.to_vec(),
            clock,
            traffic: Traffic::default(),
            in_flight: Rc::default(),
            gzip: Gzip::Unknown,
            verifies: false,
            compares: false,
            epoch: None,
            log_end: None,
            wire_base,
        }
    }

    /// Replaces the retry delays (tests use none, or short ones).
    pub fn with_retry_delays(mut self, delays: Vec<Duration>) -> Client<T> {
        self.retry_delays = delays;
        self
    }

    /// What crossed the link since [`Client::start_counting`]: as the
    /// connection carried it where the transport counts that (heads
    /// included, gzip bodies compressed), else the bodies as read.
    pub fn traffic(&self) -> Traffic {
        let mut t = self.traffic;
        if let (Some(now), Some(base)) = (self.transport.wire(), self.wire_base) {
            t.bytes_sent = now.sent.saturating_sub(base.sent);
            t.bytes_received = now.received.saturating_sub(base.received);
        }
        t
    }

    /// Starts the counts of a new cycle.
    pub fn start_counting(&mut self) {
        self.traffic = Traffic::default();
        self.wire_base = self.transport.wire();
    }

    /// Whether the central advertised this project's verification extension
    /// [PC]; never called on one that did not.
    pub fn verifies(&self) -> bool {
        self.verifies
    }

    /// Whether the central advertised this project's compare extension [PC].
    pub fn compares(&self) -> bool {
        self.compares
    }

    /// The epoch the central's last answer carried [PC]; it changes when the
    /// central finds its database restored from an older copy.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Where the central's change log ends, as its last `central_records`
    /// answer said [PC] (a central without the extension: `None`).
    pub fn log_end(&self) -> Option<u64> {
        self.log_end
    }

    pub fn gzip(&self) -> Gzip {
        self.gzip
    }

    /// What an earlier cycle learned of the central's gzip bodies (§9.1).
    pub fn remember_gzip(&mut self, g: Gzip) {
        if self.gzip == Gzip::Unknown {
            self.gzip = g;
        }
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
        let mut stalls = 0;
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
                // A 503 with Retry-After: a central turning requests away
                // while it is full (§10.9 `server_busy`), not one site's sync.
                Ok(r) => {
                    matches!(r.status, 408 | 502 | 504)
                        || (r.status == 503 && r.header("retry-after").is_some())
                }
                // A silent central is tried twice, not four times (issue 32):
                // each stall is a whole no-progress timeout of waiting.
                Err(e @ TransportError::Interrupted { .. }) => {
                    stalls += usize::from(e.is_stall());
                    stalls <= MAX_STALL_RETRIES
                }
                Err(_) => false,
            };
            if retryable && attempt < self.retry_delays.len() {
                let delay = self.retry_delays[attempt];
                log::debug!(
                    "{path}: transient failure, retry {} in {delay:?}",
                    attempt + 1
                );
                self.clock.sleep(delay + crate::clock::jitter(delay));
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
            if let Some(v) = resp.header(VERIFY_HEADER) {
                let has = |name: &str| v.split(',').any(|e| e.trim().eq_ignore_ascii_case(name));
                self.verifies |= has("verify");
                self.compares |= has("compare");
            }
            if let Some(n) = resp.header(LOG_END_HEADER) {
                self.log_end = n.trim().parse().ok();
            }
            if let Some(e) = resp.header(EPOCH_HEADER) {
                let e = e.trim();
                if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    self.epoch = Some(e.to_string());
                }
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

    /// The bytes of the page being read, as they arrive (see `in_flight`).
    pub fn in_flight(&self) -> Rc<Cell<u64>> {
        self.in_flight.clone()
    }

    /// One page of the central-data change log after `cursor` (§3), read whole.
    pub fn central_records(&mut self, cursor: u64, limit: u32) -> Result<Page, WireError> {
        self.log_end = None;
        self.page(&format!("/central_records?cursor={cursor}&limit={limit}"))
    }

    /// One page of this site's queue (§3), read whole.
    pub fn queued_records(&mut self, limit: u32) -> Result<Page, WireError> {
        self.page(&format!("/queued_records?limit={limit}"))
    }

    /// A pull answer, read off the link into a [`Page`] before anything of it
    /// is applied (see [`crate::wire::page`]).
    fn page(&mut self, path: &str) -> Result<Page, WireError> {
        let resp = self.request(Method::Get, path, None, Timeouts::DEFAULT)?;
        let html = is_html(&resp);
        let status = resp.status;
        if !(200..300).contains(&status) {
            let bytes = self.read_body(resp.body, MAX_SMALL_BODY)?;
            return Err(failure(status, html || looks_like_html(&bytes), &bytes));
        }
        self.in_flight.set(0);
        let read = Page::read(path, resp.body, &self.in_flight);
        self.traffic.bytes_received += self.in_flight.get();
        self.in_flight.set(0);
        let mut page = read?;
        if html || page.starts_with_markup() {
            return Err(intercepted_page(&page.head()).into());
        }
        Ok(page)
    }

    /// Asks the central to queue its copies of `records` (table, id) again
    /// [PC]; what it did with each. Only for a central that advertised it.
    pub fn requeue(
        &mut self,
        records: &[(String, String)],
    ) -> Result<Vec<(protocol::RecordKey, protocol::Requeued)>, WireError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "records": records
                .iter()
                .map(|(t, id)| serde_json::json!({"tableName": t, "recordId": id}))
                .collect::<Vec<_>>()
        }))
        .map_err(|e| ProtocolError::Violation(format!("encoding a requeue request: {e}")))?;
        let answer: protocol::RequeueAnswer = self.json(
            Method::Post,
            "/fieldsync/requeue",
            Some(&body),
            Timeouts::DEFAULT,
        )?;
        Ok(answer.records)
    }

    /// Sends the site's summaries of `nodes` [PC] and returns the central's
    /// word on each. Only for a central that advertised `compare`.
    pub fn compare(
        &mut self,
        root: bool,
        nodes: Vec<protocol::Node>,
    ) -> Result<protocol::CompareAnswer, WireError> {
        let body = serde_json::to_vec(&protocol::CompareRequest { root, nodes })
            .map_err(|e| ProtocolError::Violation(format!("encoding a compare request: {e}")))?;
        self.json(
            Method::Post,
            "/fieldsync/compare",
            Some(&body),
            Timeouts::DEFAULT,
        )
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
    // A v5 central answers its own 404s with a v5 error; anything else is
    // another web server at that address and port.
    if status == 404 && !protocol::is_error_body(body) {
        return TransportError::NotTheCentral(format!(
            "something else answers at that address (HTTP 404{}, not a v5 central)",
            if html { ", a web page" } else { "" }
        ))
        .into();
    }
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
pub(super) fn looks_like_html(body: &[u8]) -> bool {
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
pub(super) fn read_error(e: std::io::Error, what: &str) -> WireError {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that fails every call the same way, counting them.
    struct Failing(fn() -> TransportError, usize);

    impl Transport for Failing {
        fn call(&mut self, _: &Request<'_>) -> Result<Response, TransportError> {
            self.1 += 1;
            Err((self.0)())
        }
    }

    #[test]
    fn a_stall_is_retried_once_and_a_cut_link_three_times() {
        for (fail, calls) in [
            (TransportError::stalled as fn() -> TransportError, 2),
            (|| TransportError::interrupted("connection reset"), 4),
            (|| TransportError::unreachable("refused"), 1),
        ] {
            let clock = Arc::new(crate::clock::Virtual::default());
            let mut c = Client::new(
                Failing(fail, 0),
                crate::wire::credentials::Secret::new("x".into()),
                "HW".into(),
                clock.clone(),
            );
            assert!(c.site().is_err());
            assert_eq!(c.transport.1, calls, "{}", fail());
        }
    }

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
