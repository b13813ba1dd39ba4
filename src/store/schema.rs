//! The store's schema over time, and the rules that must be in the shared file
//! whenever anyone writes it.
//!
//! Which schema the shared file has is the state file's to say
//! (`shared_schema`), never the shared file's own `user_version`, which any
//! program may set (an app's own migrations commonly do, issue 26): the
//! `user_version` is read once, when a file from before the state file is
//! first opened, and written only so that an older fieldsync refuses the file.
//!
//! On every open: pending migrations run; then the registry copy, the
//! triggers, the views and the `record` table's own definition are compared
//! with this build's — all of them, every time, not a fingerprint another
//! program could copy. After an upgrade they are rewritten quietly. When they
//! differ otherwise — a trigger dropped, altered, re-created; a view replaced; a
//! registry row changed; the CHECK taken off `record` — they are put back, the
//! log says what was wrong, and `status` shows it until a person has seen it:
//! such a change lets a program write what it may not, and what it wrote
//! meanwhile is found by the next record check (`store::check`).

use rusqlite::{params, OptionalExtension};

use super::{key, rules, state, views, Store, StoreError};
use crate::legacy::{self, registry, triggers};

/// Schema versions, applied in order on open (`PRAGMA user_version` says how many ran).
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema2.sql"),
    include_str!("schema3.sql"),
    include_str!("schema4.sql"),
    include_str!("schema5.sql"),
];

/// The first schema with the state file apart (issue 26).
const STATE_APART: usize = 5;

/// The `record` table as schema 3 made it: the CHECK every writer meets. One
/// taken off (`writable_schema`) is a rule removed.
const RECORD_DDL_CHECK: &str =
    "coalesce(json_type(data, '$.ID') = 'text' AND json_extract(data, '$.ID') = record_id, 0)";

/// What this build installs: the registry and the trigger text, fingerprinted.
fn fingerprint() -> String {
    let text: String = triggers::all()
        .into_iter()
        .map(|(_, s)| s)
        .chain(views::views().into_iter().map(|(_, s)| s))
        .collect();
    let h = legacy::fnv1a(legacy::FNV_START, text.as_bytes());
    format!("{:x}-{h:x}", registry::fingerprint())
}

type RegistryRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

fn expected_registry() -> Vec<RegistryRow> {
    registry::tables()
        .map(|t| {
            let (owner, parent, parent_field) = match t.owner {
                registry::Owner::None => (None, None, None),
                registry::Owner::Field(f) => (Some(f), None, None),
                registry::Owner::Parent {
                    field,
                    table,
                    parent_field,
                } => (Some(field), Some(table), Some(parent_field)),
            };
            (
                t.name.to_string(),
                t.kind.sql_name().to_string(),
                owner.map(str::to_string),
                parent.map(str::to_string),
                parent_field.map(str::to_string),
                i64::from(t.order),
            )
        })
        .collect()
}

fn stored_registry(conn: &rusqlite::Connection) -> Result<Vec<RegistryRow>, StoreError> {
    let err = |e| StoreError::sqlite("reading the registry", e);
    let mut stmt = conn
        .prepare(
            "SELECT table_name, kind, owner_field, parent_table, parent_field, rank FROM registry \
             ORDER BY rank, table_name",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .map_err(err)?;
    rows.collect::<Result<_, _>>().map_err(err)
}

/// Whether a connection's file holds fieldsync's tables.
pub(super) fn is_fieldsync(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) = 3 FROM sqlite_master WHERE type = 'table' \
         AND name IN ('record', 'outbox', 'registry')",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite("reading the schema", e))
}

/// Whether the shared file has this build's schema (as far as it can be told
/// without the state file: its tables).
pub(super) fn is_current(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'record_check')",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite("reading the schema", e))
}

/// Which schema the shared file has: the state file says, once it knows;
/// before that (a file from before the state file) the shared file's own
/// `user_version`, and for a file without fieldsync's tables, none.
fn shared_version(store: &Store) -> Result<usize, StoreError> {
    if let Some(v) = state::get(store.agent(), key::SHARED_SCHEMA)? {
        return v
            .parse()
            .map_err(|_| StoreError::Schema(format!("the state file says schema {v:?}")));
    }
    if !is_fieldsync(store.conn())? {
        return Ok(0);
    }
    let v: i64 = store
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("reading the schema version", e))?;
    Ok(v.clamp(1, STATE_APART as i64 - 1) as usize)
}

/// Migrates both files, then makes sure the shared file's rules are this build's.
pub(super) fn migrate(store: &mut Store) -> Result<(), StoreError> {
    store
        .agent()
        .execute_batch(include_str!("schema_agent.sql"))
        .map_err(|e| StoreError::sqlite("setting up the state file", e))?;
    let version = shared_version(store)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Schema(format!(
            "{} was written by a newer fieldsync (schema {version}, this build knows {}); upgrade fieldsync",
            store.path().display(),
            MIGRATIONS.len()
        )));
    }
    if version > 0 && version < STATE_APART {
        move_state_out(store)?;
    }
    let fingerprint = fingerprint();
    let upgraded = version < MIGRATIONS.len()
        || state::get(store.agent(), key::SCHEMA_RULES)?.as_deref() != Some(fingerprint.as_str());
    let problems = if upgraded {
        Vec::new()
    } else {
        rules_problems(store.conn())?
    };
    if !upgraded && problems.is_empty() {
        return Ok(());
    }
    if version > 0 && version < STATE_APART {
        // The record checks need the state file's key.
        store.check_key = super::check::Key::load(store.agent())?;
    }
    let path = store.path().to_path_buf();
    let migration = store.tx()?;
    let tx = migration.conn();
    // Retired and current triggers go first: an old schema's tables are rebuilt
    // below, and their triggers must not fire during the copy.
    rules::drop_all(tx)?;
    views::drop_all(tx)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::sqlite(format!("migration {}", i + 1), e))?;
    }
    if version > 0 && version < STATE_APART {
        let n = super::check::fill(&migration)?;
        log::info!("upgrade: {n} record(s) noted as synced for the record checks");
    }
    tx.execute("DELETE FROM registry", [])
        .map_err(|e| StoreError::sqlite("registry", e))?;
    for (name, kind, owner, parent, parent_field, rank) in expected_registry() {
        tx.execute(
            "INSERT INTO registry VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, kind, owner, parent, parent_field, rank],
        )
        .map_err(|e| StoreError::sqlite("registry", e))?;
    }
    rules::create_all(tx)?;
    views::create_all(tx)?;
    if !problems.is_empty() {
        let detail = problems.join("; ");
        log::error!(
            "another program changed fieldsync's rules in {} ({detail}); they are restored. \
             What it wrote meanwhile is checked at the next sync",
            path.display()
        );
        let count = state::get(migration.agent(), key::RULES_REPAIRED)?
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0);
        let note = serde_json::json!({
            "count": count + 1,
            "detail": detail,
            "unix": crate::clock::now_unix(),
        });
        migration.set_state(key::RULES_REPAIRED, &note.to_string())?;
    }
    // For an older fieldsync, which reads this: a newer schema, not its own.
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(|e| StoreError::sqlite("user_version", e))?;
    migration.set_state(key::SHARED_SCHEMA, &MIGRATIONS.len().to_string())?;
    migration.set_state(key::SCHEMA_RULES, &fingerprint)?;
    migration.commit()
}

/// What differs between the shared file's rules and this build's: triggers,
/// views, the registry copy, the `record` table's CHECK.
fn rules_problems(conn: &rusqlite::Connection) -> Result<Vec<String>, StoreError> {
    let mut p = rules::verify(conn)?;
    p.extend(views::verify(conn)?);
    let mut want = expected_registry();
    want.sort_by(|a, b| (a.5, &a.0).cmp(&(b.5, &b.0)));
    if stored_registry(conn)? != want {
        p.push("the registry of tables was changed".into());
    }
    let ddl: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'record'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| StoreError::sqlite("reading the schema", e))?;
    if !ddl.is_some_and(|d| d.contains(RECORD_DDL_CHECK)) {
        // It cannot be put back by rewriting triggers: the table must be
        // rebuilt, which this build does not do behind a person's back.
        p.push("the record table's CHECK was taken off (writable_schema)".into());
    }
    Ok(p)
}

/// Issue 26: the agent's state moves out of the shared file into the state
/// file, committed there first; the shared file's copies go with the
/// migration that follows (a cut between the two repeats this harmlessly:
/// rows already moved are kept).
fn move_state_out(store: &mut Store) -> Result<(), StoreError> {
    let err = |e| StoreError::sqlite("moving the agent's state into its own file", e);
    let rows = store.legacy_settings()?;
    let main_has = |t: &str| -> Result<bool, StoreError> {
        store
            .conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [t],
                |r| r.get(0),
            )
            .map_err(err)
    };
    let (buffer, bundles) = (main_has("buffer")?, main_has("bundle_sent")?);
    let agent = store.agent();
    let tx = agent.unchecked_transaction().map_err(err)?;
    if rows.contains_key(key::PASSWORD_DIGEST) {
        tx.execute(
            "INSERT OR IGNORE INTO state (key, value) VALUES (?1, '1')",
            [key::DIGEST_TO_MOVE],
        )
        .map_err(err)?;
    }
    for k in key::MOVED_TO_STATE {
        if let Some(v) = rows.get(*k) {
            tx.execute(
                "INSERT OR IGNORE INTO state (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(err)?;
        }
    }
    let main = store.conn();
    let counters: Vec<(String, i64)> = main
        .prepare("SELECT name, value FROM counter WHERE name <> 'outbox_seq'")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(err)?;
    for (name, value) in counters {
        tx.execute(
            "INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE \
             SET value = max(counter.value, excluded.value)",
            params![name, value],
        )
        .map_err(err)?;
    }
    if buffer {
        let mut read = main
            .prepare(
                "SELECT table_name, record_id, merge_drop, action, data, rank, received, state, error, attempts \
                 FROM buffer",
            )
            .map_err(err)?;
        let mut rows = read.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let v: Vec<rusqlite::types::Value> = (0..10)
                .map(|i| r.get(i))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            tx.execute(
                "INSERT OR IGNORE INTO buffer (table_name, record_id, merge_drop, action, data, rank, received, \
                 state, error, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params_from_iter(v),
            )
            .map_err(err)?;
        }
    }
    if bundles {
        for (table, cols) in [
            ("bundle_sent", "bundle, seq"),
            ("bundle_ack", "sync_out_id, bundle"),
        ] {
            let mut read = main
                .prepare(&format!("SELECT {cols} FROM {table}"))
                .map_err(err)?;
            let mut rows = read.query([]).map_err(err)?;
            while let Some(r) = rows.next().map_err(err)? {
                let (a, b): (rusqlite::types::Value, rusqlite::types::Value) =
                    (r.get(0).map_err(err)?, r.get(1).map_err(err)?);
                tx.execute(
                    &format!("INSERT OR IGNORE INTO {table} ({cols}) VALUES (?1, ?2)"),
                    params![a, b],
                )
                .map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)?;
    // The shared file keeps only what the triggers read and the copies for apps.
    let keep = [
        key::ACTIVE_STORE,
        key::HOLD_TRANSACTIONS,
        key::LAST_ATTEMPT,
        key::LAST_SUCCESS,
    ];
    let moved: Vec<&str> = key::MOVED_TO_STATE
        .iter()
        .copied()
        .filter(|k| !keep.contains(k))
        .collect();
    store.forget_legacy_settings(&moved)
}

/// Puts the shared file's copies of what the triggers read (the active store,
/// the dispensary hold) back to the state file's values, whatever another
/// program set them to meanwhile.
pub(super) fn restore_trigger_inputs(store: &mut Store) -> Result<(), StoreError> {
    let active = state::get(store.agent(), key::ACTIVE_STORE)?;
    let hold = state::get(store.agent(), key::HOLD_TRANSACTIONS)?;
    let rows = store.legacy_settings()?;
    let differs = |k: &str, v: &Option<String>| rows.get(k) != v.as_ref();
    if !differs(key::ACTIVE_STORE, &active) && !differs(key::HOLD_TRANSACTIONS, &hold) {
        return Ok(());
    }
    if store.path().as_os_str() != ":memory:" && rows.contains_key(key::ACTIVE_STORE) {
        log::warn!(
            "another program changed what the rules read in {} (the active store or the dispensary hold); \
             put back",
            store.path().display()
        );
    }
    let tx = store.tx()?;
    for (k, v) in [(key::ACTIVE_STORE, active), (key::HOLD_TRANSACTIONS, hold)] {
        match v {
            Some(v) => super::set_setting(tx.conn(), k, &v)?,
            None => {
                tx.conn()
                    .execute("DELETE FROM setting WHERE key = ?1", [k])
                    .map_err(|e| StoreError::sqlite("restoring a setting", e))?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_2_file_upgrades_and_sets_bad_rows_aside() {
        let tmp = crate::testkit::tempdir::TempDir::new("schema");
        let dir = tmp.path();
        let path = dir.join("v2.sqlite");
        let _ = std::fs::remove_file(&path);
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.execute_batch(
                r#"PRAGMA user_version = 2;
                INSERT INTO setting VALUES ('active_store_id', 'S');
                INSERT INTO record VALUES ('transact', 'T1', '{"ID":"T1","store_ID":"S"}', 'local');
                INSERT INTO record VALUES ('transact', 'T2', '{"store_ID":"S"}', 'local');
                INSERT INTO record VALUES ('item', 'I1', '{"ID":"I1"}', 'sync');
                INSERT INTO outbox VALUES ('transact', 'T1', 1, 'Update', 1, 'pending', NULL, 8);
                INSERT INTO outbox VALUES ('transact', 'T2', 2, 'Update', 1, 'pending', NULL, 8);"#,
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let q: Vec<(String, String)> = s
            .conn()
            .prepare("SELECT record_id, reason FROM record_quarantine")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, "T2");
        let states: Vec<(String, String)> = s
            .conn()
            .prepare("SELECT record_id, state FROM outbox ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            states,
            [
                ("T1".into(), "pending".into()),
                ("T2".into(), "rejected".into())
            ],
            "never pushed as a delete of a row that only failed to move"
        );
        let local: Vec<String> = s
            .conn()
            .prepare("SELECT record_id FROM local_edit")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(local, ["T1"]);
        assert_eq!(rules::verify(s.conn()).unwrap(), Vec::<String>::new());
    }
}
