//! Pull pages as the central writes them — the `central_records` change log a
//! site may see and its queue — for the v5 endpoints and for USB bundles, and
//! where each site's central-records cursor is known to be.

use super::db::{params, Connection};
use serde_json::Value;

use super::api::Reply;
use super::routing;
use crate::legacy::columns;
use crate::legacy::registry::DISPENSARY_ONLY;

/// The change log after `?1` that site `?3` may see, `?2` rows at most: not a
/// primary's own edits (never echoed), not the dispensary-only tables listed in
/// `?4` for a site without an active dispensary store (§9.7).
pub(super) const CENTRAL_PAGE: &str =
    "SELECT id, table_name, record_id, action, data FROM changelog WHERE id > ?1 \
     AND (origin_site IS NULL OR origin_site <> ?3) \
     AND (?4 = '' OR instr(',' || ?4 || ',', ',' || table_name || ',') = 0) \
     ORDER BY id LIMIT ?2";

/// The tables hidden from `site` (see [`CENTRAL_PAGE`]), comma-separated.
pub(super) fn hidden(conn: &Connection, site: u32) -> super::Result<String> {
    Ok(if routing::has_dispensary(conn, site)? {
        String::new()
    } else {
        DISPENSARY_ONLY.join(",")
    })
}

/// Where a site's central-records cursor is known to be (meta key).
pub(super) fn site_cursor_key(site: u32) -> String {
    format!("site_cursor:{site}")
}

/// Notes that `site` holds everything up to `cursor` (it asked from there, or
/// its bundle said so); never moves back.
pub(super) fn record_site_cursor(conn: &Connection, site: u32, cursor: u64) -> super::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE \
         SET value = excluded.value WHERE CAST(meta.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
        params![site_cursor_key(site), cursor.to_string()],
    )?;
    Ok(())
}

/// A pull page holds rows up to about this many bytes (and always one row),
/// whatever its `limit`: a queue of large messages is never answered whole
/// from memory (§10.9). The agent asks on from the last id it got.
pub const PAGE_BYTES: usize = 4 << 20;

/// A pull page: `head`, then one envelope per row of `sql` (id, table, record,
/// action, data), the id rendered by `lead`; a stored row is copied in as it
/// was received unless the column registry must complete or mend it.
pub(super) fn page(
    conn: &Connection,
    sql: &str,
    args: impl super::db::Params,
    head: String,
    lead: impl Fn(i64) -> String,
) -> super::Result<Reply> {
    let (body, _, _) = page_body(conn, sql, args, head, lead, PAGE_BYTES)?;
    Ok(Reply {
        status: 200,
        body,
        log_end: None,
    })
}

/// [`page`]'s body, ended early once it holds `max_bytes` (a bundle's pages
/// stay bounded whatever the rows weigh), with its record count and last id.
pub(super) fn page_body(
    conn: &Connection,
    sql: &str,
    args: impl super::db::Params,
    head: String,
    lead: impl Fn(i64) -> String,
    max_bytes: usize,
) -> super::Result<(Vec<u8>, u64, i64)> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut body = head.into_bytes();
    let (mut count, mut last) = (0u64, 0i64);
    while let Some(r) = rows.next()? {
        if count > 0 {
            if body.len() >= max_bytes {
                break;
            }
            body.push(b',');
        }
        count += 1;
        last = r.get(0)?;
        let table: String = r.get(1)?;
        let data: Option<String> = r.get(4)?;
        // Whole and in legacy formats (§10.2, §10.3); otherwise the stored text.
        let data = data.map(|d| columns::outgoing_text(&table, &d).unwrap_or(d));
        body.push(b'{');
        body.extend_from_slice(lead(last).as_bytes());
        for (key, value) in [("tableName", table), ("recordId", r.get::<_, String>(2)?)] {
            body.extend_from_slice(format!(",\"{key}\":").as_bytes());
            body.extend_from_slice(Value::from(value).to_string().as_bytes());
        }
        body.extend_from_slice(b",\"action\":");
        body.extend_from_slice(
            Value::from(r.get::<_, String>(3)?.to_lowercase())
                .to_string()
                .as_bytes(),
        );
        body.extend_from_slice(b",\"recordData\":");
        body.extend_from_slice(data.as_deref().unwrap_or("null").as_bytes());
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    Ok((body, count, last))
}
