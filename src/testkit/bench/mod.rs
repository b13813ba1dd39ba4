//! The benchmark harness (issue 8): `bench/run.sh` → `fieldsync-bench`.
//!
//! - [`generator`]: seeded realistic legacy rows;
//! - [`runner`]: the measured runs (push, pull, wire bytes, idle sync, cold start,
//!   2G, PouchDB side by side);
//! - [`fleet`]: N sites against one central (issue 31);
//! - [`report`]: `report.md` and `plot.svg`.

pub mod fleet;
pub mod generator;
pub mod report;
pub mod runner;
