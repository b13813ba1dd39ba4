//! The streaming decoder of pull pages (`central_records`, `queued_records`):
//! each record is handed to the caller as soon as it is parsed, so memory holds
//! one record, never the page; the page's header may come before or after its
//! records (§9.2: absent or null means unknown; a page without `data` is empty);
//! when a page breaks, what is known of the record it broke in is returned, so
//! that record can be set aside by its ids.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::protocol::{lenient_opt_string, lenient_opt_u64, SyncRecord};

/// Header fields of a pull response, gathered while its records stream past.
/// Absent or null means unknown (§9.2).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullHeader {
    /// `maxCursor` (central records).
    pub max_cursor: Option<u64>,
    /// `queueLength` (queued records).
    pub queue_length: Option<u64>,
    pub records: u64,
}

/// What is known of the record being decoded when decoding broke inside it, so a
/// record that cannot be read (too large, too deep) can still be set aside by
/// its ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Partial {
    pub id: Option<u64>,
    pub sync_out_id: Option<String>,
    pub table_name: Option<String>,
    pub record_id: Option<String>,
}

/// Why decoding a page stopped.
#[derive(Debug)]
pub enum PullError<E> {
    /// The callback stopped it with its own error.
    Stopped(E),
    /// The page broke: `kind` says how; `inside` is what is known of the record
    /// being decoded when it broke (none between records), after `before` records.
    Broken {
        kind: Broken,
        detail: String,
        inside: Option<Partial>,
        before: u64,
    },
}

/// How a page broke, from serde_json's own categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Reading the body failed (the link, or a limit in the reader).
    Io,
    /// The body ended early: a cut response.
    Eof,
    /// Not JSON.
    Syntax,
    /// JSON of the wrong shape.
    Data,
}

/// Decodes a `central_records` or `queued_records` response, handing each record to
/// `each` as it is parsed, so memory holds one record, not the page. `each` may
/// stop decoding with its own error, returned as [`PullError::Stopped`].
pub fn decode_pull<R: std::io::Read, E>(
    reader: R,
    each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
) -> Result<PullHeader, PullError<E>> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let state = RefCell::new(DecodeState {
        stopped: None,
        partial: None,
        records: 0,
    });
    let result = PullSeed {
        each,
        state: &state,
    }
    .deserialize(&mut de)
    .and_then(|h| de.end().map(|()| h));
    let st = state.into_inner();
    match result {
        Ok(h) => Ok(h),
        Err(_) if st.stopped.is_some() => Err(PullError::Stopped(st.stopped.expect("checked"))),
        Err(e) => Err(PullError::Broken {
            kind: match e.classify() {
                serde_json::error::Category::Io => Broken::Io,
                serde_json::error::Category::Eof => Broken::Eof,
                serde_json::error::Category::Syntax => Broken::Syntax,
                serde_json::error::Category::Data => Broken::Data,
            },
            detail: e.to_string(),
            inside: st.partial,
            before: st.records,
        }),
    }
}

struct DecodeState<E> {
    stopped: Option<E>,
    /// Set while a record is being decoded.
    partial: Option<Partial>,
    records: u64,
}

struct PullSeed<'a, 's, E> {
    each: &'a mut dyn FnMut(SyncRecord) -> Result<(), E>,
    state: &'s RefCell<DecodeState<E>>,
}

impl<'de, E> DeserializeSeed<'de> for PullSeed<'_, '_, E> {
    type Value = PullHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PullHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, E> Visitor<'de> for PullSeed<'_, '_, E> {
    type Value = PullHeader;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with \"data\" and \"maxCursor\" or \"queueLength\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PullHeader, A::Error> {
        let mut h = PullHeader::default();
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "maxCursor" => h.max_cursor = map.next_value::<LenientU64>()?.0,
                "queueLength" => h.queue_length = map.next_value::<LenientU64>()?.0,
                // A page without data, or with data null, is an empty page (§9.2).
                "data" => {
                    h.records = map.next_value_seed(RecordsSeed {
                        each: &mut *self.each,
                        state: self.state,
                    })?
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(h)
    }
}

struct LenientU64(Option<u64>);

impl<'de> Deserialize<'de> for LenientU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_opt_u64(d).map(LenientU64)
    }
}

struct RecordsSeed<'a, 's, E> {
    each: &'a mut dyn FnMut(SyncRecord) -> Result<(), E>,
    state: &'s RefCell<DecodeState<E>>,
}

impl<'de, E> DeserializeSeed<'de> for RecordsSeed<'_, '_, E> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, E> Visitor<'de> for RecordsSeed<'_, '_, E> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of sync records")
    }
    fn visit_none<Er: de::Error>(self) -> Result<u64, Er> {
        Ok(0)
    }
    fn visit_unit<Er: de::Error>(self) -> Result<u64, Er> {
        Ok(0)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        loop {
            self.state.borrow_mut().partial = Some(Partial::default());
            let Some(rec) = seq.next_element_seed(RecordSeed { state: self.state })? else {
                self.state.borrow_mut().partial = None;
                break;
            };
            self.state.borrow_mut().partial = None;
            n += 1;
            if let Err(e) = (self.each)(rec) {
                self.state.borrow_mut().stopped = Some(e);
                return Err(de::Error::custom("stopped by the receiver"));
            }
            self.state.borrow_mut().records = n;
        }
        Ok(n)
    }
}

/// One envelope, field by field, so the ids read before a failure are known.
struct RecordSeed<'s, E> {
    state: &'s RefCell<DecodeState<E>>,
}

impl<'de, E> DeserializeSeed<'de> for RecordSeed<'_, E> {
    type Value = SyncRecord;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SyncRecord, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, E> Visitor<'de> for RecordSeed<'_, E> {
    type Value = SyncRecord;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sync record object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SyncRecord, A::Error> {
        let mut rec = SyncRecord {
            id: None,
            sync_out_id: None,
            table_name: String::new(),
            record_id: String::new(),
            action: String::new(),
            record_data: None,
        };
        let note = |f: &dyn Fn(&mut Partial)| {
            if let Some(p) = self.state.borrow_mut().partial.as_mut() {
                f(p)
            }
        };
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "ID" => {
                    rec.id = map.next_value::<LenientU64>()?.0;
                    note(&|p| p.id = rec.id);
                }
                "syncOutId" => {
                    rec.sync_out_id = map.next_value::<LenientString>()?.0;
                    let v = rec.sync_out_id.clone();
                    note(&|p| p.sync_out_id = v.clone());
                }
                "tableName" => {
                    rec.table_name = map.next_value::<Option<String>>()?.unwrap_or_default();
                    let v = rec.table_name.clone();
                    note(&|p| p.table_name = Some(v.clone()));
                }
                "recordId" => {
                    rec.record_id = map.next_value::<Option<String>>()?.unwrap_or_default();
                    let v = rec.record_id.clone();
                    note(&|p| p.record_id = Some(v.clone()));
                }
                "action" => {
                    rec.action = map.next_value::<Option<String>>()?.unwrap_or_default();
                }
                "recordData" => rec.record_data = Some(map.next_value()?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(rec)
    }
}

struct LenientString(Option<String>);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_opt_string(d).map(LenientString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8]) -> Result<(PullHeader, Vec<SyncRecord>), PullError<String>> {
        let mut got = vec![];
        let h = decode_pull(body, &mut |r| {
            got.push(r);
            Ok::<(), String>(())
        })?;
        Ok((h, got))
    }

    #[test]
    fn pull_streams_records_and_reads_header_in_any_order() {
        let body = br#"{"data":[{"ID":3,"tableName":"unit","recordId":"U","action":"update","recordData":{"ID":"U", "n":5.0}},
            {"syncOutId":9,"tableName":"name_note","recordId":"E","action":"delete"}],"maxCursor":"7","extra":[1,2]}"#;
        let (h, got) = decode(body).unwrap();
        assert_eq!(h.max_cursor, Some(7));
        assert_eq!(h.records, 2);
        assert_eq!(got[0].id, Some(3));
        assert_eq!(
            got[0].data_text(),
            Some(r#"{"ID":"U", "n":5.0}"#),
            "kept as received"
        );
        assert_eq!(got[1].sync_out_id.as_deref(), Some("9"));
        assert_eq!(got[1].data_text(), None);
    }

    #[test]
    fn pages_without_data_or_header_are_tolerated() {
        for body in [
            &br#"{"maxCursor":1}"#[..],
            br#"{"data":null,"queueLength":null}"#,
            b"{}",
        ] {
            let (h, got) = decode(body).unwrap();
            assert_eq!((h.records, got.len()), (0, 0));
        }
        let (h, _) = decode(br#"{"queueLength":null,"data":[]}"#).unwrap();
        assert_eq!(h.queue_length, None);
    }

    #[test]
    fn pull_reports_where_it_broke() {
        assert!(matches!(
            decode(b"[]"),
            Err(PullError::Broken {
                kind: Broken::Data,
                inside: None,
                ..
            })
        ));
        assert!(matches!(
            decode(br#"{"data":[]} x"#),
            Err(PullError::Broken {
                kind: Broken::Syntax,
                ..
            })
        ));
        match decode(br#"{"data":[{"ID":1,"tableName":"a","recordId":"b"},{"ID":2,"syncOutId":"8","tableName":"t","recordData":{"ID":"#)
        {
            Err(PullError::Broken { kind: Broken::Eof, inside: Some(p), before, .. }) => {
                assert_eq!(before, 1);
                assert_eq!(p.id, Some(2));
                assert_eq!(p.sync_out_id.as_deref(), Some("8"));
                assert_eq!(p.table_name.as_deref(), Some("t"));
            }
            other => panic!("{other:?}"),
        }
        let stop = decode_pull(
            &br#"{"data":[{"tableName":"a","recordId":"b","action":"update"}]}"#[..],
            &mut |_| Err("stop here"),
        );
        assert!(matches!(stop, Err(PullError::Stopped("stop here"))));
    }
}
