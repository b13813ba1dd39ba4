//! Errors, one enum per boundary (store, protocol, transport), each classified so
//! the cycle knows whether to back off and retry or to ask a person, and the exit
//! codes they map to, in one place.
//!
//! Display is one line: what went wrong, the cause, and what to do. No variant
//! carries a password, digest or Authorization header.

use std::fmt;

/// What a failure means for the operator; drives the LED, status hint and exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The central cannot be reached at all: wait for the link.
    Offline,
    /// Timeouts, 5xx, busy: back off and retry on its own.
    Transient,
    /// Site name or password refused.
    Credentials,
    /// This device is not the one registered for the site.
    HardwareId,
    /// Agent and central speak incompatible API versions.
    Version,
    /// The central (or a stored setting) contradicts what this site knows about
    /// itself, or the central broke the protocol: a person must look.
    Site,
    /// Some outbox records were refused by the central and set aside.
    Rejected,
    /// Synced, but some pulled records could not be integrated yet.
    Integration,
    /// The device itself: database, disk, permissions.
    Local,
    /// The command line or an input file is wrong.
    Input,
    /// Another sync holds the lock.
    Busy,
    /// `fieldsync init` has not been run.
    NotConfigured,
}

impl Class {
    /// Every class, for tables and tests.
    pub const ALL: [Class; 12] = [
        Class::Offline,
        Class::Transient,
        Class::Credentials,
        Class::HardwareId,
        Class::Version,
        Class::Site,
        Class::Rejected,
        Class::Integration,
        Class::Local,
        Class::Input,
        Class::Busy,
        Class::NotConfigured,
    ];

    /// Exit codes, documented in the README; a timer and a script can act on them.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Input => 2,
            Class::NotConfigured => 3,
            Class::Local => 4,
            Class::Offline => 10,
            Class::Transient => 11,
            Class::Credentials => 12,
            Class::HardwareId => 13,
            Class::Version => 14,
            Class::Site => 15,
            Class::Rejected => 16,
            Class::Integration => 17,
            Class::Busy => 18,
        }
    }

    /// Whether the condition clears by itself (retry with backoff) or needs a person.
    pub fn is_transient(self) -> bool {
        matches!(self, Class::Offline | Class::Transient | Class::Busy)
    }

    /// The one-line hint shown by `fieldsync status` and the log for this class.
    pub fn hint(self) -> &'static str {
        match self {
            Class::Offline => "the central server cannot be reached; check the network link, fieldsync retries by itself",
            Class::Transient => "the central server is busy or failing; fieldsync retries by itself",
            Class::Credentials => "the central refused the site name or password; re-run `fieldsync init` with the values the administrator gave",
            Class::HardwareId => "this device is not the one registered for this site; ask the administrator to reset the hardware id on the central server",
            Class::Version => "this fieldsync version does not match the central server; upgrade fieldsync (or the central)",
            Class::Site => "the central server's answer does not match this site's identity or the protocol; call support before changing anything",
            Class::Rejected => "the central refused some records; see `fieldsync queue --rejected`, fix them, then `fieldsync queue retry`",
            Class::Integration => "some received records could not be applied yet; they are retried on every sync (see `fieldsync status`)",
            Class::Local => "a problem on this device (disk, database or permissions); see the message",
            Class::Input => "the command or input is wrong; see the message",
            Class::Busy => "another sync is running; wait for it to finish",
            Class::NotConfigured => "run `fieldsync init` first",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Offline => "offline",
            Class::Transient => "transient",
            Class::Credentials => "credentials",
            Class::HardwareId => "hardware_id",
            Class::Version => "version",
            Class::Site => "site",
            Class::Rejected => "rejected",
            Class::Integration => "integration",
            Class::Local => "local",
            Class::Input => "input",
            Class::Busy => "busy",
            Class::NotConfigured => "not_configured",
        }
    }
}

/// Errors of the local SQLite store.
#[derive(Debug)]
pub enum StoreError {
    /// A write the ownership rules forbid (raised by the store's own triggers).
    Refused {
        table: String,
        id: String,
        rule: String,
    },
    /// A record that is not acceptable as input.
    BadRecord {
        at: String,
        what: String,
    },
    /// The database is locked by another writer for longer than the busy timeout.
    Locked,
    /// Disk (or the database's size limit) is full.
    Full,
    /// The file or its folder is not writable.
    ReadOnly(String),
    /// A database file this build does not understand.
    Schema(String),
    Sqlite(String, rusqlite::Error),
    Io(String, std::io::Error),
}

impl StoreError {
    pub fn class(&self) -> Class {
        match self {
            StoreError::Refused { .. } | StoreError::BadRecord { .. } => Class::Input,
            _ => Class::Local,
        }
    }

    /// Wraps a rusqlite error with what was being done, recognising refusals from
    /// the store's triggers and the conditions a person can act on.
    pub fn sqlite(context: impl Into<String>, e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(f, msg) = &e {
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => return StoreError::Locked,
                ErrorCode::DiskFull => return StoreError::Full,
                ErrorCode::ReadOnly => {
                    return StoreError::ReadOnly(
                        msg.clone().unwrap_or_else(|| "read-only database".into()),
                    )
                }
                // "unable to open": a directory or file the process may not write.
                ErrorCode::CannotOpen if msg.is_some() => {
                    return StoreError::ReadOnly(msg.clone().unwrap_or_default())
                }
                _ => {}
            }
            if let Some(m) = msg {
                if let Some(rule) = m.strip_prefix("fieldsync: ") {
                    return StoreError::Refused {
                        table: String::new(),
                        id: String::new(),
                        rule: rule.to_string(),
                    };
                }
            }
        }
        StoreError::Sqlite(context.into(), e)
    }

    /// Fills in which record a trigger refused.
    pub fn for_record(self, table: &str, id: &str) -> StoreError {
        match self {
            StoreError::Refused { rule, .. } => StoreError::Refused {
                table: table.to_string(),
                id: id.to_string(),
                rule,
            },
            other => other,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Refused { table, id, rule } if !table.is_empty() => {
                write!(f, "refused: {table} {id}: {rule}")
            }
            StoreError::Refused { rule, .. } => write!(f, "refused: {rule}"),
            StoreError::BadRecord { at, what } => write!(f, "{at}: {what}"),
            StoreError::Locked => write!(
                f,
                "database is locked by another program for too long; close the other program or try again"
            ),
            StoreError::Full => write!(f, "disk full: free space on the device, then sync again (nothing was lost)"),
            StoreError::ReadOnly(m) => {
                write!(f, "database is read-only ({m}); check the file's owner and permissions")
            }
            StoreError::Schema(m) => write!(f, "database schema: {m}"),
            StoreError::Sqlite(ctx, e) => write!(f, "{ctx}: {e}"),
            StoreError::Io(ctx, e) => write!(f, "{ctx}: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite(_, e) => Some(e),
            StoreError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Errors of the transport: the link, TLS, HTTP framing.
#[derive(Debug)]
pub enum TransportError {
    /// Could not connect (refused, DNS, no route, connect timeout).
    Unreachable(String),
    /// Connected, then the exchange failed (reset, timeout, truncated body).
    Interrupted(String),
    /// The configured URL is unusable (bad syntax, http:// to a remote host).
    BadUrl(String),
    /// A response body over the size we accept.
    TooLarge(u64),
}

impl TransportError {
    pub fn class(&self) -> Class {
        match self {
            TransportError::Unreachable(_) => Class::Offline,
            TransportError::Interrupted(_) | TransportError::TooLarge(_) => Class::Transient,
            TransportError::BadUrl(_) => Class::Input,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Unreachable(m) => write!(f, "central unreachable: {m}"),
            TransportError::Interrupted(m) => {
                write!(f, "connection to the central interrupted: {m}")
            }
            TransportError::BadUrl(m) => write!(f, "central URL: {m}"),
            TransportError::TooLarge(n) => {
                write!(
                    f,
                    "response larger than the {n}-byte limit; the central sent too much at once"
                )
            }
        }
    }
}

impl std::error::Error for TransportError {}

/// Errors at the protocol level: the central answered, but with an error or with
/// something the protocol does not allow.
#[derive(Debug)]
pub enum ProtocolError {
    /// A v5 error body (or a bare status) from the central.
    Server {
        status: u16,
        code: String,
        message: String,
        class: Class,
    },
    /// The push was refused because of the listed records (403/400 [PC] codes).
    Rejected {
        status: u16,
        code: String,
        records: Vec<crate::wire::protocol::RejectedRecord>,
    },
    /// The central's answer breaks the protocol (bad JSON, cursors going backwards…).
    Violation(String),
}

impl ProtocolError {
    pub fn class(&self) -> Class {
        match self {
            ProtocolError::Server { class, .. } => *class,
            ProtocolError::Rejected { .. } => Class::Rejected,
            ProtocolError::Violation(_) => Class::Site,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Server {
                status,
                code,
                message,
                class,
            } => {
                write!(
                    f,
                    "central answered {status} {code}: {message}; {}",
                    class.hint()
                )
            }
            ProtocolError::Rejected {
                status,
                code,
                records,
            } => {
                write!(
                    f,
                    "central refused {} record(s) ({status} {code})",
                    records.len()
                )
            }
            ProtocolError::Violation(m) => write!(f, "protocol error from the central: {m}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Anything that ends a sync cycle early.
#[derive(Debug)]
pub enum SyncError {
    Store(StoreError),
    Transport(TransportError),
    Protocol(ProtocolError),
    /// The cycle stopped on a condition a person must look at (site identity,
    /// re-initialisation requested centrally, wrong number of active stores).
    Attention(Class, String),
}

impl SyncError {
    pub fn class(&self) -> Class {
        match self {
            SyncError::Store(e) => e.class().max_local(),
            SyncError::Transport(e) => e.class(),
            SyncError::Protocol(e) => e.class(),
            SyncError::Attention(c, _) => *c,
        }
    }
}

impl Class {
    /// A store error during a sync is a device fault, never the user's input.
    fn max_local(self) -> Class {
        if self == Class::Input {
            Class::Local
        } else {
            self
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Store(e) => write!(f, "{e}"),
            SyncError::Transport(e) => write!(f, "{e}"),
            SyncError::Protocol(e) => write!(f, "{e}"),
            SyncError::Attention(_, m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        SyncError::Store(e)
    }
}
impl From<TransportError> for SyncError {
    fn from(e: TransportError) -> Self {
        SyncError::Transport(e)
    }
}
impl From<ProtocolError> for SyncError {
    fn from(e: ProtocolError) -> Self {
        SyncError::Protocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let all = Class::ALL;
        let mut codes: Vec<u8> = all.iter().map(|c| c.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0) && !codes.contains(&1));
    }
}
