//! Local edits as `fieldsync put` and `import` make them: a record checked
//! for the shape the protocol fixes, overlaid on the stored row (unknown keys
//! survive, §7.2) and written as an upsert, so the rules judge it as an
//! update when the row exists.

use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use super::{get_record, StoreError, MAX_RECORD_BYTES};
use crate::legacy::registry;

/// Legacy fields whose JSON type is fixed by the protocol (§3, "Rows").
const NUMBER_FIELDS: &[&str] = &[
    "invoice_num",
    "serial_number",
    "entry_time",
    "quantity",
    "pack_size",
];
const BOOL_FIELDS: &[&str] = &["hold"];

/// Checks one incoming local record: an object with a string `ID`, owner fields as
/// strings and the typed legacy fields with their protocol types. `at` says where
/// the record came from (a line number) for the message.
pub fn validate_record(table: &str, row: &Value, at: &str) -> Result<(), StoreError> {
    let bad = |what: String| StoreError::BadRecord {
        at: at.to_string(),
        what,
    };
    if table.is_empty()
        || table.len() > 64
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad(format!(
            "table name {table:?} is not a legacy table name (letters, digits, _)"
        )));
    }
    let obj = row
        .as_object()
        .ok_or_else(|| bad(format!("{table} record must be a JSON object")))?;
    match obj.get("ID") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::String(_)) => return Err(bad(format!("{table} record has an empty \"ID\""))),
        Some(other) => {
            return Err(bad(format!(
                "{table} record \"ID\" must be a string, not {}",
                json_type(other)
            )))
        }
        None => return Err(bad(format!("{table} record has no \"ID\" field"))),
    }
    let owner_field = registry::lookup(table).and_then(|t| match t.owner {
        registry::Owner::Field(f) => Some(f),
        registry::Owner::Parent { field, .. } => Some(field),
        registry::Owner::None => None,
    });
    for (k, v) in obj {
        let ok = if Some(k.as_str()) == owner_field {
            v.is_string()
        } else if NUMBER_FIELDS.contains(&k.as_str()) {
            v.is_number()
        } else if BOOL_FIELDS.contains(&k.as_str()) {
            v.is_boolean()
        } else {
            true
        };
        if !ok {
            return Err(bad(format!(
                "{table} field \"{k}\" has the wrong type ({})",
                json_type(v)
            )));
        }
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Local write inside `tx`: validates, overlays onto the stored row and upserts
/// (an UPDATE when the row exists, so the update triggers judge it).
pub(super) fn put(tx: &Connection, table: &str, row: &Value, at: &str) -> Result<(), StoreError> {
    validate_record(table, row, at)?;
    let id = row["ID"].as_str().unwrap_or_default();
    let merged = match get_record(tx, table, id)? {
        Some(Value::Object(mut stored)) => {
            overlay(&mut stored, row.as_object().expect("validated object"));
            Value::Object(stored)
        }
        _ => row.clone(),
    };
    let text = serde_json::to_string(&merged).map_err(|e| StoreError::BadRecord {
        at: at.to_string(),
        what: format!("cannot encode {table} {id}: {e}"),
    })?;
    if text.len() > MAX_RECORD_BYTES {
        return Err(StoreError::BadRecord {
            at: at.to_string(),
            what: format!(
                "{table} {id} is {} bytes, over the {MAX_RECORD_BYTES}-byte record limit",
                text.len()
            ),
        });
    }
    // Cached: preparing an INSERT on `record` compiles the rules' trigger programs,
    // which costs more than the write itself.
    tx.prepare_cached(
        "INSERT INTO record (table_name, record_id, data) VALUES (?1, ?2, ?3) \
         ON CONFLICT (table_name, record_id) DO UPDATE SET data = excluded.data",
    )
    .and_then(|mut s| s.execute(params![table, id, text]))
    .map_err(|e| {
        StoreError::sqlite(format!("{at}: writing {table} {id}"), e).for_record(table, id)
    })?;
    Ok(())
}

fn overlay(stored: &mut Map<String, Value>, new: &Map<String, Value>) {
    for (k, v) in new {
        stored.insert(k.clone(), v.clone());
    }
}
