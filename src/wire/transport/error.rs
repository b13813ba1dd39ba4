//! What can go wrong on the link, classified by ureq's and rustls's own error
//! variants (never by message text): unreachable, interrupted, a certificate
//! this device would not trust (or a clock that makes it look so, §9.4), an
//! answer from the network instead of the central. Each kind carries its
//! class (exit code, LED, hint) and, where the error knows better, advice.

use std::fmt;

use super::NO_PROGRESS;

/// The words a stalled request's detail starts with (see `is_stall`).
const STALL: &str = "no progress for";
const TIMED_OUT: &str = "timed out";
use crate::error::Class;

/// A TLS certificate the agent would not trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    /// Not signed by a trusted CA, or for another name: a network in between, or
    /// a central with a private CA not installed here.
    Untrusted(String),
    /// Not valid yet or expired *by this device's clock*: on a Pi without a real
    /// time clock, usually the clock.
    Time { expired: bool },
}

/// Errors of the transport: the link, TLS, HTTP framing.
#[derive(Debug)]
pub enum TransportError {
    /// Could not connect (refused, DNS, no route, connect timeout).
    Unreachable {
        detail: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Connected, then the exchange failed (reset, cut, no progress).
    Interrupted {
        detail: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The central's TLS certificate was not accepted.
    Certificate(Certificate),
    /// Something on the way answered instead of the central: a captive portal,
    /// an operator's "no airtime" page, a proxy (§9.4). Says what it answered.
    Intercepted(String),
    /// The configured URL is unusable (bad syntax, http:// to a remote host).
    BadUrl(String),
    /// Something answers at the configured address that is not a v5 central
    /// (plain HTTP where the URL says https, another web server): a wrong
    /// URL or port, never the network, so a person is asked at once.
    NotTheCentral(String),
    /// A response body over the size we accept.
    TooLarge(u64),
}

impl TransportError {
    pub fn unreachable(detail: impl Into<String>) -> TransportError {
        TransportError::Unreachable {
            detail: detail.into(),
            source: None,
        }
    }

    /// A request that stopped moving (no byte for [`NO_PROGRESS`], or its
    /// whole time used): a silent central. Retried once, not like a cut link,
    /// so a sync against one gives up in about two minutes (issue 32).
    pub fn stalled() -> TransportError {
        TransportError::interrupted(format!("{STALL} {} s", NO_PROGRESS.as_secs()))
    }

    pub fn is_stall(&self) -> bool {
        matches!(self, TransportError::Interrupted { detail, .. }
            if detail.starts_with(STALL) || detail.starts_with(TIMED_OUT))
    }

    pub fn interrupted(detail: impl Into<String>) -> TransportError {
        TransportError::Interrupted {
            detail: detail.into(),
            source: None,
        }
    }

    /// What to do, for the errors whose cause is known better than "offline"
    /// (§9.4): the network in between, a private CA, the device clock.
    pub fn advice(&self) -> Option<String> {
        match self {
            TransportError::Intercepted(_) => {
                Some("sign in to the Wi-Fi, or check the modem's airtime/data credit".into())
            }
            TransportError::Certificate(Certificate::Untrusted(_)) => Some(
                "either a network in between answers instead of the central (sign in to the \
                 Wi-Fi, check the modem), or the central uses a private CA: install it with \
                 `fieldsync config set ca_file PATH`"
                    .into(),
            ),
            // A name that does not exist (not "no DNS reachable", which is
            // the link): most often a mistyped URL.
            TransportError::Unreachable { detail, .. }
                if detail.starts_with("cannot resolve")
                    && (detail.contains("no such name")
                        || detail.contains("Name or service not known")) =>
            {
                Some(
                    "the central's host name does not exist: check it in the URL \
                     (`fieldsync config get central_url`; `fieldsync init --url …` to correct it); \
                     if it is right, the network's DNS does not know it"
                        .into(),
                )
            }
            TransportError::Certificate(Certificate::Time { .. }) => Some(format!(
                "the device clock says {}: set the time or check NTP (a Pi has no battery clock)",
                crate::clock::utc_date(crate::clock::now_unix())
            )),
            _ => None,
        }
    }

    pub fn class(&self) -> Class {
        match self {
            TransportError::Unreachable { .. } => Class::Offline,
            // §9.4: a certificate that is not the central's is the network in
            // between, or a clock without RTC; neither is the central failing.
            TransportError::Certificate(_) | TransportError::Intercepted(_) => Class::Offline,
            TransportError::Interrupted { .. } | TransportError::TooLarge(_) => Class::Transient,
            TransportError::BadUrl(_) => Class::Input,
            TransportError::NotTheCentral(_) => Class::Site,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Unreachable { detail, .. } => {
                write!(f, "central unreachable: {detail}")
            }
            TransportError::Interrupted { detail, .. } => {
                write!(f, "connection to the central interrupted: {detail}")
            }
            TransportError::Certificate(Certificate::Untrusted(why)) => {
                write!(f, "the central's TLS certificate is not trusted ({why})")
            }
            TransportError::Certificate(Certificate::Time { expired }) => write!(
                f,
                "the central's TLS certificate is {} by this device's clock, which says {}",
                if *expired { "expired" } else { "not valid yet" },
                crate::clock::utc_date(crate::clock::now_unix())
            ),
            TransportError::Intercepted(what) => {
                write!(f, "the network answered instead of the central ({what})")
            }
            TransportError::BadUrl(m) => write!(f, "central URL: {m}"),
            TransportError::NotTheCentral(what) => {
                write!(
                    f,
                    "{what}: check the central URL and port (`fieldsync config get central_url`)"
                )
            }
            TransportError::TooLarge(n) => write!(
                f,
                "response larger than the {n}-byte limit; the central sent too much at once"
            ),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Unreachable {
                source: Some(s), ..
            }
            | TransportError::Interrupted {
                source: Some(s), ..
            } => Some(s.as_ref()),
            _ => None,
        }
    }
}

/// Classifies ureq's error by variant.
pub(crate) fn map_error(e: ureq::Error) -> TransportError {
    use ureq::Error as E;
    use ureq::Timeout as T;
    match e {
        E::HostNotFound => TransportError::unreachable("host not found (DNS)"),
        E::ConnectionFailed => TransportError::unreachable("connection failed"),
        E::Timeout(T::Connect | T::Resolve) => TransportError::unreachable("connect timed out"),
        E::Timeout(T::PerRead | T::PerWrite) => TransportError::stalled(),
        E::Timeout(t) => TransportError::interrupted(format!("{TIMED_OUT} ({t})")),
        E::BodyExceedsLimit(n) => TransportError::TooLarge(n),
        E::Io(io) => map_io(io),
        E::BadUri(u) => TransportError::BadUrl(u),
        E::RequireHttpsOnly(u) => TransportError::BadUrl(u),
        E::Rustls(r) => map_rustls(r),
        other => TransportError::Interrupted {
            detail: other.to_string(),
            source: Some(Box::new(other)),
        },
    }
}

fn map_io(io: std::io::Error) -> TransportError {
    use std::io::ErrorKind as K;
    // rustls reports handshake failures as io errors wrapping its own error.
    if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
        let inner = io.into_inner().expect("checked above");
        return map_rustls(*inner.downcast::<rustls::Error>().expect("checked above"));
    }
    if io.get_ref().is_some_and(|i| i.is::<TransportError>()) {
        let inner = io.into_inner().expect("checked above");
        return *inner.downcast::<TransportError>().expect("checked above");
    }
    let detail = io.to_string();
    match io.kind() {
        K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable | K::HostUnreachable => {
            TransportError::Unreachable {
                detail,
                source: Some(Box::new(io)),
            }
        }
        K::TimedOut | K::WouldBlock => TransportError::Interrupted {
            detail: format!("{STALL} {} s", NO_PROGRESS.as_secs()),
            source: Some(Box::new(io)),
        },
        _ => TransportError::Interrupted {
            detail,
            source: Some(Box::new(io)),
        },
    }
}

fn map_rustls(e: rustls::Error) -> TransportError {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => TransportError::Certificate(match c {
            C::Expired | C::ExpiredContext { .. } => Certificate::Time { expired: true },
            C::NotValidYet | C::NotValidYetContext { .. } => Certificate::Time { expired: false },
            C::UnknownIssuer => Certificate::Untrusted("signed by an unknown authority".into()),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                Certificate::Untrusted("issued for another host name".into())
            }
            other => Certificate::Untrusted(format!("{other:?}")),
        }),
        // The first bytes back were not TLS at all: "HTTP/1.1 400 …" from a
        // server that speaks plain HTTP on that port.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            TransportError::NotTheCentral(
                "the server at that address speaks plain HTTP, not HTTPS (an http:// URL?)".into(),
            )
        }
        other => TransportError::Interrupted {
            detail: format!("TLS: {other}"),
            source: Some(Box::new(other)),
        },
    }
}
