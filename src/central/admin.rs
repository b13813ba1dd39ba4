//! The administrator's operations on the central (CLI or admin API outside
//! `/sync/v5/` [PC]): sites and passwords, hardware-id resets, stores and the
//! sites that hold them, central data edits, merges, the primary site of a
//! mirrored system, patient resync, and removing a record from every queue.
//!
//! Each operation is one write transaction. In a mirrored system (seed 000,
//! "Mirrored sync") central data is edited on the primary site only: the
//! central's own edits of it are refused with the primary's name.

use super::db::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::{hash_digest, routing, write_tx, Central, CentralError, Result, CENTRAL_SITE_ID};
use crate::legacy::registry::{self, Kind};

/// Records a re-queue looks at per write transaction (§10.9).
const REQUEUE_STEP_ROWS: usize = 2_000;
/// Records a bulk import writes per write transaction (§10.9).
const IMPORT_STEP_ROWS: usize = 2_000;

impl Central {
    // ---- sites ----------------------------------------------------------------

    pub fn add_site(&self, name: &str, code: &str, password: &str) -> Result<u32> {
        let mut conn = self.conn()?;
        let taken: Option<String> = conn
            .query_row(
                "SELECT name FROM site WHERE lower(name) = lower(?1)",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            return Err(CentralError::Refused(format!(
                "a site named {other} already exists; to give it a new password use \
                 `site password {other}`, or choose another name"
            )));
        }
        let hash = hash_digest(crate::wire::credentials::password_digest(password).expose())?;
        let tx = write_tx(&mut conn)?;
        let next: u32 = tx.query_row(
            "SELECT coalesce(max(CASE WHEN site_id > 1 THEN site_id END), 1) + 1 FROM site",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO site (site_id, uuid, code, name, password_hash, added_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                next,
                crate::wire::credentials::new_id(),
                code,
                name,
                hash,
                super::now()
            ],
        )
        .map_err(|e| CentralError::Refused(format!("adding site {name}: {e}")))?;
        tx.commit()?;
        Ok(next)
    }

    pub fn site_id(&self, conn: &Connection, name: &str) -> Result<u32> {
        conn.query_row(
            "SELECT site_id FROM site WHERE lower(name) = lower(?1)",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| {
            CentralError::Refused(format!(
                "no site named {name:?}; see `fieldsync-central report`"
            ))
        })
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        let hash = hash_digest(crate::wire::credentials::password_digest(password).expose())?;
        conn.execute(
            "UPDATE site SET password_hash = ?2, password_gen = password_gen + 1, failed_logins = 0, \
             locked_until = 0 WHERE site_id = ?1",
            params![id, hash],
        )?;
        Ok(())
    }

    /// Clears the bound hardware id: the next device to connect is bound (seed 001).
    pub fn reset_hardware_id(&self, name: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        // The replacing device starts from an empty database: it may initialise.
        conn.execute(
            "UPDATE site SET hardware_id = '', init_allowed = 1 WHERE site_id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// An administrator asks the site to initialise again (§6).
    pub fn request_reinitialise(&self, name: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        conn.execute(
            "UPDATE site SET init_status = 'new', init_allowed = 1 WHERE site_id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Designates the primary site of a mirrored system (seed 000): it edits the
    /// central data, which the central then only routes. `None`: no mirroring.
    pub fn set_primary(&self, name: Option<&str>) -> Result<()> {
        let conn = self.conn()?;
        match name {
            Some(n) => {
                let id = self.site_id(&conn, n)?;
                conn.execute(
                    "INSERT INTO meta VALUES ('primary_site', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [id.to_string()],
                )?;
            }
            None => {
                conn.execute("DELETE FROM meta WHERE key = 'primary_site'", [])?;
            }
        }
        Ok(())
    }

    /// Seed 004: marks `name` as the Open mSupply central server, reached at
    /// `url` (every site's `/site` then names it; at most one site is), or
    /// with `None` unmarks whichever site was.
    pub fn set_om_central(&self, name: Option<&str>, url: Option<&str>) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        tx.execute(
            "UPDATE site SET om_central_url = '' WHERE om_central_url <> ''",
            [],
        )?;
        if let Some(n) = name {
            let id = self.site_id(&tx, n)?;
            let url = absolute_url(url.unwrap_or_default())?;
            tx.execute(
                "UPDATE site SET om_central_url = ?2 WHERE site_id = ?1",
                params![id, url],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// §10.8: allows (or stops allowing) `name` to call the test endpoints,
    /// which answer only while the central runs in test mode.
    pub fn set_test_site(&self, name: &str, on: bool) -> Result<()> {
        let conn = self.conn()?;
        let id = self.site_id(&conn, name)?;
        conn.execute(
            "UPDATE site SET test_site = ?2 WHERE site_id = ?1",
            params![id, on],
        )?;
        Ok(())
    }

    /// The primary site of a mirrored system, if any.
    pub fn primary(&self) -> Result<Option<u32>> {
        primary_site(&self.conn()?)
    }

    // ---- stores ---------------------------------------------------------------

    /// Adds a store (a `store` row, central store data) and its `name` row (central
    /// data, the name other stores use in transfers). `site` None: active on the central.
    pub fn add_store(&self, id: &str, code: &str, name: &str, site: Option<&str>) -> Result<()> {
        let mut conn = self.conn()?;
        not_mirrored(
            &conn,
            "a store is created on the primary site, then assigned here",
        )?;
        let tx = write_tx(&mut conn)?;
        let site_id = match site {
            Some(s) => self.site_id(&tx, s)?,
            None => CENTRAL_SITE_ID,
        };
        let name_id = format!("N_{id}");
        routing::central_change(
            &tx,
            "name",
            &name_id,
            "update",
            Some(&json!({"ID": name_id, "name": name, "code": code, "type": "store"})),
            None,
        )?;
        let row = json!({"ID": id, "code": code, "name": name, "name_ID": name_id,
                         "sync_id_remote_site": site_id, "disabled": false});
        routing::central_change(&tx, "store", id, "update", Some(&row), None)?;
        if site_id != CENTRAL_SITE_ID {
            routing::queue_store_data_to(&tx, id, site_id)?;
            routing::ensure_dispensary_data(&tx, site_id)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes a store active on another site (seed: moving a store; in a mirrored
    /// system, assigning a store the primary created). The old site keeps a
    /// transfer copy; the new site receives the store's data [PC].
    pub fn move_store(&self, id: &str, site: Option<&str>) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        let new_site = match site {
            Some(s) => self.site_id(&tx, s)?,
            None => CENTRAL_SITE_ID,
        };
        let mut row = routing::get(&tx, "store", id)?
            .ok_or_else(|| CentralError::Refused(format!("no store {id:?}")))?;
        let old_site = row["sync_id_remote_site"].as_u64().unwrap_or(0) as u32;
        if old_site == new_site {
            return Ok(());
        }
        row["sync_id_remote_site"] = json!(new_site);
        tx.execute(
            "DELETE FROM copy WHERE store_id = ?1 AND site_id = ?2",
            params![id, new_site],
        )?;
        if old_site > CENTRAL_SITE_ID {
            tx.execute(
                "INSERT INTO copy (store_id, site_id, kind) VALUES (?1, ?2, 'transfer') \
                 ON CONFLICT (store_id, site_id) DO UPDATE SET kind = excluded.kind",
                params![id, old_site],
            )?;
        }
        // Assignment is the central's own business even in a mirrored system.
        routing::write_store_row(&tx, &row)?;
        if new_site != CENTRAL_SITE_ID {
            routing::queue_store_data_to(&tx, id, new_site)?;
            routing::ensure_dispensary_data(&tx, new_site)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets how `site` holds `store`: `collector`, `transfer`, or `none`.
    pub fn set_copy(&self, store: &str, site: &str, kind: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        let site_id = self.site_id(&tx, site)?;
        match kind {
            "none" => {
                tx.execute(
                    "DELETE FROM copy WHERE store_id = ?1 AND site_id = ?2",
                    params![store, site_id],
                )?;
            }
            "collector" | "transfer" => {
                tx.execute(
                    "INSERT INTO copy (store_id, site_id, kind) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (store_id, site_id) DO UPDATE SET kind = excluded.kind",
                    params![store, site_id, kind],
                )?;
                // The store row reaches every copy site; a collector gets the data too.
                if let Some(row) = routing::get(&tx, "store", store)? {
                    routing::enqueue(&tx, site_id, "store", store, "update", Some(&row), false)?;
                }
                if kind == "collector" {
                    routing::queue_store_data_to(&tx, store, site_id)?;
                    routing::ensure_dispensary_data(&tx, site_id)?;
                }
            }
            other => {
                return Err(CentralError::Refused(format!(
                    "copy kind {other:?}: use collector, transfer or none"
                )))
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Seed 000, "Resync patient records when store is saved": queues every
    /// patient visible in `store`, with their related dispensary data, to the
    /// store's active site again. Returns how many records were queued.
    pub fn resync_patients(&self, store: &str) -> Result<u64> {
        let mut conn = self.conn()?;
        let tx = write_tx(&mut conn)?;
        let site = routing::active_site(&tx, store)?
            .filter(|s| *s != CENTRAL_SITE_ID)
            .ok_or_else(|| {
                CentralError::Refused(format!("store {store:?} is not active on a remote site"))
            })?;
        let n = routing::queue_patients_of(&tx, store, site)?;
        tx.commit()?;
        Ok(n)
    }

    /// §10.7: queues `site` again everything it should hold, or every row of
    /// `table` (central data included), for a site that could not read what it
    /// was sent (Open mSupply never retries a row that failed to integrate). In
    /// bounded write transactions; a stop midway is repaired by running it
    /// again. Returns how many records were queued.
    pub fn requeue_site(&self, name: &str, table: Option<&str>) -> Result<u64> {
        if let Some(t) = table {
            if registry::lookup(t).is_none_or(|t| t.kind == Kind::Local) {
                return Err(CentralError::Refused(format!(
                    "{t:?} is not a table sites receive; give a legacy table name such as \
                     store, name, item or transact (case matters)"
                )));
            }
        }
        let mut conn = self.conn()?;
        let site = self.site_id(&conn, name)?;
        let (mut queued, mut at) = (0u64, None);
        loop {
            let tx = write_tx(&mut conn)?;
            let (n, next) = routing::requeue_step(&tx, site, table, at, REQUEUE_STEP_ROWS)?;
            tx.commit()?;
            queued += n;
            match next {
                Some(p) => at = Some(p),
                None => return Ok(queued),
            }
        }
    }

    /// Removes a record's unacknowledged entries from every site's queue (a record
    /// no site can read, say); the record itself stays. Returns how many.
    pub fn unqueue(&self, table: &str, id: &str) -> Result<u64> {
        let conn = self.conn()?;
        Ok(conn.execute(
            "DELETE FROM sync_out WHERE table_name = ?1 AND record_id = ?2",
            params![table, id],
        )? as u64)
    }

    // ---- central data -----------------------------------------------------------

    /// Inserts or updates central or central store data, recording and routing it.
    pub fn put(&self, table: &str, row: &Value) -> Result<()> {
        let id = row
            .get("ID")
            .and_then(|v| v.as_str())
            .ok_or_else(|| CentralError::Refused("record needs a string \"ID\"".into()))?;
        let mut conn = self.conn()?;
        self.edits_central_data(&conn, table, row)?;
        let tx = write_tx(&mut conn)?;
        routing::central_change(&tx, table, id, "update", Some(row), None)?;
        tx.commit()?;
        Ok(())
    }

    /// `fieldsync-central import FILE`: central data in bulk, JSON Lines as
    /// the agent's `list` writes them (`{"table": T, "record": {…}}`). The
    /// whole file is checked first (JSON, a known table the central edits, a
    /// string `ID`), so a bad line anywhere writes nothing and is named; then
    /// it is written and routed in write transactions of [`IMPORT_STEP_ROWS`]
    /// (§10.9), streaming both times. Returns how many records.
    pub fn import(&self, path: &std::path::Path) -> Result<u64> {
        let lines = |f: &mut dyn FnMut(usize, &str, &Value) -> Result<()>| -> Result<u64> {
            use std::io::BufRead;
            let file = std::fs::File::open(path)
                .map_err(|e| CentralError::Refused(format!("{}: {e}", path.display())))?;
            let mut n = 0u64;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let at = i + 1;
                let line = line.map_err(|e| {
                    CentralError::Refused(format!("{} line {at}: {e}", path.display()))
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line).map_err(|e| {
                    CentralError::Refused(format!(
                        "{} line {at}: not JSON ({}); each line is {{\"table\": …, \"record\": {{…}}}}",
                        path.display(),
                        e.to_string().split(" at line").next().unwrap_or_default()
                    ))
                })?;
                let (Some(table), Some(row)) = (v["table"].as_str(), v.get("record")) else {
                    return Err(CentralError::Refused(format!(
                        "{} line {at}: expected {{\"table\": …, \"record\": {{…}}}}",
                        path.display()
                    )));
                };
                f(at, table, row)?;
                n += 1;
            }
            Ok(n)
        };
        let conn = self.conn()?;
        lines(&mut |at, table, row| {
            let why = if row.get("ID").and_then(Value::as_str).is_none() {
                Some("the record needs a string \"ID\"".to_string())
            } else if registry::lookup(table).is_none() {
                Some(format!(
                    "there is no table {table:?} (names are case-sensitive)"
                ))
            } else if !matches!(
                registry::row_kind(table, row),
                Kind::Central | Kind::CentralStore | Kind::NameStoreJoin | Kind::Created
            ) {
                Some(format!(
                    "{table} is edited where its store is active, not on the central"
                ))
            } else {
                self.edits_central_data(&conn, table, row)
                    .err()
                    .map(|e| e.to_string())
            };
            match why {
                Some(w) => Err(CentralError::Refused(format!(
                    "{} line {at}: {w}; nothing was imported",
                    path.display()
                ))),
                None => Ok(()),
            }
        })?;
        drop(conn);
        let mut conn = self.conn()?;
        // At most a step's rows in memory, each step its own transaction.
        let mut chunk: Vec<(String, Value)> = Vec::with_capacity(IMPORT_STEP_ROWS);
        let flush = |conn: &mut Connection, chunk: &mut Vec<(String, Value)>| -> Result<()> {
            let tx = write_tx(conn)?;
            routing::with_memo(|| {
                for (table, row) in chunk.iter() {
                    let id = row["ID"].as_str().unwrap_or_default();
                    routing::central_change(&tx, table, id, "update", Some(row), None)?;
                }
                Ok(())
            })?;
            tx.commit()?;
            chunk.clear();
            Ok(())
        };
        let n = lines(&mut |_, table, row| {
            chunk.push((table.to_string(), row.clone()));
            if chunk.len() == IMPORT_STEP_ROWS {
                flush(&mut conn, &mut chunk)?;
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            flush(&mut conn, &mut chunk)?;
        }
        Ok(n)
    }

    pub fn delete(&self, table: &str, id: &str) -> Result<()> {
        let mut conn = self.conn()?;
        if let Some(row) = routing::get(&conn, table, id)? {
            self.edits_central_data(&conn, table, &row)?;
        }
        let tx = write_tx(&mut conn)?;
        routing::central_change(&tx, table, id, "delete", None, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Merges central record `drop` into `keep` (items, names, clinicians).
    pub fn merge(&self, table: &str, keep: &str, drop: &str) -> Result<()> {
        let mut conn = self.conn()?;
        not_mirrored(&conn, "merges are made on the primary site")?;
        let tx = write_tx(&mut conn)?;
        routing::central_merge(&tx, table, keep, drop)?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>> {
        routing::get(&self.conn()?, table, id)
    }

    /// In a mirrored system the central's own edits of central and central store
    /// data are refused (seed 000: both are edited on the primary); what stays the
    /// central's is sync configuration — which site a store is active on, and
    /// which sites hold copies (`move_store`, `set_copy`).
    fn edits_central_data(&self, conn: &Connection, table: &str, row: &Value) -> Result<()> {
        if matches!(
            registry::row_kind(table, row),
            Kind::Central | Kind::CentralStore
        ) {
            not_mirrored(conn, "central data is edited there")?;
        }
        Ok(())
    }
}

/// The primary site id, when the system is mirrored.
pub(crate) fn primary_site(conn: &Connection) -> Result<Option<u32>> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'primary_site'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

fn not_mirrored(conn: &Connection, what: &str) -> Result<()> {
    if let Some(p) = primary_site(conn)? {
        let name: String = conn
            .query_row("SELECT name FROM site WHERE site_id = ?1", [p], |r| {
                r.get(0)
            })
            .unwrap_or_else(|_| format!("site {p}"));
        return Err(CentralError::Refused(format!(
            "this is a mirrored system whose primary site is {name}: {what}, not on the central"
        )));
    }
    Ok(())
}

/// An absolute http(s) URL with a host (what Open mSupply can parse, §10.1),
/// without a trailing slash; anything else is refused with what to give.
pub fn absolute_url(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r)
            if !r.is_empty()
                && !r.starts_with('/')
                && !r.starts_with(':')
                && !url.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(url.to_string())
        }
        _ => Err(CentralError::Refused(format!(
            "{url:?} is not an absolute URL; give one such as https://central.example.org:8443"
        ))),
    }
}
