//! The reference central server (protocol §6): state in SQLite, administration,
//! the v5 endpoints, routing, initialisation and transfers. Used for development,
//! tests, the demo and pilots; production sites talk to mSupply's own central.
//!
//! Layout: this file holds the state and administration; `api` authenticates and
//! answers the endpoints; `routing` decides who may push what and where each change
//! goes; `http` is the wire. Built only with the `central` feature: device builds
//! carry none of it.

pub mod api;
pub mod http;
pub mod routing;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

/// The central's own site id (`mSupplyCentralSiteId`); remote sites count from 2.
pub const CENTRAL_SITE_ID: u32 = 1;
/// Sites silent for longer are flagged in the sync report (seed 001: a month).
pub const SILENT_AFTER_SECS: i64 = 30 * 24 * 3600;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS site (
    site_id       INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    code          TEXT NOT NULL,
    name          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,          -- Argon2id of the SHA-256 digest [PC]
    password_gen  INTEGER NOT NULL DEFAULT 1,
    hardware_id   TEXT NOT NULL DEFAULT '',-- bound on first contact, '' after a reset
    init_status   TEXT NOT NULL DEFAULT 'new',
    last_seen     INTEGER                  -- unix seconds; the report only
);
-- Every synced row by (table, ID); site_id = the site that pushed it (NULL: central).
CREATE TABLE IF NOT EXISTS record (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT NOT NULL,
    site_id    INTEGER,
    PRIMARY KEY (table_name, record_id)
);
-- Central-data change log; IDs strictly increase and are never reused (AUTOINCREMENT).
CREATE TABLE IF NOT EXISTS changelog (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT
);
CREATE INDEX IF NOT EXISTS changelog_record ON changelog (table_name, record_id);
-- Per-site queues; id is the syncOutId. One unacknowledged non-merge entry per
-- (site, record): a newer change replaces it under a new id.
CREATE TABLE IF NOT EXISTS sync_out (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    is_merge   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sync_out_site ON sync_out (site_id, id);
CREATE INDEX IF NOT EXISTS sync_out_record ON sync_out (site_id, table_name, record_id);
-- Push staging: a re-sent batch replaces its own rows (idempotent).
CREATE TABLE IF NOT EXISTS staging (
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
);
CREATE INDEX IF NOT EXISTS staging_seq ON staging (site_id, seq);
-- Which sites hold a collector or transfer copy of a store [PC].
CREATE TABLE IF NOT EXISTS copy (
    store_id TEXT NOT NULL,
    site_id  INTEGER NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('collector', 'transfer')),
    PRIMARY KEY (store_id, site_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// What a site is doing right now; one request per site at a time (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Request,
    Initialising,
    Integrating,
}

/// Shared by every connection thread of the server.
#[derive(Clone)]
pub struct Central {
    path: Arc<std::path::PathBuf>,
    pub(crate) activity: Arc<Mutex<HashMap<u32, Activity>>>,
    /// Verified (site, password generation) → digest, so Argon2 runs once per
    /// site and password, not on every request.
    pub(crate) verified: Arc<Mutex<HashMap<(u32, i64), String>>>,
    /// API versions accepted (§6 default 14..14).
    pub versions: (u32, u32),
    /// Gzip answers for clients that accept it [PC]; off only to measure without.
    pub gzip: bool,
    /// Integrate a site's final push on a thread of its own while `site_status`
    /// says so (the default); in-process tests integrate before answering.
    pub background_integration: bool,
}

#[derive(Debug)]
pub struct AdminError(pub String);

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for AdminError {}

impl From<rusqlite::Error> for AdminError {
    fn from(e: rusqlite::Error) -> Self {
        AdminError(format!("central database: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, AdminError>;

/// One row of the sync report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteReport {
    pub site_id: u32,
    pub name: String,
    pub code: String,
    pub stores: Vec<String>,
    pub init_status: String,
    pub hardware_id_bound: bool,
    pub last_seen: Option<i64>,
    pub queued: u64,
    pub silent: bool,
}

impl Central {
    pub fn open(path: &Path) -> Result<Central> {
        let c = Central {
            path: Arc::new(path.to_path_buf()),
            activity: Arc::default(),
            verified: Arc::default(),
            versions: (
                crate::wire::protocol::API_VERSION,
                crate::wire::protocol::API_VERSION,
            ),
            gzip: true,
            background_integration: true,
        };
        let conn = c.conn()?;
        conn.execute_batch(SCHEMA)?;
        // Sites that were mid-initialisation when the server stopped get to ask again.
        conn.execute(
            "UPDATE site SET init_status = 'error' WHERE init_status = 'started'",
            [],
        )?;
        Ok(c)
    }

    /// A connection per use: WAL lets a long initialisation run beside other sites.
    pub fn conn(&self) -> Result<Connection> {
        let conn = Connection::open(&*self.path)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    /// Marks a site busy, as a long request would (tests of the busy answers).
    pub fn activity_for_test(&self, site: u32, a: Activity) {
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site, a);
    }

    // ---- sites ----------------------------------------------------------------

    pub fn add_site(&self, name: &str, code: &str, password: &str) -> Result<u32> {
        let conn = self.conn()?;
        let next: u32 = conn.query_row(
            "SELECT max(coalesce(max(site_id), 1), 1) + 1 FROM site",
            [],
            |r| r.get(0),
        )?;
        let digest = crate::wire::credentials::password_digest(password);
        conn.execute(
            "INSERT INTO site (site_id, uuid, code, name, password_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![next, crate::wire::credentials::new_id(), code, name, hash_digest(digest.expose())?],
        )
        .map_err(|e| AdminError(format!("adding site {name}: {e}")))?;
        Ok(next)
    }

    pub fn site_id(&self, conn: &Connection, name: &str) -> Result<u32> {
        conn.query_row("SELECT site_id FROM site WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| {
            AdminError(format!(
                "no site named {name:?}; see `fieldsync-central report`"
            ))
        })
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        let digest = crate::wire::credentials::password_digest(password);
        conn.execute(
            "UPDATE site SET password_hash = ?2, password_gen = password_gen + 1 WHERE site_id = ?1",
            params![id, hash_digest(digest.expose())?],
        )?;
        Ok(())
    }

    /// Clears the bound hardware id: the next device to connect is bound (seed 001).
    pub fn reset_hardware_id(&self, name: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        conn.execute("UPDATE site SET hardware_id = '' WHERE site_id = ?1", [id])?;
        Ok(())
    }

    /// An administrator asks the site to initialise again (§6).
    pub fn request_reinitialise(&self, name: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        conn.execute(
            "UPDATE site SET init_status = 'new' WHERE site_id = ?1",
            [id],
        )?;
        Ok(())
    }

    // ---- stores ---------------------------------------------------------------

    /// Adds a store (a `store` row, central store data) and its `name` row (central
    /// data, the name other stores use in transfers). `site` None: active on the central.
    pub fn add_store(&self, id: &str, code: &str, name: &str, site: Option<&str>) -> Result<()> {
        let conn = self.conn()?;
        let site_id = match site {
            Some(s) => self.site_id(&conn, s)?,
            None => CENTRAL_SITE_ID,
        };
        let name_id = format!("N_{id}");
        self.put_central(
            &conn,
            "name",
            &json!({"ID": name_id, "name": name, "code": code, "type": "store"}),
        )?;
        let row = json!({"ID": id, "code": code, "name": name, "name_ID": name_id,
                         "sync_id_remote_site": site_id, "disabled": false});
        routing::write_central_store_row(&conn, &row)?;
        if site_id != CENTRAL_SITE_ID {
            routing::queue_store_data_to(&conn, id, site_id)?;
        }
        Ok(())
    }

    /// Makes a store active on another site (seed: moving a store). The old site
    /// keeps a transfer copy; the new site receives the store's data [PC].
    pub fn move_store(&self, id: &str, site: Option<&str>) -> Result<()> {
        let conn = self.conn()?;
        let new_site = match site {
            Some(s) => self.site_id(&conn, s)?,
            None => CENTRAL_SITE_ID,
        };
        let mut row = routing::get(&conn, "store", id)?
            .ok_or_else(|| AdminError(format!("no store {id:?}")))?;
        let old_site = row["sync_id_remote_site"].as_u64().unwrap_or(0) as u32;
        if old_site == new_site {
            return Ok(());
        }
        row["sync_id_remote_site"] = json!(new_site);
        conn.execute(
            "DELETE FROM copy WHERE store_id = ?1 AND site_id = ?2",
            params![id, new_site],
        )?;
        if old_site != CENTRAL_SITE_ID {
            conn.execute(
                "INSERT OR REPLACE INTO copy (store_id, site_id, kind) VALUES (?1, ?2, 'transfer')",
                params![id, old_site],
            )?;
        }
        routing::write_central_store_row(&conn, &row)?;
        if new_site != CENTRAL_SITE_ID {
            routing::queue_store_data_to(&conn, id, new_site)?;
        }
        Ok(())
    }

    /// Sets how `site` holds `store`: `collector`, `transfer`, or `none`.
    pub fn set_copy(&self, store: &str, site: &str, kind: &str) -> Result<()> {
        let conn = self.conn()?;
        let site_id = self.site_id(&conn, site)?;
        match kind {
            "none" => {
                conn.execute(
                    "DELETE FROM copy WHERE store_id = ?1 AND site_id = ?2",
                    params![store, site_id],
                )?;
            }
            "collector" | "transfer" => {
                conn.execute(
                    "INSERT OR REPLACE INTO copy (store_id, site_id, kind) VALUES (?1, ?2, ?3)",
                    params![store, site_id, kind],
                )?;
                // The store row reaches every copy site; a collector gets the data too.
                if let Some(row) = routing::get(&conn, "store", store)? {
                    routing::enqueue(&conn, site_id, "store", store, "update", Some(&row), false)?;
                }
                if kind == "collector" {
                    routing::queue_store_data_to(&conn, store, site_id)?;
                }
            }
            other => {
                return Err(AdminError(format!(
                    "copy kind {other:?}: use collector, transfer or none"
                )))
            }
        }
        Ok(())
    }

    // ---- central data -----------------------------------------------------------

    /// Inserts or updates central or central store data, recording and routing it.
    pub fn put(&self, table: &str, row: &Value) -> Result<()> {
        let conn = self.conn()?;
        self.put_central(&conn, table, row)
    }

    fn put_central(&self, conn: &Connection, table: &str, row: &Value) -> Result<()> {
        let id = row
            .get("ID")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AdminError("record needs a string \"ID\"".into()))?;
        routing::central_change(conn, table, id, "update", Some(row))
    }

    pub fn delete(&self, table: &str, id: &str) -> Result<()> {
        let conn = self.conn()?;
        routing::central_change(&conn, table, id, "delete", None)
    }

    /// Merges central record `drop` into `keep` (items, names, clinicians).
    pub fn merge(&self, table: &str, keep: &str, drop: &str) -> Result<()> {
        let conn = self.conn()?;
        routing::central_merge(&conn, table, keep, drop)
    }

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>> {
        routing::get(&self.conn()?, table, id)
    }

    // ---- report -------------------------------------------------------------------

    /// Every site with its last connection; `now` is the report's clock (the central
    /// is a server with a real clock; nothing is decided on it but the flag).
    pub fn report(&self, now: i64) -> Result<Vec<SiteReport>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT s.site_id, s.name, s.code, s.init_status, s.hardware_id <> '', s.last_seen, \
                    (SELECT count(*) FROM sync_out q WHERE q.site_id = s.site_id) \
             FROM site s ORDER BY s.site_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SiteReport {
                site_id: r.get(0)?,
                name: r.get(1)?,
                code: r.get(2)?,
                stores: vec![],
                init_status: r.get(3)?,
                hardware_id_bound: r.get(4)?,
                last_seen: r.get(5)?,
                queued: r.get::<_, i64>(6)? as u64,
                silent: false,
            })
        })?;
        let mut out: Vec<SiteReport> = rows.collect::<std::result::Result<_, _>>()?;
        for s in &mut out {
            s.stores = routing::active_stores(&conn, s.site_id)?;
            s.silent = s.last_seen.is_none_or(|t| now - t > SILENT_AFTER_SECS);
        }
        Ok(out)
    }
}

/// Argon2id of the SHA-256 digest [PC]: a stolen central database does not give
/// out the password-equivalent digests.
fn hash_digest(digest: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes = crate::wire::credentials::random_bytes()
        .map_err(|e| AdminError(format!("random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AdminError(format!("salt: {e}")))?;
    argon2_params()
        .hash_password(digest.to_lowercase().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError(format!("hashing password: {e}")))
}

pub(crate) fn verify_digest(hash: &str, digest: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2_params()
            .verify_password(digest.to_lowercase().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

fn argon2_params() -> argon2::Argon2<'static> {
    // 8 MiB, 2 passes: verified once per site and password (then cached), so a
    // modest cost keeps a small central responsive.
    let params = argon2::Params::new(8 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}
