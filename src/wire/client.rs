//! The v5 client: typed calls of protocol §3 over a [`Transport`], with the headers
//! every request carries (§2), the retry rule for transient failures, and counters
//! of what crossed the link for the sync report.
//!
//! It knows nothing of the store: pulls hand each decoded record to a callback, so
//! the cycle decides where records go and memory holds one record at a time.

use std::io::Read;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{ProtocolError, SyncError, TransportError};
use crate::wire::credentials::Secret;
use crate::wire::protocol::{self, Acknowledge, PullHeader, SyncRecord};
use crate::wire::transport::{Method, Transport};

/// Retry delays for connection errors, timeouts, 408, 502 and 504 (§2: three
/// retries after 2, 4 and 8 s, plus jitter).
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];
/// Timeout of `POST /initialise`, which blocks while the central builds the queue
/// (§5 step 2). Defaults to 10 minutes.
pub const INITIALISE_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest JSON answer decoded whole (site, status, push answers): they are tiny.
const MAX_SMALL_BODY: u64 = 1 << 20;

/// What crossed the link, for the report and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

pub struct Client<T: Transport> {
    transport: T,
    auth: Secret,
    hardware_id: String,
    retry_delays: Vec<Duration>,
    pub traffic: Traffic,
}

impl<T: Transport> Client<T> {
    pub fn new(transport: T, auth: Secret, hardware_id: String) -> Client<T> {
        Client {
            transport,
            auth,
            hardware_id,
            retry_delays: RETRY_DELAYS.to_vec(),
            traffic: Traffic::default(),
        }
    }

    /// Replaces the retry delays (tests use none, or zero-length ones).
    pub fn with_retry_delays(mut self, delays: Vec<Duration>) -> Client<T> {
        self.retry_delays = delays;
        self
    }

    /// One request with the §2 headers; retried on transient link failures and on
    /// 408/502/504 (every v5 request is safe to repeat). Returns the status and body.
    fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(u16, Box<dyn Read>), SyncError> {
        let version = protocol::API_VERSION.to_string();
        let headers = [
            ("Authorization", self.auth.expose()),
            ("msupply-site-uuid", self.hardware_id.as_str()),
            ("app-version", protocol::APP_VERSION),
            ("app-name", protocol::APP_NAME),
            ("version", version.as_str()),
        ];
        let full_path = format!("{}{path}", protocol::PREFIX);
        let mut attempt = 0;
        loop {
            self.traffic.requests += 1;
            self.traffic.bytes_sent += body.map_or(0, |b| b.len() as u64);
            let outcome = self
                .transport
                .call(method, &full_path, &headers, body, timeout);
            let retryable = match &outcome {
                Ok(r) => matches!(r.status, 408 | 502 | 504),
                Err(TransportError::Interrupted(_)) => true,
                Err(_) => false,
            };
            if retryable && attempt < self.retry_delays.len() {
                let delay = self.retry_delays[attempt];
                log::debug!(
                    "{path}: transient failure, retry {} in {delay:?}",
                    attempt + 1
                );
                std::thread::sleep(delay + jitter(delay));
                attempt += 1;
                continue;
            }
            let resp = outcome?;
            return Ok((resp.status, resp.body));
        }
    }

    /// A request whose answer is a small JSON object.
    fn json<R: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<R, SyncError> {
        let (status, reader) = self.request(method, path, body, timeout)?;
        let bytes = self.read_body(reader, MAX_SMALL_BODY)?;
        if !(200..300).contains(&status) {
            return Err(protocol::error_from_response(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ProtocolError::Violation(format!("{path}: answer is not the expected JSON ({e})"))
                .into()
        })
    }

    fn read_body(&mut self, reader: Box<dyn Read>, limit: u64) -> Result<Vec<u8>, SyncError> {
        let mut bytes = Vec::new();
        let n = reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| TransportError::Interrupted(format!("reading the answer: {e}")))?;
        self.traffic.bytes_received += n as u64;
        if n as u64 > limit {
            return Err(TransportError::TooLarge(limit).into());
        }
        Ok(bytes)
    }

    pub fn site(&mut self) -> Result<protocol::SiteInfo, SyncError> {
        self.json(
            Method::Get,
            "/site",
            None,
            crate::wire::transport::REQUEST_TIMEOUT,
        )
    }

    pub fn initialise(&mut self) -> Result<protocol::InitialiseResponse, SyncError> {
        self.json(Method::Post, "/initialise", Some(b"{}"), INITIALISE_TIMEOUT)
    }

    pub fn site_status(&mut self) -> Result<protocol::SiteStatus, SyncError> {
        self.json(
            Method::Get,
            "/site_status",
            None,
            crate::wire::transport::REQUEST_TIMEOUT,
        )
    }

    /// Sends one push body (already encoded by the batch) and returns
    /// `integrationStarted`.
    pub fn push(&mut self, body: &[u8]) -> Result<bool, SyncError> {
        let r: protocol::PushResponse = self.json(
            Method::Post,
            "/queued_records",
            Some(body),
            crate::wire::transport::REQUEST_TIMEOUT,
        )?;
        Ok(r.integration_started)
    }

    pub fn central_records(
        &mut self,
        cursor: u64,
        limit: u32,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), String>,
    ) -> Result<PullHeader, SyncError> {
        let path = format!("/central_records?cursor={cursor}&limit={limit}");
        self.pull(&path, each)
    }

    pub fn queued_records(
        &mut self,
        limit: u32,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), String>,
    ) -> Result<PullHeader, SyncError> {
        let path = format!("/queued_records?limit={limit}");
        self.pull(&path, each)
    }

    fn pull(
        &mut self,
        path: &str,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), String>,
    ) -> Result<PullHeader, SyncError> {
        let (status, reader) = self.request(
            Method::Get,
            path,
            None,
            crate::wire::transport::REQUEST_TIMEOUT,
        )?;
        if !(200..300).contains(&status) {
            let bytes = self.read_body(reader, MAX_SMALL_BODY)?;
            return Err(protocol::error_from_response(status, &bytes).into());
        }
        // Per-record byte budget: once one record has taken more than
        // MAX_RECORD_BYTES_ON_WIRE without completing, the reader refuses to read
        // on, so a single giant or endless record cannot grow memory.
        let since = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut counted = Counting::new(reader, since.clone());
        let mut per_record = |rec: SyncRecord| {
            since.set(0);
            each(rec)
        };
        let result = protocol::decode_pull(&mut counted, &mut per_record);
        self.traffic.bytes_received += counted.n;
        result.map_err(|m| {
            if counted.io_failed {
                TransportError::Interrupted(format!("{path}: {m}")).into()
            } else {
                ProtocolError::Violation(format!("{path}: {m}")).into()
            }
        })
    }

    pub fn acknowledge(&mut self, ids: &[String]) -> Result<(), SyncError> {
        let body = serde_json::to_vec(&Acknowledge {
            sync_ids: ids.to_vec(),
        })
        .map_err(|e| ProtocolError::Violation(format!("encoding acknowledgement: {e}")))?;
        let (status, reader) = self.request(
            Method::Post,
            "/acknowledged_records",
            Some(&body),
            crate::wire::transport::REQUEST_TIMEOUT,
        )?;
        let bytes = self.read_body(reader, MAX_SMALL_BODY)?;
        if !(200..300).contains(&status) {
            return Err(protocol::error_from_response(status, &bytes).into());
        }
        Ok(())
    }
}

/// Counts body bytes and remembers whether a read failed (a cut link), so a broken
/// connection is reported as transient rather than as the central's fault.
struct Counting<R> {
    inner: R,
    n: u64,
    io_failed: bool,
    since_record: std::rc::Rc<std::cell::Cell<u64>>,
}

/// Bytes one record may take on the wire (escapes included) before decoding is
/// abandoned: twice the store's record limit.
const MAX_RECORD_BYTES_ON_WIRE: u64 = 2 * crate::store::MAX_RECORD_BYTES as u64;

impl<R> Counting<R> {
    fn new(inner: R, since_record: std::rc::Rc<std::cell::Cell<u64>>) -> Self {
        Counting {
            inner,
            n: 0,
            io_failed: false,
            since_record,
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_RECORD_BYTES_ON_WIRE {
            return Err(std::io::Error::other(format!(
                "a single record is over {MAX_RECORD_BYTES_ON_WIRE} bytes; refusing to read on"
            )));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.n += n as u64;
                self.since_record.set(self.since_record.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                self.io_failed = true;
                Err(e)
            }
        }
    }
}

/// Up to a quarter of `d`, from the process's clock-free entropy; spreads a fleet.
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
