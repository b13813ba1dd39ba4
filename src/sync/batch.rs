//! One push request: outbox entries encoded as the `queued_records` body (§3),
//! bounded by record count and bytes, and the list of what it carries so the
//! entries can be removed once the central confirms.
//!
//! The bookkeeping is a fixed-capacity `heapless::Vec`: a batch cannot grow past
//! [`MAX_BATCH_RECORDS`] whatever the outbox holds. Rows are copied into the body as
//! stored (already valid JSON), never re-parsed.

use std::io::Write;

use crate::store::outbox::{Entry, Sent};

/// Most records in one push (§5 step 3: at most 1024).
pub const MAX_BATCH_RECORDS: usize = 1024;
/// Byte budget of the first push of a cycle. Defaults to 256 KiB: about 8 s at
/// the 256 kbit/s of a 2G link, far from the 60 s no-progress timeout (§9.3).
pub const START_BATCH_BYTES: usize = 256 << 10;
/// Largest push body the adaptive sizing grows to on a fast link. Defaults to
/// 1 MiB (the record limit of 1024 usually binds first); configurable.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;
/// Smallest byte budget the adaptive sizing goes down to. Defaults to 8 KiB.
pub const MIN_BATCH_BYTES: usize = 8 << 10;
/// Lowest compression ratio the adaptive sizing believes (wire bytes per body
/// byte). Defaults to 0.02: repetitive rows gzip to a few percent, and a lower
/// figure would let one batch swell to fifty times the wire budget.
pub const MIN_COMPRESSION_RATIO: f64 = 0.02;
/// Largest single record ever sent. Defaults to 1 MiB (the store's record limit):
/// larger ones are set aside and reported, never block the rest.
pub const HARD_MAX_RECORD_BYTES: usize = crate::store::MAX_RECORD_BYTES;

pub struct Batch {
    body: Vec<u8>,
    sent: heapless::Vec<Sent, MAX_BATCH_RECORDS>,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// Outcome of offering one entry to the batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Added,
    /// Does not fit: the batch is full; push it, start the next one with this entry.
    Full,
    /// Larger than [`HARD_MAX_RECORD_BYTES`]: set it aside.
    TooLarge(usize),
}

impl Batch {
    /// Starts a body announcing `queue_length` records left to push, this batch included.
    pub fn new(queue_length: u64) -> Batch {
        let mut body = Vec::with_capacity(4096);
        let _ = write!(body, "{{\"queueLength\":{queue_length},\"data\":[");
        Batch {
            body,
            sent: heapless::Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Adds an entry if it fits the limits. The first entry always fits (a record
    /// above the byte budget goes alone) unless it is over the hard maximum.
    pub fn offer(&mut self, e: &Entry, limits: Limits) -> Offer {
        let record = encode(e);
        if record.len() > HARD_MAX_RECORD_BYTES {
            return Offer::TooLarge(record.len());
        }
        let max_records = limits.max_records.clamp(1, MAX_BATCH_RECORDS);
        if !self.is_empty()
            && (self.len() >= max_records || self.body.len() + record.len() + 2 > limits.max_bytes)
        {
            return Offer::Full;
        }
        if !self.is_empty() {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&record);
        // Capacity was checked above: max_records ≤ MAX_BATCH_RECORDS.
        let _ = self.sent.push(Sent {
            seq: e.seq,
            version: e.version,
        });
        Offer::Added
    }

    pub fn finish(mut self) -> (Vec<u8>, heapless::Vec<Sent, MAX_BATCH_RECORDS>) {
        self.body.extend_from_slice(b"]}");
        (self.body, self.sent)
    }
}

/// One record envelope; `syncOutId` is the outbox sequence as text (§7.2).
fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + e.data.as_ref().map_or(0, |d| d.len()));
    out.extend_from_slice(b"{\"syncOutId\":\"");
    let _ = write!(out, "{}", e.seq);
    out.extend_from_slice(b"\",\"tableName\":");
    let _ = serde_json::to_writer(&mut out, &e.table);
    out.extend_from_slice(b",\"recordId\":");
    let _ = serde_json::to_writer(&mut out, &e.id);
    match &e.data {
        Some(data) if !e.delete => {
            out.extend_from_slice(b",\"action\":\"Update\",\"recordData\":");
            out.extend_from_slice(data.as_bytes());
        }
        _ => out.extend_from_slice(b",\"action\":\"Delete\",\"recordData\":null"),
    }
    out.push(b'}');
    out
}

/// Adapts the byte budget to the link, aiming at `target` seconds per request as
/// mSupply Mobile does: the next budget is what the last request's rate moves in
/// that time, within [MIN_BATCH_BYTES, max].
pub fn adapt_bytes(last_bytes: usize, last_secs: f64, target_secs: f64, max: usize) -> usize {
    if last_secs <= 0.0 || last_bytes == 0 {
        return max;
    }
    let rate = last_bytes as f64 / last_secs;
    ((rate * target_secs) as usize).clamp(MIN_BATCH_BYTES.min(max), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, size: usize) -> Entry {
        Entry {
            table: "transact".into(),
            id: format!("T{seq}"),
            seq,
            version: 1,
            delete: false,
            unreadable: None,
            data: Some(format!(
                "{{\"ID\":\"T{seq}\",\"c\":\"{}\"}}",
                "x".repeat(size)
            )),
        }
    }

    #[test]
    fn body_is_valid_json_with_exact_keys() {
        let mut b = Batch::new(2);
        let limits = Limits {
            max_records: 10,
            max_bytes: 10_000,
        };
        assert_eq!(b.offer(&entry(1, 1), limits), Offer::Added);
        let del = Entry {
            delete: true,
            data: None,
            ..entry(2, 0)
        };
        assert_eq!(b.offer(&del, limits), Offer::Added);
        let (body, sent) = b.finish();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["queueLength"], 2);
        assert_eq!(v["data"][0]["syncOutId"], "1");
        assert_eq!(v["data"][0]["action"], "Update");
        assert_eq!(v["data"][0]["recordData"]["ID"], "T1");
        assert_eq!(v["data"][1]["action"], "Delete");
        assert!(v["data"][1]["recordData"].is_null());
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn bounded_by_records_and_bytes_but_one_always_goes() {
        let mut b = Batch::new(5);
        let limits = Limits {
            max_records: 2,
            max_bytes: 1_000_000,
        };
        assert_eq!(b.offer(&entry(1, 1), limits), Offer::Added);
        assert_eq!(b.offer(&entry(2, 1), limits), Offer::Added);
        assert_eq!(b.offer(&entry(3, 1), limits), Offer::Full);

        let mut b = Batch::new(5);
        let limits = Limits {
            max_records: 100,
            max_bytes: 100,
        };
        assert_eq!(
            b.offer(&entry(1, 500), limits),
            Offer::Added,
            "oversized record goes alone"
        );
        assert_eq!(b.offer(&entry(2, 1), limits), Offer::Full);

        let mut b = Batch::new(1);
        assert!(matches!(
            b.offer(&entry(1, HARD_MAX_RECORD_BYTES), limits),
            Offer::TooLarge(_)
        ));
        assert!(b.is_empty());
    }

    #[test]
    fn budget_adapts_to_the_link() {
        // 32 KB/s link, 8 s target → 256 KB.
        assert_eq!(adapt_bytes(32_000, 1.0, 8.0, 1 << 20), 256_000);
        assert_eq!(adapt_bytes(1_000, 10.0, 8.0, 1 << 20), MIN_BATCH_BYTES);
        assert_eq!(adapt_bytes(10_000_000, 0.1, 8.0, 1 << 20), 1 << 20);
    }
}
