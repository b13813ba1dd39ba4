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
mod local;
pub mod modes;
pub mod outbox;
pub mod registry;
pub mod row;
pub mod rules;
mod schema;
pub mod views;

pub use error::StoreError;
pub use local::{put_local, validate_record};
pub use schema::RULES_REPAIRED;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

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

#[cfg(test)]
mod tests;
