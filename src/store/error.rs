//! Errors of the local SQLite store, classified (device fault or bad input).
//!
//! Display is one line: what went wrong, the cause, and what to do. No variant
//! carries a password, digest or Authorization header.

use std::fmt;

use crate::error::Class;

/// Errors of the local SQLite store.
#[derive(Debug)]
pub enum StoreError {
    /// A write the ownership rules forbid (raised by the store's own triggers).
    Refused {
        table: String,
        id: String,
        rule: String,
    },
    /// A row SQLite's constraints refuse (the `record` CHECK, a key): that
    /// row's problem, not the store's.
    Constraint(String),
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
    /// No database at this path: `fieldsync init` has not been run (or `--db` is wrong).
    Missing(std::path::PathBuf),
    /// A file only the agent may write is not the agent's (another user's, or
    /// writable by others): another program may have put it there.
    Untrusted(std::path::PathBuf, super::modes::Untrusted),
    Sqlite(String, rusqlite::Error),
    Io(String, std::io::Error),
}

impl StoreError {
    pub fn class(&self) -> Class {
        match self {
            StoreError::Refused { .. }
            | StoreError::BadRecord { .. }
            | StoreError::Constraint(_) => Class::Input,
            StoreError::Missing(_) => Class::NotConfigured,
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
            if f.code == ErrorCode::ConstraintViolation {
                return StoreError::Constraint(format!("{}: {e}", context.into()));
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
            StoreError::Constraint(m) => f.write_str(m),
            StoreError::Locked => write!(
                f,
                "database is locked by another program for too long; close the other program or try again"
            ),
            StoreError::Full => write!(f, "disk full: free space on the device, then sync again (nothing was lost)"),
            StoreError::ReadOnly(m) => {
                write!(f, "database is read-only ({m}); check the files' owner and permissions, and whether the card or mount became read-only (`fieldsync status` still works)")
            }
            StoreError::Schema(m) => write!(f, "database schema: {m}"),
            StoreError::Missing(p) => write!(
                f,
                "no database at {}: run `fieldsync init` first (or pass --db)",
                p.display()
            ),
            StoreError::Untrusted(p, super::modes::Untrusted::Owner { owner, me }) => write!(
                f,
                "{} belongs to user {owner}, not to this user ({me}): another program may have put it there; \
                 move it away and run fieldsync as the user that owns the database",
                p.display()
            ),
            StoreError::Untrusted(p, super::modes::Untrusted::Writable { mode }) => write!(
                f,
                "{} may be changed by other users (mode {mode:o}); `chmod 600` it as its owner",
                p.display()
            ),
            StoreError::Untrusted(p, super::modes::Untrusted::NotAFile) => write!(
                f,
                "{} is a symbolic link or not a plain file: another program may have put it there; \
                 move it away (fieldsync makes its own)",
                p.display()
            ),
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
