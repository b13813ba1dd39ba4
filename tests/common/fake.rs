//! A fake HTTP/1.1 server for the tests that need a central to misbehave on
//! purpose (hostile bodies, strict header checks): each request is handed to a
//! closure that returns the status, extra headers and body. Keep-alive, one
//! thread per connection, `Content-Length` bodies only — what the agent sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// One request as the fake saw it.
pub struct Request {
    pub method: String,
    /// Path with its query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the `/sync/v5` prefix and without the query.
    pub fn endpoint(&self) -> &str {
        let path = self.target.split('?').next().unwrap_or("");
        path.strip_prefix("/sync/v5").unwrap_or(path)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }
    pub fn raw(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![],
            body,
        }
    }
    pub fn with(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Serves `handler` on 127.0.0.1:0 until the test process ends.
pub fn serve(handler: Handler) -> SocketAddr {
    start(handler, None)
}

/// The same over TLS with this certificate chain and key (DER).
pub fn serve_tls(handler: Handler, chain: Vec<Vec<u8>>, key: Vec<u8>) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    start(handler, Some(Arc::new(config)))
}

fn start(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let (handler, tls) = (handler.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                None => exchange(stream, &handler),
                Some(config) => {
                    let Ok(server) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    exchange(rustls::StreamOwned::new(server, stream), &handler)
                }
            });
        }
    });
    addr
}

/// Requests and answers on one connection until it closes.
fn exchange<S: Read + Write>(stream: S, handler: &Handler) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = handler(&Request {
            method,
            target,
            headers,
            body,
        });
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let w = reader.get_mut();
        if w.write_all(head.as_bytes()).is_err()
            || w.write_all(&reply.body).is_err()
            || w.flush().is_err()
        {
            return;
        }
    }
}

/// Hands `req` (with `body`, already inflated) to the central in process, as
/// its own server would, and its answer back.
pub fn forward(central: &fieldsync::central::Central, req: &Request, body: Vec<u8>) -> Reply {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let r = central.handle(&fieldsync::central::api::Request {
        method: req.method.clone(),
        path: path.to_string(),
        query: query.to_string(),
        headers: req.headers.clone(),
        body,
    });
    Reply {
        status: r.status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: r.body,
    }
}

/// A recording HTTP front of a real central: each request is handed to the
/// central in process (gzip bodies inflated, as its own server would), and the
/// fake remembers every request as "METHOD /endpoint" (with " gzip" when the
/// body came compressed). `advertise`: say `Accept-Encoding: gzip` on answers;
/// `refuse_gzip`: answer a compressed body with 415, as a legacy proxy might.
pub struct Front {
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    pub addr: SocketAddr,
}

pub fn front(central: fieldsync::central::Central, advertise: bool, refuse_gzip: bool) -> Front {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let addr = serve(Arc::new(move |req: &Request| {
        let gz = req.header("content-encoding") == Some("gzip");
        log.lock().unwrap().push(format!(
            "{} {}{}",
            req.method,
            req.endpoint(),
            if gz { " gzip" } else { "" }
        ));
        let mut reply = if gz && refuse_gzip {
            Reply::json(
                415,
                serde_json::json!({"error": {"code": "unsupported", "message": "no", "data": null}}),
            )
        } else {
            let body = if gz {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&req.body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                req.body.clone()
            };
            forward(&central, req, body)
        };
        if advertise {
            reply
                .headers
                .push(("Accept-Encoding".into(), "gzip".into()));
        }
        reply
    }));
    Front { seen, addr }
}
