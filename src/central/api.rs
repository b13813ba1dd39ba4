//! The v5 endpoints of the reference central (protocol §3, §4, §6, §9): one
//! request per site at a time, answers with the exact keys the agent and Open
//! mSupply expect, and writes that start as writes.
//!
//! The HTTP layer authenticates a request from its headers before it reads the
//! body ([`Central::authenticate`]), then calls [`Central::serve`];
//! [`Central::handle`] does both for an in-process caller.

use super::db::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::auth::SiteRow;
use super::judge;
use super::staging::{Carrier, PushBody, Staged};
use super::{pages, routing, write_tx, Activity, Central, CENTRAL_SITE_ID};
use crate::wire::protocol::{code, Acknowledge, SiteInfo};

/// Largest page of a pull (§3: `limit` clamped to 1..1000, default 500).
pub const MAX_LIMIT: u64 = 1000;
pub const DEFAULT_LIMIT: u64 = 500;
/// Records an initialisation looks at per write transaction (§10.9).
const INIT_STEP_ROWS: usize = 2_000;

#[derive(Clone)]
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

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Where the change log really ends, for a `central_records` answer
    /// (`Fieldsync-Log-End` [PC]): `maxCursor` never goes below the site's
    /// cursor (§4), so a central restored from an older copy says it here.
    pub log_end: Option<u64>,
}

/// A body of the JSON shape `A` handed to `f`, or 400 `invalid_body` that
/// says which shape was `expected`.
fn with_body<A: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
    f: impl FnOnce(A) -> super::Result<Reply>,
) -> super::Result<Reply> {
    match serde_json::from_slice(body) {
        Ok(a) => f(a),
        Err(e) => Ok(Reply::error(
            400,
            "invalid_body",
            &format!("expected {expected}: {e}"),
            Value::Null,
        )),
    }
}

/// 200 with `v` as JSON.
fn answer(v: impl serde::Serialize) -> Reply {
    Reply::json(200, serde_json::to_value(v).unwrap_or(Value::Null))
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: v.to_string().into_bytes(),
            log_end: None,
        }
    }
    pub fn error(status: u16, code: &str, message: &str, data: Value) -> Reply {
        Reply::json(
            status,
            json!({"error": {"code": code, "message": message, "data": data}}),
        )
    }
}

/// Releases a site's activity slot when the request ends.
struct Slot<'a> {
    central: &'a Central,
    site: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.central
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.site);
    }
}

impl Central {
    /// Authenticates and serves one request (in-process callers; the HTTP layer
    /// authenticates before reading the body).
    pub fn handle(&self, req: &Request) -> Reply {
        // In-process callers have no address of their own: loopback's back-off.
        match self.authenticated(req, std::net::Ipv4Addr::LOCALHOST.into()) {
            Ok(site) => self.serve(&site, req),
            Err(denied) => denied.reply,
        }
    }

    /// Serves one authenticated request.
    pub fn serve(&self, site: &SiteRow, req: &Request) -> Reply {
        match self.serve_inner(site, req) {
            Ok(r) => r,
            Err(e) => internal(req, &e),
        }
    }

    fn serve_inner(&self, site: &SiteRow, req: &Request) -> super::Result<Reply> {
        let Some(endpoint) = req.path.strip_prefix("/sync/v5/") else {
            return Ok(Reply::error(404, "not_found", "unknown path", Value::Null));
        };
        let mut conn = self.conn()?;
        if endpoint == "site_status" && req.method == "GET" {
            return self.site_status(&conn, site.site_id);
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
        let _slot = Slot {
            central: self,
            site: site.site_id,
        };
        match (req.method.as_str(), endpoint) {
            ("GET", "site") => self.site_info(&conn, site, req),
            ("POST", "initialise") => self.initialise(&mut conn, site),
            ("POST", "queued_records") => self.push(&mut conn, site, req),
            ("GET", "queued_records") => self.pull_queue(&conn, site, req),
            ("GET", "central_records") => self.central_records(&conn, site, req),
            ("POST", "acknowledged_records") => self.acknowledge(&mut conn, site, req),
            ("POST", "fieldsync/requeue") => with_body(
                &req.body,
                "{\"records\":[{\"tableName\":…,\"recordId\":…}]}",
                |ask| Ok(answer(self.requeue(&mut conn, site, ask)?)),
            ),
            ("POST", "fieldsync/compare") => with_body(
                &req.body,
                "{\"root\":…,\"nodes\":[{\"table\":…,\"prefix\":…,\"count\":…,\"hash\":…}]}",
                |ask| match super::verify::compare_problem(&ask) {
                    Some(problem) => Ok(Reply::error(400, "invalid_body", &problem, Value::Null)),
                    None => Ok(answer(self.compare(&conn, site, ask)?)),
                },
            ),
            ("POST", ep) if ep.starts_with("test/") => self
                .test_endpoint(site, ep, &req.body)
                .unwrap_or_else(|| Ok(not_found())),
            _ => Ok(not_found()),
        }
    }

    /// `idle` only when nothing of this site is owed: no request of it running,
    /// no initialisation, no integration pending, running or failing.
    fn site_status(&self, conn: &Connection, site: u32) -> super::Result<Reply> {
        let activity = self
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&site)
            .copied();
        let code = match activity {
            Some(Activity::Initialising) => "initialisation_in_progress",
            _ if self.integration_owed(conn, site)? => "integration_in_progress",
            Some(Activity::Request) => "sync_is_running",
            None => "idle",
        };
        Ok(Reply::json(
            200,
            json!({"code": code, "message": code, "data": null}),
        ))
    }

    fn site_info(&self, conn: &Connection, site: &SiteRow, req: &Request) -> super::Result<Reply> {
        let info = SiteInfo {
            id: site.uuid.clone(),
            site_id: site.site_id,
            code: site.code.clone(),
            name: site.name.clone(),
            initialisation_status: site.init_status.clone(),
            is_om_supply_central_server: !site.om_central_url.is_empty(),
            om_supply_central_server_url: self.om_central_url(conn, req)?,
            m_supply_central_site_id: Some(CENTRAL_SITE_ID),
        };
        Ok(Reply::json(
            200,
            serde_json::to_value(info).unwrap_or(Value::Null),
        ))
    }

    /// §10.1: always an absolute URL (Open mSupply stops its whole cycle on one
    /// that does not parse): the marked Open mSupply central server's, else
    /// this central's public base URL, which answers the v6 calls itself.
    pub(crate) fn om_central_url(&self, conn: &Connection, req: &Request) -> super::Result<String> {
        let marked: Option<String> = conn
            .prepare_cached("SELECT om_central_url FROM site WHERE om_central_url <> '' LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        if let Some(url) = marked.or_else(|| self.public_url.clone()) {
            return Ok(url);
        }
        // The address the site itself reached us at; only a name and a port
        // are taken from it, so a forged Host cannot inject a path or a scheme.
        let host = req
            .header("host")
            .filter(|h| is_host(h))
            .unwrap_or("localhost");
        Ok(format!("http://{host}"))
    }

    /// Fills the queue in bounded steps, each its own write transaction
    /// (§10.9); `site_status` says `initialisation_in_progress` meanwhile and
    /// other calls get 503. Only a `new` site, one whose last initialisation
    /// failed, or one the administrator allowed again may initialise: a second
    /// initialisation of a completed site (a second agent on another database
    /// file, a replay) gets 409 `site_already_initialised`.
    fn initialise(&self, conn: &mut Connection, site: &SiteRow) -> super::Result<Reply> {
        let allowed = {
            let tx = write_tx(conn)?;
            let allowed = tx.execute(
                "UPDATE site SET init_status = 'started', init_allowed = 0 \
                 WHERE site_id = ?1 AND (init_status IN ('new', 'error') OR init_allowed = 1)",
                [site.site_id],
            )? == 1;
            tx.commit()?;
            allowed
        };
        if !allowed {
            log::warn!(
                "site {} asked to initialise again (status {}): refused 409; \
                 `site reinitialise` allows it",
                site.name,
                site.init_status
            );
            return Ok(Reply::error(
                409,
                code::SITE_ALREADY_INITIALISED,
                &format!(
                    "site {} is already initialised (status {}); if this is a new or replaced device, \
                     ask the administrator to run `fieldsync-central site reinitialise {}`",
                    site.name, site.init_status, site.name
                ),
                Value::Null,
            ));
        }
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.site_id, Activity::Initialising);
        let result = (|| {
            let (mut queued, mut at) = (0u64, None);
            loop {
                let tx = write_tx(conn)?;
                let (n, next) = routing::initialise_step(&tx, site.site_id, at, INIT_STEP_ROWS)?;
                tx.commit()?;
                queued += n;
                match next {
                    Some(p) => at = Some(p),
                    None => break,
                }
            }
            let tx = write_tx(conn)?;
            if routing::has_dispensary(&tx, site.site_id)? {
                // It reads the dispensary-only central data from the change log.
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [format!("dispensary_data_sent:{}", site.site_id)],
                )?;
            }
            tx.execute(
                "UPDATE site SET init_status = 'completed' WHERE site_id = ?1",
                [site.site_id],
            )?;
            tx.commit()?;
            Ok::<u64, super::CentralError>(queued)
        })();
        match result {
            Ok(n) => {
                log::info!("site {} initialised: {n} record(s) queued", site.name);
                Ok(Reply::json(200, json!({"queueLength": n})))
            }
            Err(e) => {
                conn.execute(
                    "UPDATE site SET init_status = 'error' WHERE site_id = ?1",
                    [site.site_id],
                )?;
                Err(e)
            }
        }
    }

    fn push(&self, conn: &mut Connection, site: &SiteRow, req: &Request) -> super::Result<Reply> {
        if site.init_status != "completed" {
            // §5: no pushes before initialisation (nothing to judge them against).
            return Ok(Reply::error(
                409,
                "site_not_initialised",
                "this site has not completed its initialisation; pushes come after it",
                Value::Null,
            ));
        }
        // A USB bundle of this site being imported (by another process, too)
        // has the site's pushes to itself until it is done.
        if super::import_lock::held(conn, site.site_id)?.is_some() {
            return Ok(Reply::error(
                503,
                code::SYNC_IS_RUNNING,
                "a USB bundle of this site is being imported; sync again in a minute",
                Value::Null,
            ));
        }
        let push = match PushBody::parse(&req.body) {
            Ok(p) => p,
            Err(why) => {
                return Ok(Reply::error(
                    400,
                    code::INVALID_SYNC_RECORD,
                    &why,
                    json!({"records": []}),
                ))
            }
        };
        if push.data.is_empty() {
            if push.queue_length > 0 {
                return Ok(Reply::json(200, json!({"integrationStarted": false})));
            }
            self.final_push(conn, site.site_id)?;
            return Ok(Reply::json(200, json!({"integrationStarted": true})));
        }
        Ok(match self.stage(conn, site, push.data, Carrier::Link)? {
            Staged::Accepted { .. } => Reply::json(200, json!({"integrationStarted": false})),
            Staged::Full { staged, bytes } => Reply::error(
                413,
                code::REQUEST_TOO_LARGE,
                &format!(
                    "this site has {staged} records ({} MiB) staged; send the final push before more",
                    bytes >> 20
                ),
                Value::Null,
            ),
            Staged::Integrating => Reply::error(
                503,
                code::SYNC_IS_RUNNING,
                "this site's last push is being integrated; sync again when site_status says idle",
                Value::Null,
            ),
            Staged::Refused(judge::Refused { malformed, records }) => {
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
                Reply::error(status, code_, msg, json!({"records": records}))
            }
        })
    }

    fn limit(req: &Request) -> u64 {
        req.param("limit")
            .and_then(super::parse_id)
            .map_or(DEFAULT_LIMIT, |l| l as u64)
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
        pages::page(
            conn,
            "SELECT id, table_name, record_id, action, data FROM sync_out WHERE site_id = ?1 ORDER BY id LIMIT ?2",
            params![site.site_id, limit],
            head,
            |id| format!("\"syncOutId\":\"{id}\""),
        )
    }

    /// The change log after `cursor`, without what this site must not see or
    /// already has: dispensary-only data for a site without an active dispensary
    /// store (§9.7), and a primary's own edits (never echoed).
    fn central_records(
        &self,
        conn: &Connection,
        site: &SiteRow,
        req: &Request,
    ) -> super::Result<Reply> {
        // IDs are SQLite integers: a cursor past i64::MAX cannot be one; digits
        // only (`+5` is not a cursor).
        let cursor = match req.param("cursor").map(super::parse_id) {
            None => 0,
            Some(Some(c)) => c as u64,
            Some(None) => {
                return Ok(Reply::error(
                    400,
                    "invalid_cursor",
                    "cursor must be a whole number below 2^63",
                    Value::Null,
                ))
            }
        };
        let limit = Self::limit(req);
        let max: u64 = conn.query_row("SELECT coalesce(max(id), 0) FROM changelog", [], |r| {
            r.get(0)
        })?;
        if cursor > 0 {
            // The site holds everything up to the cursor it asks from (it moves
            // its cursor with the records): a USB bundle for it starts there.
            pages::record_site_cursor(conn, site.site_id, cursor)?;
        }
        let head = format!("{{\"maxCursor\":{},\"data\":[", max.max(cursor));
        pages::page(
            conn,
            pages::CENTRAL_PAGE,
            params![
                cursor as i64,
                limit,
                site.site_id,
                pages::hidden(conn, site.site_id)?
            ],
            head,
            |id| format!("\"ID\":{id}"),
        )
        .map(|r| Reply {
            log_end: Some(max),
            ..r
        })
    }

    fn acknowledge(
        &self,
        conn: &mut Connection,
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
        self.acknowledge_entries(conn, site.site_id, &ack.sync_ids)?;
        Ok(Reply {
            status: 204,
            body: Vec::new(),
            log_end: None,
        })
    }
}

fn not_found() -> Reply {
    Reply::error(404, "not_found", "unknown endpoint", Value::Null)
}

/// A `Host` header that is a host name or address and an optional port, and
/// nothing else.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn internal(req: &Request, e: &super::CentralError) -> Reply {
    log::error!("{} {}: {e}", req.method, req.path);
    Reply::error(
        500,
        "internal_error",
        "the central failed; see its log",
        Value::Null,
    )
}
