//! Local records through the store's rules: `put`, `get`, `delete`, `list`,
//! `import`, `queue`, `tables`. Every write goes through the same SQLite triggers
//! as the clinic's app, so the CLI can do nothing an app could not.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde_json::Value;

use crate::error::Class;
use crate::legacy::{registry, row};
use crate::store::check::Dropped;
use crate::store::{self, Store, StoreError};

use super::{CmdResult, Failure};

/// Parses one record given as text. The text itself is checked first (no key
/// twice, depth, size), since a parsed value would silently keep only one of two
/// equal keys.
/// serde's message placed on the one line it read ("at column 12", "at the
/// end of the line"), not at a line number of its own that the import's line
/// number would contradict.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text.split(" at line ").next().unwrap_or(&text);
    if e.line() > 1 || e.is_eof() {
        format!("{what} at the end of the line")
    } else {
        format!("{what} at column {}", e.column())
    }
}

pub fn parse_record(text: &str, at: &str) -> Result<Value, Failure> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Failure::new(Class::Input, format!("{at}: not JSON: {}", json_error(&e))))?;
    if v.is_object() {
        if let Err(
            p @ (row::Problem::DuplicateKey(_) | row::Problem::TooDeep | row::Problem::NotJson(_)),
        ) = row::check(text, None)
        {
            return Err(Failure::new(
                Class::Input,
                format!("{at}: the record {p}; nothing was written"),
            ));
        }
    }
    Ok(v)
}

pub fn put(db: &Path, table: &str, json_text: &str) -> CmdResult {
    if json_text.len() > store::MAX_RECORD_BYTES {
        return Err(Failure::new(
            Class::Input,
            format!(
                "record: over the {}-byte record limit; nothing was written",
                store::MAX_RECORD_BYTES
            ),
        ));
    }
    let row = parse_record(json_text, "record")?;
    let mut store = Store::open_for_records(db)?;
    store.put(table, &row)?;
    Ok(())
}

pub fn get(db: &Path, table: &str, id: &str) -> CmdResult {
    let store = Store::open_for_records(db)?;
    match store.get(table, id)? {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => Err(Failure::new(
            Class::Input,
            format!("no {table} record {id}"),
        )),
    }
}

pub fn delete(db: &Path, table: &str, id: &str) -> CmdResult {
    let mut store = Store::open_for_records(db)?;
    if store.delete(table, id)? {
        Ok(())
    } else {
        Err(Failure::new(
            Class::Input,
            format!("no {table} record {id}"),
        ))
    }
}

pub fn list(db: &Path, table: Option<&str>) -> CmdResult {
    if let Some(t) = table.filter(|t| registry::lookup(t).is_none()) {
        return Err(Failure::new(
            Class::Input,
            format!(
                "there is no table {t:?} (names are case-sensitive); `fieldsync tables` lists them"
            ),
        ));
    }
    let store = Store::open_for_records(db)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    store.for_each_record(table, |t, d| {
        writeln!(out, "{{\"table\":{},\"record\":{d}}}", Value::from(t))
            .map_err(|e| StoreError::Io("writing output".into(), e))
    })?;
    Ok(())
}

/// Bulk import of JSON Lines: `{"table": T, "record": {...}}` per line, or plain
/// records with `--table`. One transaction for the whole file, so a bad line
/// leaves nothing half-written; reading streams line by line, so memory does not
/// grow with the file, and lines are capped at the record limit.
pub fn import(db: &Path, path: &str, table: Option<&str>) -> Result<u64, Failure> {
    let file: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| Failure::new(Class::Input, format!("{path}: {e}")))?,
        )
    };
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut store = Store::open_for_records(db)?;
    let tx = store.tx()?;
    let mut line = Vec::with_capacity(4096);
    let mut n = 0u64;
    let mut lineno = 0u64;
    loop {
        line.clear();
        lineno += 1;
        let at = format!("{path} line {lineno}");
        let read = (&mut reader)
            .take(store::MAX_RECORD_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure::new(Class::Input, format!("{at}: {e}")))?;
        if read == 0 {
            break;
        }
        if line.len() > store::MAX_RECORD_BYTES {
            return Err(Failure::new(
                Class::Input,
                format!(
                    "{at}: line is over the {}-byte record limit; nothing was imported",
                    store::MAX_RECORD_BYTES
                ),
            ));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| Failure::new(Class::Input, format!("{at}: not UTF-8")))?;
        if text.trim().is_empty() {
            continue;
        }
        let v = parse_record(text, &at)?;
        let (t, row) = match table {
            Some(t) => (t.to_string(), v),
            None => {
                let t = v.get("table").and_then(|t| t.as_str()).ok_or_else(|| {
                    Failure::new(
                        Class::Input,
                        format!("{at}: needs {{\"table\": …, \"record\": {{…}}}} (or use --table)"),
                    )
                })?;
                (
                    t.to_string(),
                    v.get("record").cloned().unwrap_or(Value::Null),
                )
            }
        };
        tx.put_local(&t, &row, &at).map_err(|e| {
            let e = e.to_string();
            let e = if e.contains(&at) {
                e
            } else {
                format!("{at}: {e}")
            };
            Failure::new(Class::Input, format!("{e}; nothing was imported"))
        })?;
        n += 1;
    }
    tx.commit()?;
    Ok(n)
}

/// Most entries `fieldsync queue --list` prints.
const QUEUE_LISTED: u64 = 10_000;

pub fn queue(db: &Path, json: bool, list_all: bool, rejected: bool) -> CmdResult {
    let store = Store::open_for_records(db)?;
    let counts = store.outbox_counts()?;
    let (pending, set_aside, held) = (counts.pending, counts.rejected, counts.held);
    let rows = if list_all || rejected {
        store.outbox_list(rejected, QUEUE_LISTED)?
    } else {
        vec![]
    };
    if json {
        let v = serde_json::json!({"pending": pending, "rejected": set_aside, "local_only": held, "records": rows});
        println!("{v}");
    } else {
        println!(
            "{pending} record(s) waiting to be pushed, {set_aside} set aside, {held} local only"
        );
        for r in rows {
            // 'held': a dispensary store's transactions kept here (§9.7).
            let state = if r.state == "held" {
                "local only"
            } else {
                r.state.as_str()
            };
            println!(
                "{:>8} {:<7} {:<10} {} {}{}",
                r.seq,
                r.action,
                state,
                r.table,
                r.id,
                r.reason.map(|x| format!("  ({x})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn queue_retry(db: &Path, only: Option<(&str, &str)>) -> CmdResult {
    let store = Store::open_for_records(db)?;
    let n = store.outbox_retry(only)?;
    println!("{n} record(s) back in the queue");
    Ok(())
}

/// Discards a set-aside change for good, after a person confirmed it: the
/// record goes back to the central's copy (asked for at the next sync) or, if
/// the central never had it, is removed. The agent's own user runs it (the
/// restore list is in its state file).
pub fn queue_drop(db: &Path, table: &str, id: &str, yes: bool) -> CmdResult {
    let mut store = Store::open_configured(db)?;
    let listed = store
        .outbox_list(true, QUEUE_LISTED)?
        .into_iter()
        .find(|r| r.table == table && r.id == id);
    let Some(entry) = listed else {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{table} {id} has no set-aside change to drop (`fieldsync queue --rejected` lists them; a waiting one is still being sent)"
            ),
        ));
    };
    if !yes {
        return Err(Failure::new(
            Class::Input,
            format!(
                "this drops the {} of {table} {id} for good ({}): the central will never get it. Run again with --yes to drop it",
                entry.action,
                entry.reason.as_deref().unwrap_or("set aside")
            ),
        ));
    }
    let dropped = store.drop_set_aside(table, id)?;
    let what = match dropped {
        Some(Dropped::Restore) => "the central's copy is fetched at the next sync",
        Some(Dropped::Deleted) => "the central never had it, so it is removed here",
        Some(Dropped::Nothing) | None => "nothing else to undo",
    };
    log::warn!(
        "a person dropped the set-aside {} of {table} {id} ({}); {what}",
        entry.action,
        entry.reason.as_deref().unwrap_or("set aside")
    );
    println!("dropped {table} {id}: {what}");
    Ok(())
}

/// Lists the registry (for the README and for people writing imports).
pub fn tables() {
    println!("{:<32} {:<16} OWNING STORE", "TABLE", "KIND");
    for t in registry::tables() {
        let owner = match t.owner {
            registry::Owner::None => "-".to_string(),
            registry::Owner::Field(f) => f.to_string(),
            registry::Owner::Parent {
                field,
                table,
                parent_field,
            } => format!("{table}.{parent_field} of the {table} in {field}"),
        };
        println!("{:<32} {:<16} {owner}", t.name, t.kind.sql_name());
    }
}
