//! The mSupply v5 sync API on the wire (protocol §3–§4): message types shared by the
//! agent's client and the reference central, so the two cannot drift apart.
//!
//! These structs are frozen: key spellings and JSON types are what real mSupply
//! central servers speak. Change them only with the protocol document.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Class, ProtocolError};

pub const PREFIX: &str = "/sync/v5";
/// Value of the `version` header: the sync API version this agent speaks.
pub const API_VERSION: u32 = 14;
pub const APP_NAME: &str = "fieldsync";
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /sync/v5/site`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SiteInfo {
    pub id: String,
    pub site_id: u32,
    pub code: String,
    pub name: String,
    /// `new`, `started`, `completed` or `error`.
    pub initialisation_status: String,
    pub is_om_supply_central_server: bool,
    pub om_supply_central_server_url: String,
    #[serde(rename = "mSupplyCentralSiteId")]
    pub m_supply_central_site_id: u32,
}

/// `POST /sync/v5/initialise` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitialiseResponse {
    pub queue_length: u64,
}

/// `GET /sync/v5/site_status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteStatus {
    /// `idle`, `sync_is_running`, `integration_in_progress` or `initialisation_in_progress`.
    pub code: String,
    pub message: String,
    pub data: Option<Value>,
}

/// `POST /sync/v5/queued_records` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushResponse {
    pub integration_started: bool,
}

/// `POST /sync/v5/acknowledged_records` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acknowledge {
    #[serde(rename = "syncIDs")]
    pub sync_ids: Vec<String>,
}

/// The record envelope, in both directions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    /// Change-log sequence (`central_records` only): the cursor.
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_out_id: Option<String>,
    pub table_name: String,
    pub record_id: String,
    pub action: String,
    /// Absent, null or `{}` on deletes; the row on upserts; ids on merges.
    #[serde(default)]
    pub record_data: Option<Value>,
}

/// What a record asks the receiver to do. Actions compare case-insensitively and
/// `insert` means upsert (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Upsert,
    Delete,
    Merge,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        if s.eq_ignore_ascii_case("update") || s.eq_ignore_ascii_case("insert") {
            Some(Action::Upsert)
        } else if s.eq_ignore_ascii_case("delete") {
            Some(Action::Delete)
        } else if s.eq_ignore_ascii_case("merge") {
            Some(Action::Merge)
        } else {
            None
        }
    }
}

/// `recordData` of a merge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Merge {
    pub merge_id_to_keep: String,
    pub merge_id_to_delete: String,
}

/// Error body of every failure (§4).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub data: Option<Value>,
}

/// One offender listed by `record_not_owned_by_site` / `invalid_sync_record` [PC].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RejectedRecord {
    pub sync_out_id: String,
    pub table_name: String,
    pub record_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedList {
    pub records: Vec<RejectedRecord>,
}

/// Error codes of §4.
pub mod code {
    pub const SITE_NAME_NOT_FOUND: &str = "site_name_not_found";
    pub const SITE_INCORRECT_PASSWORD: &str = "site_incorrect_password";
    pub const SITE_INCORRECT_HARDWARE_ID: &str = "site_incorrect_hardware_id";
    pub const SITE_HAS_NO_STORE: &str = "site_has_no_store";
    pub const API_VERSION_INCOMPATIBLE: &str = "api_version_incompatible";
    pub const SYNC_IS_RUNNING: &str = "sync_is_running";
    pub const SITE_AUTH_TIMEOUT: &str = "site_auth_timeout";
    pub const RECORD_NOT_OWNED_BY_SITE: &str = "record_not_owned_by_site";
    pub const INVALID_SYNC_RECORD: &str = "invalid_sync_record";
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
}

/// What the agent does about an error code, or about a status with no usable body (§4).
pub fn classify(status: u16, code: Option<&str>) -> Class {
    match code {
        Some(code::SITE_NAME_NOT_FOUND) | Some(code::SITE_INCORRECT_PASSWORD) => Class::Credentials,
        Some(code::SITE_INCORRECT_HARDWARE_ID) => Class::HardwareId,
        Some(code::SITE_HAS_NO_STORE) => Class::Site,
        Some(code::API_VERSION_INCOMPATIBLE) => Class::Version,
        Some(code::SYNC_IS_RUNNING) => Class::Busy,
        Some(code::SITE_AUTH_TIMEOUT) => Class::Transient,
        Some(code::RECORD_NOT_OWNED_BY_SITE) | Some(code::INVALID_SYNC_RECORD) => Class::Rejected,
        _ => match status {
            408 | 429 | 502 | 503 | 504 => Class::Transient,
            401 => Class::Credentials,
            _ => Class::Site,
        },
    }
}

/// Turns a non-2xx answer into the typed error the cycle acts on.
pub fn error_from_response(status: u16, body: &[u8]) -> ProtocolError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    match parsed {
        Some(b) => {
            let class = classify(status, Some(&b.error.code));
            if class == Class::Rejected {
                let records = b
                    .error
                    .data
                    .and_then(|d| serde_json::from_value::<RejectedList>(d).ok())
                    .map(|l| l.records)
                    .unwrap_or_default();
                return ProtocolError::Rejected {
                    status,
                    code: b.error.code,
                    records,
                };
            }
            ProtocolError::Server {
                status,
                code: b.error.code,
                message: sanitize(&b.error.message),
                class,
            }
        }
        None => ProtocolError::Server {
            status,
            code: format!("http_{status}"),
            message: sanitize(&String::from_utf8_lossy(&body[..body.len().min(120)])),
            class: classify(status, None),
        },
    }
}

/// Keeps a server-provided message to one printable line of bounded length.
fn sanitize(s: &str) -> String {
    let line: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        "(no message)".into()
    } else {
        line
    }
}

/// Header fields of a pull response, gathered while its records stream past.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullHeader {
    /// `maxCursor` (central records) or `queueLength` (queued records).
    pub max_cursor: Option<u64>,
    pub queue_length: Option<u64>,
    pub records: u64,
}

/// Decodes a `central_records` or `queued_records` response, handing each record to
/// `each` as it is parsed, so memory holds one record, not the batch. `each` may
/// stop decoding by returning an error message; that message becomes the result.
pub fn decode_pull<R: std::io::Read>(
    reader: R,
    each: &mut dyn FnMut(SyncRecord) -> Result<(), String>,
) -> Result<PullHeader, String> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let header = PullSeed { each }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end()
        .map_err(|e| format!("trailing data after the JSON object: {e}"))?;
    Ok(header)
}

struct PullSeed<'a> {
    each: &'a mut dyn FnMut(SyncRecord) -> Result<(), String>,
}

impl<'de> DeserializeSeed<'de> for PullSeed<'_> {
    type Value = PullHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PullHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PullSeed<'_> {
    type Value = PullHeader;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with \"data\" and \"maxCursor\" or \"queueLength\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PullHeader, A::Error> {
        let mut h = PullHeader::default();
        let mut seen_data = false;
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "maxCursor" => h.max_cursor = Some(map.next_value()?),
                "queueLength" => h.queue_length = Some(map.next_value()?),
                "data" => {
                    h.records = map.next_value_seed(RecordsSeed {
                        each: &mut *self.each,
                    })?;
                    seen_data = true;
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !seen_data {
            return Err(de::Error::missing_field("data"));
        }
        Ok(h)
    }
}

struct RecordsSeed<'a> {
    each: &'a mut dyn FnMut(SyncRecord) -> Result<(), String>,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of sync records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(rec) = seq.next_element::<SyncRecord>()? {
            n += 1;
            (self.each)(rec).map_err(de::Error::custom)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn site_info_keys_are_exact() {
        let v = json!({"id":"6F1C","siteId":12,"code":"KAW","name":"Kawakawa clinic",
            "initialisationStatus":"completed","isOmSupplyCentralServer":false,
            "omSupplyCentralServerUrl":"","mSupplyCentralSiteId":1});
        let s: SiteInfo = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.site_id, 12);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }

    #[test]
    fn actions_are_case_insensitive() {
        assert_eq!(Action::parse("INSERT"), Some(Action::Upsert));
        assert_eq!(Action::parse("update"), Some(Action::Upsert));
        assert_eq!(Action::parse("Delete"), Some(Action::Delete));
        assert_eq!(Action::parse("merge"), Some(Action::Merge));
        assert_eq!(Action::parse("upsert"), None);
    }

    #[test]
    fn pull_streams_records_and_reads_header_in_any_order() {
        let body = br#"{"data":[{"ID":3,"tableName":"unit","recordId":"U","action":"update","recordData":{"ID":"U"}},
            {"syncOutId":"9","tableName":"name_note","recordId":"E","action":"delete"}],"maxCursor":7,"extra":[1,2]}"#;
        let mut got = vec![];
        let h = decode_pull(&body[..], &mut |r| {
            got.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(h.max_cursor, Some(7));
        assert_eq!(h.records, 2);
        assert_eq!(got[0].id, Some(3));
        assert_eq!(got[1].record_data, None);
    }

    #[test]
    fn pull_rejects_wrong_shapes() {
        assert!(decode_pull(&b"[]"[..], &mut |_| Ok(())).is_err());
        assert!(decode_pull(&br#"{"maxCursor":1}"#[..], &mut |_| Ok(()))
            .unwrap_err()
            .contains("data"));
        assert!(decode_pull(&br#"{"data":[{"tableName":1}]}"#[..], &mut |_| Ok(())).is_err());
        assert!(decode_pull(&br#"{"data":[]} x"#[..], &mut |_| Ok(())).is_err());
        let stop = decode_pull(
            &br#"{"data":[{"tableName":"a","recordId":"b","action":"update"}]}"#[..],
            &mut |_| Err("stop here".into()),
        );
        assert!(stop.unwrap_err().contains("stop here"));
    }

    #[test]
    fn errors_classify_by_code_then_status() {
        let body = br#"{"error":{"code":"site_incorrect_hardware_id","message":"Hardware id not registered","data":null}}"#;
        assert_eq!(error_from_response(401, body).class(), Class::HardwareId);
        assert_eq!(
            error_from_response(502, b"<html>").class(),
            Class::Transient
        );
        assert_eq!(error_from_response(500, b"oops").class(), Class::Site);
        let body =
            br#"{"error":{"code":"record_not_owned_by_site","message":"m","data":{"records":[
            {"syncOutId":"57","tableName":"item","recordId":"AB12","reason":"central_data"}]}}}"#;
        match error_from_response(403, body) {
            ProtocolError::Rejected { records, .. } => {
                assert_eq!(records[0].reason, "central_data")
            }
            other => panic!("{other:?}"),
        }
    }
}
