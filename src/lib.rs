//! fieldsync: a sync agent for mSupply-style remote sites on field hardware.
//!
//! The layers, and the one direction data flows through them:
//!
//! - [`store`]: the site's SQLite file — records, the ownership rules as triggers,
//!   the [`store::outbox`] of local changes, the [`store::buffer`] of received ones,
//!   and the [`store::registry`] of legacy tables.
//! - [`sync`]: one sync cycle (protocol §5) — the only layer that knows both the
//!   store and the wire. Push: store → outbox → [`sync::batch`] → client → central.
//!   Pull: client → buffer → [`sync::integration`] → store, then [`sync::transfer`].
//! - [`wire`]: the v5 API — [`wire::protocol`] types shared with the central,
//!   [`wire::client`] calls, [`wire::transport`] (the only user of ureq), and
//!   [`wire::credentials`].
//! - [`field`]: what people see — status, LEDs, log lines, systemd notifications.
//!   They render a cycle's report; the sync layer never prints.
//! - [`agent`]: the commands behind the `fieldsync` binary; exit codes come from
//!   [`error::Class`].
//! - [`central`] (feature `central`): the reference central server.
//! - [`testkit`] (feature `testkit`): the link emulator and test support; never in
//!   device builds.
#![forbid(unsafe_code)]

/// A named point of the sync cycle where the crash tests may kill the agent
/// (`testkit::crash`); nothing at all in builds without the `testkit` feature.
macro_rules! crash_point {
    ($point:literal) => {
        #[cfg(feature = "testkit")]
        $crate::testkit::crash::here($point);
    };
}

pub mod agent;
#[cfg(feature = "central")]
pub mod central;
pub mod clock;
pub mod error;
pub mod field;
pub mod legacy;
pub mod store;
pub mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wire;
