//! The local store: one SQLite file holding this site's records, outbox and
//! sync bookkeeping (schema in `schema*.sql`, migrated by [`schema`]).
//!
//! What must hold: every local write is checked and captured by SQLite triggers
//! (generated in [`crate::legacy::triggers`], installed and verified by
//! [`rules`]), so the clinic's app writing the file directly obeys the same
//! rules as our CLI; the sync's own writes of received data go through
//! [`Store::receiving`], a transaction whose connection alone runs without the
//! triggers. The file is shared: WAL mode lets readers (the `status` command,
//! the app) run beside a writer, and a busy timeout makes writers wait their
//! turn instead of failing.
//!
//! Nothing outside this module touches SQL: the layers above get typed
//! operations on [`Store`] and on its transactions ([`Tx`]), each kept beside the
//! tables it reads — [`outbox`], [`buffer`], `received` (applying received
//! records), [`numbering`], [`bundle`] (USB-stick bookkeeping), [`state`].

pub mod buffer;
pub mod bundle;
mod error;
mod local;
pub mod modes;
pub mod numbering;
pub mod outbox;
mod received;
mod rules;
mod schema;
pub mod state;
pub mod views;

pub use error::StoreError;
pub use local::validate_record;
pub use state::{key, InitState};

use std::cell::Cell;
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

/// Largest record the store accepts (serialised JSON); see
/// [`crate::legacy::row::MAX_ROW_BYTES`].
pub const MAX_RECORD_BYTES: usize = crate::legacy::row::MAX_ROW_BYTES;

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
        if schema::version(&store.conn)? == 0 {
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
        schema::migrate(&mut store)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for this module's own files only.
    pub(in crate::store) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A write transaction with the rules on: what it writes is judged and
    /// captured as an app's write would be. It takes the write lock at once
    /// (BEGIN IMMEDIATE: no upgrade deadlock against the clinic's app).
    pub fn tx(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(Tx {
            tx: Some(self.begin()?),
            rules_off: Cell::new(false),
        })
    }

    /// A write transaction for received data: the rules are switched off for
    /// this connection alone ([`rules::set_enabled`]) at its first write of
    /// received data, so those writes pass the ownership checks and are not
    /// captured (nothing received is echoed); every other connection meets the
    /// rules all along. They come back on when it commits or is dropped.
    pub fn receiving(&mut self) -> Result<Tx<'_>, StoreError> {
        self.tx()
    }

    fn begin(&mut self) -> Result<Transaction<'_>, StoreError> {
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
    /// held (in its push order, which `seq` kept). Returns what changed.
    pub fn refresh_hold(&mut self) -> Result<Option<Hold>, StoreError> {
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
        set_setting(
            tx.conn(),
            key::HOLD_TRANSACTIONS,
            if hold { "1" } else { "0" },
        )?;
        let released = if hold {
            0
        } else {
            tx.conn()
                .execute(
                    "UPDATE outbox SET state = 'pending' WHERE state = 'held'",
                    [],
                )
                .map_err(|e| StoreError::sqlite("releasing held records", e))? as u64
        };
        tx.commit()?;
        Ok(Some(if hold {
            Hold::Holding
        } else {
            Hold::Released(released)
        }))
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

    /// Sets the site identity as the first sync would: tests, and the
    /// `dev set-identity` command of test builds. A real site learns it from
    /// the central.
    #[cfg(any(test, feature = "testkit"))]
    pub fn set_site_identity(
        &mut self,
        site_id: u32,
        active_store: &str,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.set(key::SITE_ID, &site_id.to_string())?;
        tx.set(key::ACTIVE_STORE, active_store)?;
        tx.set(key::INIT_STATE, InitState::Initialised.as_str())?;
        tx.commit()
    }

    /// Empties records, outbox, buffer and their marks, keeping the schema and
    /// settings: a fuzzer or bench reuses one store between inputs.
    #[cfg(feature = "testkit")]
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.unrule()?;
        tx.conn()
            .execute_batch(
                "DELETE FROM buffer; DELETE FROM record; DELETE FROM outbox; DELETE FROM local_edit; \
                 DELETE FROM record_quarantine; DELETE FROM resave;",
            )
            .map_err(|e| StoreError::sqlite("emptying the store", e))?;
        tx.commit()
    }

    // ---- records --------------------------------------------------------------

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        get_record(&self.conn, table, id)
    }

    /// Writes a record as a local edit: keys given overlay the stored row (unknown
    /// keys survive, §7.2), the triggers check ownership and capture the change.
    pub fn put(&mut self, table: &str, row: &Value) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.put_local(table, row, "record")?;
        tx.commit()
    }

    /// Deletes a record as a local edit. Returns whether it existed.
    pub fn delete(&mut self, table: &str, id: &str) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let n = tx
            .conn()
            .execute(
                "DELETE FROM record WHERE table_name = ?1 AND record_id = ?2",
                params![table, id],
            )
            .map_err(|e| StoreError::sqlite("deleting record", e).for_record(table, id))?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Streams the records of `table` (all tables when `None`) in id order.
    pub fn for_each_record(
        &self,
        table: Option<&str>,
        mut f: impl FnMut(&str, &str) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let err = |e| StoreError::sqlite("listing records", e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT table_name, data FROM record WHERE ?1 IS NULL OR table_name = ?1 \
                 ORDER BY table_name, record_id",
            )
            .map_err(err)?;
        let mut rows = stmt.query([table]).map_err(err)?;
        let mut n = 0;
        while let Some(row) = rows.next().map_err(err)? {
            let t: String = row.get(0).map_err(err)?;
            let d: String = row.get(1).map_err(err)?;
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

    /// Rows set aside by a schema upgrade (not valid rows), for `status`.
    pub fn quarantined(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM record_quarantine", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite("counting set-aside rows", e))
    }

    /// What is wrong with the rules in the file now (a trigger another program
    /// dropped or changed since this process opened it).
    pub fn rules_problems(&self) -> Result<Vec<String>, StoreError> {
        rules::verify(&self.conn)
    }

    /// Rewrites the file without free pages and truncates the WAL, so no old
    /// page image survives (a moved-out credential). Waits `wait` at most for
    /// the clinic's app to stop reading; returns whether the WAL was truncated.
    pub fn scrub(&self, wait: Duration) -> Result<bool, StoreError> {
        let conn = &self.conn;
        conn.execute_batch("VACUUM")
            .map_err(|e| StoreError::sqlite("compacting the database", e))?;
        let set_wait = |d| {
            conn.busy_timeout(d)
                .map_err(|e| StoreError::sqlite("busy timeout", e))
        };
        set_wait(wait)?;
        let busy: Result<i64, _> =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
        set_wait(busy_timeout())?;
        Ok(busy.map_err(|e| StoreError::sqlite("truncating the WAL", e))? == 0)
    }

    /// Truncates the WAL if no reader holds it (after a scrub's last write).
    pub fn truncate_wal(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
    }
}

/// What [`Store::refresh_hold`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The active dispensary store now keeps its transactions here.
    Holding,
    /// They sync again; this many held records went back in the queue.
    Released(u64),
}

/// A write transaction on the store: [`Store::tx`] (rules on) or
/// [`Store::receiving`] (rules off for this connection from its first write of
/// received data). Rolled back when dropped uncommitted (an error, a cut link).
pub struct Tx<'a> {
    tx: Option<Transaction<'a>>,
    rules_off: Cell<bool>,
}

impl Tx<'_> {
    pub(in crate::store) fn conn(&self) -> &Connection {
        self.tx.as_ref().expect("not yet committed")
    }

    /// Switches the rules off for this connection, once, before the first write
    /// of received data.
    pub(in crate::store) fn unrule(&self) -> Result<(), StoreError> {
        if !self.rules_off.get() {
            rules::set_enabled(self.conn(), false)?;
            self.rules_off.set(true);
        }
        Ok(())
    }

    pub fn commit(mut self) -> Result<(), StoreError> {
        let tx = self.tx.take().expect("committed once");
        if self.rules_off.replace(false) {
            rules::set_enabled(&tx, true)?;
        }
        tx.commit()
            .map_err(|e| StoreError::sqlite("committing to the database", e))
    }

    /// A setting, as this transaction sees it.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        get_setting(self.conn(), key)
    }

    /// Saves a setting in this transaction.
    pub fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set_setting(self.conn(), key, value)
    }

    pub fn unset(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM setting WHERE key = ?1", [key])
            .map(drop)
            .map_err(|e| StoreError::sqlite(format!("removing setting {key}"), e))
    }

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        get_record(self.conn(), table, id)
    }

    /// A local edit in this transaction (see [`local`]): judged and captured by
    /// the rules, which must be on.
    pub fn put_local(&self, table: &str, row: &Value, at: &str) -> Result<(), StoreError> {
        debug_assert!(!self.rules_off.get(), "local edits go through the rules");
        local::put(self.conn(), table, row, at)
    }

    /// Runs `f` under a savepoint: its writes are undone when it fails, the
    /// transaction goes on.
    pub fn savepoint<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        let sp = |sql: &str| {
            self.conn()
                .execute_batch(sql)
                .map_err(|e| StoreError::sqlite("savepoint", e))
        };
        sp("SAVEPOINT row")?;
        match f(self) {
            Ok(t) => {
                sp("RELEASE row")?;
                Ok(t)
            }
            Err(e) => {
                sp("ROLLBACK TO row; RELEASE row")?;
                Err(e)
            }
        }
    }
}

impl Drop for Tx<'_> {
    /// Rolled back (an error, a cut link): the rules come back on for this
    /// connection all the same.
    fn drop(&mut self) {
        if self.rules_off.get() {
            if let Some(tx) = &self.tx {
                if let Err(e) = rules::set_enabled(tx, true) {
                    log::error!("{e}");
                }
            }
        }
    }
}

pub(in crate::store) fn get_setting(
    conn: &Connection,
    key: &str,
) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT value FROM setting WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| StoreError::sqlite(format!("reading setting {key}"), e))
}

/// Saves a setting; an unchanged value writes nothing (the SD card is the budget:
/// an idle sync must not rewrite pages to say what they already say).
pub(in crate::store) fn set_setting(
    conn: &Connection,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO setting (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value \
         WHERE value IS NOT excluded.value",
        params![key, value],
    )
    .map(|_| ())
    .map_err(|e| StoreError::sqlite(format!("saving setting {key}"), e))
}

pub(in crate::store) fn get_record(
    conn: &Connection,
    table: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
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
