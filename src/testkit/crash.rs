//! Aimed kills for the crash tests (issue 17): named points of the sync cycle
//! where a test may have the agent killed — `FIELDSYNC_CRASH_AT=POINT` (or
//! `POINT#N`, the N-th time the point is reached) makes the process SIGKILL
//! itself there, a real SIGKILL at a known place instead of a timer's luck.
//!
//! The points are marked with [`crate::crash_point!`], which compiles to nothing
//! without the `testkit` feature: device builds carry neither the hook nor the
//! environment lookup.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Every point, in the order a cycle reaches them (§5). A test iterates over
/// this list; a point marked in the code but missing here panics in tests.
pub const POINTS: &[&str] = &[
    // §5 step 1: site information received, identity not yet stored.
    "site-answered",
    // step 2: the central accepted the initialisation request; not yet recorded.
    "initialise-answered",
    // step 2: a status answer while the central builds the site's data.
    "init-poll",
    // step 3: a push batch confirmed by the central, not yet marked sent here.
    "push-answered",
    // step 3: a batch marked sent (committed), before the next batch.
    "push-confirmed",
    // step 3: the final empty push answered, the outbox not yet cleared.
    "final-push-answered",
    // step 3: the outbox cleared (committed), before the wait.
    "outbox-cleared",
    // step 4: a status answer while the central integrates.
    "wait-status",
    // step 5: a central page in the buffer, its transaction not committed.
    "central-page-buffered",
    // step 5: a central page and its cursor committed.
    "central-page-committed",
    // step 6: a queue page in the buffer, not committed.
    "queue-page-buffered",
    // step 6: a queue page committed, its acknowledgement not sent.
    "queue-page-committed",
    // step 6: the acknowledgement answered.
    "ack-answered",
    // step 7: rows applied inside an integration transaction (a page's, or a
    // pass over the buffer), not committed.
    "integration-mid",
    // step 7: applied rows committed (with their page, or by a pass).
    "integration-committed",
    // step 7: the initialisation finished (committed).
    "init-finished",
    // step 8: received transfers numbered (committed), before their push.
    "transfer-numbered",
];

static AIM: OnceLock<Option<(String, u32)>> = OnceLock::new();
static HITS: AtomicU32 = AtomicU32::new(0);

/// Reached a named point: SIGKILLs this process if it is the aimed one.
pub fn here(point: &'static str) {
    debug_assert!(
        POINTS.contains(&point),
        "crash point {point} is not in POINTS"
    );
    let aim = AIM.get_or_init(|| {
        let v = std::env::var("FIELDSYNC_CRASH_AT").ok()?;
        let (p, n) = match v.split_once('#') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((p, n.max(1)))
    });
    if let Some((p, n)) = aim {
        if p == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("fieldsync: crash point {point}#{n}: SIGKILL");
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
        }
    }
}
