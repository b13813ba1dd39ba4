//! The v6 calls an Open mSupply remote site makes on its "Open mSupply central
//! server" (`omSupplyCentralServerUrl` + `central/sync/…`), answered by this
//! central when no site is marked as that server (protocol §10.1): pull says
//! there is nothing, push keeps what came, site_status says idle.
//!
//! Open mSupply sends no Authorization header on v6: its v5 credentials travel
//! in the JSON body (`syncV5Settings`: `username`, `passwordSha256`,
//! `siteUuid`, `syncVersion`), and a real Open mSupply central checks them by
//! asking the legacy central's `/sync/v5/site`. Here they go through the same
//! [`Central::authenticated`] as every v5 request (back-off, hardware id,
//! version), so v6 is no side door. Answers are 200 with Open mSupply's
//! `{"data": …}` or `{"error": …}` envelope: its client reads the body whatever
//! the status.
//!
//! What must hold: what a site pushes on v6 (assets, files' records, vaccine
//! courses — data only an Open mSupply central integrates) is kept, one row per
//! record, never answered as pushed and then dropped; `report` counts it.

use std::net::IpAddr;

use super::db::params;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{Reply, Request};
use super::auth::Denied;
use super::{write_tx, Central};
use crate::wire::protocol::API_VERSION;

/// Largest v6 body read before its credentials are checked: a push batch of
/// Open mSupply's size (hundreds of small records), not the v5 16 MiB.
pub const MAX_BODY: usize = 4 << 20;

/// The v5 credentials Open mSupply puts in every v6 body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    username: String,
    password_sha256: String,
    #[serde(default)]
    site_uuid: String,
    #[serde(default)]
    sync_version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    sync_v5_settings: Settings,
    #[serde(default)]
    batch: Option<Batch>,
}

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    records: Vec<Pushed>,
}

#[derive(Deserialize)]
struct Pushed {
    record: Record,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    table_name: String,
    record_id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    record_data: Value,
}

/// Whether `path` is one of the v6 calls.
pub fn is_v6(path: &str) -> bool {
    path.starts_with("/central/sync/")
}

impl Central {
    /// Authenticates a v6 call from its body and answers it; a refused login
    /// keeps its back-off delay and gets the v5 error inside v6's envelope.
    pub fn v6(&self, req: &Request, ip: IpAddr) -> Result<Reply, Denied> {
        let body: Body = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => {
                return Err(Denied::from(v6_error(
                    "otherServerError",
                    json!(format!(
                        "expected a v6 body with syncV5Settings (username, passwordSha256, siteUuid): {e}"
                    )),
                )))
            }
        };
        let s = &body.sync_v5_settings;
        let basic = crate::wire::credentials::base64(
            format!("{}:{}", s.username, s.password_sha256).as_bytes(),
        );
        let version = if s.sync_version.is_empty() {
            API_VERSION.to_string()
        } else {
            s.sync_version.clone()
        };
        let as_v5 = Request {
            method: "GET".into(),
            path: "/sync/v5/site".into(),
            query: String::new(),
            headers: vec![
                ("authorization".into(), format!("Basic {basic}")),
                ("msupply-site-uuid".into(), s.site_uuid.clone()),
                ("version".into(), version),
            ],
            body: Vec::new(),
        };
        let site = self.authenticated(&as_v5, ip).map_err(|denied| Denied {
            reply: legacy_error(denied.reply),
            delay: denied.delay,
        })?;
        let route = req.path.trim_start_matches("/central/sync/");
        Ok(match route {
            // No v6 change log here: its latest cursor is 0, as an Open
            // mSupply central with nothing to send would answer.
            "pull" | "patient-pull" => data(json!({
                "end_cursor": 0,
                "total_records": 0,
                "records": [],
                "is_last_batch": true,
            })),
            "push" => {
                let records = body.batch.map(|b| b.records).unwrap_or_default();
                match self.keep_v6(site.site_id, &records) {
                    Ok(n) => data(json!({"records_pushed": n})),
                    Err(e) => {
                        log::error!("v6 push of site {}: {e}", site.name);
                        v6_error("otherServerError", json!(e.to_string()))
                    }
                }
            }
            "site_status" => data(json!({"is_integrating": false})),
            other => v6_error(
                "otherServerError",
                json!(format!(
                    "{other}: this central keeps no v6 data; files and v6 records need a real \
                     Open mSupply central server (fieldsync-central site om-central)"
                )),
            ),
        })
    }

    /// Keeps pushed v6 records (the newest of each), in one transaction.
    fn keep_v6(&self, site: u32, records: &[Pushed]) -> super::Result<u64> {
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        for Pushed { record: r } in records {
            tx.prepare_cached(
                "INSERT INTO v6_record (table_name, record_id, site_id, action, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (table_name, record_id) DO UPDATE \
                 SET site_id = excluded.site_id, action = excluded.action, data = excluded.data",
            )?
            .execute(params![
                r.table_name,
                r.record_id,
                site,
                r.action,
                r.record_data.to_string()
            ])?;
        }
        tx.commit()?;
        if !records.is_empty() {
            log::info!(
                "v6: kept {} record(s) of site {site} for an Open mSupply central server",
                records.len()
            );
        }
        Ok(records.len() as u64)
    }
}

fn data(v: Value) -> Reply {
    Reply {
        status: 200,
        body: json!({ "data": v }).to_string().into_bytes(),
        log_end: None,
    }
}

fn v6_error(variant: &str, detail: Value) -> Reply {
    Reply {
        status: 200,
        body: json!({"error": {variant: detail}}).to_string().into_bytes(),
        log_end: None,
    }
}

/// A v5 refusal (`{"error": {code, message, data}}`) as v6's
/// `legacyServerError`, which Open mSupply maps to its own error codes.
fn legacy_error(v5: Reply) -> Reply {
    let inner = serde_json::from_slice::<Value>(&v5.body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    v6_error("legacyServerError", inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_v5_code_inside_the_v6_envelope() {
        let v5 = Reply::error(401, "site_incorrect_password", "no", Value::Null);
        let r = legacy_error(v5);
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["error"]["legacyServerError"]["code"],
            "site_incorrect_password"
        );
        assert!(is_v6("/central/sync/site_status"));
        assert!(!is_v6("/central/syncs"));
    }
}
