//! The central's rules (protocol §6): who may push what, where each change goes,
//! what a new site receives, and the responding half of transfers.
//!
//! What must hold: a change is never queued back to the site that pushed it, nor
//! (after initialisation) to the site that owns it; a re-sent push changes nothing
//! (unchanged rows are not routed); a newer change of a record replaces the site's
//! older unacknowledged entry, so a stale copy never overtakes a fresh one.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use super::{AdminError, Result, CENTRAL_SITE_ID};
use crate::store::registry::{self, Kind, Owner};
use crate::wire::protocol::{Action, RejectedRecord, SyncRecord};

pub fn get(conn: &Connection, table: &str, id: &str) -> Result<Option<Value>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .query_row(params![table, id], |r| r.get(0))
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

fn s<'a>(row: &'a Value, field: &str) -> &'a str {
    row.get(field).and_then(|v| v.as_str()).unwrap_or("")
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

/// Store facts memoised for one judge, integrate or initialise call. They cannot
/// change inside one: sites may not push `store` rows, and copies and store
/// assignments change only through administration. Off outside those calls.
#[derive(Default)]
struct Memo {
    active: HashMap<String, Option<u32>>,
    copies: HashMap<(String, Option<String>), Vec<u32>>,
    by_name: HashMap<String, Option<String>>,
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

fn with_memo<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    MEMO.with(|m| *m.borrow_mut() = Some(Memo::default()));
    let out = f();
    MEMO.with(|m| *m.borrow_mut() = None);
    out
}

pub fn active_stores(conn: &Connection, site: u32) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_id FROM record WHERE table_name = 'store' \
         AND json_extract(data, '$.sync_id_remote_site') = ?1 ORDER BY record_id",
    )?;
    let rows = stmt.query_map([site], |r| r.get(0))?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
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
    let sites = copy_sites_uncached(conn, store, kind)?;
    MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.copies.insert(key, sites.clone());
        }
    });
    Ok(sites)
}

fn copy_sites_uncached(conn: &Connection, store: &str, kind: Option<&str>) -> Result<Vec<u32>> {
    let mut stmt = conn.prepare_cached(
        "SELECT site_id FROM copy WHERE store_id = ?1 AND (?2 IS NULL OR kind = ?2)",
    )?;
    let rows = stmt.query_map(params![store, kind], |r| r.get(0))?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// The owning store of a row, following a parent in the central copy, in staging
/// of `site`, or in `batch` (lines pushed with or before their header).
fn owner(
    conn: &Connection,
    table: &str,
    row: &Value,
    site: Option<u32>,
    batch: &[SyncRecord],
) -> Result<Option<String>> {
    Ok(match registry::lookup(table).map(|t| t.owner) {
        Some(Owner::Field(f)) => Some(s(row, f).to_string()).filter(|x| !x.is_empty()),
        Some(Owner::Parent {
            field,
            table: ptable,
            parent_field,
        }) => {
            let pid = s(row, field);
            let parent = match get(conn, ptable, pid)? {
                Some(p) => Some(p),
                None => staged_or_batch(conn, site, batch, ptable, pid)?,
            };
            parent
                .map(|p| s(&p, parent_field).to_string())
                .filter(|x| !x.is_empty())
        }
        _ => None,
    })
}

fn staged_or_batch(
    conn: &Connection,
    site: Option<u32>,
    batch: &[SyncRecord],
    table: &str,
    id: &str,
) -> Result<Option<Value>> {
    if let Some(r) = batch
        .iter()
        .rev()
        .find(|r| r.table_name == table && r.record_id == id)
    {
        return Ok(r.data_text().and_then(|d| serde_json::from_str(d).ok()));
    }
    let Some(site) = site else { return Ok(None) };
    let text: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT data FROM staging WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3",
        )?
        .query_row(params![site, table, id], |r| r.get(0))
        .optional()?;
    Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
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
    .execute(params![site, table, id, action, data.map(|d| d.to_string()), merge as i64])?;
    Ok(())
}

/// Sites that hold `row` (table `table`) — where it must be routed. `full` adds
/// the owning store's active site (used by initialisation; changes never go back
/// to their owner).
fn recipients(conn: &Connection, table: &str, row: &Value, full: bool) -> Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    let kind = registry::row_kind(table, row);
    let own = owner(conn, table, row, None, &[])?;
    let active_and_collectors = |out: &mut BTreeSet<u32>, store: &str| -> Result<()> {
        if let Some(site) = active_site(conn, store)? {
            out.insert(site);
        }
        out.extend(copy_sites(conn, store, Some("collector"))?);
        Ok(())
    };
    match kind {
        Kind::Central | Kind::Local => {}
        Kind::CentralStore => {
            if let Some(store) = own.as_deref() {
                if let Some(site) = active_site(conn, store)? {
                    out.insert(site);
                }
                if table == "store" {
                    out.extend(copy_sites(conn, store, None)?);
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
        Kind::Patient | Kind::Name | Kind::PatientJoin => {
            let patient = match table {
                "name" => Some(s(row, "ID").to_string()),
                "nameInsuranceJoin" => Some(s(row, "nameID").to_string()),
                "om_document" => Some(s(row, "owner_name_ID").to_string()),
                _ => None,
            };
            match patient {
                Some(p) => {
                    for store in patient_stores(conn, &p)? {
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
            }
        }
        Kind::NameStoreJoin => {
            active_and_collectors(&mut out, s(row, "store_ID"))?;
        }
        Kind::Message => {
            active_and_collectors(&mut out, s(row, "toStoreID"))?;
            active_and_collectors(&mut out, s(row, "fromStoreID"))?;
        }
        Kind::Created => {}
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

/// The other store of a transfer document (the store whose name is the
/// document's `name_ID`), for `transact`/`requisition` and their lines.
fn transfer_party(
    conn: &Connection,
    table: &str,
    row: &Value,
    owner_store: &str,
) -> Result<Option<String>> {
    let header = match table {
        "transact" | "requisition" => Some(row.clone()),
        "trans_line" => get(conn, "transact", s(row, "transaction_ID"))?,
        "requisition_line" => get(conn, "requisition", s(row, "requisition_ID"))?,
        _ => None,
    };
    let Some(header) = header else {
        return Ok(None);
    };
    let name_id = s(&header, "name_ID");
    if name_id.is_empty() {
        return Ok(None);
    }
    let cached = MEMO.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|m| m.by_name.get(name_id).cloned())
    });
    let store: Option<String> = match cached {
        Some(hit) => hit,
        None => {
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
            found
        }
    };
    Ok(store.filter(|st| st != owner_store))
}

/// Routes one changed row to its recipients, except `skip` (the pushing site and,
/// after initialisation, the owning site).
fn route(
    conn: &Connection,
    table: &str,
    id: &str,
    action: &str,
    row: &Value,
    skip: &[u32],
) -> Result<()> {
    // A join that makes a patient newly visible on a site queues the patient there.
    let patient = match (table, action) {
        ("name_store_join", "update") => {
            get(conn, "name", s(row, "name_ID"))?.filter(|p| s(p, "type") == "patient")
        }
        _ => None,
    };
    for site in recipients(conn, table, row, false)? {
        if !skip.contains(&site) {
            if let Some(p) = &patient {
                enqueue(conn, site, "name", s(p, "ID"), "update", Some(p), false)?;
            }
            enqueue(
                conn,
                site,
                table,
                id,
                action,
                if action == "delete" { None } else { Some(row) },
                false,
            )?;
        }
    }
    Ok(())
}

// ---- central edits --------------------------------------------------------------

/// A change made on the central (administration): stored, logged for central
/// data, routed for central store data.
pub fn central_change(
    conn: &Connection,
    table: &str,
    id: &str,
    action: &str,
    row: Option<&Value>,
) -> Result<()> {
    let old = get(conn, table, id)?;
    let probe = row
        .or(old.as_ref())
        .cloned()
        .unwrap_or_else(|| json!({"ID": id}));
    let kind = registry::row_kind(table, &probe);
    if !matches!(
        kind,
        Kind::Central | Kind::CentralStore | Kind::NameStoreJoin
    ) {
        return Err(AdminError(format!(
            "{table} is not central data; it is edited at the site where its store is active"
        )));
    }
    match row {
        Some(r) => {
            conn.prepare_cached("INSERT INTO record (table_name, record_id, data, site_id) VALUES (?1, ?2, ?3, NULL) \
                 ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data, site_id = NULL")?.execute(params![table, id, r.to_string()],
            )?;
        }
        None => {
            conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
                .execute(params![table, id])?;
        }
    }
    if kind == Kind::Central {
        // Older non-merge entries of the record may go; the newest stays [PC].
        conn.prepare_cached(
            "DELETE FROM changelog WHERE table_name = ?1 AND record_id = ?2 AND action <> 'merge'",
        )?
        .execute(params![table, id])?;
        conn.prepare_cached(
            "INSERT INTO changelog (table_name, record_id, action, data) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![table, id, action, row.map(|r| r.to_string())])?;
    } else {
        route(conn, table, id, action, &probe, &[])?;
    }
    Ok(())
}

/// Writes a `store` row and routes it (to its active site and copy sites).
pub fn write_central_store_row(conn: &Connection, row: &Value) -> Result<()> {
    let id = s(row, "ID").to_string();
    central_change(conn, "store", &id, "update", Some(row))
}

pub fn central_merge(conn: &Connection, table: &str, keep: &str, drop: &str) -> Result<()> {
    if !registry::is_mergeable(table) {
        return Err(AdminError(format!(
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
        let mut stmt = conn.prepare_cached(
            "SELECT record_id, data FROM record WHERE table_name = ?1 ORDER BY record_id",
        )?;
        let mut rows = stmt.query([t.name])?;
        while let Some(r) = rows.next()? {
            let (id, data): (String, String) = (r.get(0)?, r.get(1)?);
            let Ok(row) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if wanted(t.name, &row)? {
                enqueue(conn, site, t.name, &id, "update", Some(&row), false)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Queues all store data of `store` (and its central store data) to `site`:
/// assigning a store to a site, or a new collector [PC].
pub fn queue_store_data_to(conn: &Connection, store: &str, site: u32) -> Result<()> {
    queue_matching(conn, site, |table, row| {
        let kind = registry::row_kind(table, row);
        Ok(!matches!(kind, Kind::Central | Kind::Local)
            && owner(conn, table, row, None, &[])?.as_deref() == Some(store))
    })?;
    Ok(())
}

// ---- initialisation ---------------------------------------------------------------

/// Empties and refills `site`'s queue with everything it should hold, in rank
/// order; central data is not queued (the site reads the change log from 0).
pub fn initialise(conn: &Connection, site: u32) -> Result<u64> {
    with_memo(|| initialise_inner(conn, site))
}

fn initialise_inner(conn: &Connection, site: u32) -> Result<u64> {
    conn.prepare_cached("DELETE FROM sync_out WHERE site_id = ?1")?
        .execute([site])?;
    queue_matching(conn, site, |table, row| {
        Ok(recipients(conn, table, row, true)?.contains(&site))
    })
}

// ---- push acceptance ---------------------------------------------------------------

/// Judges a push batch of `site`; `Err` lists every offender (the whole batch is
/// refused), with `true` when any is malformed (400) rather than not owned (403).
pub fn judge(conn: &Connection, site: u32, batch: &[SyncRecord]) -> Result<Judgement> {
    with_memo(|| judge_inner(conn, site, batch))
}

/// `Err` lists every offender, with `true` when any is malformed (400).
type Judgement = std::result::Result<(), (bool, Vec<RejectedRecord>)>;

fn judge_inner(conn: &Connection, site: u32, batch: &[SyncRecord]) -> Result<Judgement> {
    let stores = active_stores(conn, site)?;
    let mut offenders = Vec::new();
    let mut malformed = false;
    for rec in batch {
        let reason = judge_one(conn, site, &stores, rec, batch)?;
        if let Some((bad_input, reason)) = reason {
            malformed |= bad_input;
            offenders.push(RejectedRecord {
                sync_out_id: rec.sync_out_id.clone().unwrap_or_default(),
                table_name: rec.table_name.clone(),
                record_id: rec.record_id.clone(),
                reason: reason.into(),
            });
        }
    }
    Ok(if offenders.is_empty() {
        Ok(())
    } else {
        Err((malformed, offenders))
    })
}

fn judge_one(
    conn: &Connection,
    site: u32,
    stores: &[String],
    rec: &SyncRecord,
    batch: &[SyncRecord],
) -> Result<Option<(bool, &'static str)>> {
    if rec.table_name.is_empty() || rec.record_id.is_empty() {
        return Ok(Some((true, "missing_key")));
    }
    let action = match Action::parse(&rec.action) {
        None => return Ok(Some((true, "unknown_action"))),
        Some(Action::Merge) => return Ok(Some((true, "merge_not_accepted"))),
        Some(a) => a,
    };
    let existing = get(conn, &rec.table_name, &rec.record_id)?;
    let row = match action {
        Action::Upsert => match &rec.data_text().map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(o))) => match o.get("ID") {
                Some(Value::String(id)) if id == &rec.record_id => Value::Object(o.clone()),
                Some(Value::String(_)) => return Ok(Some((true, "id_mismatch"))),
                Some(_) => return Ok(Some((true, "bad_type"))),
                None => return Ok(Some((true, "missing_key"))),
            },
            Some(_) => return Ok(Some((true, "bad_type"))),
            None => return Ok(Some((true, "missing_key"))),
        },
        // Deletes are judged on the central copy; an unknown record's is a no-op.
        _ => match &existing {
            Some(e) => e.clone(),
            None => return Ok(None),
        },
    };
    let owns = |store: Option<String>| store.is_some_and(|st| stores.contains(&st));
    let check = |row: &Value| -> Result<Option<(bool, &'static str)>> {
        let kind = registry::row_kind(&rec.table_name, row);
        Ok(match kind {
            Kind::Central => Some((false, "central_data")),
            Kind::Local => Some((false, "not_syncable")),
            Kind::CentralStore => Some((false, "central_store_data")),
            Kind::NameStoreJoin => {
                let patient = get(conn, "name", s(row, "name_ID"))?.or(staged_or_batch(
                    conn,
                    Some(site),
                    batch,
                    "name",
                    s(row, "name_ID"),
                )?);
                let homed = patient.is_some_and(|p| {
                    s(&p, "type") == "patient"
                        && stores.iter().any(|st| st == s(&p, "supplying_store_id"))
                });
                if homed && stores.iter().any(|st| st == s(row, "store_ID")) {
                    None
                } else {
                    Some((false, "central_store_data"))
                }
            }
            Kind::Store => {
                let own = owner(conn, &rec.table_name, row, Some(site), batch)?;
                let is_line = matches!(
                    registry::lookup(&rec.table_name).map(|t| t.owner),
                    Some(Owner::Parent { .. })
                );
                match own {
                    // A line whose parent is still unknown is staged and re-checked.
                    None if is_line => None,
                    own if owns(own.clone()) => None,
                    _ => Some((false, "other_store")),
                }
            }
            Kind::Patient | Kind::Name | Kind::PatientJoin => {
                if owns(owner(conn, &rec.table_name, row, Some(site), batch)?) {
                    None
                } else {
                    Some((false, "patient_not_homed_here"))
                }
            }
            Kind::Message => {
                if existing.as_ref().is_some_and(|e| e != row) || action == Action::Delete {
                    Some((false, "message_edit"))
                } else if stores.iter().any(|st| st == s(row, "fromStoreID")) {
                    None
                } else {
                    Some((false, "other_store"))
                }
            }
            Kind::Created => {
                let pushed_by: Option<Option<u32>> = conn
                    .prepare_cached(
                        "SELECT site_id FROM record WHERE table_name = ?1 AND record_id = ?2",
                    )?
                    .query_row(params![rec.table_name, rec.record_id], |r| r.get(0))
                    .optional()?;
                match pushed_by {
                    None => None,
                    Some(Some(x)) if x == site => None,
                    Some(_) => Some((false, "not_syncable")),
                }
            }
        })
    };
    if let Some(bad) = check(&row)? {
        return Ok(Some(bad));
    }
    // An existing central copy must be this site's too: editing an owner field
    // takes nothing over.
    if action == Action::Upsert {
        if let Some(old) = &existing {
            if let Some(bad) = check(old)? {
                return Ok(Some(bad));
            }
        }
    }
    Ok(None)
}

/// Stages an accepted batch; a site's push of a record drops that record's
/// unacknowledged entries from its own queue [PC].
pub fn stage(conn: &Connection, site: u32, batch: &[SyncRecord]) -> Result<()> {
    let mut seq: i64 = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM staging WHERE site_id = ?1")?
        .query_row([site], |r| r.get(0))?;
    for rec in batch {
        seq += 1;
        let action = if Action::parse(&rec.action) == Some(Action::Delete) {
            "delete"
        } else {
            "update"
        };
        let data = if action == "delete" {
            None
        } else {
            rec.record_data.as_ref().map(|d| d.to_string())
        };
        conn.prepare_cached(
            "INSERT INTO staging (site_id, table_name, record_id, action, data, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (site_id, table_name, record_id) DO UPDATE SET action = excluded.action, \
             data = excluded.data, seq = excluded.seq",
        )?
        .execute(params![site, rec.table_name, rec.record_id, action, data, seq])?;
        conn.prepare_cached(
            "DELETE FROM sync_out WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3 AND is_merge = 0",
        )?
        .execute(params![site, rec.table_name, rec.record_id])?;
    }
    Ok(())
}

// ---- integration -----------------------------------------------------------------

/// Integrates `site`'s staging in rank order (upserts by rank, deletes children
/// first), routes what changed, then builds the responding half of transfers.
pub fn integrate(conn: &Connection, site: u32) -> Result<u64> {
    with_memo(|| integrate_inner(conn, site))
}

fn integrate_inner(conn: &Connection, site: u32) -> Result<u64> {
    let mut stmt = conn.prepare_cached(
        "SELECT table_name, record_id, action, data FROM staging WHERE site_id = ?1",
    )?;
    let mut rows: Vec<(String, String, String, Option<String>)> = stmt
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
    let mut integrated = 0;
    let mut headers = Vec::new();
    for (table, id, action, data) in rows {
        if action == "delete" {
            if let Some(old) = get(conn, &table, &id)? {
                conn.prepare_cached("DELETE FROM record WHERE table_name = ?1 AND record_id = ?2")?
                    .execute(params![table, id])?;
                route(conn, &table, &id, "delete", &old, &[site])?;
                integrated += 1;
            }
            continue;
        }
        let Some(pushed) = data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) else {
            continue;
        };
        if let Some(Owner::Parent {
            field,
            table: ptable,
            ..
        }) = registry::lookup(&table).map(|t| t.owner)
        {
            if get(conn, ptable, s(&pushed, field))?.is_none() {
                log::warn!("site {site}: dropped {table} {id}: its {ptable} never arrived");
                continue;
            }
            // Parent now known: the line must belong to one of the site's stores.
            let stores = active_stores(conn, site)?;
            if !owner(conn, &table, &pushed, None, &[])?.is_some_and(|o| stores.contains(&o)) {
                log::warn!(
                    "site {site}: dropped {table} {id}: its parent belongs to another store"
                );
                continue;
            }
        }
        let old = get(conn, &table, &id)?;
        // Pushed keys overlay the stored row [PC]; unknown keys survive.
        let merged = match &old {
            Some(Value::Object(o)) => {
                let mut m: Map<String, Value> = o.clone();
                if let Value::Object(p) = &pushed {
                    for (k, v) in p {
                        m.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(m)
            }
            _ => pushed,
        };
        if old.as_ref() == Some(&merged) {
            continue; // unchanged rows are not routed
        }
        conn.prepare_cached("INSERT INTO record (table_name, record_id, data, site_id) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data, site_id = excluded.site_id")?.execute(params![table, id, merged.to_string(), site],
        )?;
        route(conn, &table, &id, "update", &merged, &[site])?;
        if table == "transact" || table == "requisition" {
            headers.push((table.clone(), id.clone()));
        }
        integrated += 1;
    }
    conn.prepare_cached("DELETE FROM staging WHERE site_id = ?1")?
        .execute([site])?;
    for (table, id) in headers {
        if table == "transact" {
            respond_to_invoice(conn, &id)?;
        }
    }
    Ok(integrated)
}

/// §6 Transfers: a finalised customer invoice to a store active on another site
/// gets its supplier invoice (number -1, linked) and lines, once.
fn respond_to_invoice(conn: &Connection, ci_id: &str) -> Result<()> {
    let Some(ci) = get(conn, "transact", ci_id)? else {
        return Ok(());
    };
    if s(&ci, "type") != "ci" || s(&ci, "status") != "fn" {
        return Ok(());
    }
    let from_store = s(&ci, "store_ID").to_string();
    let Some(to_store) = transfer_party(conn, "transact", &ci, &from_store)? else {
        return Ok(());
    };
    let from_site = active_site(conn, &from_store)?.unwrap_or(CENTRAL_SITE_ID);
    let to_site = active_site(conn, &to_store)?.unwrap_or(CENTRAL_SITE_ID);
    if from_site == to_site && to_site != CENTRAL_SITE_ID {
        return Ok(()); // both on one site: it handles the transfer itself
    }
    let exists: Option<String> = conn.prepare_cached("SELECT record_id FROM record WHERE table_name = 'transact' AND json_extract(data, '$.store_ID') = ?1 \
             AND json_extract(data, '$.linked_transaction_id') = ?2")?.query_row(params![to_store, ci_id],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok(());
    }
    let from_name = get(conn, "store", &from_store)?
        .map(|st| s(&st, "name_ID").to_string())
        .unwrap_or_default();
    let si_id = crate::wire::credentials::new_id();
    let mut si = strip_om(&ci);
    let invoice_num = if to_site == CENTRAL_SITE_ID {
        next_central_si_number(conn, &to_store)?
    } else {
        -1
    };
    for (k, v) in [
        ("ID", json!(si_id)),
        ("store_ID", json!(to_store)),
        ("name_ID", json!(from_name)),
        ("type", json!("si")),
        ("status", json!("nw")),
        ("hold", json!(true)),
        ("invoice_num", json!(invoice_num)),
        ("linked_transaction_id", json!(ci_id)),
        (
            "their_ref",
            json!(ci
                .get("invoice_num")
                .map(|n| n.to_string())
                .unwrap_or_default()),
        ),
        ("confirm_date", json!("0000-00-00")),
        ("requisition_ID", json!("")),
        ("user_ID", json!("")),
    ] {
        si[k] = v;
    }
    let mut created = vec![("transact".to_string(), si_id.clone(), si)];
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM record WHERE table_name = 'trans_line' AND json_extract(data, '$.transaction_ID') = ?1 \
         ORDER BY record_id",
    )?;
    let lines: Vec<String> = stmt
        .query_map([ci_id], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    for text in lines {
        let Ok(line) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let mut l = strip_om(&line);
        let id = crate::wire::credentials::new_id();
        l["ID"] = json!(id);
        l["transaction_ID"] = json!(si_id);
        l["type"] = json!("stock_in");
        l["item_line_ID"] = json!("");
        l["location_ID"] = json!("");
        l["cost_price"] = line.get("sell_price").cloned().unwrap_or(json!(0));
        created.push(("trans_line".to_string(), id, l));
    }
    for (table, id, row) in &created {
        conn.prepare_cached(
            "INSERT INTO record (table_name, record_id, data, site_id) VALUES (?1, ?2, ?3, NULL)",
        )?
        .execute(params![table, id, row.to_string()])?;
    }
    // Both halves on both sites; the si also to the responding store's collectors.
    for (table, id, row) in &created {
        let mut to: BTreeSet<u32> = recipients(conn, table, row, false)?;
        to.insert(to_site);
        to.insert(from_site);
        for site in to {
            enqueue(conn, site, table, id, "update", Some(row), false)?;
        }
    }
    log::info!("transfer: customer invoice {ci_id} of {from_store} → supplier invoice {si_id} for {to_store}");
    Ok(())
}

fn strip_om(row: &Value) -> Value {
    match row {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with("om_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn next_central_si_number(conn: &Connection, store: &str) -> Result<i64> {
    let max: Option<i64> = conn.prepare_cached("SELECT max(json_extract(data, '$.invoice_num')) FROM record WHERE table_name = 'transact' \
         AND json_extract(data, '$.store_ID') = ?1 AND json_extract(data, '$.type') = 'si'")?.query_row([store],
        |r| r.get(0),
    )?;
    Ok(max.unwrap_or(0).max(0) + 1)
}
