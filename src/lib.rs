//! fieldsync: a sync agent for mSupply-style remote sites on field hardware.
#![forbid(unsafe_code)]

pub mod agent;
pub mod batch;
pub mod buffer;
#[cfg(feature = "central")]
pub mod central;
pub mod client;
pub mod credentials;
pub mod cycle;
#[cfg(feature = "central")]
pub mod demo;
pub mod error;
pub mod integration;
pub mod led;
#[cfg(feature = "testkit")]
pub mod linkem;
pub mod logging;
pub mod notify;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod status;
pub mod store;
pub mod transfer;
pub mod transport;
