//! The local store: one SQLite file holding this site's records, settings, outbox
//! and sync buffer (schema in `schema.sql`, rules in `triggers.sql`).
//!
//! What must hold: every local write is checked and captured by SQLite triggers
//! ([`rules`]), so the clinic's app writing the file directly obeys the same rules
//! as our CLI; the sync's own writes go through [`Store::without_rules`], a
//! transaction that no other connection sees without the triggers. The file is shared: WAL mode lets readers (the
//! `status` command, the app) run beside a writer, and a busy timeout makes writers
//! wait their turn instead of failing.

pub mod buffer;
mod error;
pub mod modes;
pub mod outbox;
pub mod registry;
pub mod row;
pub mod rules;
mod schema;
pub mod views;

pub use error::StoreError;
pub use schema::RULES_REPAIRED;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};

/// How long a writer waits for the clinic's app (or a `status` reader) to release
/// the database before giving up. Defaults to 30 s: long enough for an app's bulk
/// save, short enough that a stuck lock is reported within a sync.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The busy timeout in force: `FIELDSYNC_BUSY_TIMEOUT_MS` overrides the default
/// (a deployer whose app holds long transactions; tests).
pub fn busy_timeout() -> Duration {
    std::env::var("FIELDSYNC_BUSY_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(BUSY_TIMEOUT)
}

/// Largest record the store accepts (serialised JSON); see [`row::MAX_ROW_BYTES`].
pub const MAX_RECORD_BYTES: usize = row::MAX_ROW_BYTES;

/// Settings keys. Kept in one place: the status command and tests read them too.
pub mod key {
    pub const CENTRAL_URL: &str = "central_url";
    pub const SITE_NAME: &str = "site_name";
    /// Where older fieldsync kept the password digest; read only to move it out
    /// (`agent::credential::migrate`), never written.
    pub const PASSWORD_DIGEST: &str = "password_digest";
    pub const CREDENTIAL_FILE: &str = "credential_file";
    pub const PROGRESS_SECS: &str = "progress_secs";
    pub const DNS: &str = "dns";
    pub const HARDWARE_ID: &str = "hardware_id";
    pub const ALLOW_HTTP: &str = "allow_insecure_http";
    /// Site record id, `siteId` and central's id learned on first contact.
    pub const SITE_UUID: &str = "site_uuid";
    pub const SITE_ID: &str = "site_id";
    pub const CENTRAL_SITE_ID: &str = "central_site_id";
    /// The one active store; the ownership triggers read this key.
    pub const ACTIVE_STORE: &str = "active_store_id";
    pub const INIT_STATE: &str = "init_state";
    /// Central-records cursor (§5 step 5) and the `maxCursor` last seen.
    pub const CURSOR: &str = "central_cursor";
    pub const CENTRAL_MAX_CURSOR: &str = "central_max_cursor";
    /// The adaptive pull page size (§9.3), kept between cycles.
    pub const PULL_LIMIT: &str = "pull_limit";
    /// What the central said of gzip request bodies (§9.1): advertised, refused.
    pub const CENTRAL_GZIP: &str = "central_gzip";
    /// "1" while the active dispensary store keeps its transactions here (§9.7);
    /// the capture triggers read it.
    pub const HOLD_TRANSACTIONS: &str = "hold_transactions";
    pub const BATCH_RECORDS: &str = "batch_records";
    pub const BATCH_BYTES: &str = "batch_bytes";
    pub const INTEGRATION_WAIT: &str = "integration_wait_secs";
    pub const INIT_POLL: &str = "init_poll_secs";
    pub const RETRY_BASE: &str = "retry_base_ms";
    pub const CA_FILE: &str = "ca_file";
    pub const LED: &str = "led";
    pub const ATTENTION_LED: &str = "attention_led";
    /// The last finished attempt (JSON) and the last success (unix seconds, display only).
    pub const LAST_ATTEMPT: &str = "last_attempt";
    pub const LAST_SUCCESS: &str = "last_success";
    /// Attempts since the last success (clock-free; the fleet metrics show it).
    pub const ATTEMPTS_SINCE_SUCCESS: &str = "attempts_since_success";
    /// Where the fleet metrics file goes; unset: none is written.
    pub const METRICS_FILE: &str = "metrics_file";
    /// The last bundle written and read (USB sync), for `status`.
    pub const BUNDLE_OUT: &str = "bundle_out";
    pub const BUNDLE_IN: &str = "bundle_in";
    /// Fingerprint of the registry and triggers this file was migrated with.
    pub const SCHEMA_RULES: &str = "schema_rules";
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Where the database lives when `--db` is not given: systemd's state directory
/// when the service runs under it, else the working directory.
pub fn default_path() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        Some(dirs) if !dirs.is_empty() => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            Path::new(&first).join("fieldsync.sqlite")
        }
        _ => PathBuf::from("fieldsync.sqlite"),
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        modes::guard_database(path)
            .map_err(|e| StoreError::Io(format!("creating {}", path.display()), e))?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::sqlite(format!("opening {}", path.display()), e))?;
        Store::setup(conn, path.to_path_buf())
    }

    /// Opens (and migrates) the store at `path`, which must exist: every command
    /// but `init` works on a configured database.
    pub fn open_configured(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Store::open(path)
    }

    /// Opens an existing store without creating or migrating it, for readers such as
    /// `status` that must never take the write lock.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| StoreError::sqlite(format!("opening {}", path.display()), e))?;
        conn.busy_timeout(busy_timeout())
            .map_err(|e| StoreError::sqlite("busy timeout", e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        let version: i64 = store.pragma_i64("user_version")?;
        if version == 0 {
            return Err(StoreError::Schema(format!(
                "{} is not a fieldsync database",
                path.display()
            )));
        }
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn =
            Connection::open_in_memory().map_err(|e| StoreError::sqlite("opening memory db", e))?;
        Store::setup(conn, PathBuf::from(":memory:"))
    }

    fn setup(conn: Connection, path: PathBuf) -> Result<Store, StoreError> {
        conn.busy_timeout(busy_timeout())
            .map_err(|e| StoreError::sqlite("busy timeout", e))?;
        // WAL: the clinic's app and `status` read while a sync writes. FULL: a
        // commit is on the card before we tell the central anything (ack, cursor).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| StoreError::sqlite(format!("setting WAL on {}", path.display()), e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| StoreError::sqlite("synchronous", e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| StoreError::sqlite("foreign_keys", e))?;
        let mut store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    fn pragma_i64(&self, name: &str) -> Result<i64, StoreError> {
        self.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite(format!("reading {name}"), e))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version = self.pragma_i64("user_version")? as usize;
        schema::migrate(self, version)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A write transaction that takes the write lock at once (no upgrade deadlocks
    /// against the clinic's app).
    pub fn tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite("starting a transaction", e))
    }

    // ---- settings -------------------------------------------------------------

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        get_setting(&self.conn, key)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set_setting(&self.conn, key, value)
    }

    pub fn unset_setting(&self, key: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM setting WHERE key = ?1", [key])
            .map(|n| n > 0)
            .map_err(|e| StoreError::sqlite(format!("removing setting {key}"), e))
    }

    /// Every stored setting row.
    pub fn settings(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let err = |e| StoreError::sqlite("reading settings", e);
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM setting")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    pub fn active_store(&self) -> Result<Option<String>, StoreError> {
        self.setting(key::ACTIVE_STORE)
    }

    /// A setting that holds a whole number (cursors, counters); absent is `None`.
    pub fn number(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.setting(key)? {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                StoreError::Schema(format!("setting {key} holds {v:?}, not a whole number"))
            }),
        }
    }

    /// §9.7: a dispensary store whose "include transactions in sync" preference
    /// is off keeps its transactions, stock and stocktakes on the site. Reads the
    /// active store's row and preferences, keeps the answer where the capture
    /// triggers read it, and when the preference turns on again releases what was
    /// held (in its push order, which `seq` kept). Returns what changed:
    /// `Some(true)` now holding, `Some(false)` released (with the count).
    pub fn refresh_hold(&mut self) -> Result<Option<(bool, u64)>, StoreError> {
        let Some(active) = self.active_store()?.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let err = |e| StoreError::sqlite("reading the dispensary preference", e);
        let hold: bool = self
            .conn
            .query_row(
                "SELECT coalesce((SELECT json_extract(data, '$.store_mode') FROM record \
                                  WHERE table_name = 'store' AND record_id = ?1) = 'dispensary', 0) \
                    AND EXISTS (SELECT 1 FROM record WHERE table_name = 'pref' \
                                AND json_extract(data, '$.store_ID') = ?1 \
                                AND json_extract(data, '$.item') = 'store_preferences' \
                                AND lower(CAST(json_extract(data, '$.data.sync_include_transactions') AS TEXT)) \
                                    IN ('0', 'false', 'no'))",
                [&active],
                |r| r.get(0),
            )
            .map_err(err)?;
        let was = self.setting(key::HOLD_TRANSACTIONS)?.as_deref() == Some("1");
        if hold == was {
            return Ok(None);
        }
        let tx = self.tx()?;
        set_setting(&tx, key::HOLD_TRANSACTIONS, if hold { "1" } else { "0" })?;
        let released = if hold {
            0
        } else {
            tx.execute(
                "UPDATE outbox SET state = 'pending' WHERE state = 'held'",
                [],
            )
            .map_err(|e| StoreError::sqlite("releasing held records", e))? as u64
        };
        tx.commit()
            .map_err(|e| StoreError::sqlite("saving the dispensary preference", e))?;
        Ok(Some((hold, released)))
    }

    /// Stores whose `sync_id_remote_site` is `site_id` (a number on the wire; a
    /// string is tolerated).
    pub fn stores_active_on(&self, site_id: u32) -> Result<Vec<String>, StoreError> {
        let err = |e| StoreError::sqlite("finding the active store", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT record_id FROM record WHERE table_name = 'store' \
                 AND CAST(json_extract(data, '$.sync_id_remote_site') AS INTEGER) = ?1 ORDER BY record_id",
            )
            .map_err(err)?;
        let rows = stmt.query_map([site_id], |r| r.get(0)).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Sets the site identity as the first sync would. Internal API for tests and
    /// for the `dev set-identity` command; a real site learns it from the central.
    pub fn set_site_identity(
        &mut self,
        site_id: u32,
        active_store: &str,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        set_setting(&tx, key::SITE_ID, &site_id.to_string())?;
        set_setting(&tx, key::ACTIVE_STORE, active_store)?;
        set_setting(&tx, key::INIT_STATE, "initialised")?;
        tx.commit()
            .map_err(|e| StoreError::sqlite("saving site identity", e))
    }

    // ---- records --------------------------------------------------------------

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        get_record(&self.conn, table, id)
    }

    /// Writes a record as a local edit: keys given overlay the stored row (unknown
    /// keys survive, §7.2), the triggers check ownership and capture the change.
    pub fn put(&mut self, table: &str, row: &Value) -> Result<(), StoreError> {
        let tx = self.tx()?;
        put_local(&tx, table, row, "record")?;
        tx.commit()
            .map_err(|e| StoreError::sqlite("committing record", e))
    }

    /// Deletes a record as a local edit. Returns whether it existed.
    pub fn delete(&mut self, table: &str, id: &str) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let n = tx
            .execute(
                "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
                params![table, id],
            )
            .map_err(|e| StoreError::sqlite("deleting record", e).for_record(table, id))?;
        tx.commit()
            .map_err(|e| StoreError::sqlite("committing delete", e))?;
        Ok(n > 0)
    }

    /// Streams the records of `table` (all tables when `None`) in id order.
    pub fn for_each_record(
        &self,
        table: Option<&str>,
        mut f: impl FnMut(&str, &str) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT table_name, data FROM record WHERE ?1 IS NULL OR table_name = ?1 \
                 ORDER BY table_name, record_id",
            )
            .map_err(|e| StoreError::sqlite("listing records", e))?;
        let mut rows = stmt
            .query([table])
            .map_err(|e| StoreError::sqlite("listing records", e))?;
        let mut n = 0;
        while let Some(row) = rows
            .next()
            .map_err(|e| StoreError::sqlite("listing records", e))?
        {
            let t: String = row
                .get(0)
                .map_err(|e| StoreError::sqlite("listing records", e))?;
            let d: String = row
                .get(1)
                .map_err(|e| StoreError::sqlite("listing records", e))?;
            f(&t, &d)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn count_records(&self, table: Option<&str>) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM record WHERE ?1 IS NULL OR table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::sqlite("counting records", e))
    }

    /// Runs `f` inside one transaction with the rules switched off for this
    /// connection alone ([`rules::set_enabled`]): writes pass the ownership checks
    /// and are not captured (nothing received is echoed). Every other connection
    /// meets the rules all along; on error everything rolls back.
    pub fn without_rules<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.tx_unruled()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`Store::without_rules`] as a value: a write transaction with this
    /// connection's rules off, for a step that writes received data between
    /// network reads (a pull page). The rules come back on when it commits or is
    /// dropped.
    pub fn tx_unruled(&mut self) -> Result<Unruled<'_>, StoreError> {
        let u = self.tx_unruled_lazily()?;
        u.unrule()?;
        Ok(u)
    }

    /// [`Store::tx_unruled`] that switches the rules off only when
    /// [`Unruled::unrule`] is first called.
    pub fn tx_unruled_lazily(&mut self) -> Result<Unruled<'_>, StoreError> {
        Ok(Unruled {
            tx: Some(self.tx()?),
            off: std::cell::Cell::new(false),
        })
    }
}

/// A transaction of the agent's own writes of received data: see
/// [`Store::tx_unruled`].
pub struct Unruled<'a> {
    tx: Option<Transaction<'a>>,
    off: std::cell::Cell<bool>,
}

impl Unruled<'_> {
    /// Switches the rules off for this connection, once, before the first write
    /// of received data.
    pub fn unrule(&self) -> Result<(), StoreError> {
        if !self.off.get() {
            rules::set_enabled(self, false)?;
            self.off.set(true);
        }
        Ok(())
    }

    pub fn commit(mut self) -> Result<(), StoreError> {
        let tx = self.tx.take().expect("committed once");
        if self.off.replace(false) {
            rules::set_enabled(&tx, true)?;
        }
        tx.commit()
            .map_err(|e| StoreError::sqlite("committing sync writes", e))
    }
}

impl Drop for Unruled<'_> {
    /// Rolled back (an error, a cut link): the rules come back on for this
    /// connection all the same.
    fn drop(&mut self) {
        if self.off.get() {
            if let Some(tx) = &self.tx {
                if let Err(e) = rules::set_enabled(tx, true) {
                    log::error!("{e}");
                }
            }
        }
    }
}

impl<'a> std::ops::Deref for Unruled<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Transaction<'a> {
        self.tx.as_ref().expect("not yet committed")
    }
}

pub fn get_setting(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT value FROM setting WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| StoreError::sqlite(format!("reading setting {key}"), e))
}

/// Saves a setting; an unchanged value writes nothing (the SD card is the budget:
/// an idle sync must not rewrite pages to say what they already say).
pub fn set_setting(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO setting (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value \
         WHERE value IS NOT excluded.value",
        params![key, value],
    )
    .map(|_| ())
    .map_err(|e| StoreError::sqlite(format!("saving setting {key}"), e))
}

pub fn get_record(conn: &Connection, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2")
        .and_then(|mut st| st.query_row(params![table, id], |r| r.get(0)).optional())
        .map_err(|e| StoreError::sqlite("reading record", e))?;
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| StoreError::Schema(format!("stored {table} {id} is not JSON: {e}"))),
    }
}

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
pub fn put_local(tx: &Connection, table: &str, row: &Value, at: &str) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn initialised() -> Store {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(12, "S_KAW").unwrap();
        s
    }

    fn outbox(s: &Store) -> Vec<(String, String, String, i64)> {
        let mut stmt = s
            .conn()
            .prepare("SELECT table_name, record_id, action, version FROM outbox ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn before_initialisation_only_local_data_is_writable() {
        let mut s = Store::open_in_memory().unwrap();
        let e = s
            .put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
            .unwrap_err();
        assert!(e.to_string().contains("site not initialised"), "{e}");
        assert!(e.to_string().contains("transact T1"), "{e}");
        s.put("number", &json!({"ID": "N1", "value": 3})).unwrap();
        assert!(outbox(&s).is_empty(), "local data is never captured");
    }

    #[test]
    fn own_store_data_is_captured_others_refused() {
        let mut s = initialised();
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S_KAW", "invoice_num": 1}),
        )
        .unwrap();
        let e = s
            .put("transact", &json!({"ID": "T2", "store_ID": "S_OTHER"}))
            .unwrap_err();
        assert!(e.to_string().contains("belongs to another store"), "{e}");
        let e = s
            .put("item", &json!({"ID": "I1", "name": "Paracetamol"}))
            .unwrap_err();
        assert!(e.to_string().contains("central data is read-only"), "{e}");
        let e = s.put("store", &json!({"ID": "S_KAW"})).unwrap_err();
        assert!(e.to_string().contains("central data is read-only"), "{e}");
        let e = s.put("mystery", &json!({"ID": "X"})).unwrap_err();
        assert!(e.to_string().contains("unknown table"), "{e}");
        assert_eq!(
            outbox(&s),
            vec![("transact".into(), "T1".into(), "Update".into(), 1)]
        );
    }

    #[test]
    fn lines_follow_their_parent() {
        let mut s = initialised();
        s.put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
            .unwrap();
        s.put("trans_line", &json!({"ID": "L1", "transaction_ID": "T1"}))
            .unwrap();
        let e = s
            .put("trans_line", &json!({"ID": "L2", "transaction_ID": "NOPE"}))
            .unwrap_err();
        assert!(e.to_string().contains("belongs to another store"), "{e}");
    }

    #[test]
    fn an_edit_cannot_take_over_or_give_away() {
        let mut s = initialised();
        s.without_rules(|tx| {
            tx.execute(
                "INSERT INTO record (table_name, record_id, data, origin) VALUES \
                 ('transact', 'F1', '{\"ID\":\"F1\",\"store_ID\":\"S_OTHER\"}', 'sync')",
                [],
            )
            .map_err(|e| StoreError::sqlite("t", e))?;
            Ok(())
        })
        .unwrap();
        assert!(outbox(&s).is_empty(), "sync writes are not captured");
        let e = s
            .put("transact", &json!({"ID": "F1", "store_ID": "S_KAW"}))
            .unwrap_err();
        assert!(e.to_string().contains("another store"), "{e}");
        s.put("transact", &json!({"ID": "T1", "store_ID": "S_KAW"}))
            .unwrap();
        let e = s
            .put("transact", &json!({"ID": "T1", "store_ID": "S_OTHER"}))
            .unwrap_err();
        assert!(e.to_string().contains("another store"), "{e}");
        assert!(s.delete("transact", "F1").is_err());
    }

    #[test]
    fn outbox_keeps_one_entry_with_the_latest_action() {
        let mut s = initialised();
        for i in 0..10 {
            s.put(
                "transact",
                &json!({"ID": "T1", "store_ID": "S_KAW", "comment": i.to_string()}),
            )
            .unwrap();
        }
        assert_eq!(
            outbox(&s),
            vec![("transact".into(), "T1".into(), "Update".into(), 10)]
        );
        s.put("transact", &json!({"ID": "T2", "store_ID": "S_KAW"}))
            .unwrap();
        assert!(s.delete("transact", "T2").unwrap());
        let o = outbox(&s);
        assert_eq!(o[1], ("transact".into(), "T2".into(), "Delete".into(), 2));
        // An identical rewrite is not a change.
        s.put("transact", &json!({"ID": "T1", "comment": "9"}))
            .unwrap();
        assert_eq!(outbox(&s)[0].3, 10);
    }

    #[test]
    fn overlay_keeps_unknown_keys() {
        let mut s = initialised();
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S_KAW", "om_extra": {"a": 1}}),
        )
        .unwrap();
        s.put("transact", &json!({"ID": "T1", "comment": "x"}))
            .unwrap();
        let row = s.get("transact", "T1").unwrap().unwrap();
        assert_eq!(row["om_extra"], json!({"a": 1}));
        assert_eq!(row["comment"], "x");
    }

    #[test]
    fn patients_messages_and_joins() {
        let mut s = initialised();
        s.put(
            "name",
            &json!({"ID": "P1", "type": "patient", "supplying_store_id": "S_KAW"}),
        )
        .unwrap();
        let e = s
            .put(
                "name",
                &json!({"ID": "P2", "type": "patient", "supplying_store_id": "S_X"}),
            )
            .unwrap_err();
        assert!(e.to_string().contains("another store"), "{e}");
        let e = s
            .put("name", &json!({"ID": "P1", "type": "customer"}))
            .unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        s.put(
            "name_store_join",
            &json!({"ID": "J1", "name_ID": "P1", "store_ID": "S_KAW"}),
        )
        .unwrap();
        let e = s
            .put(
                "name_store_join",
                &json!({"ID": "J2", "name_ID": "C1", "store_ID": "S_KAW"}),
            )
            .unwrap_err();
        assert!(e.to_string().contains("name_store_join"), "{e}");
        s.put(
            "message",
            &json!({"ID": "M1", "fromStoreID": "S_KAW", "toStoreID": "S_X", "body": "hi"}),
        )
        .unwrap();
        let e = s
            .put("message", &json!({"ID": "M1", "body": "edited"}))
            .unwrap_err();
        assert!(e.to_string().contains("cannot be edited"), "{e}");
        let e = s
            .put("message", &json!({"ID": "M2", "fromStoreID": "S_X"}))
            .unwrap_err();
        assert!(e.to_string().contains("another store"), "{e}");
    }

    #[test]
    fn bad_records_are_named() {
        let mut s = initialised();
        let e = s
            .put("transact", &json!({"store_ID": "S_KAW"}))
            .unwrap_err();
        assert_eq!(e.to_string(), "record: transact record has no \"ID\" field");
        let e = s.put("transact", &json!({"ID": 5})).unwrap_err();
        assert!(
            e.to_string().contains("must be a string, not number"),
            "{e}"
        );
        let e = s
            .put(
                "transact",
                &json!({"ID": "T", "store_ID": "S_KAW", "invoice_num": "7"}),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("\"invoice_num\" has the wrong type"),
            "{e}"
        );
        let e = s.put("transact", &json!([1])).unwrap_err();
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
        assert_eq!(s.count_records(None).unwrap(), 0);
    }

    #[test]
    fn a_dispensary_keeps_its_transactions_until_the_preference_turns_on() {
        let mut s = initialised();
        let pref = |include: serde_json::Value| {
            json!({"ID": "PREF1", "item": "store_preferences", "store_ID": "S_KAW",
                   "data": {"sync_include_transactions": include}})
        };
        let receive = |s: &mut Store, t: &str, row: serde_json::Value| {
            s.without_rules(|tx| {
                tx.execute(
                    "INSERT INTO record (table_name, record_id, data, origin) VALUES (?1, ?2, ?3, 'sync') \
                     ON CONFLICT DO UPDATE SET data = excluded.data",
                    params![t, row["ID"].as_str().unwrap(), row.to_string()],
                )
                .map_err(|e| StoreError::sqlite("t", e))?;
                Ok(())
            })
            .unwrap();
        };
        receive(
            &mut s,
            "store",
            json!({"ID": "S_KAW", "store_mode": "dispensary"}),
        );
        receive(&mut s, "pref", pref(json!(false)));
        assert_eq!(s.refresh_hold().unwrap(), Some((true, 0)));
        s.put(
            "transact",
            &json!({"ID": "P1", "store_ID": "S_KAW", "type": "ci"}),
        )
        .unwrap();
        s.put("trans_line", &json!({"ID": "PL1", "transaction_ID": "P1"}))
            .unwrap();
        s.put("Location", &json!({"ID": "LOC", "store_ID": "S_KAW"}))
            .unwrap();
        assert_eq!(
            outbox::held_count(s.conn()).unwrap(),
            2,
            "transactions kept here"
        );
        assert_eq!(
            outbox::pending_count(s.conn()).unwrap(),
            1,
            "other store data still syncs"
        );
        receive(&mut s, "pref", pref(json!(true)));
        assert_eq!(s.refresh_hold().unwrap(), Some((false, 2)));
        let mut order = vec![];
        outbox::for_each_pending(s.conn(), 10, |e| {
            order.push(e.id);
            true
        })
        .unwrap();
        assert_eq!(order, ["LOC", "P1", "PL1"], "released in push order");
        assert_eq!(s.refresh_hold().unwrap(), None, "no change, nothing to do");
    }
}
