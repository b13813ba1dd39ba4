//! Integration of a site's staged pushes (protocol §6, "Integration"), owed from
//! the final push until it succeeds.
//!
//! The final push seals the staging (a row in `integration`) and a worker
//! integrates it in bounded chunks, each its own write transaction of at most
//! about a quarter second (§10.9): rows in rank order (upserts by rank, deletes
//! children first), each judged again against the state at that moment (a row
//! that no longer passes is dropped and recorded in `refused`), routed, then
//! the responding halves of transfers. Memory holds one staged row at a time. A failure is retried with backoff;
//! while the row in `integration` exists, `site_status` says
//! `integration_in_progress` — never `idle` while this site's data waits — and
//! `report` shows the error. A stop leaves the row; the next start resumes.

use std::time::Duration;

use super::db::{params, Connection};
use serde_json::{Map, Value};

use super::judge::{self, Pusher};
use super::routing::{self, get};
use super::{admin, now, staging, transfers, write_tx, Central, Result};
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
             ON CONFLICT (site_id) DO UPDATE SET state = CASE WHEN integration.state = 'running' THEN 'running' ELSE 'pending' END, \
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

/// Rows integrated per write transaction at most, the bytes of data read for
/// one, and the time one may take: with them no integration holds the write
/// lock for much longer than `CHUNK_TIME` (§10.9), and memory holds one chunk
/// (at most `CHUNK_BYTES` of row text, plus one row larger than that).
const CHUNK_ROWS: usize = 1_000;
const CHUNK_BYTES: i64 = 2 << 20;
const CHUNK_TIME: Duration = Duration::from_millis(250);
/// Headers whose responding halves are made per write transaction.
const RESPOND_CHUNK: usize = 50;

/// One integration of `site`'s sealed staging, in chunks. Returns
/// (integrated, refused), or `None` when nothing was owed.
///
/// Power cuts: each chunk integrates its rows, deletes them from staging and
/// notes its headers in `respond` in one commit, so a restart goes on with
/// the rows left; the responding halves are made (and their `respond` rows
/// deleted) the same way; the `integration` row goes last, so `site_status`
/// says idle only when all of it is done.
fn integrate_once(conn: &mut Connection, site: u32) -> Result<Option<(u64, u64)>> {
    {
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
        tx.commit()?;
    }
    let (mut integrated, mut refused) = (0u64, 0u64);
    loop {
        let tx = write_tx(conn)?;
        let chunk = routing::with_memo(|| apply_chunk(&tx, site))?;
        tx.commit()?;
        integrated += chunk.integrated;
        refused += chunk.refused;
        if chunk.rows == 0 {
            break;
        }
    }
    loop {
        let tx = write_tx(conn)?;
        let made = routing::with_memo(|| respond_chunk(&tx, site))?;
        tx.commit()?;
        if made == 0 {
            break;
        }
    }
    let tx = write_tx(conn)?;
    tx.execute(
        "DELETE FROM staged_total WHERE site_id = ?1 AND NOT EXISTS (SELECT 1 FROM staging WHERE site_id = ?1)",
        [site],
    )?;
    tx.execute("DELETE FROM integration WHERE site_id = ?1", [site])?;
    tx.commit()?;
    Ok(Some((integrated, refused)))
}

/// What one chunk did.
struct Chunk {
    /// Staged rows taken (0: nothing was left).
    rows: u64,
    integrated: u64,
    refused: u64,
}

/// Integrates the next staged rows of `site` in order (upserts by rank, then
/// deletes children first; see [`super::staging::integration_order`]), each
/// judged again now, until the chunk's rows, bytes or time are used up.
///
/// Set-based where SQLite gains by it, in windows of [`WINDOW`] rows: a window
/// is read with one query, each row parsed once, and the central's copies of
/// its records and of its lines' headers read with one query per table. Only
/// rows about to be integrated are read or parsed: on a slow machine (a Pi,
/// qemu) a chunk that ends on its time bound has not read a thousand rows it
/// will read again. The staged totals move once per chunk.
fn apply_chunk(conn: &Connection, site: u32) -> Result<Chunk> {
    let started = std::time::Instant::now();
    // Judged again now: this site's stores as they are, every row as it is.
    let stores = routing::active_stores(conn, site)?;
    let who = Pusher {
        site,
        stores: &stores,
        primary: admin::primary_site(conn)? == Some(site),
    };
    // A header is looked for in the central's copy and in this site's staging.
    let held = judge::PushRows::new(conn, site);
    let mut chunk = Chunk {
        rows: 0,
        integrated: 0,
        refused: 0,
    };
    let (mut taken_bytes, mut out_of_time) = (0i64, false);
    while !out_of_time && (chunk.rows as usize) < CHUNK_ROWS && taken_bytes < CHUNK_BYTES {
        let want = WINDOW.min(CHUNK_ROWS - chunk.rows as usize);
        let window = read_window(conn, site, want, CHUNK_BYTES - taken_bytes, chunk.rows == 0)?;
        if window.is_empty() {
            break;
        }
        let (staged, sizes): (Vec<SyncRecord>, Vec<(Option<i64>, i64)>) =
            window.into_iter().map(|(r, seq, b)| (r, (seq, b))).unzip();
        let shapes: Vec<judge::Shape> = staged
            .iter()
            .map(|r| judge::Shape::staged(&r.action, r.data_text(), &r.record_id))
            .collect();
        judge::prefetch(conn, &staged, &shapes)?;
        for ((rec, shape), (out_seq, size)) in staged.iter().zip(shapes).zip(sizes) {
            if chunk.rows > 0 && started.elapsed() >= CHUNK_TIME {
                out_of_time = true;
                break;
            }
            chunk.rows += 1;
            taken_bytes += size;
            let (table, id) = (rec.table_name.as_str(), rec.record_id.as_str());
            conn.prepare_cached(
                "DELETE FROM staging WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3",
            )?
            .execute(params![site, table, id])?;
            if let Some(seq) = out_seq {
                // What each record's newest pushed version was (see staging::superseded).
                conn.prepare_cached(
                    "INSERT INTO pushed (site_id, table_name, record_id, out_seq) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (site_id, table_name, record_id) DO UPDATE SET out_seq = CASE WHEN excluded.out_seq > pushed.out_seq THEN excluded.out_seq ELSE pushed.out_seq END",
                )?
                .execute(params![site, table, id, seq])?;
            }
            match integrate_row(conn, site, &who, &held, table, id, shape)? {
                Outcome::Integrated => chunk.integrated += 1,
                Outcome::Refused => chunk.refused += 1,
                Outcome::Unchanged => {}
            }
        }
    }
    staging::add_to_total(conn, site, -(chunk.rows as i64), -taken_bytes)?;
    Ok(chunk)
}

/// Rows read, parsed and prefetched together in a chunk.
const WINDOW: usize = 64;

/// The next `want` staged rows of `site` in integration order, at most `bytes`
/// of data (`first`: the first row of a chunk is taken whatever its size, so
/// a large row is never stuck): each with its outbox sequence and size.
fn read_window(
    conn: &Connection,
    site: u32,
    want: usize,
    bytes: i64,
    first: bool,
) -> Result<Vec<(SyncRecord, Option<i64>, i64)>> {
    let mut out = Vec::with_capacity(want);
    let mut stmt = conn.prepare_cached(
        "SELECT table_name, record_id, action, data, out_seq, bytes FROM staging WHERE site_id = ?1 \
         ORDER BY ord, seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![site, want as i64])?;
    let mut used = 0i64;
    while let Some(r) = rows.next()? {
        let size: i64 = r.get(5)?;
        if (!first || !out.is_empty()) && used + size > bytes {
            break;
        }
        used += size;
        let data: Option<String> = r.get(3)?;
        out.push((
            SyncRecord {
                id: None,
                sync_out_id: None,
                table_name: r.get(0)?,
                record_id: r.get(1)?,
                action: r.get(2)?,
                record_data: data.and_then(|d| serde_json::value::RawValue::from_string(d).ok()),
            },
            r.get(4)?,
            size,
        ));
    }
    Ok(out)
}

enum Outcome {
    Integrated,
    Refused,
    Unchanged,
}

/// Integrates one staged row: judged again, then applied and routed.
fn integrate_row(
    conn: &Connection,
    site: u32,
    who: &Pusher,
    held: &judge::PushRows,
    table: &str,
    id: &str,
    shape: judge::Shape,
) -> Result<Outcome> {
    let refuse = |reason: &str| -> Result<Outcome> {
        conn.prepare_cached(
            "INSERT INTO refused (site_id, table_name, record_id, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![site, table, id, reason, now()])?;
        Ok(Outcome::Refused)
    };
    if let Some(refusal) = judge::record(held, who, table, id, &shape)? {
        let reason = refusal.code();
        log::warn!("site {site}: refused {table} {id} at integration ({reason})");
        return refuse(reason);
    }
    let pushed = match shape {
        judge::Shape::Upsert(row) => row,
        judge::Shape::Delete => {
            return Ok(match get(conn, table, id)? {
                Some(old) => {
                    delete(conn, site, table, id, &old)?;
                    Outcome::Integrated
                }
                None => Outcome::Unchanged,
            });
        }
        // Refused by the judgement above.
        judge::Shape::Malformed(_) => return Ok(Outcome::Unchanged),
    };
    if let Some(registry::Owner::Parent {
        field: link,
        table: ptable,
        ..
    }) = registry::lookup(table).map(|t| t.owner)
    {
        if get(conn, ptable, field(&pushed, link))?.is_none() {
            log::warn!("site {site}: dropped {table} {id}: its {ptable} never arrived");
            return refuse("parent_never_arrived");
        }
    }
    if !upsert(conn, site, table, id, pushed)? {
        return Ok(Outcome::Unchanged);
    }
    if table == "transact" || table == "requisition" {
        // Its responding half is made once every line of this push is in.
        conn.prepare_cached(
            "INSERT INTO respond (site_id, table_name, record_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![site, table, id])?;
    }
    Ok(Outcome::Integrated)
}

/// Makes the responding halves of up to [`RESPOND_CHUNK`] integrated headers;
/// how many.
fn respond_chunk(conn: &Connection, site: u32) -> Result<usize> {
    let headers: Vec<(String, String)> = conn
        .prepare_cached("SELECT table_name, record_id FROM respond WHERE site_id = ?1 LIMIT ?2")?
        .query_map(params![site, RESPOND_CHUNK as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<std::result::Result<_, _>>()?;
    for (table, id) in &headers {
        transfers::respond(conn, table, id)?;
        conn.prepare_cached(
            "DELETE FROM respond WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3",
        )?
        .execute(params![site, table, id])?;
    }
    Ok(headers.len())
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
    routing::delete_row(conn, table, id)?;
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
