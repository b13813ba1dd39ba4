//! The store's schema over time, and the rules that must be in the file whenever
//! anyone writes it.
//!
//! On every open: pending migrations run in one transaction; then the registry
//! copy and the triggers are compared with this build's. After an upgrade they are
//! rewritten quietly. When they differ otherwise — a trigger dropped, altered, a
//! registry row changed by another program — they are put back, the log says what
//! was wrong, and `status` shows it until a person has seen it: such a change lets
//! a program write what it may not, and its writes meanwhile were not captured.

use rusqlite::params;

use super::{key, rules, views, Store, StoreError};
use crate::legacy::{self, registry, triggers};

/// Schema versions, applied in order on open (`PRAGMA user_version` says how many ran).
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema2.sql"),
    include_str!("schema3.sql"),
    include_str!("schema4.sql"),
];

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

/// Migrates the file from `version`, then makes sure its rules are this build's.
/// How many migrations the file has had (0: not a fieldsync database).
pub(super) fn version(conn: &rusqlite::Connection) -> Result<usize, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| v.max(0) as usize)
        .map_err(|e| StoreError::sqlite("reading the schema version", e))
}

pub(super) fn migrate(store: &mut Store) -> Result<(), StoreError> {
    let version = version(store.conn())?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Schema(format!(
            "{} was written by a newer fieldsync (schema {version}, this build knows {}); upgrade fieldsync",
            store.path().display(),
            MIGRATIONS.len()
        )));
    }
    let fingerprint = fingerprint();
    let upgraded = version < MIGRATIONS.len()
        || store.setting(key::SCHEMA_RULES)?.as_deref() != Some(fingerprint.as_str());
    let problems = if upgraded {
        Vec::new()
    } else {
        let mut p = rules::verify(store.conn())?;
        let mut want = expected_registry();
        want.sort_by(|a, b| (a.5, &a.0).cmp(&(b.5, &b.0)));
        if stored_registry(store.conn())? != want {
            p.push("the registry of tables was changed".into());
        }
        p
    };
    if !upgraded && problems.is_empty() {
        return Ok(());
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
    super::set_setting(tx, key::SCHEMA_RULES, &fingerprint)?;
    if !problems.is_empty() {
        let detail = problems.join("; ");
        log::error!(
            "another program changed fieldsync's rules in {} ({detail}); they are restored. \
             Writes made meanwhile were not checked or queued: find the program and stop it",
            path.display()
        );
        let count = super::get_setting(tx, key::RULES_REPAIRED)?
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0);
        let note = serde_json::json!({
            "count": count + 1,
            "detail": detail,
            "unix": crate::clock::now_unix(),
        });
        super::set_setting(tx, key::RULES_REPAIRED, &note.to_string())?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(|e| StoreError::sqlite("user_version", e))?;
    migration.commit()
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
