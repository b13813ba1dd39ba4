//! The benchmark harness (issue 8): `bench/run.sh` → `fieldsync-bench`.
//!
//! - [`generator`]: seeded realistic legacy rows;
//! - [`runner`]: the measured runs (push, pull, wire bytes, idle sync, cold start,
//!   2G, PouchDB side by side);
//! - [`report`]: `report.md` and `plot.svg`.

pub mod generator;
pub mod report;
pub mod runner;
