//! Where each change goes (protocol §6, "Routing"), what a new site receives, and
//! the central's own edits.
//!
//! What must hold: a change is never queued back to the site that pushed it, nor
//! (after initialisation) to the site that owns it; a newer change of a record
//! replaces the site's older unacknowledged entry, so a stale copy never overtakes
//! a fresh one; central data goes through the change log, not the queues, and a
//! primary site's own edits are not echoed back to it; dispensary-only central
//! data reaches only sites with an active dispensary store (§9.7).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use super::db::{params, Connection, Dialect, OptionalExtension};
use serde_json::{json, Value};

use super::{CentralError, Result, CENTRAL_SITE_ID};
use crate::legacy::owner::{self, field, Rows};
use crate::legacy::registry::{self, Kind, DISPENSARY_ONLY};

/// The central's copy of `table`/`id`. Within a [`with_memo`] scope each row is
/// read and parsed once (parsing stored rows was the largest share of the
/// central's time in a push, issue 31): lines look their header up for the
/// judgement, the owner, the routing and the transfer party.
pub fn get(conn: &Connection, table: &str, id: &str) -> Result<Option<Value>> {
    Ok(shared(conn, table, id)?.map(Rc::unwrap_or_clone))
}

/// One string field of the central's copy of `table`/`id` (see
/// [`owner::Rows::field`]): from the memo without copying the row.
pub(crate) fn get_field(
    conn: &Connection,
    table: &str,
    id: &str,
    name: &str,
) -> Result<Option<String>> {
    Ok(shared(conn, table, id)?.map(|r| field(&r, name).to_string()))
}

/// [`get`], shared with the memo.
fn shared(conn: &Connection, table: &str, id: &str) -> Result<Option<Rc<Value>>> {
    if let Some(hit) = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|m| m.rows.get(&(table.to_string(), id.to_string())).cloned())
    }) {
        return Ok(hit);
    }
    let text: Option<String> = conn
        .prepare_cached("SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .query_row(params![table, id], |r| r.get(0))
        .optional()?;
    let row: Option<Rc<Value>> = text
        .and_then(|t| serde_json::from_str(&t).ok())
        .map(Rc::new);
    remember(table, id, row.clone());
    Ok(row)
}

/// Rows held in a memo at most: beyond it the memo starts again (bounded memory
/// whatever a chunk or batch looks up).
const MEMO_ROWS: usize = 4_096;

/// Notes what the central holds of `table`/`id` in the memo, if one is open.
fn remember(table: &str, id: &str, row: Option<Rc<Value>>) {
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            if m.rows.len() >= MEMO_ROWS {
                m.rows.clear();
            }
            m.rows.insert((table.to_string(), id.to_string()), row);
        }
    });
}

/// A write of `table`/`id`: the memo forgets it (read again when next asked).
fn forget_row(table: &str, id: &str) {
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.rows.remove(&(table.to_string(), id.to_string()));
        }
    });
}

/// Reads the central's copies of `ids` of `table` into the memo with one query
/// (a set, not a row at a time): the stored copies and headers a batch's
/// judgement or an integration chunk will ask for. Without an open memo it
/// does nothing.
pub(crate) fn prefetch(conn: &Connection, table: &str, ids: &[&str]) -> Result<()> {
    let open = MEMO.with(|m| m.borrow().is_some());
    if !open || ids.is_empty() {
        return Ok(());
    }
    // Keys not already in the memo; those not found are remembered as absent.
    let mut wanted: Vec<&str> = MEMO.with(|m| {
        let m = m.borrow();
        let rows = &m.as_ref().expect("memo is open").rows;
        ids.iter()
            .copied()
            .filter(|id| !id.is_empty() && !rows.contains_key(&(table.to_string(), id.to_string())))
            .collect()
    });
    wanted.sort_unstable();
    wanted.dedup();
    for part in wanted.chunks(MEMO_ROWS / 4) {
        let list = serde_json::to_string(part).map_err(|e| CentralError::Invalid(e.to_string()))?;
        let mut found: HashMap<String, Rc<Value>> = HashMap::with_capacity(part.len());
        // The ids as one JSON array: one statement whatever their number.
        let mut stmt = conn.prepare_cached(match conn.dialect() {
            Dialect::Sqlite => {
                "SELECT record_id, data FROM record WHERE table_name = ?1 \
                 AND record_id IN (SELECT value FROM json_each(?2))"
            }
            Dialect::Postgres => {
                "SELECT record_id, data FROM record WHERE table_name = ?1 \
                 AND record_id IN (SELECT json_array_elements_text(CAST(?2 AS json)))"
            }
        })?;
        let mut rows = stmt.query(params![table, list])?;
        while let Some(r) = rows.next()? {
            let (id, text): (String, String) = (r.get(0)?, r.get(1)?);
            if let Ok(v) = serde_json::from_str(&text) {
                found.insert(id, Rc::new(v));
            }
        }
        for id in part {
            remember(table, id, found.remove(*id));
        }
    }
    Ok(())
}

/// Store facts and rows memoised for one judge, integrate or initialise call, so
/// routing thousands of rows does not look the same store or header up (and
/// parse it) thousands of times. A write of a row forgets it; a write of a
/// `store` row (the primary's, in a mirrored system) or a merge forgets all.
#[derive(Default)]
struct Memo {
    active: HashMap<String, Option<u32>>,
    copies: HashMap<(String, Option<String>), Vec<u32>>,
    by_name: HashMap<String, Option<String>>,
    /// (table, record) → the central's copy, parsed; `None`: not held.
    rows: HashMap<(String, String), Option<Rc<Value>>>,
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

pub(crate) fn with_memo<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    MEMO.with(|m| *m.borrow_mut() = Some(Memo::default()));
    let out = f();
    MEMO.with(|m| *m.borrow_mut() = None);
    out
}

fn forget_all() {
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            *m = Memo::default();
        }
    });
}

/// The site where store `store` is active (the central itself when on no site).
pub fn active_site(conn: &Connection, store: &str) -> Result<Option<u32>> {
    if let Some(hit) = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|m| m.active.get(store).copied())
    }) {
        return Ok(hit);
    }
    let site =
        get(conn, "store", store)?.map(|r| r["sync_id_remote_site"].as_u64().unwrap_or(1) as u32);
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.active.insert(store.to_string(), site);
        }
    });
    Ok(site)
}

pub fn active_stores(conn: &Connection, site: u32) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_id FROM record WHERE table_name = 'store' \
         AND json_extract(data, '$.sync_id_remote_site') = ?1 ORDER BY record_id",
    )?;
    let rows = stmt.query_map([site], |r| r.get(0))?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Whether `site` has at least one active dispensary store (§9.7).
pub fn has_dispensary(conn: &Connection, site: u32) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM record WHERE table_name = 'store' \
             AND json_extract(data, '$.sync_id_remote_site') = ?1 \
             AND json_extract(data, '$.store_mode') = 'dispensary')",
        )?
        .query_row([site], |r| r.get(0))?)
}

fn copy_sites(conn: &Connection, store: &str, kind: Option<&str>) -> Result<Vec<u32>> {
    let key = (store.to_string(), kind.map(str::to_string));
    if let Some(hit) = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|m| m.copies.get(&key).cloned())
    }) {
        return Ok(hit);
    }
    let sites: Vec<u32> = conn
        .prepare_cached(
            "SELECT site_id FROM copy WHERE store_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR kind = ?2)",
        )?
        .query_map(params![store, kind], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.copies.insert(key, sites.clone());
        }
    });
    Ok(sites)
}

/// The central's copy as the rows a judgement looks at (see
/// [`crate::legacy::owner::Rows`]).
pub(crate) struct Copy<'a>(pub &'a Connection);

impl Rows for Copy<'_> {
    type Error = CentralError;
    fn row(&self, table: &str, id: &str) -> Result<Option<Value>> {
        get(self.0, table, id)
    }
    fn field(&self, table: &str, id: &str, name: &str) -> Result<Option<String>> {
        get_field(self.0, table, id, name)
    }
    fn last_owner(&self, table: &str, id: &str) -> Result<Option<String>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT owner_store FROM record WHERE table_name = ?1 AND record_id = ?2",
            )?
            .query_row(params![table, id], |r| r.get(0))
            .optional()?
            .flatten())
    }
    fn created_by_writer(&self, _: &str, _: &str) -> Result<Option<bool>> {
        Ok(None)
    }
}

/// The owning store of a row, following its parent in the central's copy.
pub(crate) fn owner(conn: &Connection, table: &str, row: &Value) -> Result<Option<String>> {
    owner::owner_of(table, row, &Copy(conn))
}

// ---- queues ---------------------------------------------------------------------

/// Queues a change to one site. A non-merge entry replaces the site's older
/// unacknowledged entry of the same record under a new syncOutId [PC].
pub fn enqueue(
    conn: &Connection,
    site: u32,
    table: &str,
    id: &str,
    action: &str,
    data: Option<&Value>,
    merge: bool,
) -> Result<()> {
    let text = data.map(Value::to_string);
    enqueue_text(conn, site, table, id, action, text.as_deref(), merge)
}

/// [`enqueue`] with the row already serialised (a stored row queued as it is
/// stored, or one routed to several sites).
pub(crate) fn enqueue_text(
    conn: &Connection,
    site: u32,
    table: &str,
    id: &str,
    action: &str,
    data: Option<&str>,
    merge: bool,
) -> Result<()> {
    if site == CENTRAL_SITE_ID {
        return Ok(());
    }
    if !merge {
        conn.prepare_cached(
            "DELETE FROM sync_out WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3 AND is_merge = 0",
        )?
        .execute(params![site, table, id])?;
    }
    conn.prepare_cached(
        "INSERT INTO sync_out (site_id, table_name, record_id, action, data, is_merge) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![site, table, id, action, data, merge as i64])?;
    Ok(())
}

/// Sites that hold `row` (table `table`) — where it must be routed. `full` adds
/// the owning store's active site (used by initialisation; changes never go back
/// to their owner).
pub(crate) fn recipients(
    conn: &Connection,
    table: &str,
    row: &Value,
    full: bool,
) -> Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    let kind = registry::row_kind(table, row);
    let own = owner(conn, table, row)?;
    let active_and_collectors = |out: &mut BTreeSet<u32>, store: &str| -> Result<()> {
        if let Some(site) = active_site(conn, store)? {
            out.insert(site);
        }
        out.extend(copy_sites(conn, store, Some("collector"))?);
        Ok(())
    };
    match kind {
        Kind::Central | Kind::Local | Kind::Created => {}
        Kind::CentralStore => {
            if let Some(store) = own.as_deref() {
                if let Some(site) = active_site(conn, store)? {
                    out.insert(site);
                }
                if table == "store" {
                    out.extend(copy_sites(conn, store, None)?);
                    out.extend(partner_sites(conn, field(row, "name_ID"))?);
                }
            }
        }
        Kind::Store => {
            if let Some(store) = own.as_deref() {
                out.extend(copy_sites(conn, store, Some("collector"))?);
                if full {
                    if let Some(site) = active_site(conn, store)? {
                        out.insert(site);
                    }
                }
                // Either half of a transfer also goes to the other party's active site.
                if let Some(other) = transfer_party(conn, table, row, store)? {
                    if let Some(site) = active_site(conn, &other)? {
                        out.insert(site);
                    }
                }
            }
        }
        Kind::Patient | Kind::Name | Kind::PatientJoin => match owner::patient_id(table, row) {
            Some(p) => {
                for store in patient_stores(conn, p)? {
                    active_and_collectors(&mut out, &store)?;
                }
                if full {
                    if let Some(home) = own.as_deref() {
                        if let Some(site) = active_site(conn, home)? {
                            out.insert(site);
                        }
                    }
                }
            }
            None => {
                if let Some(store) = own.as_deref() {
                    active_and_collectors(&mut out, store)?;
                }
            }
        },
        Kind::NameStoreJoin => {
            active_and_collectors(&mut out, field(row, "store_ID"))?;
        }
        Kind::Message => {
            active_and_collectors(&mut out, field(row, "toStoreID"))?;
            active_and_collectors(&mut out, field(row, "fromStoreID"))?;
        }
    }
    out.remove(&CENTRAL_SITE_ID);
    Ok(out)
}

/// §10.5: the sites with an active store in which the name `name_id` is visible
/// (a `name_store_join`): where a store whose name that is trades, and so where
/// its `store` row must be known (a request to it is refused otherwise).
fn partner_sites(conn: &Connection, name_id: &str) -> Result<BTreeSet<u32>> {
    if name_id.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT json_extract(s.data, '$.sync_id_remote_site') FROM record j \
         JOIN record s ON s.table_name = 'store' AND s.record_id = json_extract(j.data, '$.store_ID') \
         WHERE j.table_name = 'name_store_join' AND json_extract(j.data, '$.name_ID') = ?1",
    )?;
    let rows = stmt.query_map([name_id], |r| r.get::<_, Option<i64>>(0))?;
    let mut out = BTreeSet::new();
    for site in rows {
        if let Some(site) = site? {
            out.insert(u32::try_from(site).unwrap_or(CENTRAL_SITE_ID));
        }
    }
    out.remove(&CENTRAL_SITE_ID);
    Ok(out)
}

/// Stores a patient is visible in (its `name_store_join` rows).
fn patient_stores(conn: &Connection, patient: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT json_extract(data, '$.store_ID') FROM record \
         WHERE table_name = 'name_store_join' AND json_extract(data, '$.name_ID') = ?1",
    )?;
    let rows = stmt.query_map([patient], |r| r.get::<_, Option<String>>(0))?;
    Ok(rows.filter_map(|r| r.ok().flatten()).collect())
}

/// The store whose `name` row is `name_id`.
pub(crate) fn store_of_name(conn: &Connection, name_id: &str) -> Result<Option<String>> {
    if name_id.is_empty() {
        return Ok(None);
    }
    if let Some(hit) = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|m| m.by_name.get(name_id).cloned())
    }) {
        return Ok(hit);
    }
    let found: Option<String> = conn
        .prepare_cached(
            "SELECT record_id FROM record WHERE table_name = 'store' AND json_extract(data, '$.name_ID') = ?1",
        )?
        .query_row([name_id], |r| r.get(0))
        .optional()?;
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.by_name.insert(name_id.to_string(), found.clone());
        }
    });
    Ok(found)
}

/// The other store of a transfer document (the store whose name is the
/// document's `name_ID`), for `transact`/`requisition` and their lines.
pub(crate) fn transfer_party(
    conn: &Connection,
    table: &str,
    row: &Value,
    owner_store: &str,
) -> Result<Option<String>> {
    let name_id = match table {
        "transact" | "requisition" => Some(field(row, "name_ID").to_string()),
        "trans_line" => get_field(conn, "transact", field(row, "transaction_ID"), "name_ID")?,
        "requisition_line" => {
            get_field(conn, "requisition", field(row, "requisition_ID"), "name_ID")?
        }
        _ => None,
    };
    let Some(name_id) = name_id else {
        return Ok(None);
    };
    Ok(store_of_name(conn, &name_id)?.filter(|st| st != owner_store))
}

/// Routes one changed row to its recipients, except `skip` (the pushing site and,
/// after initialisation, the owning site).
pub(crate) fn route(
    conn: &Connection,
    table: &str,
    id: &str,
    action: &str,
    row: &Value,
    skip: &[u32],
) -> Result<()> {
    // A join that makes a patient newly visible on a site queues the patient
    // there with the rows that are its (§10.7), as initialisation would; one
    // that makes a trading partner's store name visible queues that store's row
    // (§10.5).
    let mut brought: Vec<(&str, String, Value)> = Vec::new();
    if (table, action) == ("name_store_join", "update") {
        let name_id = field(row, "name_ID");
        match get(conn, "name", name_id)? {
            Some(p) if registry::is_patient(&p) => {
                brought.push(("name", name_id.to_string(), p));
                for (t, f) in registry::patient_tables() {
                    brought.extend(
                        rows_where(conn, t, f, name_id)?
                            .into_iter()
                            .map(|(id, r)| (t, id, r)),
                    );
                }
            }
            _ => {
                if let Some(store) = store_of_name(conn, name_id)? {
                    if let Some(r) = get(conn, "store", &store)? {
                        brought.push(("store", store, r));
                    }
                }
            }
        }
    }
    let sites: Vec<u32> = recipients(conn, table, row, false)?
        .into_iter()
        .filter(|s| !skip.contains(s))
        .collect();
    if sites.is_empty() {
        return Ok(());
    }
    // Serialised once, whatever the number of recipients.
    let brought: Vec<(&str, String, String)> = brought
        .into_iter()
        .map(|(t, id, r)| (t, id, r.to_string()))
        .collect();
    let text = (action != "delete").then(|| row.to_string());
    for site in sites {
        for (t, id, r) in &brought {
            enqueue_text(conn, site, t, id, "update", Some(r), false)?;
        }
        enqueue_text(conn, site, table, id, action, text.as_deref(), false)?;
    }
    Ok(())
}

/// The rows of `table` whose `field` is `value`, with their IDs.
fn rows_where(
    conn: &Connection,
    table: &str,
    field: &str,
    value: &str,
) -> Result<Vec<(String, Value)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT record_id, data FROM record WHERE table_name = ?1 \
         AND json_extract(data, '$.{field}') = ?2 ORDER BY record_id"
    ))?;
    let rows = stmt.query_map(params![table, value], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, text) = r?;
        if let Ok(v) = serde_json::from_str(&text) {
            out.push((id, v));
        }
    }
    Ok(out)
}

/// Writes a row of any kind with its last known owning store (a line whose
/// header is gone is judged by it), by `site` (None: the central).
pub(crate) fn write_row(
    conn: &Connection,
    table: &str,
    id: &str,
    row: &Value,
    site: Option<u32>,
) -> Result<()> {
    let owner_store = owner(conn, table, row)?;
    conn.prepare_cached(
        "INSERT INTO record (table_name, record_id, data, site_id, owner_store) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data, site_id = excluded.site_id, \
         owner_store = coalesce(excluded.owner_store, record.owner_store)",
    )?
    .execute(params![table, id, row.to_string(), site, owner_store])?;
    forget_row(table, id);
    if table == "store" {
        forget_all();
    }
    Ok(())
}

/// Deletes the central's copy of `table`/`id` (a site's delete of its store data).
pub(crate) fn delete_row(conn: &Connection, table: &str, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .execute(params![table, id])?;
    forget_row(table, id);
    Ok(())
}

// ---- central edits --------------------------------------------------------------

/// A change of central or central store data (the central's own administration,
/// or a primary site's push): stored, logged for central data, routed for
/// central store data. `origin`: the pushing primary site (not echoed to it).
pub fn central_change(
    conn: &Connection,
    table: &str,
    id: &str,
    action: &str,
    row: Option<&Value>,
    origin: Option<u32>,
) -> Result<()> {
    let old = get(conn, table, id)?;
    let probe = row
        .or(old.as_ref())
        .cloned()
        .unwrap_or_else(|| json!({"ID": id}));
    let kind = registry::row_kind(table, &probe);
    if !matches!(
        kind,
        Kind::Central | Kind::CentralStore | Kind::NameStoreJoin | Kind::Created
    ) {
        return Err(CentralError::Refused(format!(
            "{table} is not central data; it is edited at the site where its store is active"
        )));
    }
    match row {
        Some(r) => write_row(conn, table, id, r, origin)?,
        None => {
            conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
                .execute(params![table, id])?;
            forget_row(table, id);
            if table == "store" {
                forget_all();
            }
        }
    }
    if matches!(kind, Kind::Central | Kind::Created) {
        // Older non-merge entries of the record may go; the newest stays [PC].
        conn.prepare_cached(
            "DELETE FROM changelog WHERE table_name = ?1 AND record_id = ?2 AND action <> 'merge'",
        )?
        .execute(params![table, id])?;
        conn.prepare_cached(
            "INSERT INTO changelog (table_name, record_id, action, data, origin_site) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![table, id, action, row.map(|r| r.to_string()), origin])?;
    } else {
        let skip: Vec<u32> = origin.into_iter().collect();
        route(conn, table, id, action, &probe, &skip)?;
        if table == "store" {
            // A store that became a dispensary (or moved) may bring its site the
            // dispensary-only central data.
            if let Some(site) = active_site(conn, id)? {
                ensure_dispensary_data(conn, site)?;
            }
        }
    }
    Ok(())
}

/// Writes a `store` row and routes it (to its active site and copy sites).
pub fn write_store_row(conn: &Connection, row: &Value) -> Result<()> {
    let id = field(row, "ID").to_string();
    central_change(conn, "store", &id, "update", Some(row), None)
}

pub fn central_merge(conn: &Connection, table: &str, keep: &str, drop: &str) -> Result<()> {
    if !registry::is_mergeable(table) {
        return Err(CentralError::Refused(format!(
            "{table} cannot be merged (item, name, clinician can)"
        )));
    }
    for field in registry::merge_reference_fields(table) {
        conn.execute(
            &format!("UPDATE record SET data = json_set(data, '$.{field}', ?1) WHERE json_extract(data, '$.{field}') = ?2"),
            params![keep, drop],
        )?;
    }
    conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .execute(params![table, drop])?;
    // Every row naming `drop` changed: nothing memoised holds.
    forget_all();
    let data = json!({"mergeIdToKeep": keep, "mergeIdToDelete": drop});
    conn.prepare_cached(
        "INSERT INTO changelog (table_name, record_id, action, data) VALUES (?1, ?2, 'merge', ?3)",
    )?
    .execute(params![table, keep, data.to_string()])?;
    Ok(())
}

/// Queues to `site`, in rank order, every stored row that `wanted` picks. Streams
/// table by table (the registry's rank order), so memory does not grow with the
/// central's size; tables the registry does not know are central data, never queued.
fn queue_matching(
    conn: &Connection,
    site: u32,
    mut wanted: impl FnMut(&str, &Value) -> Result<bool>,
) -> Result<u64> {
    let mut n = 0;
    for t in registry::tables() {
        scan_table(conn, t.name, |id, data| {
            let Ok(row) = serde_json::from_str::<Value>(&data) else {
                return Ok(());
            };
            if wanted(t.name, &row)? {
                enqueue_text(conn, site, t.name, &id, "update", Some(&data), false)?;
                n += 1;
            }
            Ok(())
        })?;
    }
    Ok(n)
}

/// Rows a whole-table scan reads per statement.
const SCAN_CHUNK: usize = 500;

/// Every stored row of `table` (id, text), in id order, read [`SCAN_CHUNK`]
/// rows at a time from the last id read: memory does not grow with the
/// table on either store (PostgreSQL fetches a statement's rows whole), and
/// `each` may run statements of its own on the same connection.
pub(crate) fn scan_table(
    conn: &Connection,
    table: &str,
    mut each: impl FnMut(String, String) -> Result<()>,
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let chunk: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT record_id, data FROM record WHERE table_name = ?1 \
                 AND (CAST(?2 AS TEXT) IS NULL OR record_id > ?2) ORDER BY record_id LIMIT ?3",
            )?
            .query_map(params![table, after, SCAN_CHUNK as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        let n = chunk.len();
        for (id, data) in chunk {
            after = Some(id.clone());
            each(id, data)?;
        }
        if n < SCAN_CHUNK {
            return Ok(());
        }
    }
}

/// Queues all store data of `store` (and its central store data) to `site`:
/// assigning a store to a site, or a new collector [PC].
pub fn queue_store_data_to(conn: &Connection, store: &str, site: u32) -> Result<()> {
    with_memo(|| {
        queue_matching(conn, site, |table, row| {
            let kind = registry::row_kind(table, row);
            Ok(!matches!(kind, Kind::Central | Kind::Local | Kind::Created)
                && owner(conn, table, row)?.as_deref() == Some(store))
        })
    })?;
    Ok(())
}

/// §9.7: dispensary-only central data (abbreviations, item directions, insurance
/// providers, patient event types) skips sites without an active dispensary
/// store in the change log; a site that gains one gets what it missed, queued once.
pub fn ensure_dispensary_data(conn: &Connection, site: u32) -> Result<()> {
    let marker = format!("dispensary_data_sent:{site}");
    let sent: bool = conn
        .query_row("SELECT 1 FROM meta WHERE key = ?1", [&marker], |_| Ok(true))
        .optional()?
        .unwrap_or(false);
    let wants = has_dispensary(conn, site)?;
    if wants && !sent {
        queue_matching(conn, site, |table, _| Ok(DISPENSARY_ONLY.contains(&table)))?;
        conn.execute("INSERT INTO meta (key, value) VALUES (?1, '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value", [&marker])?;
    } else if !wants && sent {
        conn.execute("DELETE FROM meta WHERE key = ?1", [&marker])?;
    }
    Ok(())
}

/// Seed 000, "Resync patient records when store is saved": every patient visible
/// in `store`, their joins, insurance, documents and notes, the store's
/// prescribers, and the dispensary-only central data, queued to `site`.
pub fn queue_patients_of(conn: &Connection, store: &str, site: u32) -> Result<u64> {
    let patients: BTreeSet<String> = conn
        .prepare(
            "SELECT DISTINCT json_extract(j.data, '$.name_ID') FROM record j \
             JOIN record n ON n.table_name = 'name' AND n.record_id = json_extract(j.data, '$.name_ID') \
             WHERE j.table_name = 'name_store_join' AND json_extract(j.data, '$.store_ID') = ?1 \
               AND json_extract(n.data, '$.type') = 'patient'",
        )?
        .query_map([store], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    with_memo(|| {
        queue_matching(conn, site, |table, row| {
            Ok(match table {
                "name" => patients.contains(field(row, "ID")),
                "name_store_join" => {
                    patients.contains(field(row, "name_ID")) && field(row, "store_ID") == store
                }
                "nameInsuranceJoin" => patients.contains(field(row, "nameID")),
                "om_document" => patients.contains(field(row, "owner_name_ID")),
                "name_note" => patients.contains(field(row, "name_ID")),
                "clinician" | "clinician_store_join" => field(row, "store_ID") == store,
                t => DISPENSARY_ONLY.contains(&t),
            })
        })
    })
}

// ---- initialisation ---------------------------------------------------------------

/// Empties and refills `site`'s queue with everything it should hold, in rank
/// order; central data is not queued (the site reads the change log from 0).
///
/// In bounded steps (§10.9: no request holds the write lock for long): call
/// with `from = None` first, then with the position each call returns, each
/// call in a write transaction of its own, until it returns `None`. A stop
/// between steps leaves the site `started`, which the next start turns into
/// `error`, and the site initialises again from the beginning.
pub fn initialise_step(
    conn: &Connection,
    site: u32,
    from: Option<InitPosition>,
    rows: usize,
) -> Result<(u64, Option<InitPosition>)> {
    if from.is_none() {
        conn.prepare_cached("DELETE FROM sync_out WHERE site_id = ?1")?
            .execute([site])?;
    }
    let tables: Vec<registry::Table> = registry::tables().collect();
    fill_step(conn, site, &tables, false, from, rows)
}

/// §10.7, `requeue SITE [--table T]`: queues `site` again every row it should
/// hold (as initialisation would, without emptying its queue: a newer entry of
/// a record replaces the older one), or only those of `table` — of any kind,
/// central data included (the site read it from the change log once; a row
/// it could not read comes again through its queue). Stepped as
/// [`initialise_step`].
pub fn requeue_step(
    conn: &Connection,
    site: u32,
    table: Option<&str>,
    from: Option<InitPosition>,
    rows: usize,
) -> Result<(u64, Option<InitPosition>)> {
    let tables: Vec<registry::Table> = registry::tables()
        .filter(|t| table.is_none_or(|only| only == t.name))
        .collect();
    fill_step(conn, site, &tables, table.is_some(), from, rows)
}

/// One step of queueing to `site` what it should hold of `tables`, in rank
/// order; `all_central`: central data too (otherwise read from the change log).
fn fill_step(
    conn: &Connection,
    site: u32,
    tables: &[registry::Table],
    all_central: bool,
    from: Option<InitPosition>,
    rows: usize,
) -> Result<(u64, Option<InitPosition>)> {
    let mut at = from.unwrap_or(InitPosition {
        table: 0,
        after: String::new(),
    });
    with_memo(|| {
        let mut queued = 0u64;
        let mut scanned = 0usize;
        while let Some(t) = tables.get(at.table) {
            let mut stmt = conn.prepare_cached(
                "SELECT record_id, data FROM record WHERE table_name = ?1 AND record_id > ?2 \
                 ORDER BY record_id LIMIT ?3",
            )?;
            let mut found = stmt.query(params![t.name, at.after, (rows - scanned) as i64])?;
            let mut got = 0usize;
            while let Some(r) = found.next()? {
                let (id, data): (String, String) = (r.get(0)?, r.get(1)?);
                got += 1;
                if let Ok(row) = serde_json::from_str::<Value>(&data) {
                    let central = all_central
                        && matches!(
                            registry::row_kind(t.name, &row),
                            Kind::Central | Kind::Created
                        );
                    if central || recipients(conn, t.name, &row, true)?.contains(&site) {
                        enqueue_text(conn, site, t.name, &id, "update", Some(&data), false)?;
                        queued += 1;
                    }
                }
                at.after = id;
            }
            scanned += got;
            if scanned >= rows {
                return Ok((queued, Some(at)));
            }
            at = InitPosition {
                table: at.table + 1,
                after: String::new(),
            };
        }
        Ok((queued, None))
    })
}

/// Where a stepped initialisation goes on: a table (by registry order) and
/// the last record id done in it.
#[derive(Debug, Clone)]
pub struct InitPosition {
    table: usize,
    after: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo_rows() -> usize {
        MEMO.with(|m| m.borrow().as_ref().map_or(0, |m| m.rows.len()))
    }

    #[test]
    fn the_memo_never_answers_an_older_row_and_stays_bounded() {
        let tmp = crate::testkit::tempdir::TempDir::new("memo");
        let central = super::super::Central::open(&tmp.join("c.sqlite")).unwrap();
        let conn = central.conn().unwrap();
        write_row(&conn, "item", "I1", &json!({"ID": "I1", "code": "a"}), None).unwrap();
        with_memo(|| {
            prefetch(&conn, "item", &["I1", "I2", "I1"])?;
            assert_eq!(memo_rows(), 2, "found and absent are both remembered");
            assert_eq!(get(&conn, "item", "I1")?.unwrap()["code"], "a");
            assert_eq!(get(&conn, "item", "I2")?, None);
            write_row(&conn, "item", "I1", &json!({"ID": "I1", "code": "b"}), None)?;
            write_row(&conn, "item", "I2", &json!({"ID": "I2"}), None)?;
            assert_eq!(get(&conn, "item", "I1")?.unwrap()["code"], "b");
            assert!(get(&conn, "item", "I2")?.is_some());
            delete_row(&conn, "item", "I2")?;
            assert_eq!(get(&conn, "item", "I2")?, None);
            // A merge rewrites rows it does not name: nothing memoised survives.
            write_row(&conn, "item", "I3", &json!({"ID": "I3"}), None)?;
            assert!(get(&conn, "item", "I3")?.is_some());
            central_merge(&conn, "item", "I1", "I3")?;
            assert_eq!(get(&conn, "item", "I3")?, None);
            let many: Vec<String> = (0..MEMO_ROWS + 10).map(|i| format!("X{i}")).collect();
            let ids: Vec<&str> = many.iter().map(String::as_str).collect();
            prefetch(&conn, "item", &ids)?;
            assert!(memo_rows() <= MEMO_ROWS, "{} rows memoised", memo_rows());
            Ok(())
        })
        .unwrap();
        // Outside a memo nothing is kept, and reads go to the file.
        assert_eq!(memo_rows(), 0);
        assert_eq!(get(&conn, "item", "I1").unwrap().unwrap()["code"], "b");
    }
}
