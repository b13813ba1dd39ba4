//! The transport: the only module that touches ureq. It moves bytes for the client
//! (method, path, headers, body in; status and a body reader out) and turns link
//! failures into [`TransportError`]s. The [`Transport`] trait is the seam where tests
//! put a transport that fails on demand.
//!
//! What must hold: plain `http://` only to loopback unless the operator allowed it
//! (§2); TLS verifies certificates against the system roots; no header value is ever
//! formatted into an error.

use std::io::Read;
use std::time::Duration;

use crate::error::TransportError;

/// Connect timeout. Defaults to 15 s (§2): a 2G link with a cold radio takes several
/// seconds to set up a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Whole-request timeout. Defaults to 120 s (§2): one bounded batch over 2G.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response body read. Defaults to 64 MiB: a full pull batch is far below
/// this; above it the central misbehaves and we stop reading.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

pub struct Response {
    pub status: u16,
    pub body: Box<dyn Read>,
}

/// Moves one HTTP exchange. `path` is absolute and includes the query.
pub trait Transport {
    fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, TransportError>;
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

    pub fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h == "::1"
            || h.parse::<std::net::Ipv4Addr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false)
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

/// The real transport: ureq over TCP, TLS by rustls.
pub struct HttpTransport {
    origin: Origin,
    agent: ureq::Agent,
}

impl HttpTransport {
    pub fn new(origin: Origin) -> HttpTransport {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(system_roots())
            .build();
        let config = ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .https_only(origin.https)
            .tls_config(tls)
            .user_agent(format!("fieldsync/{}", crate::wire::protocol::APP_VERSION))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            SyncResolver,
        );
        HttpTransport { origin, agent }
    }
}

/// Resolves host names on the calling thread. ureq's default resolver starts a
/// thread per request whenever a timeout is set; the agent stays single-threaded
/// instead (one lookup per request through the system resolver, whose own
/// timeouts apply; the connect and request timeouts still bound the exchange).
#[derive(Debug)]
struct SyncResolver;

impl ureq::unversioned::resolver::Resolver for SyncResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        mut timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        timeout.after = ureq::unversioned::transport::time::Duration::NotHappening;
        ureq::unversioned::resolver::DefaultResolver::default().resolve(uri, config, timeout)
    }
}

/// The system's CA bundle (Debian, Raspberry Pi OS, Alpine), else the Mozilla roots
/// built into the binary.
fn system_roots() -> ureq::tls::RootCerts {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ];
    for path in BUNDLES {
        if let Ok(pem) = std::fs::read(path) {
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if !certs.is_empty() {
                return ureq::tls::RootCerts::new_with_certs(&certs);
            }
        }
    }
    ureq::tls::RootCerts::WebPki
}

impl Transport for HttpTransport {
    fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let url = self.origin.url(path);
        let result = match method {
            Method::Get => {
                let mut req = self
                    .agent
                    .get(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build();
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            Method::Post => {
                let mut req = self
                    .agent
                    .post(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .header("Content-Type", "application/json");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.unwrap_or(b"{}"))
            }
        };
        let resp = result.map_err(map_error)?;
        let status = resp.status().as_u16();
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(MAX_RESPONSE_BYTES)
            .reader();
        Ok(Response {
            status,
            body: Box::new(LimitError(reader)),
        })
    }
}

/// Makes a body read past the limit say so, instead of ureq's generic io error.
struct LimitError<R>(R);

impl<R: Read> Read for LimitError<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.to_string().contains("limit") {
                std::io::Error::other(TransportError::TooLarge(MAX_RESPONSE_BYTES).to_string())
            } else {
                e
            }
        })
    }
}

fn map_error(e: ureq::Error) -> TransportError {
    use ureq::Error as E;
    match e {
        E::HostNotFound => TransportError::Unreachable("host not found (DNS)".into()),
        E::ConnectionFailed => TransportError::Unreachable("connection failed".into()),
        E::Timeout(t) => {
            let what = format!("{t:?}").to_lowercase();
            if what.contains("connect") || what.contains("resolve") {
                TransportError::Unreachable(format!("timed out ({what})"))
            } else {
                TransportError::Interrupted(format!("timed out ({what})"))
            }
        }
        E::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::HostUnreachable => TransportError::Unreachable(io.to_string()),
            _ => TransportError::Interrupted(io.to_string()),
        },
        E::BadUri(u) => TransportError::BadUrl(u),
        E::Tls(m) => TransportError::Interrupted(format!("TLS: {m}")),
        other => TransportError::Interrupted(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
