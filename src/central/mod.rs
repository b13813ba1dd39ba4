//! The reference central server (protocol §6): state in SQLite, the v5 endpoints,
//! routing, initialisation and transfers. Used for development, tests, the demo
//! and pilots; production sites may talk to mSupply's own central.
//!
//! Layout: this file holds the state (schema, connections, the report); `admin`
//! the administrator's operations; `auth` the checks every request passes; `api`
//! the endpoints; `judge` who may push what (at push and again at integration);
//! `routing` where each change goes; `integrate` the per-site integration worker
//! and `transfers` the responding halves; `pages` the pull pages; `bundle` sync by USB stick (and `import_lock`, its hold on a site); `http` the wire. Built only with the
//! `central` feature: device builds carry none of it.
//!
//! What must hold:
//! - every transaction that writes starts as a write (`BEGIN IMMEDIATE`, waiting
//!   out the busy timeout), so it cannot lose a race to another connection that
//!   committed between its read and its write;
//! - every commit that an answer reports (a staged push, an acknowledgement, an
//!   integration) is on disk before the answer leaves (`synchronous=FULL`): the
//!   agent deletes its outbox entries on that answer;
//! - `site_status` says `idle` only when nothing this site sent waits to be
//!   integrated.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bundle;
pub mod db;
pub mod epoch;
mod error;
pub mod http;
pub mod import_lock;
pub mod integrate;
pub mod judge;
pub mod pages;
pub mod relocation;
pub mod routing;
pub mod staging;
mod testbed;
pub mod transfers;
pub mod v6;
pub mod verify;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use db::{Connection, OptionalExtension, Tx};

/// The central's own site id (`mSupplyCentralSiteId`); remote sites count from 2.
pub const CENTRAL_SITE_ID: u32 = 1;
/// Sites silent for longer are flagged in the sync report (seed 001: a month).
pub const SILENT_AFTER_SECS: i64 = 30 * 24 * 3600;
/// How long a connection waits for another's write lock. Defaults to 60 s: an
/// initialisation of a large site holds it for seconds, never minutes.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Schema versions of the central's database, applied in order on open.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS site (
    site_id       INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    code          TEXT NOT NULL,
    name          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,          -- Argon2id of the SHA-256 digest [PC]
    password_gen  INTEGER NOT NULL DEFAULT 1,
    hardware_id   TEXT NOT NULL DEFAULT '',-- bound on first contact, '' after a reset
    init_status   TEXT NOT NULL DEFAULT 'new',
    last_seen     INTEGER                  -- unix seconds; the report only
);
-- Every synced row by (table, ID); site_id = the site that pushed it (NULL: central).
CREATE TABLE IF NOT EXISTS record (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT NOT NULL,
    site_id    INTEGER,
    PRIMARY KEY (table_name, record_id)
);
-- Central-data change log; IDs strictly increase and are never reused (AUTOINCREMENT).
CREATE TABLE IF NOT EXISTS changelog (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT
);
CREATE INDEX IF NOT EXISTS changelog_record ON changelog (table_name, record_id);
-- Per-site queues; id is the syncOutId. One unacknowledged non-merge entry per
-- (site, record): a newer change replaces it under a new id.
CREATE TABLE IF NOT EXISTS sync_out (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    is_merge   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sync_out_site ON sync_out (site_id, id);
CREATE INDEX IF NOT EXISTS sync_out_record ON sync_out (site_id, table_name, record_id);
-- Push staging: a re-sent batch replaces its own rows (idempotent).
CREATE TABLE IF NOT EXISTS staging (
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
);
CREATE INDEX IF NOT EXISTS staging_seq ON staging (site_id, seq);
-- Which sites hold a collector or transfer copy of a store [PC].
CREATE TABLE IF NOT EXISTS copy (
    store_id TEXT NOT NULL,
    site_id  INTEGER NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('collector', 'transfer')),
    PRIMARY KEY (store_id, site_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
",
    // 2: issues 18 and 22.
    "
-- The last known owning store of a row: a line whose header is gone is judged by it.
ALTER TABLE record ADD COLUMN owner_store TEXT;
-- When a row was staged (unix, the server's clock): staging that no final push
-- sealed for a week is dropped.
ALTER TABLE staging ADD COLUMN staged_at INTEGER NOT NULL DEFAULT 0;
-- A site's sealed staging waiting for (or failing) integration; while a row is
-- here, site_status says integration_in_progress.
CREATE TABLE integration (
    site_id    INTEGER PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'running', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated    INTEGER NOT NULL
);
-- Rows refused when integrated (judged again against the state at that moment).
CREATE TABLE refused (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         INTEGER NOT NULL
);
-- The site whose push a change-log entry came from (a primary's central data is
-- not echoed back to it); NULL: the central's own edit.
ALTER TABLE changelog ADD COLUMN origin_site INTEGER;
-- Wrong passwords in a row, and until when the site's logins are refused.
ALTER TABLE site ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE site ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0;
",
    // 3: issue 14 (USB bundles).
    "
-- The site's outbox sequence of each pushed version (`syncOutId`), so a USB
-- bundle that arrives after a newer push of the same record is skipped.
ALTER TABLE staging ADD COLUMN out_seq INTEGER;
CREATE TABLE pushed (
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    out_seq    INTEGER NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
) WITHOUT ROWID;
",
    // 4: issue 27 (a central among strangers, §10.9).
    "
-- Wrong passwords per (site name as sent, lowercased; or '*': every name) and
-- source address; answers to a wrong password wait by these, the right one never.
CREATE TABLE login_backoff (
    site_name TEXT NOT NULL,
    address   TEXT NOT NULL,
    failures  INTEGER NOT NULL,
    last      INTEGER NOT NULL,
    PRIMARY KEY (site_name, address)
) WITHOUT ROWID;
CREATE INDEX login_backoff_last ON login_backoff (last);
-- Staging in integration order (ord: upserts by rank, then deletes children
-- first), and what it weighs, so integration reads it in bounded chunks.
ALTER TABLE staging ADD COLUMN ord INTEGER NOT NULL DEFAULT 0;
ALTER TABLE staging ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX staging_ord ON staging (site_id, ord, seq);
CREATE TABLE staged_total (
    site_id  INTEGER PRIMARY KEY,
    rows     INTEGER NOT NULL,
    bytes    INTEGER NOT NULL,
    first_at INTEGER NOT NULL DEFAULT 0   -- when the oldest staged row came (unix)
);
-- Integrated headers whose responding halves are still to be made.
CREATE TABLE respond (
    site_id    INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
) WITHOUT ROWID;
-- Created rows judged against the others (a barcode value, a user name).
CREATE INDEX record_barcode ON record (json_extract(data, '$.barcode')) WHERE table_name = 'barcode';
CREATE INDEX record_user_name ON record (lower(json_extract(data, '$.name'))) WHERE table_name = 'user';
-- The administrator allowed this site to initialise again (site reinitialise,
-- reset-hardware-id); otherwise only a `new` site may (§10.9).
ALTER TABLE site ADD COLUMN init_allowed INTEGER NOT NULL DEFAULT 0;
UPDATE staging SET bytes = coalesce(length(CAST(data AS BLOB)), 0);
INSERT INTO staged_total (site_id, rows, bytes, first_at)
    SELECT site_id, count(*), sum(bytes), min(staged_at) FROM staging GROUP BY site_id;
",
    // 5: Open mSupply remote sites (§10.1, §10.8).
    "
-- Non-empty: this site is the Open mSupply central server, reached at this URL;
-- every site's /site answer names it (seed 004). At most one.
ALTER TABLE site ADD COLUMN om_central_url TEXT NOT NULL DEFAULT '';
-- The administrator allowed this site the test endpoints (only in test mode).
ALTER TABLE site ADD COLUMN test_site INTEGER NOT NULL DEFAULT 0;
-- When the site was added (unix; 0: before this column), so a site that has
-- not connected yet is flagged silent only a month after it was added.
ALTER TABLE site ADD COLUMN added_at INTEGER NOT NULL DEFAULT 0;
-- What Open mSupply sites pushed on v6 while this central stood in for their
-- Open mSupply central server: kept, the newest of each record, never dropped.
CREATE TABLE v6_record (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    site_id    INTEGER NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    PRIMARY KEY (table_name, record_id)
) WITHOUT ROWID;
",
    // 6: issue 30 (compare and repair): every write of a synced record counts,
    // so a database older than the one last served is recognised (central::epoch).
    "
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
CREATE TRIGGER record_generation_insert AFTER INSERT ON record BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation';
END;
CREATE TRIGGER record_generation_update AFTER UPDATE ON record BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation';
END;
CREATE TRIGGER record_generation_delete AFTER DELETE ON record BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation';
END;
",
    // 7: issue 31: a site is looked up by lower(name) on both stores (PostgreSQL has no NOCASE).
    "
CREATE INDEX site_name_lower ON site (lower(name));
",
];

/// The schema on PostgreSQL: what [`MIGRATIONS`] build on SQLite, in
/// PostgreSQL's types (every integer a BIGINT; keys compared byte by byte,
/// `COLLATE "C"`, as SQLite compares them, so cursors and the digest tree
/// order rows as the agents do), created whole on a new database.
///
/// Three of SQLite's functions the central's statements use are defined here
/// with SQLite's meaning for what the central stores (`$.field` paths into
/// JSON objects): `json_extract` (a scalar as text; SQLite gives a number
/// as a number, so a statement comparing numbers casts), `json_set` and `instr`.
const PG_SCHEMA: &str = r#"
CREATE FUNCTION json_extract(doc text, path text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (doc::jsonb) #>> string_to_array(substr(path, 3), '.') $$;
CREATE FUNCTION json_set(doc text, path text, value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT jsonb_set(doc::jsonb, string_to_array(substr(path, 3), '.'), to_jsonb(value))::text $$;
CREATE FUNCTION instr(haystack text, needle text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT strpos(haystack, needle)::bigint $$;

CREATE TABLE site (
    site_id        BIGINT PRIMARY KEY,
    uuid           TEXT NOT NULL UNIQUE,
    code           TEXT NOT NULL,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    password_gen   BIGINT NOT NULL DEFAULT 1,
    hardware_id    TEXT NOT NULL DEFAULT '',
    init_status    TEXT NOT NULL DEFAULT 'new',
    last_seen      BIGINT,
    failed_logins  BIGINT NOT NULL DEFAULT 0,
    locked_until   BIGINT NOT NULL DEFAULT 0,
    init_allowed   BIGINT NOT NULL DEFAULT 0,
    om_central_url TEXT NOT NULL DEFAULT '',
    test_site      BIGINT NOT NULL DEFAULT 0,
    added_at       BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX site_name_lower ON site (lower(name));
CREATE TABLE record (
    table_name  TEXT COLLATE "C" NOT NULL,
    record_id   TEXT COLLATE "C" NOT NULL,
    data        TEXT NOT NULL,
    site_id     BIGINT,
    owner_store TEXT,
    PRIMARY KEY (table_name, record_id)
);
CREATE TABLE changelog (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    table_name  TEXT COLLATE "C" NOT NULL,
    record_id   TEXT COLLATE "C" NOT NULL,
    action      TEXT NOT NULL,
    data        TEXT,
    origin_site BIGINT
);
CREATE INDEX changelog_record ON changelog (table_name, record_id);
CREATE TABLE sync_out (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    site_id    BIGINT NOT NULL,
    table_name TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    is_merge   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sync_out_site ON sync_out (site_id, id);
CREATE INDEX sync_out_record ON sync_out (site_id, table_name, record_id);
CREATE TABLE staging (
    site_id    BIGINT NOT NULL,
    table_name TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    seq        BIGINT NOT NULL,
    staged_at  BIGINT NOT NULL DEFAULT 0,
    out_seq    BIGINT,
    ord        BIGINT NOT NULL DEFAULT 0,
    bytes      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, table_name, record_id)
);
CREATE INDEX staging_seq ON staging (site_id, seq);
CREATE INDEX staging_ord ON staging (site_id, ord, seq);
CREATE TABLE copy (
    store_id TEXT COLLATE "C" NOT NULL,
    site_id  BIGINT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('collector', 'transfer')),
    PRIMARY KEY (store_id, site_id)
);
CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE integration (
    site_id    BIGINT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'running', 'failed')),
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    updated    BIGINT NOT NULL
);
CREATE TABLE refused (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    site_id    BIGINT NOT NULL,
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE TABLE pushed (
    site_id    BIGINT NOT NULL,
    table_name TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    out_seq    BIGINT NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
);
CREATE TABLE login_backoff (
    site_name TEXT COLLATE "C" NOT NULL,
    address   TEXT COLLATE "C" NOT NULL,
    failures  BIGINT NOT NULL,
    last      BIGINT NOT NULL,
    PRIMARY KEY (site_name, address)
);
CREATE INDEX login_backoff_last ON login_backoff (last);
CREATE TABLE staged_total (
    site_id  BIGINT PRIMARY KEY,
    rows     BIGINT NOT NULL,
    bytes    BIGINT NOT NULL,
    first_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE respond (
    site_id    BIGINT NOT NULL,
    table_name TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (site_id, table_name, record_id)
);
CREATE INDEX record_barcode ON record (json_extract(data, '$.barcode')) WHERE table_name = 'barcode';
CREATE INDEX record_user_name ON record (lower(json_extract(data, '$.name'))) WHERE table_name = 'user';
CREATE TABLE v6_record (
    table_name TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    site_id    BIGINT NOT NULL,
    action     TEXT NOT NULL,
    data       TEXT,
    PRIMARY KEY (table_name, record_id)
);
INSERT INTO meta (key, value) VALUES ('generation', '0');
-- Every write of a synced record counts (central::epoch); once per statement,
-- by the rows it wrote.
CREATE FUNCTION record_generation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT count(*) INTO n FROM old_rows;
    ELSE
        SELECT count(*) INTO n FROM new_rows;
    END IF;
    IF n > 0 THEN
        UPDATE meta SET value = (CAST(value AS BIGINT) + n)::text WHERE key = 'generation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER record_generation_insert AFTER INSERT ON record
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION record_generation();
CREATE TRIGGER record_generation_update AFTER UPDATE ON record
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION record_generation();
CREATE TRIGGER record_generation_delete AFTER DELETE ON record
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION record_generation();
"#;

/// Creates the PostgreSQL schema on a new database, inside the caller's write
/// transaction; a database with another schema version is refused.
fn pg_schema(tx: &Connection) -> Result<()> {
    let version = MIGRATIONS.len().to_string();
    let exists: bool = tx.query_row("SELECT to_regclass('meta') IS NOT NULL", [], |r| r.get(0))?;
    if !exists {
        tx.execute_batch(PG_SCHEMA)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [&version],
        )?;
        return Ok(());
    }
    let found: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if found.as_deref() != Some(&version) {
        return Err(CentralError::refused(format!(
            "the PostgreSQL database holds schema version {} where this central uses {version}: \
             run the fieldsync-central that made it, or export and import into a new database",
            found.as_deref().unwrap_or("none")
        )));
    }
    Ok(())
}

/// What a site is doing right now; one request per site at a time (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Request,
    Initialising,
}

/// Shared by every connection thread of the server.
#[derive(Clone)]
pub struct Central {
    store: Arc<Store>,
    pub(crate) activity: Arc<Mutex<HashMap<u32, Activity>>>,
    /// Verified (site, password generation) → digest, so Argon2 runs once per
    /// site and password, not on every request.
    pub(crate) verified: Arc<Mutex<HashMap<(u32, i64), String>>>,
    /// Sites whose integration worker is running now.
    pub(crate) integrating: Arc<Mutex<std::collections::HashSet<u32>>>,
    /// When each site's `last_seen` was last written (unix seconds).
    pub(crate) last_seen: Arc<Mutex<HashMap<u32, i64>>>,
    /// API versions accepted (§6 default 14..14).
    pub versions: (u32, u32),
    /// Gzip answers for clients that accept it [PC]; off only to measure without.
    pub gzip: bool,
    /// Accept gzip request bodies and say so (§9.1); off to act as a legacy central.
    pub gzip_requests: bool,
    /// Integrate a site's final push on a thread of its own while `site_status`
    /// says so (the default); in-process tests integrate before answering.
    pub background_integration: bool,
    /// The base URL sites reach this central at (`serve --public-url`): the
    /// Open mSupply central server's address when no site is marked as one
    /// (§10.1). Unset: the `Host` the request came to.
    pub public_url: Option<String>,
    /// The test endpoints of §10.8 answer (`serve --test-mode`); never by default.
    pub test_mode: bool,
    /// The epoch every answer carries (central::epoch).
    pub(crate) epoch: Arc<Mutex<String>>,
    /// One connection held for the central's lifetime (SQLite): SQLite
    /// checkpoints and deletes the WAL when the last connection closes, which
    /// with a connection per request meant a checkpoint (and its fsyncs) after
    /// nearly every request.
    _keeper: Option<Arc<Mutex<Connection>>>,
}

/// Where the central keeps its state.
pub enum Store {
    /// One SQLite file: the embedded default.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database, for deployments that outgrow one file.
    Postgres(Arc<db::PgPool>),
}

/// Whether `--db` names a PostgreSQL database rather than an SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

pub use error::{CentralError, Result};

/// The server's clock, in unix seconds. The central is a server with a real
/// clock; it decides only expiry of abandoned staging and login back-off by it.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A number the protocol sends as text (a cursor, a `syncOutId`): decimal
/// digits only, no sign or spaces, within 63 bits.
pub(crate) fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Central {
    /// The central on the SQLite file at `path` (created if missing).
    pub fn open(path: &Path) -> Result<Central> {
        let keeper = Connection::open_sqlite(path)?;
        keeper.busy_timeout(BUSY_TIMEOUT)?;
        Central::open_store(
            Store::Sqlite(path.to_path_buf()),
            Some(Arc::new(Mutex::new(keeper))),
        )
    }

    /// The central on `db`: a `postgres://` URL or an SQLite file's path.
    pub fn open_db(db: &str) -> Result<Central> {
        if is_postgres_url(db) {
            Central::open_postgres(db, true)
        } else {
            Central::open(Path::new(db))
        }
    }

    /// The central on the PostgreSQL database at `url`. Unless `create` (the
    /// first `site add`), a database without the central's schema is refused:
    /// a mistyped URL must not make an empty central that answers every site
    /// "unknown site".
    pub fn open_postgres(url: &str, create: bool) -> Result<Central> {
        let pool = db::PgPool::new(url)?;
        if !create {
            let conn = pool.connect()?;
            let exists: bool =
                conn.query_row("SELECT to_regclass('meta') IS NOT NULL", [], |r| r.get(0))?;
            if !exists {
                return Err(CentralError::refused(format!(
                    "PostgreSQL database {} holds no central: check --db (a new central starts with \
                     `fieldsync-central --db postgres://… site add NAME …`)",
                    pool.database()
                )));
            }
        }
        Central::open_store(Store::Postgres(pool), None)
    }

    /// A new central for a test in `dir`, and the `--db` that names its store:
    /// a new database on the PostgreSQL server at `FIELDSYNC_TEST_POSTGRES`
    /// (a base URL; `.ci/postgres start` prints one) when that is set, else
    /// `dir/central.sqlite`. The central's suites run on both stores this way.
    #[cfg(any(test, feature = "testkit"))]
    pub fn open_for_test(dir: &Path) -> (Central, String) {
        match std::env::var("FIELDSYNC_TEST_POSTGRES") {
            Ok(base) if !base.is_empty() => {
                let url = db::create_test_database(&base, dir)
                    .unwrap_or_else(|e| panic!("a test database on {base}: {e}"));
                let c = Central::open_postgres(&url, true)
                    .unwrap_or_else(|e| panic!("the central on {url}: {e}"));
                (c, url)
            }
            _ => {
                let path = dir.join("central.sqlite");
                let c = Central::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (c, path.to_string_lossy().into_owned())
            }
        }
    }

    /// The store this central runs on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn open_store(store: Store, keeper: Option<Arc<Mutex<Connection>>>) -> Result<Central> {
        let c = Central {
            _keeper: keeper,
            store: Arc::new(store),
            activity: Arc::default(),
            verified: Arc::default(),
            integrating: Arc::default(),
            last_seen: Arc::default(),
            versions: (
                crate::wire::protocol::API_VERSION,
                crate::wire::protocol::API_VERSION,
            ),
            gzip: true,
            gzip_requests: true,
            background_integration: true,
            public_url: None,
            test_mode: false,
            epoch: Arc::default(),
        };
        let mut conn = c.conn()?;
        if conn.dialect() == db::Dialect::Postgres {
            let tx = conn.write_transaction()?;
            pg_schema(&tx)?;
            c.open_state(&tx)?;
            tx.commit()?;
            return Ok(c);
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tx = conn.write_transaction()?;
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.execute_batch(sql)?;
        }
        if version < 4 {
            // Staging kept from before migration 4 gets its integration order.
            let kinds: Vec<(String, String)> = tx
                .prepare("SELECT DISTINCT table_name, action FROM staging")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            for (table, action) in kinds {
                tx.execute(
                    "UPDATE staging SET ord = ?3 WHERE table_name = ?1 AND action = ?2",
                    db::params![table, action, staging::integration_order(&table, &action)],
                )?;
            }
        }
        tx.pragma_update("user_version", MIGRATIONS.len() as i64)?;
        c.open_state(&tx)?;
        tx.commit()?;
        Ok(c)
    }

    /// What a start does to the state a stop left, on either store.
    fn open_state(&self, tx: &Connection) -> Result<()> {
        // Sites that were mid-initialisation when the server stopped get to ask again.
        tx.execute(
            "UPDATE site SET init_status = 'error' WHERE init_status = 'started'",
            [],
        )?;
        // Integrations cut by a stop run again.
        tx.execute(
            "UPDATE integration SET state = 'pending' WHERE state = 'running'",
            [],
        )?;
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch::load(tx)?;
        Ok(())
    }

    /// A connection per use. SQLite: WAL lets a long initialisation run beside
    /// other sites; FULL: a commit is on disk before the answer that reports
    /// it. PostgreSQL: from the pool; a commit is durable by the server's
    /// default (`synchronous_commit = on`), which must not be turned off.
    pub fn conn(&self) -> Result<Connection> {
        match &*self.store {
            Store::Sqlite(path) => {
                let conn = Connection::open_sqlite(path)?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.pragma_update("journal_mode", "WAL")?;
                conn.pragma_update("synchronous", "FULL")?;
                Ok(conn)
            }
            Store::Postgres(pool) => Ok(pool.connect()?),
        }
    }

    /// The file beside the store that remembers how far the database was
    /// when this central last served it (central::epoch). PostgreSQL's is in
    /// the working directory, named by the database.
    pub(crate) fn note_path(&self) -> std::path::PathBuf {
        match &*self.store {
            Store::Sqlite(path) => epoch::note_path(path),
            Store::Postgres(pool) => {
                std::path::PathBuf::from(format!("fieldsync-central-{}.epoch", pool.database()))
            }
        }
    }

    /// Resumes what a stop interrupted: sealed staging waiting for integration.
    pub fn resume(&self) -> Result<()> {
        let conn = self.conn()?;
        let sites: Vec<u32> = conn
            .prepare("SELECT site_id FROM integration")?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        for site in sites {
            self.start_integration(site);
        }
        Ok(())
    }

    /// Marks a site busy, as a long request would (tests of the busy answers).
    #[cfg(any(test, feature = "testkit"))]
    pub fn activity_for_test(&self, site: u32, a: Activity) {
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site, a);
    }

    // ---- report -------------------------------------------------------------------

    /// Every site with its last connection; `now` is the report's clock (the central
    /// is a server with a real clock; nothing is decided on it but the flag).
    pub fn report(&self, now: i64) -> Result<Vec<SiteReport>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT s.site_id, s.name, s.code, s.init_status, s.hardware_id <> '', s.last_seen, \
                    (SELECT count(*) FROM sync_out q WHERE q.site_id = s.site_id), \
                    coalesce((SELECT rows FROM staged_total g WHERE g.site_id = s.site_id), 0), \
                    (SELECT state || coalesce(': ' || last_error, '') FROM integration i WHERE i.site_id = s.site_id), \
                    (SELECT count(*) FROM refused f WHERE f.site_id = s.site_id), \
                    s.site_id = (SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'primary_site'), \
                    s.added_at \
             FROM site s ORDER BY s.site_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SiteReport {
                site_id: r.get(0)?,
                name: r.get(1)?,
                code: r.get(2)?,
                stores: vec![],
                init_status: r.get(3)?,
                hardware_id_bound: r.get(4)?,
                last_seen: r.get(5)?,
                queued: r.get::<_, i64>(6)? as u64,
                staged: r.get::<_, i64>(7)? as u64,
                integration: r.get(8)?,
                refused: r.get::<_, i64>(9)? as u64,
                primary: r.get::<_, Option<bool>>(10)?.unwrap_or(false),
                // A site that never connected counts from when it was added.
                silent: now - r.get::<_, i64>(11)? > SILENT_AFTER_SECS,
            })
        })?;
        let mut out: Vec<SiteReport> = rows.collect::<std::result::Result<_, _>>()?;
        for s in &mut out {
            s.stores = routing::active_stores(&conn, s.site_id)?;
            if let Some(t) = s.last_seen {
                s.silent = now - t > SILENT_AFTER_SECS;
            }
        }
        Ok(out)
    }
}

/// One row of the sync report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteReport {
    pub site_id: u32,
    pub name: String,
    pub code: String,
    pub stores: Vec<String>,
    pub init_status: String,
    pub hardware_id_bound: bool,
    pub last_seen: Option<i64>,
    pub queued: u64,
    /// Rows staged by pushes and not integrated yet.
    pub staged: u64,
    /// `pending`, `running` or `failed: …` while this site's integration is owed.
    pub integration: Option<String>,
    /// Rows refused when integrated (judged again at that moment).
    pub refused: u64,
    /// The primary site of a mirrored system.
    pub primary: bool,
    pub silent: bool,
}

/// A write transaction that takes the write lock at its start (waiting up to the
/// busy timeout), so it never fails to upgrade a read lock mid-way, and takes
/// its turn behind the central's writers that came before it.
pub fn write_tx(conn: &mut Connection) -> Result<WriteTx<'_>> {
    let turn = Turn::take();
    Ok(WriteTx {
        tx: conn.write_transaction()?,
        _turn: turn,
    })
}

/// A write transaction of the central holding its turn; rolled back if
/// dropped uncommitted, and the turn passes on after either.
pub struct WriteTx<'c> {
    // Declared first: dropped (rolled back) before the turn passes.
    tx: Tx<'c>,
    _turn: Turn,
}

impl WriteTx<'_> {
    pub fn commit(self) -> db::Result<()> {
        self.tx.commit()
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.tx
    }
}

/// Turns at the write lock, in arrival order (§10.9). SQLite's busy handler
/// polls: a long job that commits chunk after chunk would win the lock again
/// and again in the microseconds between its chunks, and a site's small write
/// would wait out the whole job. Tickets make the job's next chunk queue
/// behind the write that came while it ran. A turn not given within the busy
/// timeout is taken anyway (SQLite still keeps writes apart).
struct Turn(Option<u64>);

/// Tickets given, the ticket served, and tickets whose writer stopped waiting.
struct Turns {
    next: u64,
    serving: u64,
    abandoned: std::collections::BTreeSet<u64>,
}

static TURNS: Mutex<Turns> = Mutex::new(Turns {
    next: 0,
    serving: 0,
    abandoned: std::collections::BTreeSet::new(),
});
static TURN_PASSED: std::sync::Condvar = std::sync::Condvar::new();

impl Turn {
    fn take() -> Turn {
        let mut t = TURNS.lock().unwrap_or_else(|p| p.into_inner());
        let mine = t.next;
        t.next += 1;
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        while t.serving != mine {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                log::warn!("a write waited {BUSY_TIMEOUT:?} for its turn; going ahead");
                // Passed over when its turn comes.
                t.abandoned.insert(mine);
                return Turn(None);
            }
            t = TURN_PASSED
                .wait_timeout(t, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Turn(Some(mine))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.0.is_some() {
            let mut t = TURNS.lock().unwrap_or_else(|p| p.into_inner());
            t.serving += 1;
            loop {
                let s = t.serving;
                if !t.abandoned.remove(&s) {
                    break;
                }
                t.serving += 1;
            }
            TURN_PASSED.notify_all();
        }
    }
}

/// Argon2id of the SHA-256 digest [PC]: a stolen central database does not give
/// out the password-equivalent digests.
fn hash_digest(digest: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes = crate::wire::credentials::random_bytes()
        .map_err(|e| CentralError::Refused(format!("random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| CentralError::Refused(format!("salt: {e}")))?;
    argon2_params()
        .hash_password(digest.to_lowercase().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CentralError::Refused(format!("hashing password: {e}")))
}

pub(crate) fn verify_digest(hash: &str, digest: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2_params()
            .verify_password(digest.to_lowercase().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Argon2id's memory per verification, in KiB. Defaults to 8 MiB: a digest is
/// verified once per site and password (then cached), so a modest cost keeps a
/// small central responsive while a stolen database still costs a guesser
/// 8 MiB per try.
const ARGON2_MEMORY_KIB: u32 = 8 * 1024;
/// Argon2id's passes over that memory. Defaults to 2.
const ARGON2_PASSES: u32 = 2;

fn argon2_params() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, None)
        .expect("valid Argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}
