//! The v5 endpoints of the reference central (protocol §3, §4, §6): checks in the
//! order §6 gives (site, password, version, hardware id, store — a request failing
//! an earlier check binds nothing), one request per site at a time, and answers
//! with the exact keys the agent and Open mSupply expect.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::{routing, Activity, Central, CENTRAL_SITE_ID};
use crate::wire::protocol::{code, Acknowledge, SiteInfo, SyncRecord};

/// Largest page of a pull (§3: `limit` clamped to 1..1000, default 500).
pub const MAX_LIMIT: u64 = 1000;
pub const DEFAULT_LIMIT: u64 = 500;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: v.to_string().into_bytes(),
        }
    }
    pub fn error(status: u16, code: &str, message: &str, data: Value) -> Reply {
        Reply::json(
            status,
            json!({"error": {"code": code, "message": message, "data": data}}),
        )
    }
}

/// site_id, uuid, code, name, password hash, password generation, hardware id, init status.
type StoredSite = (u32, String, String, String, String, i64, String, String);

struct SiteRow {
    site_id: u32,
    uuid: String,
    code: String,
    name: String,
    init_status: String,
}

/// Releases a site's activity slot when the request ends (unless handed on).
struct Slot<'a> {
    central: &'a Central,
    site: u32,
    keep: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.central
                .activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.site);
        }
    }
}

impl Central {
    pub fn handle(&self, req: &Request) -> Reply {
        match self.handle_inner(req) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{} {}: {e}", req.method, req.path);
                Reply::error(
                    500,
                    "internal_error",
                    "the central failed; see its log",
                    Value::Null,
                )
            }
        }
    }

    fn handle_inner(&self, req: &Request) -> super::Result<Reply> {
        let Some(endpoint) = req.path.strip_prefix("/sync/v5/") else {
            return Ok(Reply::error(404, "not_found", "unknown path", Value::Null));
        };
        let conn = self.conn()?;
        let site = match self.authenticate(&conn, req)? {
            Ok(s) => s,
            Err(reply) => return Ok(reply),
        };
        if endpoint == "site_status" && req.method == "GET" {
            let activity = self
                .activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&site.site_id)
                .copied();
            let code = match activity {
                None => "idle",
                Some(Activity::Request) => "sync_is_running",
                Some(Activity::Initialising) => "initialisation_in_progress",
                Some(Activity::Integrating) => "integration_in_progress",
            };
            return Ok(Reply::json(
                200,
                json!({"code": code, "message": code, "data": null}),
            ));
        }
        // One request per site at a time (§6).
        {
            let mut map = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&site.site_id) {
                return Ok(Reply::error(
                    503,
                    code::SYNC_IS_RUNNING,
                    "a sync of this site is running",
                    Value::Null,
                ));
            }
            map.insert(site.site_id, Activity::Request);
        }
        let mut slot = Slot {
            central: self,
            site: site.site_id,
            keep: false,
        };
        match (req.method.as_str(), endpoint) {
            ("GET", "site") => Ok(self.site_info(&site)),
            ("POST", "initialise") => self.initialise(&conn, &site),
            ("POST", "queued_records") => self.push(&conn, &site, req, &mut slot),
            ("GET", "queued_records") => self.pull_queue(&conn, &site, req),
            ("GET", "central_records") => self.central_records(&conn, req),
            ("POST", "acknowledged_records") => self.acknowledge(&conn, &site, req),
            _ => Ok(Reply::error(
                404,
                "not_found",
                "unknown endpoint",
                Value::Null,
            )),
        }
    }

    fn authenticate(
        &self,
        conn: &Connection,
        req: &Request,
    ) -> super::Result<Result<SiteRow, Reply>> {
        let unknown = || {
            Reply::error(
                401,
                code::SITE_NAME_NOT_FOUND,
                "Site name not found; check the site name",
                Value::Null,
            )
        };
        let Some(decoded) = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| crate::wire::credentials::base64_decode(b.trim()))
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return Ok(Err(unknown()));
        };
        let Some((name, digest)) = decoded.split_once(':') else {
            return Ok(Err(unknown()));
        };
        let row: Option<StoredSite> = conn
            .query_row(
                "SELECT site_id, uuid, code, name, password_hash, password_gen, hardware_id, init_status \
                 FROM site WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .optional()?;
        let Some((site_id, uuid, code_, sname, hash, generation, hardware, init_status)) = row
        else {
            return Ok(Err(unknown()));
        };
        if !self.password_ok(site_id, generation, &hash, digest) {
            return Ok(Err(Reply::error(
                401,
                code::SITE_INCORRECT_PASSWORD,
                "Incorrect password; check the site password",
                Value::Null,
            )));
        }
        let (min, max) = self.versions;
        let version_ok = req
            .header("version")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|v| v >= min && v <= max);
        if !version_ok {
            return Ok(Err(Reply::error(
                409,
                code::API_VERSION_INCOMPATIBLE,
                "Sync API version not supported; upgrade required",
                json!({"major": 5, "minor": 0, "minVersion": min, "maxVersion": max}),
            )));
        }
        let device = req.header("msupply-site-uuid").unwrap_or("").trim();
        if device.is_empty() || (!hardware.is_empty() && hardware != device) {
            return Ok(Err(Reply::error(
                401,
                code::SITE_INCORRECT_HARDWARE_ID,
                "Hardware id not registered for this site; ask the administrator to reset it",
                Value::Null,
            )));
        }
        if routing::active_stores(conn, site_id)?.is_empty() {
            return Ok(Err(Reply::error(
                401,
                code::SITE_HAS_NO_STORE,
                "This site has no active store",
                Value::Null,
            )));
        }
        // Bind on first contact; record the connection for the sync report. The
        // report's clock is the server's, used for display only.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        conn.execute(
            "UPDATE site SET hardware_id = CASE WHEN hardware_id = '' THEN ?2 ELSE hardware_id END, last_seen = ?3 \
             WHERE site_id = ?1",
            params![site_id, device, now],
        )?;
        Ok(Ok(SiteRow {
            site_id,
            uuid,
            code: code_,
            name: sname,
            init_status,
        }))
    }

    fn password_ok(&self, site: u32, generation: i64, hash: &str, digest: &str) -> bool {
        let digest = digest.to_lowercase();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(site, generation))
            .cloned();
        if let Some(c) = cached {
            return constant_time_eq(c.as_bytes(), digest.as_bytes());
        }
        let ok = super::verify_digest(hash, &digest);
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((site, generation), digest);
        }
        ok
    }

    fn site_info(&self, site: &SiteRow) -> Reply {
        let info = SiteInfo {
            id: site.uuid.clone(),
            site_id: site.site_id,
            code: site.code.clone(),
            name: site.name.clone(),
            initialisation_status: site.init_status.clone(),
            is_om_supply_central_server: false,
            om_supply_central_server_url: String::new(),
            m_supply_central_site_id: Some(CENTRAL_SITE_ID),
        };
        Reply::json(200, serde_json::to_value(info).unwrap_or(Value::Null))
    }

    /// Fills the queue in one transaction; `site_status` says
    /// `initialisation_in_progress` meanwhile and other calls get 503.
    fn initialise(&self, conn: &Connection, site: &SiteRow) -> super::Result<Reply> {
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.site_id, Activity::Initialising);
        conn.execute(
            "UPDATE site SET init_status = 'started' WHERE site_id = ?1",
            [site.site_id],
        )?;
        let result = (|| {
            let tx = conn.unchecked_transaction()?;
            let n = routing::initialise(&tx, site.site_id)?;
            tx.execute(
                "UPDATE site SET init_status = 'completed' WHERE site_id = ?1",
                [site.site_id],
            )?;
            tx.commit()?;
            Ok::<u64, super::AdminError>(n)
        })();
        match result {
            Ok(n) => Ok(Reply::json(200, json!({"queueLength": n}))),
            Err(e) => {
                conn.execute(
                    "UPDATE site SET init_status = 'error' WHERE site_id = ?1",
                    [site.site_id],
                )?;
                Err(e)
            }
        }
    }

    fn push(
        &self,
        conn: &Connection,
        site: &SiteRow,
        req: &Request,
        slot: &mut Slot,
    ) -> super::Result<Reply> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Push {
            queue_length: u64,
            data: Vec<SyncRecord>,
        }
        let push: Push = match serde_json::from_slice(&req.body) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Reply::error(
                    400,
                    code::INVALID_SYNC_RECORD,
                    &format!("push body is not {{\"queueLength\":n,\"data\":[…]}}: {e}"),
                    json!({"records": []}),
                ))
            }
        };
        if push.data.is_empty() {
            if push.queue_length > 0 {
                return Ok(Reply::json(200, json!({"integrationStarted": false})));
            }
            let staged: i64 = conn.query_row(
                "SELECT count(*) FROM staging WHERE site_id = ?1",
                [site.site_id],
                |r| r.get(0),
            )?;
            if staged == 0 {
                // Nothing staged: integration is done the moment it starts.
                return Ok(Reply::json(200, json!({"integrationStarted": true})));
            }
            // Final push: integration runs on its own; site_status reports it.
            self.activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(site.site_id, Activity::Integrating);
            slot.keep = true;
            let central = self.clone();
            let site_id = site.site_id;
            let work = move || {
                let started = std::time::Instant::now();
                let result = central.conn().and_then(|c| {
                    let tx = c.unchecked_transaction()?;
                    let n = routing::integrate(&tx, site_id)?;
                    tx.commit()?;
                    Ok(n)
                });
                match result {
                    Ok(n) => log::info!(
                        "site {site_id}: integrated {n} record(s) in {:?}",
                        started.elapsed()
                    ),
                    Err(e) => log::error!("integration for site {site_id} failed: {e}"),
                }
                central
                    .activity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&site_id);
            };
            if self.background_integration {
                std::thread::spawn(work);
            } else {
                work();
            }
            return Ok(Reply::json(200, json!({"integrationStarted": true})));
        }
        let tx = conn.unchecked_transaction()?;
        match routing::judge(&tx, site.site_id, &push.data)? {
            Ok(()) => {
                routing::stage(&tx, site.site_id, &push.data)?;
                tx.commit()?;
                Ok(Reply::json(200, json!({"integrationStarted": false})))
            }
            Err((malformed, records)) => {
                let (status, code_, msg) = if malformed {
                    (
                        400,
                        code::INVALID_SYNC_RECORD,
                        "push holds malformed records",
                    )
                } else {
                    (
                        403,
                        code::RECORD_NOT_OWNED_BY_SITE,
                        "push holds records this site does not own",
                    )
                };
                Ok(Reply::error(
                    status,
                    code_,
                    msg,
                    json!({"records": records}),
                ))
            }
        }
    }

    fn limit(req: &Request) -> u64 {
        req.param("limit")
            .and_then(|l| l.parse::<u64>().ok())
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT)
    }

    fn pull_queue(&self, conn: &Connection, site: &SiteRow, req: &Request) -> super::Result<Reply> {
        let limit = Self::limit(req);
        let total: u64 = conn.query_row(
            "SELECT count(*) FROM sync_out WHERE site_id = ?1",
            [site.site_id],
            |r| r.get(0),
        )?;
        let head = format!("{{\"queueLength\":{total},\"data\":[");
        page(
            conn,
            "SELECT id, table_name, record_id, action, data FROM sync_out WHERE site_id = ?1 ORDER BY id LIMIT ?2",
            params![site.site_id, limit],
            head,
            |id| format!("\"syncOutId\":\"{id}\""),
        )
    }

    fn central_records(&self, conn: &Connection, req: &Request) -> super::Result<Reply> {
        let cursor = match req.param("cursor").map(|c| c.parse::<u64>()) {
            None => 0,
            Some(Ok(c)) => c,
            Some(Err(_)) => {
                return Ok(Reply::error(
                    400,
                    "invalid_cursor",
                    "cursor must be a whole number",
                    Value::Null,
                ))
            }
        };
        let limit = Self::limit(req);
        let max: u64 = conn.query_row("SELECT coalesce(max(id), 0) FROM changelog", [], |r| {
            r.get(0)
        })?;
        let head = format!("{{\"maxCursor\":{},\"data\":[", max.max(cursor));
        page(
            conn,
            "SELECT id, table_name, record_id, action, data FROM changelog WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![cursor as i64, limit],
            head,
            |id| format!("\"ID\":{id}"),
        )
    }

    fn acknowledge(
        &self,
        conn: &Connection,
        site: &SiteRow,
        req: &Request,
    ) -> super::Result<Reply> {
        let ack: Acknowledge = match serde_json::from_slice(&req.body) {
            Ok(a) => a,
            Err(e) => {
                return Ok(Reply::error(
                    400,
                    "invalid_body",
                    &format!("expected {{\"syncIDs\":[…]}}: {e}"),
                    Value::Null,
                ))
            }
        };
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM sync_out WHERE site_id = ?1 AND id = ?2")?;
            for id in &ack.sync_ids {
                // Unknown or already acknowledged ids are ignored (§3).
                if let Ok(n) = id.parse::<i64>() {
                    stmt.execute(params![site.site_id, n])?;
                }
            }
        }
        tx.commit()?;
        Ok(Reply {
            status: 204,
            body: Vec::new(),
        })
    }
}

/// A pull page: `head`, then one envelope per row of `sql` (id, table, record,
/// action, data), the id rendered by `lead`; stored rows are copied in verbatim.
fn page(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    head: String,
    lead: impl Fn(i64) -> String,
) -> super::Result<Reply> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut body = head.into_bytes();
    let mut first = true;
    while let Some(r) = rows.next()? {
        if !first {
            body.push(b',');
        }
        first = false;
        let data: Option<String> = r.get(4)?;
        write_record(
            &mut body,
            &lead(r.get(0)?),
            &r.get::<_, String>(1)?,
            &r.get::<_, String>(2)?,
            &r.get::<_, String>(3)?,
            data.as_deref(),
        );
    }
    body.extend_from_slice(b"]}");
    Ok(Reply { status: 200, body })
}

/// One envelope with the stored row copied in verbatim (already JSON).
fn write_record(
    out: &mut Vec<u8>,
    lead: &str,
    table: &str,
    record: &str,
    action: &str,
    data: Option<&str>,
) {
    out.push(b'{');
    out.extend_from_slice(lead.as_bytes());
    out.extend_from_slice(b",\"tableName\":");
    out.extend_from_slice(Value::from(table).to_string().as_bytes());
    out.extend_from_slice(b",\"recordId\":");
    out.extend_from_slice(Value::from(record).to_string().as_bytes());
    out.extend_from_slice(b",\"action\":");
    out.extend_from_slice(Value::from(action.to_lowercase()).to_string().as_bytes());
    out.extend_from_slice(b",\"recordData\":");
    out.extend_from_slice(data.unwrap_or("null").as_bytes());
    out.push(b'}');
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
