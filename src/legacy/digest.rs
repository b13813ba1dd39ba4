//! The canonical form and digest of a record, and the tree of summaries that
//! site and central compare (this project's compare extension [PC], README
//! "Protocol addendum: compare").
//!
//! Both sides hash the same thing whatever text each holds: a row is made
//! whole ([`super::columns::outgoing`], what the central sends) and written
//! with its keys sorted and no spaces; numbers keep the digits they were
//! written with. A record's digest is the first 16 bytes of
//! `SHA-256("fieldsync-compare-1\0" table "\0" ID "\0" canonical)`. Records
//! fall into buckets by the hex of `SHA-256(ID)`: the node `(table, prefix)`
//! holds the table's records whose ID hash starts with `prefix`, and its
//! summary is their count and the XOR of their digests — the same whatever
//! order a side reads them in, so each side sums while it streams.
//!
//! What must hold: the function never changes for a given version string; a
//! change of canonical form is a new version, advertised as such.

use ring::digest::{digest, Context, SHA256};
use serde_json::Value;

use super::columns;

/// The version string that opens every record's hash.
pub const VERSION: &str = "fieldsync-compare-1";
/// A node with at most this many records is answered record by record.
pub const LEAF: u64 = 32;
/// Hex digits of a prefix: sixteen levels are far more than any store needs.
pub const MAX_PREFIX: usize = 16;

/// The digest of one record (16 bytes).
pub type Digest = [u8; 16];

/// The canonical text of a stored row (see the module comment); text that is
/// not JSON is taken as it is.
pub fn canonical(table: &str, text: &str) -> Vec<u8> {
    match serde_json::from_str::<Value>(text) {
        Ok(mut row) => {
            columns::outgoing(table, &mut row);
            serde_json::to_vec(&row).unwrap_or_else(|_| text.as_bytes().to_vec())
        }
        Err(_) => text.as_bytes().to_vec(),
    }
}

/// The digest of `table`/`id` stored as `text`.
pub fn record(table: &str, id: &str, text: &str) -> Digest {
    let mut ctx = Context::new(&SHA256);
    ctx.update(VERSION.as_bytes());
    ctx.update(b"\0");
    ctx.update(table.as_bytes());
    ctx.update(b"\0");
    ctx.update(id.as_bytes());
    ctx.update(b"\0");
    ctx.update(&canonical(table, text));
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// The bucket path of an ID: the hex of `SHA-256(ID)`, [`MAX_PREFIX`] digits.
pub fn bucket(id: &str) -> String {
    hex(&digest(&SHA256, id.as_bytes()).as_ref()[..MAX_PREFIX / 2])
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Whether `prefix` is a prefix this extension allows (lowercase hex, not too long).
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A node's summary: how many records, and the XOR of their digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub xor: Digest,
}

impl Summary {
    pub fn add(&mut self, d: &Digest) {
        self.count += 1;
        for (a, b) in self.xor.iter_mut().zip(d) {
            *a ^= b;
        }
    }

    pub fn hash(&self) -> String {
        hex(&self.xor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_spacing_and_missing_columns_do_not_change_the_digest() {
        let a = record(
            "item",
            "I1",
            r#"{"ID":"I1","name":"Amoxicillin","code":"amo"}"#,
        );
        let b = record(
            "item",
            "I1",
            r#"{ "code": "amo", "name": "Amoxicillin", "ID": "I1" }"#,
        );
        assert_eq!(a, b);
        // A column at its default is the same as one left out: the central
        // sends whole rows (§10.2), the site may hold what it pushed.
        let mut whole: Value =
            serde_json::from_str(r#"{"ID":"I1","name":"Amoxicillin","code":"amo"}"#).unwrap();
        columns::outgoing("item", &mut whole);
        assert_eq!(a, record("item", "I1", &whole.to_string()));
    }

    #[test]
    fn a_changed_value_table_or_id_changes_the_digest() {
        let a = record("item", "I1", r#"{"ID":"I1","name":"A"}"#);
        assert_ne!(a, record("item", "I1", r#"{"ID":"I1","name":"B"}"#));
        assert_ne!(a, record("name", "I1", r#"{"ID":"I1","name":"A"}"#));
        assert_ne!(a, record("item", "I2", r#"{"ID":"I1","name":"A"}"#));
        // Numbers keep their digits: 1.0 and 1 are different texts on the wire.
        assert_ne!(
            record("x", "1", r#"{"ID":"1","n":1}"#),
            record("x", "1", r#"{"ID":"1","n":1.0}"#)
        );
    }

    #[test]
    fn summaries_do_not_depend_on_order() {
        let ds: Vec<Digest> = (0..10).map(|i| record("t", &i.to_string(), "{}")).collect();
        let mut fwd = Summary::default();
        ds.iter().for_each(|d| fwd.add(d));
        let mut back = Summary::default();
        ds.iter().rev().for_each(|d| back.add(d));
        assert_eq!(fwd, back);
        assert_eq!(fwd.count, 10);
        assert_eq!(fwd.hash().len(), 32);
    }

    #[test]
    fn buckets_are_hex_and_prefixes_are_checked() {
        let b = bucket("ABC");
        assert_eq!(b.len(), MAX_PREFIX);
        assert!(valid_prefix(&b));
        assert!(valid_prefix(""));
        assert!(!valid_prefix("0G"));
        assert!(!valid_prefix("0A"));
        assert!(!valid_prefix(&"0".repeat(17)));
    }
}
