//! Integration of a site's staged pushes (protocol §6, "Integration"), owed from
//! the final push until it succeeds.
//!
//! The final push seals the staging (a row in `integration`) and a worker
//! integrates it in one write transaction: rows in rank order (upserts by rank,
//! deletes children first), each judged again against the state at that moment
//! (a row that no longer passes is dropped and recorded in `refused`), routed,
//! then the responding halves of transfers. A failure is retried with backoff;
//! while the row in `integration` exists, `site_status` says
//! `integration_in_progress` — never `idle` while this site's data waits — and
//! `report` shows the error. A stop leaves the row; the next start resumes.

use std::time::Duration;

use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use super::judge::{self, Pusher};
use super::routing::{self, get};
use super::{admin, now, transfers, write_tx, Central, Result};
use crate::legacy::owner::field;
use crate::legacy::registry::{self, Kind};
use crate::wire::protocol::SyncRecord;

/// Retry delays of a failing integration; after the last the site's integration
/// waits for its next final push. Defaults to 0.2 s … 30 s, about a minute in all.
const RETRIES: [Duration; 6] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

impl Central {
    /// The final push: this site's staging is sealed and owed integration.
    pub(crate) fn seal(&self, conn: &Connection, site: u32) -> Result<()> {
        conn.execute(
            "INSERT INTO integration (site_id, state, attempts, updated) VALUES (?1, 'pending', 0, ?2) \
             ON CONFLICT (site_id) DO UPDATE SET state = CASE WHEN state = 'running' THEN 'running' ELSE 'pending' END, \
             attempts = 0, updated = excluded.updated",
            params![site, now()],
        )?;
        Ok(())
    }

    /// Whether integration is owed for `site` (sealed, running, or failed).
    pub(crate) fn integration_owed(&self, conn: &Connection, site: u32) -> Result<bool> {
        Ok(conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM integration WHERE site_id = ?1)")?
            .query_row([site], |r| r.get(0))?)
    }

    /// Runs the site's integration, on a thread of its own unless the central
    /// integrates inline (in-process tests); one worker per site at a time.
    pub(crate) fn start_integration(&self, site: u32) {
        if !self
            .integrating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site)
        {
            return; // already running; it picks the new staging up
        }
        let central = self.clone();
        let work = move || {
            central.integrate_with_retries(site);
            central
                .integrating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&site);
        };
        if self.background_integration {
            std::thread::spawn(work);
        } else {
            work();
        }
    }

    fn integrate_with_retries(&self, site: u32) {
        for attempt in 0..=RETRIES.len() {
            let started = std::time::Instant::now();
            match self.conn().and_then(|mut c| integrate_once(&mut c, site)) {
                Ok(Some((n, refused))) => {
                    log::info!(
                        "site {site}: integrated {n} record(s), refused {refused}, in {:?}",
                        started.elapsed()
                    );
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    log::error!(
                        "site {site}: integration failed (attempt {}): {e}",
                        attempt + 1
                    );
                    let recorded = self.conn().and_then(|c| {
                        c.execute(
                            "UPDATE integration SET state = 'failed', attempts = attempts + 1, last_error = ?2, \
                             updated = ?3 WHERE site_id = ?1",
                            params![site, e.to_string(), now()],
                        )?;
                        Ok(())
                    });
                    if let Err(r) = recorded {
                        log::error!(
                            "site {site}: the failure could not be recorded for `report` either: {r}"
                        );
                    }
                    match RETRIES.get(attempt) {
                        Some(d) => std::thread::sleep(*d),
                        None => log::error!(
                            "site {site}: integration keeps failing; its staged rows wait for its next final push"
                        ),
                    }
                }
            }
        }
    }
}

/// One integration of `site`'s sealed staging, in one write transaction. Returns
/// (integrated, refused), or `None` when nothing was owed.
fn integrate_once(conn: &mut Connection, site: u32) -> Result<Option<(u64, u64)>> {
    let tx = write_tx(conn)?;
    let owed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM integration WHERE site_id = ?1)",
        [site],
        |r| r.get(0),
    )?;
    if !owed {
        return Ok(None);
    }
    tx.execute(
        "UPDATE integration SET state = 'running', updated = ?2 WHERE site_id = ?1",
        params![site, now()],
    )?;
    let out = routing::with_memo(|| apply(&tx, site))?;
    // What each record's newest pushed version was (see api::stage).
    tx.execute(
        "INSERT INTO pushed (site_id, table_name, record_id, out_seq) \
         SELECT site_id, table_name, record_id, out_seq FROM staging WHERE site_id = ?1 AND out_seq IS NOT NULL \
         ON CONFLICT (site_id, table_name, record_id) DO UPDATE SET out_seq = max(out_seq, excluded.out_seq)",
        [site],
    )?;
    tx.execute("DELETE FROM staging WHERE site_id = ?1", [site])?;
    tx.execute("DELETE FROM integration WHERE site_id = ?1", [site])?;
    tx.commit()?;
    Ok(Some(out))
}

fn apply(conn: &Connection, site: u32) -> Result<(u64, u64)> {
    let mut rows: Vec<(String, String, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT table_name, record_id, action, data FROM staging WHERE site_id = ?1",
        )?
        .query_map([site], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<std::result::Result<_, _>>()?;
    rows.sort_by_key(|(t, _, a, _)| {
        let rank = i32::from(registry::order(t));
        if a == "delete" {
            (1, -rank)
        } else {
            (0, rank)
        }
    });
    // Judged again now: this site's stores as they are, every row as it is.
    let stores = routing::active_stores(conn, site)?;
    let who = Pusher {
        site,
        stores: &stores,
        primary: admin::primary_site(conn)? == Some(site),
    };
    // A header is looked for in the central's copy and in this site's staging.
    let held = judge::PushRows {
        conn,
        site,
        batch: &[],
    };
    let (mut integrated, mut refused) = (0u64, 0u64);
    let mut headers = Vec::new();
    for (table, id, action, data) in rows {
        let rec = SyncRecord {
            id: None,
            sync_out_id: None,
            table_name: table.clone(),
            record_id: id.clone(),
            action: action.clone(),
            record_data: data
                .as_deref()
                .and_then(|d| serde_json::value::RawValue::from_string(d.to_string()).ok()),
        };
        if let Some(refusal) = judge::record(&held, &who, &rec)? {
            let reason = refusal.code();
            log::warn!("site {site}: refused {table} {id} at integration ({reason})");
            conn.prepare_cached(
                "INSERT INTO refused (site_id, table_name, record_id, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![site, table, id, reason, now()])?;
            refused += 1;
            continue;
        }
        if action == "delete" {
            if let Some(old) = get(conn, &table, &id)? {
                delete(conn, site, &table, &id, &old)?;
                integrated += 1;
            }
            continue;
        }
        let Some(pushed) = data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) else {
            continue;
        };
        if let Some(registry::Owner::Parent {
            field: link,
            table: ptable,
            ..
        }) = registry::lookup(&table).map(|t| t.owner)
        {
            if get(conn, ptable, field(&pushed, link))?.is_none() {
                log::warn!("site {site}: dropped {table} {id}: its {ptable} never arrived");
                conn.prepare_cached(
                    "INSERT INTO refused (site_id, table_name, record_id, reason, at) VALUES (?1, ?2, ?3, 'parent_never_arrived', ?4)",
                )?
                .execute(params![site, table, id, now()])?;
                refused += 1;
                continue;
            }
        }
        if upsert(conn, site, &table, &id, pushed)? {
            if table == "transact" || table == "requisition" {
                headers.push((table.clone(), id.clone()));
            }
            integrated += 1;
        }
    }
    for (table, id) in headers {
        transfers::respond(conn, &table, &id)?;
    }
    Ok((integrated, refused))
}

/// Central data the primary sends goes through the change log (and reaches the
/// other sites by their cursors); everything else is routed by queue.
fn central_kind(table: &str, row: &Value) -> bool {
    matches!(
        registry::row_kind(table, row),
        Kind::Central | Kind::CentralStore | Kind::Created
    )
}

fn delete(conn: &Connection, site: u32, table: &str, id: &str, old: &Value) -> Result<()> {
    if central_kind(table, old) {
        return routing::central_change(conn, table, id, "delete", None, Some(site));
    }
    conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .execute(params![table, id])?;
    routing::route(conn, table, id, "delete", old, &[site])
}

/// Pushed keys overlay the stored row [PC]; unknown keys survive. Returns whether
/// anything changed (unchanged rows are not routed).
fn upsert(conn: &Connection, site: u32, table: &str, id: &str, pushed: Value) -> Result<bool> {
    let old = get(conn, table, id)?;
    let merged = match (&old, pushed) {
        (Some(Value::Object(o)), Value::Object(p)) => {
            let mut m: Map<String, Value> = o.clone();
            m.extend(p);
            Value::Object(m)
        }
        (_, p) => p,
    };
    if old.as_ref() == Some(&merged) {
        return Ok(false);
    }
    if central_kind(table, &merged) {
        routing::central_change(conn, table, id, "update", Some(&merged), Some(site))?;
    } else {
        routing::write_row(conn, table, id, &merged, Some(site))?;
        routing::route(conn, table, id, "update", &merged, &[site])?;
    }
    Ok(true)
}
