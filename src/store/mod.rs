//! The local store: the SQLite file this site shares with the clinic's app
//! (records, outbox, the rules; schema in `schema*.sql`, migrated by
//! [`schema`]), and beside it the agent's own state file, which only the
//! agent's user may write (`<database>.state`: cursors, initialisation, the
//! buffer, counters; `schema_agent.sql`).
//!
//! What must hold: every local write is checked and captured by SQLite triggers
//! (generated in [`crate::legacy::triggers`], installed and verified by
//! [`rules`]), so the clinic's app writing the file directly obeys the same
//! rules as our CLI; the sync's own writes of received data go through
//! [`Store::receiving`], a transaction whose connection alone runs without the
//! triggers. Nothing that steers the sync is read from the shared file: what an
//! app could write there (a cursor, an initialisation state, a forged buffer
//! row) lives in the state file; what passed the rules behind their back is
//! found by [`check`]. The shared file is in WAL mode so readers (the `status`
//! command, the app) run beside a writer, and a busy timeout makes writers wait
//! their turn instead of failing.
//!
//! Two files, two transactions: a [`Tx`] commits the shared file first and the
//! state file second, so a power cut between them leaves work to repeat (a page
//! pulled and applied again, harmlessly), never a cursor past records that are
//! not on the card.
//!
//! Nothing outside this module touches SQL: the layers above get typed
//! operations on [`Store`] and on its transactions ([`Tx`]), each kept beside the
//! tables it reads — [`outbox`], [`buffer`], `received` (applying received
//! records), [`numbering`], [`bundle`] (USB-stick bookkeeping), [`state`].

pub mod buffer;
pub mod bundle;
pub mod check;
pub mod compare;
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
    /// The shared file.
    conn: Connection,
    /// The agent's own state file.
    agent: Connection,
    path: PathBuf,
    /// The key of the record checks (see [`check`]), from the state file.
    check_key: check::Key,
    /// Opened from read-only storage (a card that turned read-only, a
    /// read-only mount): readable for `status` and `check`, nothing written.
    read_only: bool,
    /// State values saved with the sync's record of its attempt, not each in
    /// a commit of its own (see [`Store::defer_state`]).
    deferred: std::cell::RefCell<Vec<(&'static str, String)>>,
}

impl Drop for Store {
    /// What was deferred and not saved with an attempt (a cycle run without
    /// the runner, an error before the attempt was recorded) is saved now.
    fn drop(&mut self) {
        if self.read_only || self.deferred.get_mut().is_empty() {
            return;
        }
        if let Err(e) = self.save_deferred() {
            log::warn!("could not save the sync counters: {e}");
        }
    }
}

/// The agent's own state file beside the database.
pub fn state_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".state");
    PathBuf::from(p)
}

/// That the database at `path` is there; a directory this user may not enter
/// is "permission denied", never "no database" (a healthy packaged device
/// read by someone outside its group).
pub fn must_exist(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StoreError::Missing(path.to_path_buf()))
        }
        Err(e) => Err(StoreError::Io(
            format!(
                "cannot reach {} ({}): run as the device's fieldsync user \
                 (`sudo -u fieldsync fieldsync …`) or as a member of group fieldsync",
                path.display(),
                e.kind()
            ),
            e,
        )),
    }
}

/// The packaged device's database (packaging/build-deb.sh).
pub const PACKAGED_DB: &str = "/var/lib/fieldsync/fieldsync.sqlite";

/// Where the database lives when `--db` is not given: `FIELDSYNC_DB`; else
/// systemd's state directory when the service runs under it; else
/// `./fieldsync.sqlite` when there is one; else the packaged device's
/// database when this is a packaged device (so staff commands on a Pi find
/// it by themselves); else `./fieldsync.sqlite`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FIELDSYNC_DB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let here = PathBuf::from("fieldsync.sqlite");
    let packaged = Path::new(PACKAGED_DB);
    if std::env::var_os("STATE_DIRECTORY").is_none_or(|d| d.is_empty())
        && !here.exists()
        && packaged.parent().is_some_and(Path::exists)
    {
        return packaged.to_path_buf();
    }
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
    /// Opens (creating if needed) and migrates the store at `path`, with its
    /// state file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Err(e) = modes::guard_dir(path) {
            log::warn!(
                "the directory of {} is shared with other users and fieldsync cannot set its sticky bit ({e}); \
                 `chmod +t` it as its owner, so no other user can replace fieldsync's files",
                path.display()
            );
        }
        modes::guard_database(path)
            .map_err(|e| StoreError::Io(format!("creating {}", path.display()), e))?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::sqlite(format!("opening {}", path.display()), e))?;
        let agent = open_state_file(&state_path(path))?;
        Store::setup(conn, agent, path.to_path_buf())
    }

    /// Opens the shared file at `path` as the clinic's app does, without the
    /// agent's state file: for `put`, `get`, `delete`, `list` and `import` run
    /// by a user other than the agent's (a member of the app's group), who may
    /// write records through the rules like any app but may not read or steer
    /// the agent's state. The agent's own user gets the whole store. The
    /// shared file must be at this build's schema (the agent migrates it).
    pub fn open_for_records(path: &Path) -> Result<Store, StoreError> {
        must_exist(path)?;
        let state = state_path(path);
        let theirs = match modes::check_private(&state) {
            Ok(Err(modes::Untrusted::Owner { .. })) => true,
            Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
            _ => false,
        };
        if !theirs {
            return Store::open(path);
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::sqlite(format!("opening {}", path.display()), e))?;
        conn.busy_timeout(busy_timeout())
            .map_err(|e| StoreError::sqlite("busy timeout", e))?;
        if !schema::is_current(&conn)? {
            return Err(StoreError::Schema(format!(
                "{} has not been upgraded for this fieldsync yet: run a sync as the agent's user first",
                path.display()
            )));
        }
        let agent =
            Connection::open_in_memory().map_err(|e| StoreError::sqlite("opening memory db", e))?;
        agent
            .execute_batch(include_str!("schema_agent.sql"))
            .map_err(|e| StoreError::sqlite("setting up", e))?;
        Ok(Store {
            conn,
            agent,
            path: path.to_path_buf(),
            check_key: check::Key::none(),
            read_only: false,
            deferred: Default::default(),
        })
    }

    /// Opens (and migrates) the store at `path`, which must exist: every command
    /// but `init` works on a configured database.
    pub fn open_configured(path: &Path) -> Result<Store, StoreError> {
        must_exist(path)?;
        Store::open(path)
    }

    /// Opens an existing store without creating or migrating it, for readers such as
    /// `status` that must never take the write lock.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        must_exist(path)?;
        let (conn, read_only) = open_reading(path)?;
        conn.busy_timeout(busy_timeout())
            .map_err(|e| StoreError::sqlite("busy timeout", e))?;
        if !schema::is_fieldsync(&conn)? {
            return Err(StoreError::Schema(format!(
                "{} is not a fieldsync database",
                path.display()
            )));
        }
        let state = state_path(path);
        let agent = if state.exists() {
            if let Err(why) = modes::check_private(&state)
                .map_err(|e| StoreError::Io(format!("checking {}", state.display()), e))?
            {
                return Err(StoreError::Untrusted(state, why));
            }
            open_reading(&state)?.0
        } else {
            // Not migrated by this build yet: an empty state reads as "nothing known".
            Connection::open_in_memory().map_err(|e| StoreError::sqlite("opening memory db", e))?
        };
        agent
            .busy_timeout(busy_timeout())
            .map_err(|e| StoreError::sqlite("busy timeout", e))?;
        agent
            .execute_batch(include_str!("schema_agent.sql"))
            .or_else(|e| match e {
                // A state file this user may only read: its tables are there.
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly => {
                    Ok(())
                }
                e => Err(e),
            })
            .map_err(|e| StoreError::sqlite(format!("reading {}", state.display()), e))?;
        Ok(Store {
            conn,
            agent,
            path: path.to_path_buf(),
            check_key: check::Key::none(),
            read_only,
            deferred: Default::default(),
        })
    }

    /// Whether the store was found on read-only storage ([`Store::open_existing`]).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        let memory =
            || Connection::open_in_memory().map_err(|e| StoreError::sqlite("opening memory db", e));
        Store::setup(memory()?, memory()?, PathBuf::from(":memory:"))
    }

    fn setup(conn: Connection, agent: Connection, path: PathBuf) -> Result<Store, StoreError> {
        for (c, name) in [(&conn, path.clone()), (&agent, state_path(&path))] {
            c.busy_timeout(busy_timeout())
                .map_err(|e| StoreError::sqlite("busy timeout", e))?;
            // WAL: the clinic's app and `status` read while a sync writes. FULL: a
            // commit is on the card before we tell the central anything (ack, cursor).
            c.pragma_update(None, "journal_mode", "WAL")
                .map_err(|e| StoreError::sqlite(format!("setting WAL on {}", name.display()), e))?;
            c.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sqlite("synchronous", e))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| StoreError::sqlite("foreign_keys", e))?;
        let mut store = Store {
            conn,
            agent,
            path,
            check_key: check::Key::none(),
            read_only: false,
            deferred: Default::default(),
        };
        schema::migrate(&mut store)?;
        store.check_key = check::Key::load(&store.agent)?;
        schema::restore_trigger_inputs(&mut store)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shared file's connection, for this module's own files only.
    pub(in crate::store) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The state file's connection, likewise.
    pub(in crate::store) fn agent(&self) -> &Connection {
        &self.agent
    }

    /// A write transaction with the rules on: what it writes is judged and
    /// captured as an app's write would be. It takes the shared file's write
    /// lock at once (BEGIN IMMEDIATE: no upgrade deadlock against the clinic's
    /// app); the state file's, which only this agent writes, at its first write.
    pub fn tx(&mut self) -> Result<Tx<'_>, StoreError> {
        let main = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite("starting a transaction", e))?;
        let agent = self
            .agent
            .transaction()
            .map_err(|e| StoreError::sqlite("starting a transaction on the state file", e))?;
        Ok(Tx {
            tx: Some(main),
            agent: Some(agent),
            rules_off: Cell::new(false),
            check_key: &self.check_key,
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

    // ---- settings an older fieldsync kept here -----------------------------------

    /// Every row of the shared file's `setting` table. Configuration and the
    /// agent's state lived there before issue 26; this is read only to move
    /// them out (`agent::conf`, `agent::credential`), never trusted after.
    pub fn legacy_settings(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
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

    /// Deletes those rows once they have been moved out.
    pub fn forget_legacy_settings(&mut self, keys: &[&str]) -> Result<(), StoreError> {
        let tx = self.tx()?;
        for k in keys {
            tx.conn()
                .execute("DELETE FROM setting WHERE key = ?1", [k])
                .map_err(|e| StoreError::sqlite(format!("removing setting {k}"), e))?;
        }
        tx.commit()
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
        if hold == self.hold()? {
            return Ok(None);
        }
        let tx = self.tx()?;
        tx.set_hold(hold)?;
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
        site_uuid: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.set_state(key::SITE_ID, &site_id.to_string())?;
        if let Some(uuid) = site_uuid {
            tx.set_state(key::SITE_UUID, uuid)?;
        }
        tx.set_active_store(active_store)?;
        tx.set_init_state(InitState::Initialised)?;
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
/// received data). It spans both files: the shared one's part commits first,
/// the state file's second. Rolled back when dropped uncommitted (an error, a
/// cut link).
pub struct Tx<'a> {
    tx: Option<Transaction<'a>>,
    agent: Option<Transaction<'a>>,
    rules_off: Cell<bool>,
    check_key: &'a check::Key,
}

impl Tx<'_> {
    pub(in crate::store) fn conn(&self) -> &Connection {
        self.tx.as_ref().expect("not yet committed")
    }

    /// The state file's part of the transaction.
    pub(in crate::store) fn agent(&self) -> &Connection {
        self.agent.as_ref().expect("not yet committed")
    }

    pub(in crate::store) fn check_key(&self) -> &check::Key {
        self.check_key
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

    /// Commits the shared file, then the state file: what the state file
    /// says (a cursor moved, a row buffered) is never ahead of the records it
    /// describes.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let tx = self.tx.take().expect("committed once");
        if self.rules_off.replace(false) {
            rules::set_enabled(&tx, true)?;
        }
        tx.commit()
            .map_err(|e| StoreError::sqlite("committing to the database", e))?;
        self.agent
            .take()
            .expect("committed once")
            .commit()
            .map_err(|e| StoreError::sqlite("committing to the state file", e))
    }

    pub fn get(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        get_record(self.conn(), table, id)
    }

    /// One string field of a record (`None`: no such record; "" when it has
    /// no such string), read by SQLite without parsing the row here: what a
    /// line's owner needs of its header (see [`crate::legacy::owner::Rows::field`]).
    /// SQLite reads a key as the triggers do.
    pub(in crate::store) fn get_field(
        &self,
        table: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        self.conn()
            .prepare_cached(
                "SELECT CASE WHEN json_type(data, '$.\"' || ?3 || '\"') = 'text' \
                 THEN json_extract(data, '$.\"' || ?3 || '\"') ELSE '' END \
                 FROM record WHERE table_name = ?1 AND record_id = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![table, id, name], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| StoreError::sqlite("reading a record's field", e))
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

/// Opens the agent's own state file, creating it for this user alone (`0600`)
/// when missing; one that belongs to another user or that others may write is
/// refused.
fn open_state_file(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        match modes::open_exact(path, modes::PRIVATE, true) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Io(format!("creating {}", path.display()), e))
            }
            _ => {}
        }
    }
    if let Err(why) = modes::check_private(path)
        .map_err(|e| StoreError::Io(format!("checking {}", path.display()), e))?
    {
        return Err(StoreError::Untrusted(path.to_path_buf(), why));
    }
    Connection::open(path).map_err(|e| StoreError::sqlite(format!("opening {}", path.display()), e))
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

/// Opens a file for reading as the agent would (read-write, so WAL works),
/// or, where the storage refuses writes (SQLite cannot make the WAL's index
/// file in a read-only directory or on a read-only card), as an immutable
/// file — nothing can write there — so a person can still see what it holds.
/// Returns whether it is read-only.
fn open_reading(path: &Path) -> Result<(Connection, bool), StoreError> {
    use rusqlite::OpenFlags;
    let err = |e| StoreError::sqlite(format!("opening {}", path.display()), e);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(err)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => return Ok((conn, false)),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
            ) => {}
        Err(e) => return Err(err(e)),
    }
    drop(conn);
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(err)?;
    Ok((conn, true))
}

/// `path` for a `file:` URI: the characters a URI gives meaning to escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' | 0..=0x20 | 0x7f..=0xff => out.push_str(&format!("%{b:02X}")),
            _ => out.push(char::from(*b)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
