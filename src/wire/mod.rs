//! The mSupply v5 sync API: wire types shared with the central, the typed client,
//! the HTTP transport (the only module that touches ureq) and the credentials every
//! request carries.

pub mod client;
pub mod credentials;
pub mod protocol;
pub mod transport;
