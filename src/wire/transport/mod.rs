//! The transport: the only module that touches ureq. It moves bytes for the client
//! (method, path, headers, body in; status, headers and a body reader out) and turns
//! link failures into [`TransportError`]s classified by ureq's and rustls's own
//! error variants, never by their message text. The [`Transport`] trait is the seam
//! where tests put an in-process central or a transport that fails on demand.
//!
//! What must hold: plain `http://` only to loopback unless the operator allowed it
//! (§2); TLS verifies certificates against the system roots (plus an operator's CA
//! file); no header value is ever formatted into an error.

mod error;

pub(crate) use error::map_error;
pub use error::{Certificate, TransportError};

use super::resolve::{self, Dns};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connect timeout. Defaults to 15 s (§2): a 2G link with a cold radio takes several
/// seconds to set up a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A request fails when not one byte moved either way for this long. Defaults to
/// 60 s (§2 rev 2, §9.3): a slow link that still moves bytes is not a dead one — a
/// 1 MB page over 40 kbit/s GPRS takes 200 s and must arrive.
pub const NO_PROGRESS: Duration = Duration::from_secs(60);
/// Hard cap on one request. Defaults to 30 min (§2 rev 2).
pub const REQUEST_CAP: Duration = Duration::from_secs(30 * 60);
/// Largest response body read. Defaults to 64 MiB: a full pull page is far below
/// this; above it the central misbehaves and we stop reading.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// How long one request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No byte moved either way for this long: the link is dead.
    pub no_progress: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

impl Timeouts {
    /// The rev 2 default: no progress for 60 s, 30 min in all.
    pub const DEFAULT: Timeouts = Timeouts {
        no_progress: NO_PROGRESS,
        total: REQUEST_CAP,
    };
}

/// One HTTP exchange as the client asks for it. `path` is absolute with its query.
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeouts: Timeouts,
}

pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Moves one HTTP exchange.
pub trait Transport {
    fn call(&mut self, req: &Request<'_>) -> Result<Response, TransportError>;

    /// Bytes that crossed the link so far, both ways, as the connection
    /// carried them (heads included, bodies as sent: compressed when they
    /// were) — what a metered link bills. `None` where there is no link.
    fn wire(&self) -> Option<Wire> {
        None
    }
}

/// Bytes on the link since the transport was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub sent: u64,
    pub received: u64,
}

/// Parsed `scheme://host[:port]`; the path of a configured base URL is dropped, as
/// existing clients do (§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn parse(url: &str, allow_insecure: bool) -> Result<Origin, TransportError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(TransportError::BadUrl(format!(
                "{url:?} must start with https:// or http://"
            )));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(TransportError::BadUrl(
                "credentials do not belong in the URL; use `fieldsync init`".into(),
            ));
        }
        let (host, port) =
            split_host_port(authority, if https { 443 } else { 80 }).ok_or_else(|| {
                TransportError::BadUrl(format!("{url:?} has no usable host and port"))
            })?;
        let origin = Origin { https, host, port };
        if !https && !allow_insecure && !origin.is_loopback() {
            return Err(TransportError::BadUrl(format!(
                "refusing plain http:// to {}: credentials would cross the network unencrypted; use https:// \
                 (or `fieldsync init --allow-insecure-http` on a test network)",
                origin.host
            )));
        }
        Ok(origin)
    }

    /// The path after the host in `url`, when it has one other than `/`:
    /// dropped (see above), and `init` says so rather than drop it unseen.
    pub fn path_in(url: &str) -> Option<&str> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let after = &rest[authority.len()..];
        (!after.is_empty() && after != "/").then_some(after)
    }

    pub fn is_loopback(&self) -> bool {
        let h = self.bare_host();
        h == "localhost"
            || h == "::1"
            || h.parse::<std::net::Ipv4Addr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false)
    }

    /// The host without IPv6 brackets.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}:{}{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.port,
            path
        )
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = format!("[{}]", &rest[..end]);
        let port = match &rest[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), default_port)),
    }
}

/// TLS settings an operator may give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Extra CA certificates (PEM) trusted beside the system's: a central with a
    /// private CA.
    pub ca_file: Option<PathBuf>,
}

/// How the transport reaches the central: TLS trust and name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub tls: Tls,
    pub dns: Dns,
}

/// The real transport: ureq over TCP, TLS by rustls.
pub struct HttpTransport {
    origin: Origin,
    agent: ureq::Agent,
    /// What every connection of `agent` carried ([`Counting`]).
    counts: Arc<Counts>,
}

impl HttpTransport {
    pub fn new(origin: Origin, net: &Network) -> Result<HttpTransport, TransportError> {
        let tls = &net.tls;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = ureq::tls::TlsConfig::builder()
            .unversioned_rustls_crypto_provider(provider)
            .root_certs(if origin.https {
                roots(tls)?
            } else {
                ureq::tls::RootCerts::new_with_certs(&[])
            })
            .build();
        let config = ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .max_redirects(0)
            // A redirect is answered by a captive portal, not by a central; the
            // client sees the 3xx itself (§9.4).
            .https_only(origin.https)
            .tls_config(tls)
            .user_agent(format!("fieldsync/{}", crate::wire::protocol::APP_VERSION))
            .build();
        let counts = Arc::new(Counts::default());
        let agent = ureq::Agent::with_parts(
            config,
            Counting {
                inner: ureq::unversioned::transport::DefaultConnector::new(),
                counts: counts.clone(),
            },
            SyncResolver(net.dns.clone()),
        );
        Ok(HttpTransport {
            origin,
            agent,
            counts,
        })
    }
}

/// Bytes through every connection of one transport.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
}

/// ureq's own connector chain (TCP, TLS), each connection wrapped so that
/// the bytes it carries are counted: the pull progress and the reports show
/// bytes as the link carried them, not as they were after decompression
/// (issue 29: a rate 3–4× the link's is no help on a metered link).
#[derive(Debug)]
struct Counting {
    inner: ureq::unversioned::transport::DefaultConnector,
    counts: Arc<Counts>,
}

impl ureq::unversioned::transport::Connector for Counting {
    type Out = Box<dyn ureq::unversioned::transport::Transport>;

    fn connect(
        &self,
        details: &ureq::unversioned::transport::ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(self.inner.connect(details, chained)?.map(|t| {
            Box::new(Counted {
                inner: t,
                counts: self.counts.clone(),
            }) as Self::Out
        }))
    }
}

#[derive(Debug)]
struct Counted {
    inner: Box<dyn ureq::unversioned::transport::Transport>,
    counts: Arc<Counts>,
}

impl ureq::unversioned::transport::Transport for Counted {
    fn buffers(&mut self) -> &mut dyn ureq::unversioned::transport::Buffers {
        self.inner.buffers()
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<(), ureq::Error> {
        self.counts.sent.fetch_add(amount as u64, Ordering::Relaxed);
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(
        &mut self,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<bool, ureq::Error> {
        // What was there and not yet consumed stays; the growth is what arrived.
        let before = self.inner.buffers().input().len();
        let progress = self.inner.await_input(timeout)?;
        let after = self.inner.buffers().input().len();
        self.counts
            .received
            .fetch_add(after.saturating_sub(before) as u64, Ordering::Relaxed);
        Ok(progress)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// Resolves host names on the calling thread. ureq's default resolver starts a
/// thread per request whenever a timeout is set; the agent stays single-threaded
/// instead (one lookup per request through the system resolver, whose own
/// timeouts apply, or through our own DNS client: see `resolve`; the connect and
/// request timeouts still bound the exchange).
#[derive(Debug)]
struct SyncResolver(Dns);

impl ureq::unversioned::resolver::Resolver for SyncResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        mut timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        timeout.after = ureq::unversioned::transport::time::Duration::NotHappening;
        let Dns::Servers(_) = &self.0 else {
            return ureq::unversioned::resolver::DefaultResolver::default()
                .resolve(uri, config, timeout);
        };
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let addrs = resolve::lookup(host, port, &self.0, CONNECT_TIMEOUT).map_err(|e| {
            log::debug!("{e}");
            ureq::Error::HostNotFound
        })?;
        let mut out = self.empty();
        for a in addrs.into_iter().take(16) {
            out.push(a);
        }
        Ok(out)
    }
}

/// Where devices keep their trusted CAs: Debian/Raspberry Pi OS, Fedora, Alpine,
/// Termux; Android keeps one PEM file per CA in a directory.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/data/data/com.termux/files/usr/etc/tls/cert.pem",
];
const CA_DIRS: &[&str] = &["/system/etc/security/cacerts", "/etc/ssl/certs"];

/// The device's trusted CAs plus the operator's CA file. No roots are compiled
/// in (they would be stale on a device that lives for years, and cost the binary
/// 60 KB); a device without any is told what to install.
fn roots(tls: &Tls) -> Result<ureq::tls::RootCerts, TransportError> {
    let pem_certs = |pem: &[u8]| -> Vec<ureq::tls::Certificate<'static>> {
        ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect()
    };
    let prefix_bundle = std::env::var("PREFIX")
        .ok()
        .map(|p| format!("{p}/etc/tls/cert.pem"));
    let mut certs: Vec<_> = CA_BUNDLES
        .iter()
        .map(|p| p.to_string())
        .chain(prefix_bundle)
        .filter_map(|p| std::fs::read(p).ok())
        .map(|pem| pem_certs(&pem))
        .find(|c| !c.is_empty())
        .unwrap_or_default();
    if certs.is_empty() {
        for dir in CA_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(pem) = std::fs::read(e.path()) {
                    certs.extend(pem_certs(&pem));
                }
            }
            if !certs.is_empty() {
                break;
            }
        }
    }
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| TransportError::BadUrl(format!("CA file {}: {e}", path.display())))?;
        let extra = pem_certs(&pem);
        if extra.is_empty() {
            return Err(TransportError::BadUrl(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        certs.extend(extra);
    }
    if certs.is_empty() {
        return Err(TransportError::BadUrl(format!(
            "this device has no trusted CA certificates (looked in {} and {}): install the \
             ca-certificates package, or give the central's CA with `fieldsync config set ca_file PATH`",
            CA_BUNDLES.join(", "),
            CA_DIRS.join(", ")
        )));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

impl Transport for HttpTransport {
    fn wire(&self) -> Option<Wire> {
        Some(Wire {
            sent: self.counts.sent.load(Ordering::Relaxed),
            received: self.counts.received.load(Ordering::Relaxed),
        })
    }

    fn call(&mut self, req: &Request<'_>) -> Result<Response, TransportError> {
        let url = self.origin.url(req.path);
        // No progress for `no_progress` either way fails the request (rev 2); the
        // whole exchange is capped at `total`.
        let (total, idle) = (Some(req.timeouts.total), Some(req.timeouts.no_progress));
        let result = match req.method {
            Method::Get => {
                let mut r = self
                    .agent
                    .get(&url)
                    .config()
                    .timeout_global(total)
                    .timeout_per_read(idle)
                    .timeout_per_write(idle)
                    .build();
                for (k, v) in req.headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            Method::Post => {
                let mut r = self
                    .agent
                    .post(&url)
                    .config()
                    .timeout_global(total)
                    .timeout_per_read(idle)
                    .timeout_per_write(idle)
                    .build()
                    .header("Content-Type", "application/json");
                for (k, v) in req.headers {
                    r = r.header(*k, *v);
                }
                r.send(req.body.unwrap_or(b"{}"))
            }
        };
        let resp = result.map_err(map_error)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(MAX_RESPONSE_BYTES)
            .reader();
        Ok(Response {
            status,
            headers,
            body: Box::new(BodyErrors(reader)),
        })
    }
}

/// Turns ureq errors met while reading a body (wrapped in io::Error) into our own,
/// so the client sees "too large" and "no progress" as such.
struct BodyErrors<R>(R);

impl<R: Read> Read for BodyErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let kind = e.kind();
            match ureq::Error::from(e) {
                ureq::Error::Io(io) => io,
                other => std::io::Error::new(kind, map_error(other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Class;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(Origin::parse("http://127.0.0.1:8080/base", false).is_ok());
        assert!(Origin::parse("http://localhost", false).is_ok());
        assert!(Origin::parse("http://[::1]:9", false).is_ok());
        let e = Origin::parse("http://central.example.org", false).unwrap_err();
        assert!(e.to_string().contains("refusing plain http://"), "{e}");
        assert!(Origin::parse("http://central.example.org", true).is_ok());
        assert!(Origin::parse("https://central.example.org/x", false).is_ok());
        assert!(Origin::parse("ftp://x", false).is_err());
        assert!(Origin::parse("https://user:pw@x", false).is_err());
    }

    #[test]
    fn base_path_is_dropped() {
        let o = Origin::parse("https://c.example.org:8443/msupply/", false).unwrap();
        assert_eq!(
            o.url("/sync/v5/site"),
            "https://c.example.org:8443/sync/v5/site"
        );
    }

    #[test]
    fn errors_are_classified_by_variant() {
        use ureq::Error as E;
        assert_eq!(map_error(E::HostNotFound).class(), Class::Offline);
        assert_eq!(
            map_error(E::Timeout(ureq::Timeout::Connect)).class(),
            Class::Offline
        );
        let stalled = map_error(E::Timeout(ureq::Timeout::PerRead));
        assert_eq!(stalled.class(), Class::Transient);
        assert!(
            stalled.to_string().contains("no progress for 60 s"),
            "{stalled}"
        );
        assert!(matches!(
            map_error(E::BodyExceedsLimit(9)),
            TransportError::TooLarge(9)
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(map_error(E::Io(refused)).class(), Class::Offline);
        let cert = |c| {
            let io = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(c),
            );
            map_error(E::Io(io))
        };
        let e = cert(rustls::CertificateError::NotValidYet);
        assert!(matches!(
            e,
            TransportError::Certificate(Certificate::Time { expired: false })
        ));
        assert!(e.to_string().contains("device's clock"), "{e}");
        assert!(e.advice().unwrap().contains("set the time or check NTP"));
        let e = cert(rustls::CertificateError::UnknownIssuer);
        assert_eq!(e.class(), Class::Offline);
        assert!(e.advice().unwrap().contains("private CA"), "{e}");
    }
}
