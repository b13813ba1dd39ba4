//! The reference central's errors, typed at its boundary: what the database,
//! an administrator's request, a body or a USB bundle did wrong, each with its
//! source kept. Display is one line a person can act on; no variant carries a
//! password, digest or Authorization header.

use std::fmt;

use crate::wire::bundle::BundleError;

#[derive(Debug)]
pub enum CentralError {
    /// The central's database failed.
    Db(super::db::Error),
    /// The administrator asked for something that cannot be done as asked
    /// (no such site, a mirrored system's central data, a wrong password):
    /// the message says what to do instead, and nothing was changed.
    Refused(String),
    /// Input that is not what it must be (a record, a body).
    Invalid(String),
    /// A USB bundle that cannot be used.
    Bundle(BundleError),
    /// A file of the administrator's (an export directory).
    Io(String, std::io::Error),
}

impl CentralError {
    pub fn refused(m: impl Into<String>) -> CentralError {
        CentralError::Refused(m.into())
    }
}

impl fmt::Display for CentralError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CentralError::Db(e) => write!(f, "central database: {e}"),
            CentralError::Refused(m) | CentralError::Invalid(m) => f.write_str(m),
            CentralError::Bundle(e) => e.fmt(f),
            CentralError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for CentralError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CentralError::Db(e) => Some(e),
            CentralError::Bundle(e) => Some(e),
            CentralError::Io(_, e) => Some(e),
            CentralError::Refused(_) | CentralError::Invalid(_) => None,
        }
    }
}

impl From<super::db::Error> for CentralError {
    fn from(e: super::db::Error) -> Self {
        CentralError::Db(e)
    }
}

impl From<BundleError> for CentralError {
    fn from(e: BundleError) -> Self {
        CentralError::Bundle(e)
    }
}

pub type Result<T> = std::result::Result<T, CentralError>;
