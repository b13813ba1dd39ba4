//! The test endpoints Open mSupply's integration tests call on a legacy
//! central (protocol §10.8): create a site with an active store, and change
//! central data as an administrator would, over `/sync/v5/test/*`.
//!
//! What must hold: they answer only while the central runs in test mode
//! (`serve --test-mode`, logged loudly) and only to a site the administrator
//! marked (`site test-site`); otherwise they are 404 like any unknown path.
//! Everything they change goes through the same paths as the administrator's
//! commands (routing, change log), in one write transaction per request.

use serde_json::{json, Value};

use super::api::Reply;
use super::auth::SiteRow;
use super::{hash_digest, routing, write_tx, Central, CentralError, Result};
use crate::legacy::registry::{self, Kind};
use crate::wire::credentials;

/// Rows one test request may change.
const MAX_ROWS: usize = 10_000;

impl Central {
    /// `POST /sync/v5/test/{upsert,delete,create_site}` from `site`; `None`
    /// when the path is not a test endpoint or is closed to this caller.
    pub(super) fn test_endpoint(
        &self,
        site: &SiteRow,
        endpoint: &str,
        body: &[u8],
    ) -> Option<Result<Reply>> {
        let op = endpoint.strip_prefix("test/")?;
        if !self.test_mode || !site.test_site {
            return None;
        }
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Some(Ok(bad_body(op, &e.to_string()))),
        };
        log::warn!("TEST MODE: site {} calls test/{op}", site.name);
        Some(match op {
            "upsert" => self.test_change(&parsed, false),
            "delete" => self.test_change(&parsed, true),
            "create_site" => self.test_create_site(&parsed),
            _ => return None,
        })
    }

    /// `{"<table>": [rows]}`: central data written (or deleted by `ID`) as
    /// `put`/`delete` would, every table in one transaction.
    fn test_change(&self, body: &Value, delete: bool) -> Result<Reply> {
        let Some(tables) = body.as_object() else {
            return Ok(bad_body("upsert", "expected {\"<tableName>\": [rows]}"));
        };
        let rows: usize = tables
            .values()
            .map(|v| v.as_array().map_or(0, Vec::len))
            .sum();
        if rows > MAX_ROWS {
            return Ok(bad_body(
                "upsert",
                &format!("{rows} rows; at most {MAX_ROWS} per request"),
            ));
        }
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        let mut changed = 0u64;
        // Parents before children, whatever order the object came in.
        let mut ordered: Vec<(&String, &Value)> = tables.iter().collect();
        ordered.sort_by_key(|(t, _)| registry::order(t));
        if delete {
            ordered.reverse();
        }
        for (table, list) in ordered {
            let Some(list) = list.as_array() else {
                return Ok(bad_body(
                    "upsert",
                    &format!("{table}: expected an array of rows"),
                ));
            };
            for row in list {
                let id = row
                    .get("ID")
                    .and_then(Value::as_str)
                    .or_else(|| row.as_str())
                    .ok_or_else(|| {
                        CentralError::Refused(format!("{table}: a row without a string ID"))
                    })?
                    .to_string();
                let kind = registry::row_kind(table, row);
                if !matches!(
                    kind,
                    Kind::Central
                        | Kind::CentralStore
                        | Kind::NameStoreJoin
                        | Kind::Name
                        | Kind::Created
                ) {
                    return Err(CentralError::Refused(format!(
                        "{table} is edited where its store is active, not through test/upsert"
                    )));
                }
                if delete {
                    routing::central_change(&tx, table, &id, "delete", None, None)?;
                } else {
                    routing::central_change(&tx, table, &id, "update", Some(row), None)?;
                }
                changed += 1;
            }
        }
        tx.commit()?;
        Ok(Reply {
            status: 200,
            body: json!({"changed": changed}).to_string().into_bytes(),
            log_end: None,
        })
    }

    /// `{"visibleNameIds": [...]}`: a new site with one active store whose
    /// name joins the given names, answered as Open mSupply's tests read it.
    fn test_create_site(&self, body: &Value) -> Result<Reply> {
        let visible: Vec<String> = body
            .get("visibleNameIds")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let tag = credentials::new_id();
        let short = &tag[..8.min(tag.len())];
        let (name, password) = (format!("test_site_{short}"), credentials::new_id());
        let digest = credentials::password_digest(&password);
        let hash = hash_digest(digest.expose())?;
        let (store_id, name_id) = (format!("store_{tag}"), format!("name_{tag}"));
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        let site_id: u32 = tx.query_row(
            "SELECT coalesce(max(CASE WHEN site_id > 1 THEN site_id END), 1) + 1 FROM site",
            [],
            |r| r.get(0),
        )?;
        let uuid = credentials::new_id();
        tx.execute(
            "INSERT INTO site (site_id, uuid, code, name, password_hash, test_site, added_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
            super::db::params![site_id, uuid, name.to_uppercase(), name, hash, super::now()],
        )?;
        routing::central_change(
            &tx,
            "name",
            &name_id,
            "update",
            Some(
                &json!({"ID": name_id, "name": name, "code": name.to_uppercase(), "type": "store"}),
            ),
            None,
        )?;
        let store = json!({"ID": store_id, "code": name.to_uppercase(), "name": name,
                           "name_ID": name_id, "sync_id_remote_site": site_id, "disabled": false});
        routing::central_change(&tx, "store", &store_id, "update", Some(&store), None)?;
        for other in &visible {
            let join = format!("{store_id}_{other}");
            let row =
                json!({"ID": join, "store_ID": store_id, "name_ID": other, "inactive": false});
            routing::central_change(&tx, "name_store_join", &join, "update", Some(&row), None)?;
        }
        tx.commit()?;
        log::warn!("TEST MODE: created site {name} (siteId {site_id}) with store {store_id}");
        Ok(Reply {
            status: 200,
            body: json!({
                "site": {"ID": uuid, "site_ID": site_id, "name": name, "password": digest.expose()},
                "store": {"ID": store_id, "name_ID": name_id},
            })
            .to_string()
            .into_bytes(),
            log_end: None,
        })
    }
}

fn bad_body(op: &str, why: &str) -> Reply {
    Reply::error(
        400,
        "invalid_body",
        &format!("test/{op}: {why}"),
        Value::Null,
    )
}
