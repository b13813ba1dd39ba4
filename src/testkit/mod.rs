//! Test and bench support; never in device builds (feature `testkit`).
//!
//! - [`linkem`]: the link emulator, a userspace TCP proxy with bandwidth, latency
//!   and seeded faults (the kernel's netem is not available everywhere);
//! - [`inprocess`]: the reference central as a [`crate::wire::transport::Transport`]
//!   in the same process, for cycle tests in virtual time;
//! - [`crash`]: named points of the cycle where a crash test kills the agent;
//! - [`dns`]: a tiny DNS server, so a test reaches the central by name;
//! - [`tempdir`]: a test's temporary directory, removed when it passes;
//! - [`usage`]: what a process used (peak memory, CPU, bytes written), for the
//!   memory tests and the bench.

#[cfg(feature = "central")]
pub mod bench;
pub mod crash;
pub mod dns;
#[cfg(feature = "central")]
pub mod inprocess;
pub mod linkem;
pub mod tempdir;
pub mod usage;
