//! Push acceptance (protocol §6): who may push what. Judged when a batch
//! arrives — the whole batch refused with 403/400 listing every offender — and
//! again for every staged row when it is integrated, against the state at that
//! moment: a row staged before another site created the record, or before the
//! site's store moved away, is not integrated on the strength of an earlier
//! judgement (issue 18).
//!
//! Reasons: `central_data`, `central_store_data`, `other_store`,
//! `patient_not_homed_here`, `message_edit`, `not_syncable` (403) and
//! `missing_key`, `bad_type`, `unknown_action`, `merge_not_accepted`,
//! `id_mismatch` (400), plus this project's `too_large`, `too_deep` and
//! `duplicate_key` (400): a row the agents could not read on pull is refused on
//! push, so it never reaches another site's queue.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::routing::{self, get, s};
use super::Result;
use crate::store::registry::{self, Kind, Owner};
use crate::store::row::{self, Problem};
use crate::wire::protocol::{Action, RejectedRecord, SyncRecord};

/// The pushing site as the judge sees it.
pub struct Pusher<'a> {
    pub site: u32,
    /// Its active stores now.
    pub stores: &'a [String],
    /// The primary of a mirrored system edits central and central store data.
    pub primary: bool,
}

impl Pusher<'_> {
    fn owns(&self, store: Option<&str>) -> bool {
        store.is_some_and(|st| self.stores.iter().any(|x| x == st))
    }
}

/// Why a record is refused: malformed (400) or not owned (403), and the reason.
pub type Refusal = (bool, &'static str);

/// `Err` lists every offender; `true` when any is malformed (400) rather than
/// not owned (403).
pub type Judgement = std::result::Result<(), (bool, Vec<RejectedRecord>)>;

/// Judges a push batch: every record, with the batch and this site's staging
/// as places where a line's header may be.
pub fn batch(conn: &Connection, who: &Pusher, batch: &[SyncRecord]) -> Result<Judgement> {
    routing::with_memo(|| {
        let mut offenders = Vec::new();
        let mut malformed = false;
        let staged = |table: &str, id: &str| -> Result<Option<Value>> {
            if let Some(r) = batch
                .iter()
                .rev()
                .find(|r| r.table_name == table && r.record_id == id)
            {
                return Ok(r.data_text().and_then(|d| serde_json::from_str(d).ok()));
            }
            staged_row(conn, who.site, table, id)
        };
        for rec in batch {
            if let Some((bad_input, reason)) = record(conn, who, rec, &staged)? {
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
    })
}

/// A row `site` has staged (its header's place before integration).
pub(crate) fn staged_row(
    conn: &Connection,
    site: u32,
    table: &str,
    id: &str,
) -> Result<Option<Value>> {
    let text: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT data FROM staging WHERE site_id = ?1 AND table_name = ?2 AND record_id = ?3",
        )?
        .query_row(params![site, table, id], |r| r.get(0))
        .optional()?;
    Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
}

fn problem(p: &Problem) -> &'static str {
    match p {
        Problem::TooLarge(_) => "too_large",
        Problem::TooDeep => "too_deep",
        Problem::DuplicateKey(_) => "duplicate_key",
        Problem::IdMismatch { .. } => "id_mismatch",
        Problem::NoId => "missing_key",
        Problem::IdNotString | Problem::NotObject | Problem::NotJson(_) => "bad_type",
    }
}

/// Judges one record; `None` when it is accepted.
pub fn record(
    conn: &Connection,
    who: &Pusher,
    rec: &SyncRecord,
    staged: &dyn Fn(&str, &str) -> Result<Option<Value>>,
) -> Result<Option<Refusal>> {
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
        Action::Upsert => {
            let Some(text) = rec.data_text() else {
                return Ok(Some((true, "missing_key")));
            };
            if let Err(p) = row::check(text, Some(&rec.record_id)) {
                return Ok(Some((true, problem(&p))));
            }
            serde_json::from_str::<Value>(text).map_err(|e| super::AdminError(e.to_string()))?
        }
        // Deletes are judged on the central copy; an unknown record's is a no-op.
        _ => match &existing {
            Some(e) => e.clone(),
            None => return Ok(None),
        },
    };
    let table = rec.table_name.as_str();
    if let Some(bad) = owned(conn, who, table, &row, existing.as_ref(), action, staged)? {
        return Ok(Some(bad));
    }
    // An existing central copy must be this site's too: editing an owner field
    // takes nothing over.
    if action == Action::Upsert {
        if let Some(old) = &existing {
            if let Some(bad) = owned(conn, who, table, old, existing.as_ref(), action, staged)? {
                return Ok(Some(bad));
            }
        }
    }
    Ok(None)
}

/// Whether `who` may write `row` of `table`.
fn owned(
    conn: &Connection,
    who: &Pusher,
    table: &str,
    row: &Value,
    existing: Option<&Value>,
    action: Action,
    staged: &dyn Fn(&str, &str) -> Result<Option<Value>>,
) -> Result<Option<Refusal>> {
    let kind = registry::row_kind(table, row);
    let patient_homed = |name_id: &str| -> Result<bool> {
        let p = match get(conn, "name", name_id)? {
            Some(p) => Some(p),
            None => staged("name", name_id)?,
        };
        Ok(p.is_some_and(|p| {
            registry::is_patient(&p) && who.owns(Some(s(&p, "supplying_store_id")))
        }))
    };
    Ok(match kind {
        Kind::Central if who.primary => None,
        Kind::Central => Some((false, "central_data")),
        Kind::CentralStore if who.primary => None,
        Kind::CentralStore => Some((false, "central_store_data")),
        Kind::Local => Some((false, "not_syncable")),
        Kind::NameStoreJoin => {
            if who.primary
                || (patient_homed(s(row, "name_ID"))? && who.owns(Some(s(row, "store_ID"))))
            {
                None
            } else {
                Some((false, "central_store_data"))
            }
        }
        Kind::PatientJoin => {
            let field = match registry::lookup(table).map(|t| t.owner) {
                Some(Owner::Parent { field, .. }) => field,
                _ => "nameID",
            };
            if patient_homed(s(row, field))? {
                None
            } else {
                Some((false, "patient_not_homed_here"))
            }
        }
        Kind::Store => {
            let own = routing::owner(conn, table, row, staged)?;
            let is_line = matches!(
                registry::lookup(table).map(|t| t.owner),
                Some(Owner::Parent { .. })
            );
            match own {
                Some(st) if who.owns(Some(&st)) => None,
                Some(_) => Some((false, "other_store")),
                // A line whose header is unknown: an existing line is judged by its
                // last known owner (its header may be gone); a new one is staged
                // and judged again at integration, when its header must be known.
                None if is_line => {
                    let last_known = last_owner(conn, table, s(row, "ID"))?;
                    match (existing, last_known) {
                        (Some(_), Some(st)) if who.owns(Some(&st)) => None,
                        (Some(_), _) => Some((false, "other_store")),
                        (None, _) => None,
                    }
                }
                None => Some((false, "other_store")),
            }
        }
        Kind::Patient | Kind::Name => {
            if who.owns(routing::owner(conn, table, row, staged)?.as_deref()) {
                None
            } else {
                Some((false, "patient_not_homed_here"))
            }
        }
        Kind::Message => {
            if existing.is_some_and(|e| e != row) || action == Action::Delete {
                Some((false, "message_edit"))
            } else if who.owns(Some(s(row, "fromStoreID"))) {
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
                .query_row(params![table, s(row, "ID")], |r| r.get(0))
                .optional()?;
            match pushed_by {
                None => None,
                Some(Some(x)) if x == who.site => None,
                Some(_) => Some((false, "not_syncable")),
            }
        }
    })
}

/// The owning store a row had when the central last wrote it.
fn last_owner(conn: &Connection, table: &str, id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT owner_store FROM record WHERE table_name = ?1 AND record_id = ?2")?
        .query_row(params![table, id], |r| r.get(0))
        .optional()?
        .flatten())
}
