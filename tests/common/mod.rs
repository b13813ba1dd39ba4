//! Shared by the integration tests: a real reference central on 127.0.0.1:0 with
//! a temporary database, raw HTTP for conformance checks, and the real `fieldsync`
//! binary for end-to-end runs.
#![allow(dead_code)]

pub mod fake;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldsync::central::Central;
use fieldsync::wire::credentials;
use serde_json::{json, Value};

pub struct Env {
    pub dir: PathBuf,
    pub central: Central,
    /// The central's `--db`: its SQLite file, or its PostgreSQL database's URL
    /// when the suites run on PostgreSQL (`FIELDSYNC_TEST_POSTGRES`).
    pub central_db: String,
    pub addr: SocketAddr,
    /// Whether dropping this removes `dir` (a view of another test's
    /// directory does not).
    owns_dir: bool,
}

impl Drop for Env {
    /// A passing test leaves nothing behind; a failing one keeps its files for
    /// a look (the path is in its messages).
    fn drop(&mut self) {
        if self.owns_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Env {
    pub fn new(name: &str) -> Env {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fieldsync-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (central, central_db) = Central::open_for_test(&dir);
        let addr = fieldsync::central::http::spawn(central.clone(), "127.0.0.1:0")
            .unwrap()
            .addr;
        Env {
            dir,
            central,
            central_db,
            addr,
            owns_dir: true,
        }
    }

    /// Another view of a test's directory and central (served elsewhere, at
    /// `addr`); dropping it removes nothing.
    pub fn view(dir: PathBuf, central: Central, central_db: String, addr: SocketAddr) -> Env {
        Env {
            dir,
            central,
            central_db,
            addr,
            owns_dir: false,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A site with an active store `store`.
    pub fn site(&self, name: &str, store: &str) {
        self.central
            .add_site(name, &name.to_uppercase(), &format!("pw-{name}"))
            .unwrap();
        self.central
            .add_store(store, store, &format!("Store {store}"), Some(name))
            .unwrap();
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sqlite"))
    }

    /// Runs the real binary against `db`.
    pub fn agent(&self, db: &Path, args: &[&str]) -> Output {
        agent_env(db, args, &[])
    }

    /// A database that acts as an initialised site with active store `S` (no central).
    pub fn identity(&self, db: &Path) {
        let out = self.agent(
            db,
            &["dev", "set-identity", "--site-id", "2", "--store", "S"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `fieldsync init` for site `name` (password pw-NAME), with a fixed hardware id.
    pub fn init(&self, db: &Path, name: &str) {
        self.init_url(db, name, &self.url());
    }

    /// [`Env::init`] against another address (a link emulator, a front).
    pub fn init_url(&self, db: &Path, name: &str, url: &str) {
        let out = agent_env(
            db,
            &[
                "init",
                "--url",
                url,
                "--site",
                name,
                "--password-env",
                "FS_PW",
            ],
            &[("FS_PW", &format!("pw-{name}"))],
        );
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Fast polls in tests.
        self.config(db, "init_poll_secs", "1");
    }

    /// `fieldsync config set KEY VALUE`, as a deployer would.
    pub fn config(&self, db: &Path, key: &str, value: &str) {
        let out = self.agent(db, &["config", "set", key, value]);
        assert!(
            out.status.success(),
            "config set {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn sync(&self, db: &Path) -> (i32, serde_json::Value, String) {
        let out = self.agent(db, &["sync", "--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code().unwrap_or(-1),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Syncs until one ends 0, at most `tries` times; every run's (exit code,
    /// report, stderr), first to last. A sync may end 11 while the central still
    /// integrates (a slow or loaded machine); the next one goes on. Panics if
    /// they do not settle.
    pub fn sync_until_settled(&self, db: &Path, tries: usize) -> Vec<(i32, Value, String)> {
        let mut runs = Vec::new();
        for _ in 0..tries {
            let run = self.sync(db);
            let done = run.0 == 0;
            let stuck = run.0 != 11;
            runs.push(run);
            if done {
                return runs;
            }
            assert!(!stuck, "a sync failed: {:?}", runs.last());
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("the syncs did not settle: {:?}", runs.last());
    }

    pub fn auth(&self, name: &str) -> String {
        credentials::basic_auth(name, &credentials::password_digest(&format!("pw-{name}")))
            .expose()
            .to_string()
    }

    pub fn central_count(&self, table: &str) -> i64 {
        let c = self.central.conn().unwrap();
        c.query_row(
            "SELECT count(*) FROM record WHERE table_name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap()
    }
}

pub fn agent_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldsync"));
    cmd.arg("--db")
        .arg(db)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("FIELDSYNC_CREDENTIAL_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// How much slower than a native machine this one runs the tests: 1 natively,
/// more where `FIELDSYNC_TEST_PATIENCE` says so (cross/build.sh sets it for the
/// suite under qemu-user, where every instruction is emulated). Deadlines that
/// only guard against a hang, and bounds on how long one request waits behind
/// another, scale by it; what is counted (statuses, rows, bytes) never does.
pub fn patience() -> u32 {
    std::env::var("FIELDSYNC_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &u32| (1..=100).contains(n))
        .unwrap_or(1)
}

/// Whether a program is installed and runs (`PROGRAM --version` succeeds). The
/// exit status counts, not just the spawn: under qemu-user a missing program
/// still "spawns" (glibc's posix_spawn cannot report the failed exec through the
/// emulated vfork) and exits 127.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The agent's own state file beside a database, read as the agent's user
/// (cursors, initialisation state, the buffer).
pub fn state(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(fieldsync::store::state_path(db)).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

/// One value of the agent's state (`central_cursor`, `init_state`, …).
pub fn state_value(db: &Path, key: &str) -> Option<String> {
    state(db)
        .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .ok()
}

/// Turns a database this build wrote into one an older fieldsync (schema 4,
/// before issue 26) would have left: the settings and the agent's state in the
/// shared file's `setting` table (plus `extra` rows, such as the password
/// digest it kept there), the buffer and bundle tables in the shared file, no
/// configuration file, no state file.
pub fn as_older_fieldsync(db: &Path, extra: &[(&str, &str)]) {
    let mut rows: Vec<(String, String)> = state(db)
        .prepare("SELECT key, value FROM state WHERE key NOT IN ('check_key', 'shared_schema', 'schema_rules')")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let conf = db.with_extension("sqlite.conf");
    for line in std::fs::read_to_string(&conf).unwrap().lines() {
        if let Some((k, v)) = line.split_once(" = ") {
            if !k.starts_with('#') {
                rows.push((k.to_string(), v.to_string()));
            }
        }
    }
    rows.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let c = sql(db);
    c.execute_batch(
        "DROP TABLE record_check;
         CREATE TABLE buffer (table_name TEXT NOT NULL, record_id TEXT NOT NULL, merge_drop TEXT NOT NULL DEFAULT '',
             action TEXT NOT NULL, data TEXT, rank INTEGER NOT NULL, received INTEGER NOT NULL,
             state TEXT NOT NULL DEFAULT 'pending', error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (table_name, record_id, merge_drop));
         CREATE TABLE bundle_sent (bundle BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (bundle, seq)) WITHOUT ROWID;
         CREATE TABLE bundle_ack (sync_out_id TEXT PRIMARY KEY, bundle BLOB) WITHOUT ROWID;
         INSERT OR IGNORE INTO counter VALUES ('receipt_seq', 0), ('si_number', 0), ('response_number', 0);
         PRAGMA user_version = 4;",
    )
    .unwrap();
    for (k, v) in rows {
        c.execute(
            "INSERT OR REPLACE INTO setting (key, value) VALUES (?1, ?2)",
            [&k, &v],
        )
        .unwrap();
    }
    drop(c);
    for suffix in [".state", ".state-wal", ".state-shm", ".conf"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Local SQL on an agent database, as the clinic's app would do it.
/// A record of the shared file, read as an app would.
pub fn record(db: &Path, table: &str, id: &str) -> Option<Value> {
    sql(db)
        .query_row(
            "SELECT data FROM record WHERE table_name = ?1 AND record_id = ?2",
            [table, id],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap())
}

pub fn sql(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One raw HTTP/1.1 exchange with exactly the headers given.
pub fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_raw(addr, method, path, headers, body).unwrap()
}

/// [`raw`], with the link's failures (a central killed mid-answer) as errors.
pub fn try_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    try_raw_on(TcpStream::connect(addr)?, addr, method, path, headers, body)
}

/// [`try_raw`] on a connection the caller made (from a chosen source address).
pub fn try_raw_on(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let broken = |m: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, m.to_string());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| broken("no complete answer head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let body = all[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| broken("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A v5 call as site `name` from device `hw`.
pub fn v5(env: &Env, name: &str, hw: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    try_v5(env, name, hw, method, path, body).unwrap()
}

/// [`v5`], with the link's failures as errors.
pub fn try_v5(
    env: &Env,
    name: &str,
    hw: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    let auth = env.auth(name);
    try_raw(
        env.addr,
        method,
        &format!("/sync/v5{path}"),
        &[
            ("Authorization", &auth),
            ("msupply-site-uuid", hw),
            ("version", "14"),
            ("app-name", "test"),
        ],
        body,
    )
}

// ---- raw v5 exchanges (conformance-style) ----------------------------------------

/// `POST /initialise` as site `name`; returns `queueLength`.
pub fn init(env: &Env, name: &str, hw: &str) -> u64 {
    let r = v5(env, name, hw, "POST", "/initialise", b"{}");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["queueLength"].as_u64().unwrap()
}

pub fn push(env: &Env, name: &str, hw: &str, records: Value) -> Resp {
    let n = records.as_array().map_or(0, |a| a.len());
    let body = json!({"queueLength": n, "data": records}).to_string();
    v5(env, name, hw, "POST", "/queued_records", body.as_bytes())
}

pub fn final_push(env: &Env, name: &str, hw: &str) -> bool {
    let r = v5(
        env,
        name,
        hw,
        "POST",
        "/queued_records",
        br#"{"queueLength":0,"data":[]}"#,
    );
    assert_eq!(r.status, 200);
    let started = r.json()["integrationStarted"].as_bool().unwrap();
    // Wait for the integration to finish; a central that never says idle fails
    // the test here rather than in a confusing assertion later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60) * patience();
    loop {
        let code = v5(env, name, hw, "GET", "/site_status", b"").json()["code"].clone();
        if code == "idle" {
            return started;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the central never said idle after the final push of {name} (last: {code})"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn pull_all(env: &Env, name: &str, hw: &str) -> Vec<Value> {
    v5(env, name, hw, "GET", "/queued_records?limit=1000", b"").json()["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Initialises a site and acknowledges everything its initialisation queued.
pub fn init_and_drain(env: &Env, site: &str, hw: &str) {
    init(env, site, hw);
    drain(env, site, hw);
}

/// Pulls site `site`'s whole queue and acknowledges it.
pub fn drain(env: &Env, site: &str, hw: &str) {
    let ids: Vec<Value> = pull_all(env, site, hw)
        .iter()
        .map(|r| r["syncOutId"].clone())
        .collect();
    let r = v5(
        env,
        site,
        hw,
        "POST",
        "/acknowledged_records",
        json!({"syncIDs": ids}).to_string().as_bytes(),
    );
    assert!(
        matches!(r.status, 200 | 204),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// An `Update` envelope for a push.
pub fn upd(sync_out: &str, table: &str, row: Value) -> Value {
    json!({"syncOutId": sync_out, "tableName": table, "recordId": row["ID"], "action": "Update", "recordData": row})
}

/// The real central binary serving a database of its own.
pub struct Served {
    pub child: Child,
    pub env: Env,
    pub log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub fn start(name: &str) -> Served {
        Served::start_with(name, &[])
    }

    /// [`Served::start`] with more `serve` options (`--test-mode`, …).
    pub fn start_with(name: &str, args: &[&str]) -> Served {
        let dir =
            std::env::temp_dir().join(format!("fieldsync-strangers-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Opened here first: the schema exists before the server and the test
        // both use it.
        let (central, db) = Central::open_for_test(&dir);
        let log = dir.join("central.log");
        let child = Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
            // A PostgreSQL central keeps its restore note in its working directory.
            .current_dir(&dir)
            .arg("--db")
            .arg(&db)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30 * u64::from(patience()));
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Only whole lines: the log may be read while the address line is
            // half written ("127.0.0.1:4" before "1234\n").
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(a) = whole
                .lines()
                .find_map(|l| l.split("serving v5 on http://").nth(1))
            {
                break a.trim().parse::<SocketAddr>().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the central did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Served {
            child,
            env: Env::view(dir, central, db, addr),
            log,
        }
    }

    /// A site with an agent that has completed its first sync.
    pub fn agent_site(&self, name: &str, store: &str) -> PathBuf {
        self.env.site(name, store);
        let db = self.env.db(name);
        self.env.init(&db, name);
        let (code, _, err) = self.env.sync(&db);
        assert_eq!(code, 0, "{err}");
        db
    }

    /// `fieldsync-central ARGS` on this central's database, as its administrator.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
            .arg("--db")
            .arg(&self.env.central_db)
            .args(args)
            .output()
            .unwrap()
    }

    /// Peak resident memory of the central process, in MiB.
    pub fn peak_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
