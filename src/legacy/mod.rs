//! What a legacy mSupply row is and who owns it: the one home of the rules that
//! both sides of a sync apply. Below the agent's store (which turns them into
//! SQLite triggers, so every program writing the file obeys them) and the
//! reference central (which applies them in Rust to every push, and again at
//! integration); neither side writes them a second time.
//!
//! - [`registry`]: every legacy table — its data type (protocol §1), how its
//!   owning store is found, its place in the integration order (§7.4);
//! - [`row`]: what a row must be (JSON object, `ID`, no key twice, bounded), one
//!   [`row::Problem`] → one reason code;
//! - [`owner`]: the owning store of a row and whether a writer may write it
//!   ([`owner::judge`]), over whatever rows the judging side holds;
//! - [`triggers`]: the same rules as the SQL text of the store's triggers;
//! - [`digest`]: a record's canonical form and digest, and the summaries
//!   site and central compare [PC];
//! - [`columns`]: every column of each table, its wire type and legacy
//!   default: the whole, legacy-shaped rows a central sends (§10.2, §10.3).

pub mod columns;
pub mod digest;
pub mod owner;
pub mod registry;
pub mod row;
pub mod triggers;

/// FNV-1a over `bytes`, continuing from `h` (start with [`FNV_START`]): stable
/// across builds and platforms, unlike std's hasher, so a fingerprint written
/// by one build is understood by the next. Not a cryptographic hash.
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
