//! Who owns a legacy row, and who may write it (protocol §1, §6 "Push
//! acceptance", §7.1), written once for every side that judges: the reference
//! central on a push and again at integration, the agent when it finds a write
//! that passed its triggers. The triggers of [`super::triggers`] say the same in
//! SQL for the store's own file.
//!
//! A judgement needs rows besides the one judged — a line's header, a patient's
//! `name` row — and each side holds them in its own place (the central's copy,
//! what a site staged or sends in the same batch, the site's store): the
//! [`Rows`] a caller passes says where to look.

use serde_json::Value;

use super::registry::{self, Kind, Owner};

/// Where the judging side finds the rows a judgement depends on.
pub trait Rows {
    type Error;
    /// The row `table`/`id` as this side holds it, if it does.
    fn row(&self, table: &str, id: &str) -> Result<Option<Value>, Self::Error>;
    /// One string field of that row (`None`: no such row; "" when the row has
    /// no such string): what a line's owner needs of its header. A side that
    /// keeps parsed rows answers it without copying the row.
    fn field(&self, table: &str, id: &str, name: &str) -> Result<Option<String>, Self::Error> {
        Ok(self.row(table, id)?.map(|r| field(&r, name).to_string()))
    }
    /// The owning store the record had when this side last wrote it: a line
    /// whose header is gone keeps being judged by it (§10.9). `None`: unknown.
    fn last_owner(&self, _table: &str, _id: &str) -> Result<Option<String>, Self::Error> {
        Ok(None)
    }
    /// For a `Created` record (`user`, `barcode`) that exists: whether the writer
    /// created it. `None`: no such record yet.
    fn created_by_writer(&self, table: &str, id: &str) -> Result<Option<bool>, Self::Error>;
}

/// A string field of a row; "" when absent or not a string.
pub fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The owning store of a row: the store its owner field names, or (for a line)
/// the store its parent names. `None` when the row names none, or its parent is
/// not held.
pub fn owner_of<R: Rows + ?Sized>(
    table: &str,
    row: &Value,
    rows: &R,
) -> Result<Option<String>, R::Error> {
    let own = match registry::lookup(table).map(|t| t.owner) {
        Some(Owner::Field(f)) => Some(field(row, f).to_string()),
        Some(Owner::Parent {
            field: f,
            table: parent_table,
            parent_field,
        }) => rows.field(parent_table, field(row, f), parent_field)?,
        _ => None,
    };
    Ok(own.filter(|s| !s.is_empty()))
}

/// The `name` row a patient-owned row hangs off (`nameInsuranceJoin.nameID`,
/// `om_document.owner_name_ID`, a patient's own `ID`), if the table has one.
pub fn patient_id<'a>(table: &str, row: &'a Value) -> Option<&'a str> {
    match (table, registry::lookup(table).map(|t| t.owner)) {
        ("name", _) => Some(field(row, "ID")),
        (
            _,
            Some(Owner::Parent {
                field: f,
                table: "name",
                ..
            }),
        ) => Some(field(row, f)),
        _ => None,
    }
}

/// Why a writer may not write a row: the reason codes of a 403
/// `record_not_owned_by_site` (protocol §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    CentralData,
    CentralStoreData,
    OtherStore,
    PatientNotHomedHere,
    MessageEdit,
    NotSyncable,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::CentralData => "central_data",
            Reason::CentralStoreData => "central_store_data",
            Reason::OtherStore => "other_store",
            Reason::PatientNotHomedHere => "patient_not_homed_here",
            Reason::MessageEdit => "message_edit",
            Reason::NotSyncable => "not_syncable",
        }
    }
}

/// Who writes: the stores it writes for (a site's active stores; the agent's one
/// active store), and whether it is the primary site of a mirrored system, which
/// edits central and central store data (seed 000, "Mirrored sync").
pub struct Writer<'a> {
    pub stores: &'a [String],
    pub primary: bool,
}

impl Writer<'_> {
    fn owns(&self, store: Option<&str>) -> bool {
        store.is_some_and(|st| !st.is_empty() && self.stores.iter().any(|x| x == st))
    }
}

/// A write as the judge sees it.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Insert or update with this whole row.
    Upsert(&'a Value),
    Delete,
}

/// Whether `writer` may make `write` to record `table`/`id`, whose copy on the
/// judging side is `existing`. `None`: it may.
///
/// An upsert is judged on the new row and, when a copy exists, on that copy too
/// (editing an owner field takes nothing over); a delete on the copy, and a
/// delete of a record nobody holds is a harmless no-op.
pub fn judge<R: Rows + ?Sized>(
    writer: &Writer,
    table: &str,
    write: Write,
    existing: Option<&Value>,
    rows: &R,
) -> Result<Option<Reason>, R::Error> {
    let row = match (write, existing) {
        (Write::Upsert(row), _) => row,
        (Write::Delete, Some(old)) => old,
        (Write::Delete, None) => return Ok(None),
    };
    let role = match write {
        Write::Upsert(_) => Role::New,
        Write::Delete => Role::Existing,
    };
    if let Some(bad) = may_hold(writer, table, row, role, write, existing, rows)? {
        return Ok(Some(bad));
    }
    if let (Write::Upsert(_), Some(old)) = (write, existing) {
        return may_hold(writer, table, old, Role::Existing, write, existing, rows);
    }
    Ok(None)
}

/// Which version of a record is judged: the one written, or the copy it
/// replaces (or deletes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    New,
    Existing,
}

/// Whether `writer` may write `row` of `table`, by its data type.
fn may_hold<R: Rows + ?Sized>(
    writer: &Writer,
    table: &str,
    row: &Value,
    role: Role,
    write: Write,
    existing: Option<&Value>,
    rows: &R,
) -> Result<Option<Reason>, R::Error> {
    let patient_homed = |name_id: &str| -> Result<bool, R::Error> {
        Ok(rows.row("name", name_id)?.is_some_and(|p| {
            registry::is_patient(&p) && writer.owns(Some(field(&p, "supplying_store_id")))
        }))
    };
    let refuse = |no: bool, why: Reason| if no { Some(why) } else { None };
    Ok(match registry::row_kind(table, row) {
        Kind::Central => refuse(!writer.primary, Reason::CentralData),
        Kind::CentralStore => refuse(!writer.primary, Reason::CentralStoreData),
        Kind::Local => Some(Reason::NotSyncable),
        Kind::NameStoreJoin => {
            // Central store data, except a join of a patient homed here to a
            // store of the writer's (patient data).
            let patient_join =
                patient_homed(field(row, "name_ID"))? && writer.owns(Some(field(row, "store_ID")));
            refuse(!(writer.primary || patient_join), Reason::CentralStoreData)
        }
        Kind::PatientJoin => refuse(
            !patient_homed(patient_id(table, row).unwrap_or(""))?,
            Reason::PatientNotHomedHere,
        ),
        Kind::Store => store_data(writer, table, row, role, existing, rows)?,
        Kind::Patient | Kind::Name => refuse(
            !writer.owns(owner_of(table, row, rows)?.as_deref()),
            Reason::PatientNotHomedHere,
        ),
        Kind::Message => {
            if matches!(write, Write::Delete) || existing.is_some_and(|e| e != row) {
                Some(Reason::MessageEdit)
            } else {
                refuse(
                    !writer.owns(Some(field(row, "fromStoreID"))),
                    Reason::OtherStore,
                )
            }
        }
        Kind::Created => refuse(
            rows.created_by_writer(table, field(row, "ID"))? == Some(false),
            Reason::NotSyncable,
        ),
    })
}

/// Store data: owned through its owner field or its header. An existing line
/// stays with the owner it had when last written, whatever its header is now:
/// the header may be gone, and re-creating the header's ID under another store
/// takes no line over (§10.9). The new version of a line goes by its header
/// where that is known. A new line whose header is unknown passes here and is
/// judged again when its header must be known (at the central's integration).
fn store_data<R: Rows + ?Sized>(
    writer: &Writer,
    table: &str,
    row: &Value,
    role: Role,
    existing: Option<&Value>,
    rows: &R,
) -> Result<Option<Reason>, R::Error> {
    let is_line = matches!(
        registry::lookup(table).map(|t| t.owner),
        Some(Owner::Parent { .. })
    );
    let by_header = owner_of(table, row, rows)?;
    let last = if is_line && existing.is_some() {
        rows.last_owner(table, field(row, "ID"))?
    } else {
        None
    };
    let own = match role {
        Role::Existing => last.or(by_header),
        Role::New => by_header.or(last),
    };
    Ok(match own {
        Some(st) if writer.owns(Some(&st)) => None,
        Some(_) => Some(Reason::OtherStore),
        None if is_line && existing.is_none() => None,
        None => Some(Reason::OtherStore),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Held {
        rows: HashMap<(String, String), Value>,
        last: HashMap<(String, String), String>,
        mine: Vec<String>,
    }

    impl Held {
        fn with(mut self, table: &str, row: Value) -> Held {
            let id = field(&row, "ID").to_string();
            self.rows.insert((table.into(), id), row);
            self
        }
    }

    impl Rows for Held {
        type Error = ();
        fn row(&self, t: &str, id: &str) -> Result<Option<Value>, ()> {
            Ok(self.rows.get(&(t.into(), id.into())).cloned())
        }
        fn last_owner(&self, t: &str, id: &str) -> Result<Option<String>, ()> {
            Ok(self.last.get(&(t.into(), id.into())).cloned())
        }
        fn created_by_writer(&self, t: &str, id: &str) -> Result<Option<bool>, ()> {
            Ok(self
                .rows
                .contains_key(&(t.into(), id.into()))
                .then(|| self.mine.iter().any(|m| m == id)))
        }
    }

    fn j(held: &Held, table: &str, write: Write, existing: Option<&Value>) -> Option<&'static str> {
        let stores = ["S".to_string()];
        let w = Writer {
            stores: &stores,
            primary: false,
        };
        judge(&w, table, write, existing, held)
            .unwrap()
            .map(Reason::code)
    }

    #[test]
    fn every_kind_is_judged_by_its_owner() {
        let held = Held::default()
            .with("transact", json!({"ID": "T", "store_ID": "S"}))
            .with("transact", json!({"ID": "X", "store_ID": "OTHER"}))
            .with(
                "name",
                json!({"ID": "P", "type": "patient", "supplying_store_id": "S"}),
            )
            .with(
                "name",
                json!({"ID": "Q", "type": "patient", "supplying_store_id": "OTHER"}),
            );
        let up = |v: &'static str| serde_json::from_str::<Value>(v).unwrap();
        let cases: &[(&str, Value, Option<&str>)] = &[
            ("item", up(r#"{"ID":"I"}"#), Some("central_data")),
            (
                "pref",
                up(r#"{"ID":"P","store_ID":"S"}"#),
                Some("central_store_data"),
            ),
            ("transact", up(r#"{"ID":"T2","store_ID":"S"}"#), None),
            (
                "transact",
                up(r#"{"ID":"T3","store_ID":"OTHER"}"#),
                Some("other_store"),
            ),
            ("trans_line", up(r#"{"ID":"L","transaction_ID":"T"}"#), None),
            (
                "trans_line",
                up(r#"{"ID":"L","transaction_ID":"X"}"#),
                Some("other_store"),
            ),
            (
                "trans_line",
                up(r#"{"ID":"L","transaction_ID":"NEW"}"#),
                None,
            ),
            ("nameInsuranceJoin", up(r#"{"ID":"N","nameID":"P"}"#), None),
            (
                "nameInsuranceJoin",
                up(r#"{"ID":"N","nameID":"Q"}"#),
                Some("patient_not_homed_here"),
            ),
            (
                "name_store_join",
                up(r#"{"ID":"J","name_ID":"P","store_ID":"S"}"#),
                None,
            ),
            (
                "name_store_join",
                up(r#"{"ID":"J","name_ID":"Q","store_ID":"S"}"#),
                Some("central_store_data"),
            ),
            (
                "name",
                up(r#"{"ID":"P2","type":"patient","supplying_store_id":"S"}"#),
                None,
            ),
            (
                "name",
                up(r#"{"ID":"C","type":"customer"}"#),
                Some("central_data"),
            ),
            ("message", up(r#"{"ID":"M","fromStoreID":"S"}"#), None),
            (
                "message",
                up(r#"{"ID":"M","fromStoreID":"OTHER"}"#),
                Some("other_store"),
            ),
            ("number", up(r#"{"ID":"n"}"#), Some("not_syncable")),
            ("user", up(r#"{"ID":"U"}"#), None),
        ];
        for (table, row, want) in cases {
            assert_eq!(
                j(&held, table, Write::Upsert(row), None),
                *want,
                "{table} {row}"
            );
        }
    }

    #[test]
    fn existing_copies_and_lines_keep_their_owner() {
        let mut held = Held::default()
            .with("transact", json!({"ID": "T", "store_ID": "S"}))
            .with("user", json!({"ID": "U1"}))
            .with("user", json!({"ID": "U2"}));
        held.mine.push("U1".into());
        // Moving a row to this store from another takes nothing over.
        let theirs = json!({"ID": "X", "store_ID": "OTHER"});
        let moved = json!({"ID": "X", "store_ID": "S"});
        assert_eq!(
            j(&held, "transact", Write::Upsert(&moved), Some(&theirs)),
            Some("other_store")
        );
        assert_eq!(
            j(&held, "transact", Write::Delete, Some(&theirs)),
            Some("other_store")
        );
        assert_eq!(
            j(&held, "transact", Write::Delete, None),
            None,
            "unknown: no-op"
        );
        // A line whose header is gone keeps the owner it had (F4).
        let line = json!({"ID": "L", "transaction_ID": "GONE"});
        held.last
            .insert(("trans_line".into(), "L".into()), "OTHER".into());
        assert_eq!(
            j(&held, "trans_line", Write::Upsert(&line), Some(&line)),
            Some("other_store")
        );
        held.last
            .insert(("trans_line".into(), "L".into()), "S".into());
        assert_eq!(
            j(&held, "trans_line", Write::Upsert(&line), Some(&line)),
            None
        );
        // Messages are never edited; users stay their creator's.
        let m = json!({"ID": "M", "fromStoreID": "S", "body": "hi"});
        let m2 = json!({"ID": "M", "fromStoreID": "S", "body": "edited"});
        assert_eq!(j(&held, "message", Write::Upsert(&m), Some(&m)), None);
        assert_eq!(
            j(&held, "message", Write::Upsert(&m2), Some(&m)),
            Some("message_edit")
        );
        let u1 = json!({"ID": "U1", "name": "x"});
        let u2 = json!({"ID": "U2", "name": "x"});
        assert_eq!(j(&held, "user", Write::Upsert(&u1), Some(&u1)), None);
        assert_eq!(
            j(&held, "user", Write::Upsert(&u2), Some(&u2)),
            Some("not_syncable")
        );
    }
}
