//! The mSupply v5 sync API: wire types shared with the central, the typed client,
//! the HTTP transport (the only module that touches ureq) and the credentials every
//! request carries, and the bundles that carry the same bodies on a USB stick.

pub mod bundle;
pub mod client;
pub mod credentials;
pub mod decode;
pub mod page;
pub mod protocol;
pub mod resolve;
pub mod transport;

use std::fmt;

use crate::error::Class;
pub use protocol::ProtocolError;
pub use transport::TransportError;

/// What a call to the central can end with: the link failed, or the central
/// answered with something other than success.
#[derive(Debug)]
pub enum WireError {
    Transport(TransportError),
    Protocol(ProtocolError),
}

impl WireError {
    pub fn class(&self) -> Class {
        match self {
            WireError::Transport(e) => e.class(),
            WireError::Protocol(e) => e.class(),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Transport(e) => e.fmt(f),
            WireError::Protocol(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Transport(e) => Some(e),
            WireError::Protocol(e) => Some(e),
        }
    }
}

impl From<TransportError> for WireError {
    fn from(e: TransportError) -> Self {
        WireError::Transport(e)
    }
}

impl From<ProtocolError> for WireError {
    fn from(e: ProtocolError) -> Self {
        WireError::Protocol(e)
    }
}
