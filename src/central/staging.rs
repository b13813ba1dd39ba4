//! What a site pushes, however it comes — a `POST queued_records` over HTTP or
//! a push body of a USB bundle — goes through one entry point: judged
//! ([`super::judge`]), staged idempotently, and, on the final push, sealed for
//! integration ([`super::integrate`]).
//!
//! What must hold: a batch is judged whole before any of it is staged (403/400
//! list every offender and stage nothing); the judging reads outside the write
//! lock and costs time linear in the batch, and the staging writes commit in
//! chunks, so no push holds the write lock for long (§10.9) — a crash between
//! chunks leaves part of an unconfirmed batch staged, which the site's re-sent
//! batch replaces; a re-sent batch replaces its own rows; a site's push of a
//! record drops that record's unacknowledged entries from its own queue [PC],
//! so no stale copy overwrites the newer one; a bundle's version of a record
//! that the central already holds a newer (or the same) push of is skipped,
//! never staged over it; staging is bounded per site in rows and in bytes; no
//! new push is staged while the site's last one is being integrated.

use super::db::{params, Connection, OptionalExtension};

use super::auth::SiteRow;
use super::judge::{self, Pusher, Refused};
use super::{admin, now, routing, write_tx, Central, Result};
use crate::legacy::registry;
use crate::wire::protocol::{Action, SyncRecord};

/// Rows a site may have staged and not yet integrated. Defaults to 500,000 (a
/// large site's whole history); above it a push gets 413.
pub const MAX_STAGED_PER_SITE: i64 = 500_000;
/// Bytes of row data a site may have staged. Defaults to 512 MiB.
pub const MAX_STAGED_BYTES_PER_SITE: i64 = 512 << 20;
/// Staging no final push sealed within a week is dropped: its site moved on.
pub const STAGING_EXPIRES_SECS: i64 = 7 * 24 * 3600;
/// Rows staged per write transaction.
const STAGE_CHUNK: usize = 2_000;
/// Deletes are integrated after every upsert, children first: their order
/// key counts down from here.
const DELETE_ORDER_BASE: i64 = 200_000;

/// How a push came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Over the link, from the site itself.
    Link,
    /// In a USB bundle, imported by the administrator: late news, so a record
    /// the central holds a newer push of is skipped.
    Bundle,
}

/// What became of one push batch.
#[derive(Debug)]
pub enum Staged {
    /// Staged: this many records, and this many skipped as older than what
    /// the central holds (bundles only).
    Accepted { records: u64, stale: u64 },
    /// Nothing staged: these records are not the site's to push, or malformed.
    Refused(Refused),
    /// Nothing staged: the site has this many rows (and bytes) staged already.
    Full { staged: i64, bytes: i64 },
    /// Nothing staged: the site's last push is being integrated.
    Integrating,
}

/// The order a staged row is integrated in: upserts by rank (headers before
/// lines), then deletes children first.
pub(crate) fn integration_order(table: &str, action: &str) -> i64 {
    let rank = i64::from(registry::order(table));
    if action == "delete" {
        DELETE_ORDER_BASE - rank
    } else {
        rank
    }
}

impl Central {
    /// Judges and stages one push batch of `site` (not the final push).
    pub(crate) fn stage(
        &self,
        conn: &mut Connection,
        site: &SiteRow,
        records: Vec<SyncRecord>,
        carrier: Carrier,
    ) -> Result<Staged> {
        // Judged in a read transaction: WAL readers do not wait for, nor hold
        // up, anyone's writes. Integration judges every row again.
        if has_expired(conn, site.site_id)? {
            expire(conn, site.site_id)?;
        }
        let read = conn.read_transaction()?;
        if integrating(&read, site.site_id)? {
            return Ok(Staged::Integrating);
        }
        let before = records.len();
        let records = match carrier {
            Carrier::Link => records,
            Carrier::Bundle => {
                let mut keep = Vec::with_capacity(before);
                for rec in records {
                    if !superseded(&read, site.site_id, &rec)? {
                        keep.push(rec);
                    }
                }
                keep
            }
        };
        let stale = (before - records.len()) as u64;
        if records.is_empty() {
            return Ok(Staged::Accepted { records: 0, stale });
        }
        let (staged, bytes) = staged_total(&read, site.site_id)?;
        let adding: i64 = records
            .iter()
            .map(|r| r.data_text().map_or(0, str::len) as i64)
            .sum();
        if staged + records.len() as i64 > MAX_STAGED_PER_SITE
            || bytes + adding > MAX_STAGED_BYTES_PER_SITE
        {
            return Ok(Staged::Full { staged, bytes });
        }
        let stores = routing::active_stores(&read, site.site_id)?;
        let who = Pusher {
            site: site.site_id,
            stores: &stores,
            primary: admin::primary_site(&read)? == Some(site.site_id),
        };
        if let Err(refused) = judge::batch(&read, &who, &records)? {
            return Ok(Staged::Refused(refused));
        }
        drop(read);
        for chunk in records.chunks(STAGE_CHUNK) {
            let tx = write_tx(conn)?;
            write_staging(&tx, site.site_id, chunk)?;
            tx.commit()?;
        }
        Ok(Staged::Accepted {
            records: records.len() as u64,
            stale,
        })
    }

    /// The final push (§5 step 3): what `site` staged is sealed and owed
    /// integration, which starts now (or goes on, if it is still owed).
    pub(crate) fn final_push(&self, conn: &Connection, site: u32) -> Result<()> {
        let staged: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM staging WHERE site_id = ?1)",
            [site],
            |r| r.get(0),
        )?;
        if staged {
            self.seal(conn, site)?;
            // Rows a stopped bundle import left are sealed with these.
            conn.execute(
                "DELETE FROM meta WHERE key = ?1",
                [super::import_lock::partial_key(site)],
            )?;
        }
        if staged || self.integration_owed(conn, site)? {
            self.start_integration(site);
        }
        Ok(())
    }

    /// Drops acknowledged entries from `site`'s queue (§3); unknown or already
    /// acknowledged ids are ignored. Returns how many went.
    pub(crate) fn acknowledge_entries(
        &self,
        conn: &mut Connection,
        site: u32,
        ids: &[String],
    ) -> Result<u64> {
        let tx = write_tx(conn)?;
        let mut removed = 0u64;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM sync_out WHERE site_id = ?1 AND id = ?2")?;
            for id in ids {
                if let Some(n) = super::parse_id(id) {
                    removed += stmt.execute(params![site, n])? as u64;
                }
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}

/// Whether `site`'s last push is sealed and not yet integrated (pending or
/// running; a failed one waits for the next final push, so pushes go on).
fn integrating(conn: &Connection, site: u32) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM integration WHERE site_id = ?1 AND state IN ('pending', 'running'))",
        )?
        .query_row([site], |r| r.get(0))?)
}

/// What `site` has staged: rows and bytes of data.
pub(crate) fn staged_total(conn: &Connection, site: u32) -> Result<(i64, i64)> {
    Ok(conn
        .prepare_cached("SELECT rows, bytes FROM staged_total WHERE site_id = ?1")?
        .query_row([site], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0)))
}

/// Whether `site` has staging older than [`STAGING_EXPIRES_SECS`].
fn has_expired(conn: &Connection, site: u32) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM staged_total WHERE site_id = ?1 AND rows > 0 AND first_at < ?2)")?
        .query_row(params![site, now() - STAGING_EXPIRES_SECS], |r| r.get(0))?)
}

/// Moves `site`'s staged totals by (`rows`, `bytes`).
pub(crate) fn add_to_total(conn: &Connection, site: u32, rows: i64, bytes: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO staged_total (site_id, rows, bytes, first_at) \
         VALUES (?1, CASE WHEN CAST(?2 AS BIGINT) > 0 THEN CAST(?2 AS BIGINT) ELSE 0 END, \
                 CASE WHEN CAST(?3 AS BIGINT) > 0 THEN CAST(?3 AS BIGINT) ELSE 0 END, ?4) \
         ON CONFLICT (site_id) DO UPDATE SET \
         rows = CASE WHEN staged_total.rows + CAST(?2 AS BIGINT) > 0 THEN staged_total.rows + CAST(?2 AS BIGINT) ELSE 0 END, \
         bytes = CASE WHEN staged_total.bytes + CAST(?3 AS BIGINT) > 0 THEN staged_total.bytes + CAST(?3 AS BIGINT) ELSE 0 END, \
         first_at = CASE WHEN staged_total.rows = 0 THEN CAST(?4 AS BIGINT) ELSE staged_total.first_at END",
    )?
    .execute(params![site, rows, bytes, now()])?;
    Ok(())
}

/// Staging no final push sealed for a week is dropped: its site moved on.
fn expire(conn: &mut Connection, site: u32) -> Result<()> {
    let tx = write_tx(conn)?;
    let gone = tx.execute(
        "DELETE FROM staging WHERE site_id = ?1 AND staged_at < ?2 \
         AND NOT EXISTS (SELECT 1 FROM integration WHERE site_id = ?1)",
        params![site, now() - STAGING_EXPIRES_SECS],
    )?;
    // Counted again whatever went: the oldest row's time moves on too.
    tx.execute(
        "INSERT INTO staged_total (site_id, rows, bytes, first_at) \
         SELECT ?1, count(*), CAST(coalesce(sum(bytes), 0) AS BIGINT), coalesce(min(staged_at), 0) FROM staging WHERE site_id = ?1 \
         ON CONFLICT (site_id) DO UPDATE SET rows = excluded.rows, bytes = excluded.bytes, first_at = excluded.first_at",
        [site],
    )?;
    if gone > 0 {
        log::info!("site {site}: dropped {gone} staged row(s) no final push sealed for a week");
    }
    tx.commit()?;
    Ok(())
}

/// Stages an accepted batch; a site's push of a record drops that record's
/// unacknowledged entries from its own queue [PC]. Rows are kept as pushed.
fn write_staging(conn: &Connection, site: u32, batch: &[SyncRecord]) -> Result<()> {
    let mut seq: i64 = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM staging WHERE site_id = ?1")?
        .query_row([site], |r| r.get(0))?;
    let at = now();
    let (mut rows, mut bytes) = (0i64, 0i64);
    for rec in batch {
        seq += 1;
        let (action, data) = match Action::parse(&rec.action) {
            Some(Action::Delete) => ("delete", None),
            _ => ("update", rec.data_text()),
        };
        let size = data.map_or(0, str::len) as i64;
        let before: Option<i64> = conn
            .prepare_cached(
                "SELECT bytes FROM staging WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3",
            )?
            .query_row(params![site, rec.table_name, rec.record_id], |r| r.get(0))
            .optional()?;
        match before {
            Some(b) => bytes += size - b,
            None => {
                rows += 1;
                bytes += size;
            }
        }
        conn.prepare_cached(
            "INSERT INTO staging (site_id, table_name, record_id, action, data, seq, staged_at, out_seq, ord, bytes) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (site_id, table_name, record_id) DO UPDATE SET action = excluded.action, \
             data = excluded.data, seq = excluded.seq, staged_at = excluded.staged_at, \
             out_seq = excluded.out_seq, ord = excluded.ord, bytes = excluded.bytes",
        )?
        .execute(params![
            site,
            rec.table_name,
            rec.record_id,
            action,
            data,
            seq,
            at,
            out_seq(rec),
            integration_order(&rec.table_name, action),
            size
        ])?;
        conn.prepare_cached(
            "DELETE FROM sync_out WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3 AND is_merge = 0",
        )?
        .execute(params![site, rec.table_name, rec.record_id])?;
    }
    add_to_total(conn, site, rows, bytes)
}

/// The site's outbox sequence of a pushed record (`syncOutId`, §7.2), if it is one.
fn out_seq(rec: &SyncRecord) -> Option<i64> {
    rec.sync_out_id.as_deref().and_then(super::parse_id)
}

/// Whether the central holds this site's push of the same or a newer version
/// of the record (staged, or integrated before).
fn superseded(conn: &Connection, site: u32, rec: &SyncRecord) -> Result<bool> {
    let Some(seq) = out_seq(rec) else {
        return Ok(false);
    };
    let known: Option<i64> = conn
        .prepare_cached(
            "SELECT max(v) FROM (\
             SELECT coalesce((SELECT out_seq FROM staging WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3), -1) AS v \
             UNION ALL SELECT coalesce((SELECT out_seq FROM pushed WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3), -1)) AS known",
        )?
        .query_row(params![site, rec.table_name, rec.record_id], |r| r.get(0))?;
    Ok(known.is_some_and(|k| k >= seq))
}

/// A push body: `{"queueLength": n, "data": [...]}` (§3).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushBody {
    pub queue_length: u64,
    pub data: Vec<SyncRecord>,
}

impl PushBody {
    /// The body as JSON, or why it is not one.
    pub fn parse(body: &[u8]) -> std::result::Result<PushBody, String> {
        serde_json::from_slice(body)
            .map_err(|e| format!("push body is not {{\"queueLength\":n,\"data\":[…]}}: {e}"))
    }
}
