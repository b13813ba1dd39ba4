//! Test and bench support; never in device builds (feature `testkit`).

pub mod linkem;
