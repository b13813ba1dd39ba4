//! Secrets and permissions (issue 15): the site credential is kept apart from the
//! database the clinic's app shares, every file fieldsync makes has its mode
//! whatever the umask, a database from an older fieldsync is migrated on its
//! first sync, and a program in the app's group writes records but can neither
//! read the credential nor sync as the site. Real binaries, real central.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{sql, Env};
use fieldsync::wire::credentials;

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn holds(p: &Path, needle: &str) -> bool {
    std::fs::read(p)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

fn digest(site: &str) -> String {
    credentials::password_digest(&format!("pw-{site}"))
        .expose()
        .to_string()
}

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The agent run through `sh` with the given umask.
fn agent_umask(umask: &str, db: &Path, args: &[&str], pw: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .env("FS_PW", pw)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("FIELDSYNC_CREDENTIAL_FILE")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_credential_lives_apart_and_every_file_has_its_mode_whatever_the_umask() {
    let env = Env::new("secrets-modes");
    env.site("kaw", "S_KAW");
    let dir = env.dir.join("device");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("f.sqlite");
    let init = [
        "init",
        "--url",
        &env.url(),
        "--site",
        "kaw",
        "--password-env",
        "FS_PW",
    ];
    let said = ok(&agent_umask("000", &db, &init, "pw-kaw"));
    let cred = with_suffix(&db, ".credential");
    assert!(
        said.contains(&cred.display().to_string()),
        "init names where the credential is: {said}"
    );
    ok(&agent_umask("000", &db, &["sync"], ""));

    assert_eq!(
        mode(&db),
        0o660,
        "the database: the agent and the app's group"
    );
    assert_eq!(mode(&cred), 0o600, "the credential: the agent alone");
    assert_eq!(mode(&with_suffix(&db, ".lock")), 0o600);
    // The status snapshot is written only by syncs long enough to show progress
    // (its mode is checked beside `write_snapshot`); if there is one, it is 0644.
    if with_suffix(&db, ".status.json").exists() {
        assert_eq!(mode(&with_suffix(&db, ".status.json")), 0o644);
    }
    for s in ["-wal", "-shm"] {
        if with_suffix(&db, s).exists() {
            assert_eq!(mode(&with_suffix(&db, s)), 0o660, "{s}");
        }
    }
    let d = digest("kaw");
    assert!(holds(&cred, &d), "the credential file holds the digest");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p != cred {
            assert!(!holds(&p, &d), "{} holds the digest", p.display());
        }
        if mode(&p) & 0o077 != 0 {
            assert!(
                !holds(&p, &d),
                "{} is readable by others and holds the digest",
                p.display()
            );
        }
    }
    // Held open by the app, the database still never shows it.
    let app = sql(&db);
    app.execute_batch("SELECT count(*) FROM record").unwrap();
    ok(&agent_umask("000", &db, &["sync"], ""));
    for s in ["", "-wal"] {
        assert!(
            !holds(&with_suffix(&db, s), &d),
            "database{s} holds the digest"
        );
    }
    drop(app);

    // Rotating the password: the central changes it, `init` again with the new
    // one, the data stays.
    env.central.set_password("kaw", "pw-kaw-2").unwrap();
    ok(&agent_umask(
        "022",
        &db,
        &["put", "transact", r#"{"ID":"KEEP","store_ID":"S_KAW"}"#],
        "",
    ));
    let out = agent_umask("022", &db, &["sync"], "");
    assert_eq!(out.status.code(), Some(12), "the old credential is refused");
    ok(&agent_umask("022", &db, &init, "pw-kaw-2"));
    ok(&agent_umask("022", &db, &["sync"], ""));
    assert!(
        env.central.get("transact", "KEEP").unwrap().is_some(),
        "the record kept through the rotation reached the central"
    );
    assert!(holds(
        &cred,
        credentials::password_digest("pw-kaw-2").expose()
    ));
    assert_eq!(mode(&cred), 0o600);
}

#[test]
fn a_database_from_before_is_migrated_on_its_first_sync() {
    let env = Env::new("secrets-migrate");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    // What an older fieldsync left: the digest in `setting`, the database 0644,
    // no credential file.
    let d = digest("kaw");
    let cred = with_suffix(&db, ".credential");
    std::fs::remove_file(&cred).unwrap();
    common::as_older_fieldsync(&db, &[("password_digest", &d)]);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    // `check` works with it where it is, and writes nothing.
    let out = env.agent(&db, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!cred.exists(), "check wrote the credential file");

    // The first sync moves it, while the app holds a read open: the row goes at
    // once, the old bytes when the app lets go.
    let app = sql(&db);
    app.execute_batch("BEGIN; SELECT count(*) FROM record;")
        .unwrap();
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        holds(&cred, &d) && mode(&cred) == 0o600,
        "moved into the credential file"
    );
    assert_eq!(mode(&db), 0o660, "the old database is closed to others");
    let stored: i64 = sql(&db)
        .query_row(
            "SELECT count(*) FROM setting WHERE key = 'password_digest'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0, "and deleted from the database");
    let pending = common::state_value(&db, "credential_scrub_pending").is_some() as i64;
    assert_eq!(
        pending, 1,
        "the WAL could not be truncated under the app's read"
    );
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "{stderr}");
    for s in ["", "-wal"] {
        assert!(
            !holds(&with_suffix(&db, s), &d),
            "database{s} still holds the old digest"
        );
    }
    assert_eq!(common::state_value(&db, "credential_scrub_pending"), None);

    // Without the file, every command that needs it says where it looked.
    std::fs::remove_file(&cred).unwrap();
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&cred.display().to_string()) && stderr.contains("fieldsync init"),
        "{stderr}"
    );
    let out = env.agent(&db, &["check"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn the_systemd_credential_wins_over_the_file() {
    let env = Env::new("secrets-systemd");
    env.site("kaw", "S_KAW");
    let db = env.db("kaw");
    env.init(&db, "kaw");
    let creds = env.dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(
        creds.join("site-credential"),
        format!("{}\n", digest("kaw")),
    )
    .unwrap();
    // The file is wrong; the systemd credential is right.
    std::fs::write(
        with_suffix(&db, ".credential"),
        format!("{}\n", "0".repeat(64)),
    )
    .unwrap();
    let out = common::agent_env(
        &db,
        &["sync"],
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.agent(&db, &["sync"]);
    assert_eq!(out.status.code(), Some(12), "the file alone is refused");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command as `uid` with primary group `gid` and supplementary `groups`.
fn as_user(uid: u32, gid: u32, groups: &str, program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    cmd.arg("--")
        .arg(program)
        .args(args)
        .env("FS_PW", "pw-kaw")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

#[test]
fn the_app_group_writes_records_but_cannot_read_the_credential() {
    if !is_root() {
        eprintln!("note: switching users needs root; this test checks nothing here");
        return;
    }
    let (agent, group, app) = (61_001u32, 61_001u32, 61_002u32);
    let env = Env::new("secrets-group");
    env.site("kaw", "S_KAW");
    // The package's layout: /var/lib/fieldsync owned by fieldsync, setgid, 2770.
    let dir = env.dir.join("var-lib-fieldsync");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(agent), Some(group)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let db = dir.join("fieldsync.sqlite");
    let dbs = db.to_str().unwrap();
    let url = env.url();
    let run_agent = |args: &[&str]| {
        let mut a = vec!["--db", dbs];
        a.extend_from_slice(args);
        as_user(agent, group, "", BIN, &a)
    };
    ok(&run_agent(&[
        "init",
        "--url",
        &url,
        "--site",
        "kaw",
        "--password-env",
        "FS_PW",
    ]));
    ok(&run_agent(&["sync"]));

    // The app: its own user, in the fieldsync group.
    let app_groups = group.to_string();
    let app_run = |program: &str, args: &[&str]| as_user(app, app, &app_groups, program, args);
    ok(&app_run(
        BIN,
        &[
            "--db",
            dbs,
            "put",
            "transact",
            r#"{"ID":"APP1","store_ID":"S_KAW"}"#,
        ],
    ));
    if common::have("sqlite3") {
        ok(&app_run(
            "sqlite3",
            &[
                dbs,
                r#"INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'APP2', '{"ID":"APP2","store_ID":"S_KAW"}')"#,
            ],
        ));
    }
    let cred = with_suffix(&db, ".credential");
    let out = app_run("cat", &[cred.to_str().unwrap()]);
    assert!(!out.status.success(), "the app read the credential");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = app_run(BIN, &["--db", dbs, "sync"]);
    // (It stops at the agent's lock file or at the credential: both are the agent's alone.)
    assert_eq!(
        out.status.code(),
        Some(4),
        "the app cannot sync as the site: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"));

    // The agent still opens what the app created, and pushes the app's records.
    ok(&run_agent(&["sync"]));
    assert!(env.central.get("transact", "APP1").unwrap().is_some());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::gid(&m),
            group,
            "{} is not in the fieldsync group",
            p.display()
        );
    }
}
