//! The mSupply v5 sync API on the wire (protocol §3–§4, §9.2): message types shared
//! by the agent's client and the reference central, so the two cannot drift apart.
//!
//! These structs are frozen: key spellings and JSON types are what real mSupply
//! central servers speak. Change them only with the protocol document. Reading is
//! tolerant (§9.2): unknown keys are ignored, optional ones may be absent or null,
//! numbers may arrive as strings; only what identity and ordering need is required.
//! Writing is exact: the central sends every key.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Class;

pub const PREFIX: &str = "/sync/v5";
/// Value of the `version` header: the sync API version this agent speaks.
pub const API_VERSION: u32 = 14;
pub const APP_NAME: &str = "fieldsync";
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /sync/v5/site`. Only `id`, `siteId` and `initialisationStatus` are
/// required (§9.2); the reference central sends every key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SiteInfo {
    pub id: String,
    #[serde(deserialize_with = "lenient_u32")]
    pub site_id: u32,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub code: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    /// `new`, `started`, `completed` or `error`.
    pub initialisation_status: String,
    #[serde(default, deserialize_with = "null_as_false")]
    pub is_om_supply_central_server: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub om_supply_central_server_url: String,
    #[serde(
        rename = "mSupplyCentralSiteId",
        default,
        deserialize_with = "lenient_opt_u32"
    )]
    pub m_supply_central_site_id: Option<u32>,
}

/// `POST /sync/v5/initialise` answer. A central that does not say how many it
/// queued is read as "unknown".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitialiseResponse {
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub queue_length: Option<u64>,
}

/// `GET /sync/v5/site_status`. Codes other than the four known ones mean "busy,
/// try later" (§9.2); `message` and `data` may be anything or absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteStatus {
    /// `idle`, `sync_is_running`, `integration_in_progress` or `initialisation_in_progress`.
    pub code: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub message: String,
    #[serde(default)]
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

/// The record envelope, in both directions. `recordData` stays the raw text it
/// arrived as: received rows are stored exactly as received (§7.4 rev 2), and the
/// central stages pushed rows without building a tree per row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    /// Change-log sequence (`central_records` only): the cursor.
    #[serde(
        rename = "ID",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_u64"
    )]
    pub id: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_string"
    )]
    pub sync_out_id: Option<String>,
    #[serde(default)]
    pub table_name: String,
    #[serde(default)]
    pub record_id: String,
    #[serde(default)]
    pub action: String,
    /// Absent, null or anything on deletes; the row on upserts; ids on merges.
    #[serde(default)]
    pub record_data: Option<Box<RawValue>>,
}

impl SyncRecord {
    /// `recordData` as text, `None` when absent or null.
    pub fn data_text(&self) -> Option<&str> {
        self.record_data
            .as_deref()
            .map(RawValue::get)
            .filter(|t| *t != "null")
    }
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
    #[serde(default, deserialize_with = "null_as_empty")]
    pub message: String,
    #[serde(default)]
    pub data: Option<Value>,
}

/// One offender listed by `record_not_owned_by_site` / `invalid_sync_record` [PC].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RejectedRecord {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sync_out_id: String,
    #[serde(default)]
    pub table_name: String,
    #[serde(default)]
    pub record_id: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedList {
    pub records: Vec<RejectedRecord>,
}

/// Records one requeue request may name [PC].
pub const MAX_REQUEUE: usize = 1000;

/// A record named in this project's requeue request [PC].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordKey {
    pub table_name: String,
    pub record_id: String,
}

/// What the central did with one record a site asked for again [PC].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requeued {
    /// Its copy is in the site's queue.
    Queued,
    /// The central holds no such record.
    Absent,
    /// The site should not hold it at all.
    NotHeld,
}

/// `POST /sync/v5/fieldsync/requeue` answer [PC].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequeueAnswer {
    pub records: Vec<(RecordKey, Requeued)>,
}

/// Nodes one compare request may name [PC] (README "Protocol addendum: compare").
pub const MAX_COMPARE_NODES: usize = 256;

/// One node of the compare tree as one side sums it [PC]: the records of
/// `table` whose ID hash starts with `prefix`, their count and the XOR of
/// their digests (32 hex digits; [`crate::legacy::digest`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub table: String,
    #[serde(default)]
    pub prefix: String,
    pub count: u64,
    pub hash: String,
}

/// `POST /sync/v5/fieldsync/compare` body [PC]: the site's summaries of some
/// nodes. `root`: these are whole tables, and the central adds every table it
/// holds for the site that the site did not name (as if the site had none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRequest {
    #[serde(default)]
    pub root: bool,
    pub nodes: Vec<Node>,
}

/// One record of a leaf node, as the central holds it for the site.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leaf {
    pub id: String,
    pub hash: String,
}

/// The central's word on one node [PC]: the same, or what it holds below it
/// — its non-empty child nodes, or (at most [`crate::legacy::digest::LEAF`]
/// records) the records themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeAnswer {
    pub table: String,
    #[serde(default)]
    pub prefix: String,
    pub same: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<Node>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<Leaf>>,
}

/// `POST /sync/v5/fieldsync/compare` answer [PC], one entry per node asked
/// (and, for a root request, per table the site did not name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareAnswer {
    pub nodes: Vec<NodeAnswer>,
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
    /// [PC] §10.9: every worker, or this address's share of connections, is taken.
    pub const SERVER_BUSY: &str = "server_busy";
    /// [PC] §10.9: `initialise` of a site that is not `new` (nor reset by the administrator).
    pub const SITE_ALREADY_INITIALISED: &str = "site_already_initialised";
}

/// Errors at the protocol level: the central answered, but with an error, or with
/// something that is not a v5 answer, or with a v5 answer the protocol forbids.
#[derive(Debug)]
pub enum ProtocolError {
    /// A v5 error body (or a bare status) from the central.
    Server {
        status: u16,
        code: String,
        message: String,
        class: Class,
    },
    /// The push was refused because of the listed records (403/400 [PC] codes).
    Rejected {
        status: u16,
        code: String,
        records: Vec<RejectedRecord>,
    },
    /// The answer is not a v5 answer (garbage, wrong shape). §9.4: not the
    /// central contradicting the protocol, so retried.
    NotV5 { path: String, detail: String },
    /// A well-formed v5 answer that contradicts the protocol (cursors going
    /// backwards, a queue that never advances…): a person must look.
    Violation(String),
}

impl ProtocolError {
    pub fn class(&self) -> Class {
        match self {
            ProtocolError::Server { class, .. } => *class,
            ProtocolError::Rejected { .. } => Class::Rejected,
            ProtocolError::NotV5 { .. } => Class::Transient,
            ProtocolError::Violation(_) => Class::Site,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Server {
                status,
                code,
                message,
                ..
            } => write!(f, "central answered {status} {code}: {message}"),
            ProtocolError::Rejected {
                status,
                code,
                records,
            } => write!(
                f,
                "central refused {} record(s) ({status} {code})",
                records.len()
            ),
            ProtocolError::NotV5 { path, detail } => {
                write!(f, "{path}: the answer is not a v5 answer ({detail})")
            }
            ProtocolError::Violation(m) => write!(f, "protocol error from the central: {m}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What the agent does about an error code, or about a status with no usable body (§4).
pub fn classify(status: u16, code: Option<&str>) -> Class {
    match code {
        Some(code::SITE_NAME_NOT_FOUND) | Some(code::SITE_INCORRECT_PASSWORD) => Class::Credentials,
        Some(code::SITE_INCORRECT_HARDWARE_ID) => Class::HardwareId,
        Some(code::SITE_HAS_NO_STORE) | Some(code::SITE_ALREADY_INITIALISED) => Class::Site,
        Some(code::API_VERSION_INCOMPATIBLE) => Class::Version,
        Some(code::SYNC_IS_RUNNING) => Class::Busy,
        Some(code::SITE_AUTH_TIMEOUT) | Some(code::SERVER_BUSY) => Class::Transient,
        Some(code::RECORD_NOT_OWNED_BY_SITE) | Some(code::INVALID_SYNC_RECORD) => Class::Rejected,
        _ => match status {
            408 | 429 | 500..=599 => Class::Transient,
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

/// Whether `body` is a v5 error (`{"error": {"code": …}}`).
pub fn is_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok()
}

/// Keeps a server-provided message to one printable line of bounded length.
pub fn sanitize(s: &str) -> String {
    let line: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        "(no message)".into()
    } else {
        line
    }
}

// ---- lenient readers (§9.2) -------------------------------------------------------

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A whole number given as a JSON number or as a string of digits; null is "unknown".
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Num(u64),
    Text(String),
}

pub(crate) fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Lenient>::deserialize(d)? {
        None => Ok(None),
        Some(Lenient::Num(n)) => Ok(Some(n)),
        Some(Lenient::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{t:?} is not a whole number"))),
    }
}

fn lenient_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match lenient_opt_u64(d)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{n} is out of range"))),
    }
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    lenient_opt_u32(d)?.ok_or_else(|| de::Error::custom("a site id is required"))
}

pub(crate) fn lenient_opt_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Num(u64),
        Text(String),
    }
    Ok(match Option::<S>::deserialize(d)? {
        None => None,
        Some(S::Num(n)) => Some(n.to_string()),
        Some(S::Text(t)) => Some(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn site_info_keys_are_exact_and_the_optional_ones_may_go() {
        let v = json!({"id":"6F1C","siteId":12,"code":"KAW","name":"Kawakawa clinic",
            "initialisationStatus":"completed","isOmSupplyCentralServer":false,
            "omSupplyCentralServerUrl":"","mSupplyCentralSiteId":1});
        let s: SiteInfo = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.site_id, 12);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        // §9.2: only id, siteId and initialisationStatus are required.
        let bare: SiteInfo = serde_json::from_value(json!({"id":"X","siteId":"7",
            "initialisationStatus":"new","name":null,"extra":[1]}))
        .unwrap();
        assert_eq!(
            (
                bare.site_id,
                bare.name.as_str(),
                bare.m_supply_central_site_id
            ),
            (7, "", None)
        );
        assert!(serde_json::from_value::<SiteInfo>(
            json!({"siteId":7,"initialisationStatus":"new"})
        )
        .is_err());
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
    fn errors_classify_by_code_then_status() {
        let body = br#"{"error":{"code":"site_incorrect_hardware_id","message":"Hardware id not registered","data":null}}"#;
        assert_eq!(error_from_response(401, body).class(), Class::HardwareId);
        assert_eq!(
            error_from_response(502, b"<html>").class(),
            Class::Transient
        );
        assert_eq!(error_from_response(500, b"oops").class(), Class::Transient);
        assert_eq!(error_from_response(404, b"nope").class(), Class::Site);
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
