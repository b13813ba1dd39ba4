//! Push acceptance (protocol §6): who may push what, by the shared rules of
//! [`crate::legacy::owner`]. Judged when a batch arrives — the whole batch
//! refused with 403/400 listing every offender — and again for every staged row
//! when it is integrated, against the state at that moment: a row staged before
//! another site created the record, or before the site's store moved away, is
//! not integrated on the strength of an earlier judgement (issue 18).
//!
//! Reasons: the 403 codes of [`owner::Reason`] and `duplicate_barcode`,
//! `duplicate_user_name` (a created row another row already holds the
//! meaning of), and `missing_key`, `bad_type`,
//! `unknown_action`, `merge_not_accepted`, `id_mismatch` (400), plus this
//! project's `too_large`, `too_deep` and `duplicate_key` (400,
//! [`crate::legacy::row::Problem::code`]): a row the agents could not read on
//! pull is refused on push, so it never reaches another site's queue.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::db::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::routing::{get, Copy};
use super::{CentralError, Result};
use crate::legacy::owner::{self, field, Reason, Rows, Write, Writer};
use crate::legacy::{registry, row};
use crate::wire::protocol::{Action, RejectedRecord, SyncRecord};

/// (table, record) → a row read once, parsed; `None`: not there.
type RowMemo = HashMap<(String, String), Option<Rc<Value>>>;

/// Staged rows a batch's judgement keeps at most (its lines' headers pushed
/// in earlier batches).
const STAGED_MEMO_ROWS: usize = 4_096;

/// The pushing site as the judge sees it.
pub struct Pusher<'a> {
    pub site: u32,
    /// Its active stores now.
    pub stores: &'a [String],
    /// The primary of a mirrored system edits central and central store data.
    pub primary: bool,
}

/// Why one record is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a record the protocol allows (400 `invalid_sync_record`).
    Malformed(&'static str),
    /// Not this site's to write (403 `record_not_owned_by_site`).
    NotOwned(Reason),
    /// A created row that would make two of what must be one (403): a barcode
    /// value already on another item, a user name already taken.
    Duplicate(&'static str),
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Malformed(code) => code,
            Refusal::NotOwned(r) => r.code(),
            Refusal::Duplicate(code) => code,
        }
    }
}

/// A refused batch: every offender, and whether any is malformed (400) rather
/// than only not owned (403).
#[derive(Debug)]
pub struct Refused {
    pub malformed: bool,
    pub records: Vec<RejectedRecord>,
}

/// The rows a judgement of `site`'s push looks at: the central's copy first,
/// then the row as the site sends it in the same batch, then as it staged it
/// earlier (a line's header may be in either). The batch is indexed once and
/// each of its rows parsed once, so judging it costs time linear in its length
/// (§10.9).
pub(crate) struct PushRows<'a> {
    conn: &'a Connection,
    site: u32,
    /// (table, record) → the batch's last version of it, parsed (`None`: a delete).
    batch: HashMap<(&'a str, &'a str), Option<&'a Value>>,
    /// Rows of this site's staging read so far, when judging a batch (the
    /// staging does not change under a read transaction; integration deletes
    /// from it as it goes, so it keeps none).
    staged: Option<RefCell<RowMemo>>,
}

impl<'a> PushRows<'a> {
    pub(crate) fn new(conn: &'a Connection, site: u32) -> PushRows<'a> {
        PushRows {
            conn,
            site,
            batch: HashMap::new(),
            staged: None,
        }
    }

    /// A row of this site's staging (memoised when judging a batch).
    fn staged(&self, table: &str, id: &str) -> Result<Option<Rc<Value>>> {
        let Some(memo) = &self.staged else {
            return Ok(staged_row(self.conn, self.site, table, id)?.map(Rc::new));
        };
        let key = (table.to_string(), id.to_string());
        if let Some(hit) = memo.borrow().get(&key) {
            return Ok(hit.clone());
        }
        let row = staged_row(self.conn, self.site, table, id)?.map(Rc::new);
        let mut memo = memo.borrow_mut();
        if memo.len() >= STAGED_MEMO_ROWS {
            memo.clear();
        }
        memo.insert(key, row.clone());
        Ok(row)
    }

    fn with_batch(
        conn: &'a Connection,
        site: u32,
        batch: &'a [SyncRecord],
        shapes: &'a [Shape],
    ) -> PushRows<'a> {
        let batch = batch
            .iter()
            .zip(shapes)
            .map(|(r, shape)| {
                let row = match shape {
                    Shape::Upsert(v) => Some(v),
                    _ => None,
                };
                ((r.table_name.as_str(), r.record_id.as_str()), row)
            })
            .collect();
        PushRows {
            conn,
            site,
            batch,
            staged: Some(RefCell::new(HashMap::new())),
        }
    }
}

impl Rows for PushRows<'_> {
    type Error = CentralError;
    fn row(&self, table: &str, id: &str) -> Result<Option<Value>> {
        if let Some(r) = Copy(self.conn).row(table, id)? {
            return Ok(Some(r));
        }
        if let Some(row) = self.batch.get(&(table, id)) {
            return Ok(row.cloned());
        }
        Ok(self.staged(table, id)?.map(Rc::unwrap_or_clone))
    }
    fn field(&self, table: &str, id: &str, name: &str) -> Result<Option<String>> {
        if let Some(f) = Copy(self.conn).field(table, id, name)? {
            return Ok(Some(f));
        }
        if let Some(row) = self.batch.get(&(table, id)) {
            return Ok(row.map(|r| field(r, name).to_string()));
        }
        Ok(self.staged(table, id)?.map(|r| field(&r, name).to_string()))
    }
    fn last_owner(&self, table: &str, id: &str) -> Result<Option<String>> {
        Copy(self.conn).last_owner(table, id)
    }
    fn created_by_writer(&self, table: &str, id: &str) -> Result<Option<bool>> {
        let pushed_by: Option<Option<u32>> = self
            .conn
            .prepare_cached("SELECT site_id FROM record WHERE table_name = ?1 AND record_id = ?2")?
            .query_row(params![table, id], |r| r.get(0))
            .optional()?;
        Ok(pushed_by.map(|by| by == Some(self.site)))
    }
}

/// A pushed record as the protocol reads it, before anyone's rules: its row
/// parsed (once), a delete, or why it is malformed.
pub(crate) enum Shape {
    Upsert(Value),
    Delete,
    Malformed(&'static str),
}

impl Shape {
    /// Reads `rec` (§6: keys, action, a row the agents can read).
    pub(crate) fn of(rec: &SyncRecord) -> Shape {
        if rec.table_name.is_empty() || rec.record_id.is_empty() {
            return Shape::Malformed("missing_key");
        }
        match Action::parse(&rec.action) {
            None => Shape::Malformed("unknown_action"),
            Some(Action::Merge) => Shape::Malformed("merge_not_accepted"),
            Some(Action::Delete) => Shape::Delete,
            Some(Action::Upsert) => match rec.data_text() {
                None => Shape::Malformed("missing_key"),
                Some(text) => Shape::row(text, &rec.record_id),
            },
        }
    }

    /// An upserted row's text: checked, then parsed. A row staged was checked
    /// when it was pushed, so [`Shape::staged`] parses it only.
    fn row(text: &str, id: &str) -> Shape {
        if let Err(p) = row::check(text, Some(id)) {
            return Shape::Malformed(p.code());
        }
        match serde_json::from_str::<Value>(text) {
            Ok(v) => Shape::Upsert(v),
            Err(_) => Shape::Malformed("bad_type"),
        }
    }

    /// A staged row (checked when it was pushed): parsed once; the full check
    /// runs only if it does not parse as an object with the record's ID.
    pub(crate) fn staged(action: &str, data: Option<&str>, id: &str) -> Shape {
        if action == "delete" {
            return Shape::Delete;
        }
        let Some(text) = data else {
            return Shape::Malformed("missing_key");
        };
        match serde_json::from_str::<Value>(text) {
            Ok(v) if v.get("ID").and_then(Value::as_str) == Some(id) => Shape::Upsert(v),
            _ => Shape::row(text, id),
        }
    }
}

/// Judges a push batch: every record, with the batch and this site's staging
/// as places where a line's header may be. Set-based: each row is parsed once,
/// and the central's copies of the batch's records and of its lines' headers
/// are read with one query per table before any is judged.
pub fn batch(
    conn: &Connection,
    who: &Pusher,
    batch: &[SyncRecord],
) -> Result<std::result::Result<(), Refused>> {
    super::routing::with_memo(|| {
        let shapes: Vec<Shape> = batch.iter().map(Shape::of).collect();
        prefetch(conn, batch, &shapes)?;
        let rows = PushRows::with_batch(conn, who.site, batch, &shapes);
        let mut refused = Refused {
            malformed: false,
            records: Vec::new(),
        };
        for (rec, shape) in batch.iter().zip(&shapes) {
            if let Some(r) = record(&rows, who, &rec.table_name, &rec.record_id, shape)? {
                refused.malformed |= matches!(r, Refusal::Malformed(_));
                refused.records.push(RejectedRecord {
                    sync_out_id: rec.sync_out_id.clone().unwrap_or_default(),
                    table_name: rec.table_name.clone(),
                    record_id: rec.record_id.clone(),
                    reason: r.code().into(),
                });
            }
        }
        Ok(if refused.records.is_empty() {
            Ok(())
        } else {
            Err(refused)
        })
    })
}

/// Reads into the memo, a query per table, the central's copies of `batch`'s
/// records and of the headers its lines name.
pub(crate) fn prefetch(conn: &Connection, batch: &[SyncRecord], shapes: &[Shape]) -> Result<()> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (rec, shape) in batch.iter().zip(shapes) {
        wanted
            .entry(rec.table_name.as_str())
            .or_default()
            .push(rec.record_id.as_str());
        if let (
            Shape::Upsert(row),
            Some(registry::Owner::Parent {
                field: link, table, ..
            }),
        ) = (shape, registry::lookup(&rec.table_name).map(|t| t.owner))
        {
            wanted.entry(table).or_default().push(field(row, link));
        }
    }
    for (table, ids) in wanted {
        super::routing::prefetch(conn, table, &ids)?;
    }
    Ok(())
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

/// Judges one record of `table`/`id`, read as `shape`; `None` when it is accepted.
pub(crate) fn record(
    rows: &PushRows,
    who: &Pusher,
    table: &str,
    id: &str,
    shape: &Shape,
) -> Result<Option<Refusal>> {
    let write = match shape {
        Shape::Malformed(code) => return Ok(Some(Refusal::Malformed(code))),
        Shape::Upsert(row) => Write::Upsert(row),
        Shape::Delete => Write::Delete,
    };
    let existing = get(rows.conn, table, id)?;
    let writer = Writer {
        stores: who.stores,
        primary: who.primary,
    };
    if let Some(reason) = owner::judge(&writer, table, write, existing.as_ref(), rows)? {
        return Ok(Some(Refusal::NotOwned(reason)));
    }
    Ok(match write {
        Write::Upsert(row) => duplicate(rows.conn, table, id, row)?,
        Write::Delete => None,
    }
    .map(Refusal::Duplicate))
}

/// A site's created row that another row already holds the meaning of
/// (§10.9): a barcode whose value another item has (a scan would find two
/// items), a user whose name another user has (a login would find two
/// people). Refused rather than renamed: the site's people chose the value,
/// and only they can say which to keep.
fn duplicate(
    conn: &Connection,
    table: &str,
    id: &str,
    row: &Value,
) -> Result<Option<&'static str>> {
    let taken = |sql: &str, value: &str, other: &str| -> Result<bool> {
        Ok(conn
            .prepare_cached(sql)?
            .query_row(params![value, id, other], |r| r.get(0))?)
    };
    Ok(match table {
        "barcode" => {
            let value = field(row, "barcode");
            let item = field(row, "itemID");
            (!value.is_empty()
                && taken(
                    "SELECT EXISTS (SELECT 1 FROM record WHERE table_name = 'barcode' \
                     AND json_extract(data, '$.barcode') = ?1 AND record_id <> ?2 \
                     AND coalesce(json_extract(data, '$.itemID'), '') <> ?3)",
                    value,
                    item,
                )?)
            .then_some("duplicate_barcode")
        }
        "user" => {
            let name = field(row, "name");
            (!name.is_empty()
                && taken(
                    "SELECT EXISTS (SELECT 1 FROM record WHERE table_name = 'user' \
                     AND lower(json_extract(data, '$.name')) = lower(?1) AND record_id <> ?2 AND ?3 = '')",
                    name,
                    "",
                )?)
            .then_some("duplicate_user_name")
        }
        _ => None,
    })
}
