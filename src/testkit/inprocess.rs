//! A [`Transport`] that hands each request straight to a reference central in
//! the same process — no sockets, no sleeps — so a whole cycle runs in
//! milliseconds. A hook sees every exchange and may let it through, lose its
//! answer (the central acted, the agent never heard), answer in the central's
//! place, or fail it on the link; the fault tables of `tests/cycle.rs` are built
//! from it.

use std::io::Cursor;

use crate::central::api::{Reply, Request as CentralRequest};
use crate::central::Central;
use crate::wire::transport::{Method, Request, Response, Transport};
use crate::wire::TransportError;

/// What the hook decides for one exchange.
pub enum Fate {
    /// The central answers as usual.
    Pass,
    /// The central acts, then the link drops the answer.
    LoseAnswer,
    /// The request never reaches the central; this error is the agent's.
    Fail(TransportError),
    /// Something answers in the central's place (status, body).
    Answer(u16, Vec<u8>),
}

/// One exchange as the hook sees it: its number (from 0), method, path and body.
pub struct Exchange<'a> {
    pub n: usize,
    pub method: Method,
    /// Path without the `/sync/v5` prefix, with its query.
    pub path: &'a str,
    pub body: &'a [u8],
}

impl Exchange<'_> {
    /// The endpoint without its query, e.g. `/central_records`.
    pub fn endpoint(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

pub type Hook = Box<dyn FnMut(&Exchange<'_>) -> Fate>;

pub struct InProcess {
    central: Central,
    hook: Hook,
    /// Every exchange in order, as "METHOD /endpoint".
    pub seen: Vec<String>,
}

impl InProcess {
    pub fn new(central: Central) -> InProcess {
        InProcess::with_hook(central, Box::new(|_| Fate::Pass))
    }

    pub fn with_hook(central: Central, hook: Hook) -> InProcess {
        InProcess {
            central,
            hook,
            seen: Vec::new(),
        }
    }

    pub fn set_hook(&mut self, hook: Hook) {
        self.hook = hook;
    }
}

impl Transport for InProcess {
    fn call(&mut self, req: &Request<'_>) -> Result<Response, TransportError> {
        let path = req
            .path
            .strip_prefix(crate::wire::protocol::PREFIX)
            .unwrap_or(req.path);
        let body = req.body.unwrap_or(b"");
        let method = match req.method {
            Method::Get => "GET",
            Method::Post => "POST",
        };
        let ex = Exchange {
            n: self.seen.len(),
            method: req.method,
            path,
            body,
        };
        self.seen.push(format!("{method} {}", ex.endpoint()));
        let fate = (self.hook)(&ex);
        let reply = match fate {
            Fate::Fail(e) => return Err(e),
            Fate::Answer(status, body) => Reply {
                status,
                body,
                log_end: None,
            },
            Fate::Pass | Fate::LoseAnswer => {
                let (p, q) = req.path.split_once('?').unwrap_or((req.path, ""));
                let reply = self.central.handle(&CentralRequest {
                    method: method.to_string(),
                    path: p.to_string(),
                    query: q.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                        .collect(),
                    body: body.to_vec(),
                });
                if matches!(fate, Fate::LoseAnswer) {
                    return Err(TransportError::interrupted(
                        "the answer was lost on the way",
                    ));
                }
                reply
            }
        };
        let mut headers = vec![
            ("content-type".into(), "application/json".into()),
            (
                crate::central::verify::HEADER.into(),
                crate::central::verify::EXTENSIONS.into(),
            ),
            (
                crate::central::verify::EPOCH_HEADER.into(),
                self.central.epoch(),
            ),
        ];
        if let Some(end) = reply.log_end {
            headers.push((
                crate::central::verify::LOG_END_HEADER.into(),
                end.to_string(),
            ));
        }
        Ok(Response {
            status: reply.status,
            headers,
            body: Box::new(Cursor::new(reply.body)),
        })
    }
}
