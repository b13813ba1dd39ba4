//! `fieldsync check` (§9.5; seed 003's "Check connection"): the first request of
//! a cycle and nothing else, shown step by step — DNS, TCP, TLS, HTTP,
//! credentials, hardware id, API version, site identity, active store — with ✔ or
//! ✘, the first failure's hint, and its class as the exit code. It writes nothing
//! to the store (the central may bind an unbound hardware id on first contact, as
//! any `GET /site` does).

use std::path::Path;

use serde::Serialize;

use crate::error::Class;
use crate::store::Store;
use crate::wire::protocol::code;
use crate::wire::resolve;
use crate::wire::transport::Certificate;
use crate::wire::{ProtocolError, TransportError, WireError};

use super::runner::{self, PROBE_TIMEOUT};
use super::{CmdResult, Failure};

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub steps: Vec<Step>,
    pub class: Option<Class>,
    pub hint: Option<String>,
}

/// The steps, in order; a failure stops there.
const STEPS: [&str; 9] = [
    "DNS",
    "TCP",
    "TLS",
    "HTTP",
    "credentials",
    "hardware id",
    "API version",
    "site",
    "active store",
];

struct Run {
    steps: Vec<Step>,
    failed: Option<(Class, String)>,
}

impl Run {
    fn pass(&mut self, step: &'static str, detail: impl Into<String>) {
        self.steps.push(Step {
            step,
            ok: true,
            detail: detail.into(),
        });
    }
    fn fail(
        &mut self,
        step: &'static str,
        detail: impl Into<String>,
        class: Class,
        hint: impl Into<String>,
    ) {
        self.steps.push(Step {
            step,
            ok: false,
            detail: detail.into(),
        });
        self.failed = Some((class, hint.into()));
    }
    /// Marks every step from `from` on as passed with `detail` (the request
    /// that proves them succeeded).
    fn pass_through(&mut self, from: &'static str, to: &'static str, detail: &str) {
        let (a, b) = (
            STEPS.iter().position(|s| *s == from).unwrap_or(0),
            STEPS.iter().position(|s| *s == to).unwrap_or(0),
        );
        for s in &STEPS[a..=b] {
            self.pass(s, detail);
        }
    }
}

pub fn check(db: &Path, json: bool) -> CmdResult {
    let store = Store::open_existing(db)?;
    let mut s = runner::setup(&store)?;
    let origin = s.settings.origin.clone();
    let mut run = Run {
        steps: Vec::new(),
        failed: None,
    };
    let host = origin.bare_host().to_string();
    match resolve::lookup(&host, origin.port, &s.settings.net.dns, PROBE_TIMEOUT) {
        Err(e) => run.fail(
            "DNS",
            e.to_string(),
            Class::Offline,
            "the central's name does not resolve: check the network link and the central URL \
             (and the `dns` setting, if set)",
        ),
        Ok(addrs) => {
            run.pass(
                "DNS",
                format!(
                    "{host} → {}",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            match addrs
                .iter()
                .find_map(|a| std::net::TcpStream::connect_timeout(a, PROBE_TIMEOUT).ok())
            {
                None => run.fail(
                    "TCP",
                    format!("no answer from {host}:{}", origin.port),
                    Class::Offline,
                    Class::Offline.hint(),
                ),
                Some(_) => run.pass("TCP", format!("{host}:{} answers", origin.port)),
            }
        }
    }
    if run.failed.is_none() {
        let known = store.identity()?;
        let (stored_uuid, stored_id) = (
            known.as_ref().map(|k| k.uuid.clone()),
            known.map(|k| k.site_id),
        );
        let tls = if origin.https {
            "certificate trusted"
        } else {
            "not used (http://)"
        };
        match s.client.site() {
            Ok(site) => {
                run.pass("TLS", tls);
                run.pass_through("HTTP", "API version", "the central answered GET /site");
                match (stored_uuid, stored_id) {
                    (Some(u), Some(i)) if u != site.id || i != site.site_id.to_string() => run.fail(
                        "site",
                        format!("the central reports site id {}, this device belongs to site id {i}", site.site_id),
                        Class::Site,
                        "check the central URL and site name before syncing; local data is untouched",
                    ),
                    _ => run.pass("site", format!("{} (site id {}, {})", site.name, site.site_id, site.initialisation_status)),
                }
                if run.failed.is_none() {
                    run.pass(
                        "active store",
                        "the central lists an active store for this site",
                    );
                }
            }
            Err(e) => fail_at(&mut run, e, tls),
        }
    }
    let outcome = Outcome {
        ok: run.failed.is_none(),
        class: run.failed.as_ref().map(|f| f.0),
        hint: run.failed.as_ref().map(|f| f.1.clone()),
        steps: run.steps,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        );
    } else {
        for st in &outcome.steps {
            println!(
                "{} {:<13} {}",
                if st.ok { "✔" } else { "✘" },
                st.step,
                st.detail
            );
        }
        match &outcome.hint {
            None => println!("the connection to the central works"),
            Some(h) => println!("what to do: {h}"),
        }
    }
    match outcome.class {
        None => Ok(()),
        Some(c) => Err(Failure::new(c, "the connection check failed (see above)")),
    }
}

/// Places the error of `GET /site` at the step it belongs to.
fn fail_at(run: &mut Run, e: WireError, tls: &str) {
    let class = e.class();
    let hint = match &e {
        WireError::Transport(t) => t.advice().unwrap_or_else(|| class.hint().to_string()),
        WireError::Protocol(_) => class.hint().to_string(),
    };
    match &e {
        WireError::Transport(TransportError::Certificate(c)) => {
            let what = match c {
                Certificate::Untrusted(w) => format!("certificate not trusted: {w}"),
                Certificate::Time { expired: true } => {
                    "certificate expired by this device's clock".into()
                }
                Certificate::Time { expired: false } => {
                    "certificate not valid yet by this device's clock".into()
                }
            };
            run.fail("TLS", what, class, hint);
        }
        WireError::Transport(TransportError::Intercepted(what)) => {
            run.pass("TLS", tls);
            run.fail(
                "HTTP",
                format!("the network answered instead of the central: {what}"),
                class,
                hint,
            );
        }
        WireError::Transport(t) => run.fail("TLS", t.to_string(), class, hint),
        WireError::Protocol(ProtocolError::Server {
            code: c, message, ..
        }) => {
            run.pass("TLS", tls);
            let at = match c.as_str() {
                code::SITE_NAME_NOT_FOUND
                | code::SITE_INCORRECT_PASSWORD
                | code::SITE_AUTH_TIMEOUT => "credentials",
                code::SITE_INCORRECT_HARDWARE_ID => "hardware id",
                code::API_VERSION_INCOMPATIBLE => "API version",
                code::SITE_HAS_NO_STORE => "active store",
                _ => "HTTP",
            };
            if at != "HTTP" {
                run.pass("HTTP", "the central answered");
                let from = STEPS.iter().position(|s| *s == "credentials").unwrap_or(0);
                let to = STEPS.iter().position(|s| *s == at).unwrap_or(0);
                for s in &STEPS[from..to] {
                    run.pass(s, "accepted");
                }
            }
            run.fail(at, format!("{c}: {message}"), class, hint);
        }
        WireError::Protocol(p) => {
            run.pass("TLS", tls);
            run.fail("HTTP", p.to_string(), class, hint);
        }
    }
}
