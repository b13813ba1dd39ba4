//! What field staff and helpers see: the status file and view, the LEDs, log
//! lines, the progress line and systemd notifications. These only render what a
//! cycle reports.

pub mod led;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod status;
