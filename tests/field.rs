//! In the field (issue 29): what a person typing the commands meets, through
//! the real binaries — the central's administration (items 12) and the
//! command line's manners (item 13). Each test names its item.

mod common;

use std::process::{Command, Stdio};

use common::{init, v5, Served};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldsync"))
}

fn central() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldsync-central"))
}

/// Item 13: `--version`, `-V` and `-h` work on both programs.
#[test]
fn versions_and_short_help() {
    for (mut cmd, name) in [(agent(), "fieldsync"), (central(), "fieldsync-central")] {
        for flag in ["--version", "-V"] {
            let out = Command::new(cmd.get_program()).arg(flag).output().unwrap();
            assert!(out.status.success(), "{name} {flag}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("{name} {}", env!("CARGO_PKG_VERSION"))
            );
        }
        let out = cmd.arg("-h").output().unwrap();
        assert!(out.status.success(), "{name} -h");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

/// Item 13: output into a pipe nobody reads any more ends quietly (141), never
/// a panic (exit 101 and a backtrace).
#[test]
fn a_closed_pipe_is_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("fieldsync-field-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..5 {
        let mut child = agent()
            .arg("--db")
            .arg(dir.join("none.sqlite"))
            .args(["help"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{:?}: {err}",
            out.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 12: a mistyped `--db` creates nothing and says what to check; only
/// `site add` starts a new central.
#[test]
fn a_mistyped_central_database_is_not_created() {
    let dir = std::env::temp_dir().join(format!("fieldsync-field-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("centrl.sqlite");
    for args in [
        &["report"][..],
        &["serve", "--listen", "127.0.0.1:0"],
        &["put", "item", "{\"ID\":\"I\"}"],
    ] {
        let out = central()
            .arg("--db")
            .arg(&typo)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no central database at") && err.contains("check --db"),
            "{err}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    let out = central()
        .arg("--db")
        .arg(&typo)
        .args(["site", "add", "moa", "--password-env", "PW"])
        .env("PW", "pw")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(typo.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 12: the serve log records wrong passwords (never the password, and
/// not every one of a guesser's), refused and completed initialisations.
#[test]
fn the_serve_log_says_who_failed_and_who_initialised() {
    let s = Served::start("field-log");
    s.env.site("moa", "S_MOA");
    init(&s.env, "moa", "HW-M");
    let r = v5(&s.env, "moa", "HW-M", "POST", "/initialise", b"{}");
    assert_eq!(r.status, 409);
    let guess = fieldsync::wire::credentials::basic_auth(
        "moa",
        &fieldsync::wire::credentials::password_digest("hunter2"),
    );
    for _ in 0..5 {
        let r = common::raw(
            s.env.addr,
            "GET",
            "/sync/v5/site",
            &[
                ("Authorization", guess.expose()),
                ("msupply-site-uuid", "HW-M"),
                ("version", "14"),
            ],
            b"",
        );
        assert_eq!(r.status, 401);
    }
    let log = s.log_text();
    assert!(log.contains("site moa initialised: "), "{log}");
    assert!(log.contains("site moa asked to initialise again"), "{log}");
    let wrong: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wrong password or unknown site \"moa\""))
        .collect();
    // The 1st, 2nd and 4th of five.
    assert_eq!(wrong.len(), 3, "{log}");
    assert!(wrong[2].contains("(4 in a row)"), "{log}");
    assert!(
        !log.contains("hunter2") && !log.contains(guess.expose()),
        "{log}"
    );
}

/// Item 7: a wrong URL is named as one, at once (exit 15, a person must
/// look), never "the network" or "the central is busy": https:// to a
/// central that speaks plain HTTP, and another web server's 404.
#[test]
fn url_mistakes_say_check_the_url() {
    let env = common::Env::new("field-url");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init_url(&db, "moa", &format!("https://{}", env.addr));
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 15, "{stderr}");
    assert!(stderr.contains("speaks plain HTTP"), "{stderr}");
    assert!(stderr.contains("check the central URL"), "{stderr}");

    // Another web server on the port: 404 and a page.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = other.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in other.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let page = "<html><title>Not Found</title></html>";
            let _ = write!(
                s,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    env.config(&db, "central_url", &format!("http://{at}"));
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 15, "{stderr}");
    assert!(
        stderr.contains("something else answers at that address (HTTP 404"),
        "{stderr}"
    );
    assert!(!stderr.contains("Wi-Fi"), "{stderr}");
    let status = env.agent(&db, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("check the central URL"), "{text}");
}

/// Item 13: the small things a person typing meets.
#[test]
fn the_command_line_minds_its_manners() {
    let dir = std::env::temp_dir().join(format!("fieldsync-field-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("moa.sqlite");
    let run = |args: &[&str]| agent().arg("--db").arg(&db).args(args).output().unwrap();
    let out = run(&["sync", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("go before it: `fieldsync -q … <command>`"),
        "{err}"
    );

    let out = run(&["dev", "set-identity", "--site-id", "2", "--store", "S"]);
    assert!(out.status.success());
    let out = run(&["tables"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TABLE"), "{text}");
    assert!(!text.contains("None") && !text.contains("Field("), "{text}");
    assert!(
        text.contains("requisition.store_ID of the requisition in requisition_ID"),
        "{text}"
    );

    let out = run(&["list", "Nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`fieldsync tables` lists them"));

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"table\":\"item\",\"record\":{\"ID\":\"x\"}}\n").unwrap();
    let out = run(&["import", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.jsonl line 1: refused: item x: central data"),
        "{err}"
    );
    std::fs::write(&bad, "{\"table\":\"Location\",\"record\":{\"ID\":\"L1\",\"store_ID\":\"S\"}}\n{\"table\":\"item\" \"x\"}\n{\"table\":\n").unwrap();
    let out = run(&["import", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 2: not JSON: expected `,` or `}` at column 17"),
        "{err}"
    );
    assert!(!err.contains("at line 1"), "{err}");
    // A URL with a path: §2 drops the path, and init says so.
    let out = agent()
        .arg("--db")
        .arg(dir.join("new.sqlite"))
        .args([
            "init",
            "--url",
            "http://127.0.0.1:9/msupply",
            "--site",
            "moa",
            "--password-env",
            "PW",
        ])
        .env("PW", "pw")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("the path /msupply of http://127.0.0.1:9/msupply is not used: the v5 API is asked at http://127.0.0.1:9/sync/v5/"),
        "{said}"
    );
    let out = run(&["config", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());

    let out = Command::new(env!("CARGO_BIN_EXE_fieldsync-bench"))
        .arg("--help")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: fieldsync-bench"));
    assert!(!dir.join("bench").exists(), "--help started a benchmark");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 9: `init --password-stdin` at a terminal prompts and does not echo
/// (through a real pty: util-linux `script`).
#[test]
fn a_typed_password_is_prompted_for_and_not_shown() {
    if !common::have("script") {
        eprintln!("skipped: no `script` (util-linux) for a pty");
        return;
    }
    use std::io::{Read, Write};
    let env = common::Env::new("field-tty");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    let line = format!(
        "{} --db {} init --url {} --site moa --password-stdin",
        env!("CARGO_BIN_EXE_fieldsync"),
        db.display(),
        env.url()
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("password: ") {
                let _ = tx.send(());
            }
        }
        seen
    });
    rx.recv_timeout(std::time::Duration::from_secs(30) * common::patience())
        .expect("no password prompt");
    // The prompt is out, so echo is already off.
    std::thread::sleep(std::time::Duration::from_millis(200));
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"pw-moa\n")
        .unwrap();
    let status = child.wait().unwrap();
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(status.success(), "{seen}");
    assert!(!seen.contains("pw-moa"), "the password was shown: {seen:?}");
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 0, "the password typed was the one kept: {stderr}");
}

/// Item 3: a sync that fails before it starts shows in `status` (and the
/// light), and the next sync that starts clears it.
#[test]
fn a_sync_that_cannot_start_shows_in_status() {
    let env = common::Env::new("field-start");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    let credential = db.with_extension("sqlite.credential");
    let aside = db.with_extension("aside");
    std::fs::rename(&credential, &aside).unwrap();
    let (code, _, stderr) = env.sync(&db);
    assert_eq!(code, 3, "{stderr}");
    let status = env.agent(&db, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("no site credential"), "{text}");
    assert!(!text.contains("last attempt         ok"), "{text}");
    assert!(!text.contains("steady on"), "{text}");
    std::fs::rename(&aside, &credential).unwrap();
    assert_eq!(env.sync(&db).0, 0);
    let status = env.agent(&db, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("last attempt         ok"), "{text}");
    assert!(!text.contains("no site credential"), "{text}");
}

/// Item 2: staff commands find the device's database by themselves
/// (`FIELDSYNC_DB`), and a database they cannot reach is "run as the
/// fieldsync user", never "not set up".
#[test]
fn staff_commands_find_the_database_and_say_why_they_cannot() {
    let env = common::Env::new("field-db");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    let elsewhere = env.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = agent()
        .arg("status")
        .env("FIELDSYNC_DB", &db)
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("site                 moa"), "{text}");
    // A path this user cannot reach (here: under a file, as the denied
    // directory of a packaged Pi is for a user outside its group).
    let file = env.dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    for cmd in ["status", "check", "sync"] {
        let out = agent()
            .arg("--db")
            .arg(file.join("fieldsync.sqlite"))
            .arg(cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{cmd}: {err}");
        assert!(
            err.contains("cannot reach") && err.contains("sudo -u fieldsync"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("run `fieldsync init`"), "{cmd}: {err}");
    }
}

/// Item 12: central data in bulk — 10,000 items in one command; a bad line
/// anywhere imports nothing and is named.
#[test]
fn the_central_imports_central_data_in_bulk() {
    let s = Served::start("field-import");
    s.env.site("moa", "S_MOA");
    let file = s.env.dir.join("items.jsonl");
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "{{\"table\":\"item\",\"record\":{{\"ID\":\"I{i}\",\"code\":\"C{i}\",\"name\":\"Item {i}\"}}}}\n"
        ));
    }
    let bad = s.env.dir.join("bad.jsonl");
    std::fs::write(&bad, format!("{text}{{\"table\":\"transact\",\"record\":{{\"ID\":\"T1\",\"store_ID\":\"S_MOA\"}}}}\n")).unwrap();
    let out = s.admin(&["import", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 10001: transact is edited where its store is active"),
        "{err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    assert_eq!(s.env.central_count("item"), 0);

    std::fs::write(&file, &text).unwrap();
    let started = std::time::Instant::now();
    let out = s.admin(&["import", file.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 10000 record(s)"
    );
    assert_eq!(s.env.central_count("item"), 10_000);
    println!("item 12: 10,000 items imported in {took:?}");
    // They reach the site like any central data.
    init(&s.env, "moa", "HW-M");
    let page = v5(
        &s.env,
        "moa",
        "HW-M",
        "GET",
        "/central_records?cursor=0&limit=1000",
        b"",
    )
    .json();
    assert_eq!(
        page["maxCursor"].as_u64().map(|m| m >= 10_000),
        Some(true),
        "{}",
        page["maxCursor"]
    );
}

/// Item 1: a refused `init` changes nothing — the credential included.
#[test]
fn a_refused_init_changes_nothing() {
    let env = common::Env::new("field-init");
    env.site("moa", "S_MOA");
    env.site("kawakawa", "S_KAW");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    let credential = db.with_extension("sqlite.credential");
    let conf = db.with_extension("sqlite.conf");
    let before = (
        std::fs::read(&credential).unwrap(),
        std::fs::read(&conf).unwrap(),
    );
    let out = agent()
        .arg("--db")
        .arg(&db)
        .args([
            "init",
            "--url",
            &env.url(),
            "--site",
            "kawakawa",
            "--password-env",
            "PW",
        ])
        .env("PW", "pw-kawakawa")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("belongs to site moa") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        (
            std::fs::read(&credential).unwrap(),
            std::fs::read(&conf).unwrap()
        ),
        before,
        "the refused init wrote"
    );
    assert_eq!(env.sync(&db).0, 0);
}

/// Item 4: a record that can never be sent is set aside without stopping
/// the sync, `status` says what to do in words, and a person can discard it
/// (with a confirmation and a log line) — after which nothing asks any more.
#[test]
fn a_record_that_cannot_be_sent_can_be_dropped() {
    let env = common::Env::new("field-drop");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    // The app stored text that is not UTF-8: it can never be sent. It is the
    // only change waiting, so the final push follows the set-aside at once.
    common::sql(&db)
        .execute(
            "INSERT INTO record (table_name, record_id, data) VALUES ('transact', 'B4', \
             CAST(X'7B224944223A224234222C2273746F72655F4944223A22535F4D4F41222C226E223A22FF227D' AS TEXT))",
            [],
        )
        .unwrap();
    let (code, report, stderr) = env.sync(&db);
    assert_eq!(code, 16, "set aside, not a protocol error: {stderr}");
    assert_eq!(
        report["rejected"].as_u64().unwrap() + report["too_large"].as_u64().unwrap(),
        1,
        "{report}"
    );
    let led = |db: &std::path::Path| {
        let out = env.agent(db, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["led"].as_str().unwrap_or("").to_string()
    };
    let text = |db: &std::path::Path| {
        String::from_utf8_lossy(&env.agent(db, &["status"]).stdout).into_owned()
    };
    let status = text(&db);
    assert!(status.contains("queue drop TABLE ID --yes"), "{status}");
    assert_eq!(led(&db), "attention");
    // Put back: no longer a person's matter until the next sync says so.
    assert!(env.agent(&db, &["queue", "retry"]).status.success());
    let status = text(&db);
    assert!(status.contains("sent by the next sync"), "{status}");
    assert_ne!(led(&db), "attention");
    assert_eq!(env.sync(&db).0, 16);
    // Discarding asks for a confirmation first.
    let ask = env.agent(&db, &["queue", "drop", "transact", "B4"]);
    assert_eq!(ask.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&ask.stderr).contains("--yes"));
    let done = env.agent(&db, &["queue", "drop", "transact", "B4", "--yes"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("a person dropped"));
    let left: i64 = common::sql(&db)
        .query_row(
            "SELECT count(*) FROM record WHERE record_id = 'B4'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "never synced: removed here");
    let status = text(&db);
    assert!(status.contains("nothing is set aside now"), "{status}");
    assert!(!status.contains("what to do"), "{status}");
    assert_eq!(led(&db), "synced");
    assert_eq!(env.sync(&db).0, 0);
}

/// Whether the tests run as root (who ignores file modes: a test of what
/// another user meets drops to `nobody` with setpriv).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The agent as a user who is not root: `nobody` when the tests run as root
/// (None without setpriv), else the test's own user.
fn agent_as_other() -> Option<Command> {
    if !running_as_root() {
        return Some(agent());
    }
    if !common::have("setpriv") {
        return None;
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_fieldsync"));
    Some(c)
}

/// A copy of the device's files in `dir`, owned by the user of
/// [`agent_as_other`]; returns its database.
fn device_copy(db: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir(dir).unwrap();
    for ext in ["sqlite", "sqlite.conf", "sqlite.credential", "sqlite.state"] {
        std::fs::copy(db.with_extension(ext), dir.join(format!("moa.{ext}"))).unwrap();
    }
    if running_as_root() {
        let ok = Command::new("chown")
            .args(["-R", "65534"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    dir.join("moa.sqlite")
}

/// Item 8: a database on storage that refuses writes (a card that turned
/// read-only, a read-only mount) can still be diagnosed: `status` and
/// `check` work and say so; `sync` says what to look at.
#[test]
fn a_read_only_card_can_be_diagnosed() {
    if agent_as_other().is_none() {
        eprintln!("skipped: running as root without setpriv to drop to another user");
        return;
    }
    let env = common::Env::new("field-ro");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    // The device's files, on a directory nobody may write.
    let dir = env.dir.join("card");
    let ro = device_copy(&db, &dir);
    let run = |args: &[&str]| {
        agent_as_other()
            .unwrap()
            .arg("--db")
            .arg(&ro)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = Command::new("chmod")
        .arg("555")
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("storage              read-only"), "{text}");
    assert!(
        text.contains("SD card that turned read-only is failing"),
        "{text}"
    );
    assert!(text.contains("rapid flicker"), "{text}");
    let json = run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["read_only"], true);
    let check = run(&["check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("the connection to the central works"));
    let sync = run(&["sync"]);
    assert_eq!(sync.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&sync.stderr).contains("card or mount became read-only"),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
}

/// Item 6: a stick this user may not write says what to do about it.
#[test]
fn a_stick_mounted_for_another_user_says_how_to_mount_it() {
    if agent_as_other().is_none() {
        eprintln!("skipped: running as root without setpriv to drop to another user");
        return;
    }
    let env = common::Env::new("field-stick");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    env.init(&db, "moa");
    assert_eq!(env.sync(&db).0, 0);
    let dev = device_copy(&db, &env.dir.join("device"));
    // The stick: a directory of another user (root's own, or the test user's
    // made unwritable when not root).
    let stick = env.dir.join("stick");
    std::fs::create_dir(&stick).unwrap();
    if !running_as_root() {
        assert!(Command::new("chmod")
            .arg("555")
            .arg(&stick)
            .status()
            .unwrap()
            .success());
    }
    let out = agent_as_other()
        .unwrap()
        .arg("--db")
        .arg(&dev)
        .arg("export")
        .arg(&stick)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("uid=fieldsync,gid=fieldsync"), "{err}");
    let _ = Command::new("chmod").arg("755").arg(&stick).status();
}

/// Item 10: a device never set up shows the light off, as README's table
/// says — not "a person must act".
#[test]
fn a_device_never_set_up_shows_the_light_off() {
    let env = common::Env::new("field-off");
    let out = env.agent(&env.db("never"), &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["led"], "off", "{v}");
    let out = env.agent(&env.db("never"), &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("off: not set up yet"), "{text}");
}

/// Item 10: the packaged udev rule hands over only the status LED the
/// package uses, never the Pi's power LED (blinking, it reads as
/// under-voltage), and agrees with the package's default LED.
#[test]
fn the_udev_rule_takes_only_the_status_led() {
    let rule = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/60-fieldsync-leds.rules"
    ))
    .unwrap();
    let rules: Vec<&str> = rule
        .lines()
        .filter(|l| l.starts_with("SUBSYSTEM=="))
        .collect();
    assert_eq!(rules.len(), 1, "{rule}");
    let kernel = rules[0]
        .split("KERNEL==\"")
        .nth(1)
        .and_then(|k| k.split('"').next())
        .expect("the rule names its LEDs");
    let names: Vec<&str> = kernel.split('|').collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("PWR") || *n == "led1" || n.contains('*')),
        "{kernel}"
    );
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/default.env"
    ))
    .unwrap();
    let led = default
        .lines()
        .find_map(|l| l.trim().strip_prefix("FIELDSYNC_LED="))
        .expect("the package sets a status LED");
    assert!(names.contains(&led.trim_matches('"')), "{led} vs {kernel}");
}

/// Item 13: the link emulator listens where it is told and says what it
/// forwards, not a bare address.
#[test]
fn the_link_emulator_listens_where_told_and_says_what_it_does() {
    use std::io::BufRead;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldsync-linkem"))
        .arg(upstream.local_addr().unwrap().to_string())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rtt-ms",
            "600",
            "--down-bps",
            "32000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains(&format!("listening on 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(line.contains("down 32000 B/s, RTT 600 ms"), "{line}");
    assert!(
        line.contains(&format!("point the agent at http://127.0.0.1:{port}")),
        "{line}"
    );
}

/// Item 7: a misspelt host name says "check the URL", and `status` names
/// the central it tries.
#[test]
fn a_misspelt_host_says_check_the_url() {
    let dns = fieldsync::testkit::dns::DnsServer::start(&[(
        "central.clinic.test",
        std::net::Ipv4Addr::LOCALHOST,
    )])
    .unwrap();
    let dns_addr = dns.addr.to_string();
    let env = common::Env::new("field-nxdomain");
    env.site("moa", "S_MOA");
    let db = env.db("moa");
    let vars = [("FIELDSYNC_DNS", dns_addr.as_str()), ("PW", "pw-moa")];
    let out = common::agent_env(
        &db,
        &[
            "init",
            "--url",
            "https://centrl.clinic.test",
            "--site",
            "moa",
            "--password-env",
            "PW",
        ],
        &vars,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::agent_env(&db, &["sync"], &vars);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = common::agent_env(&db, &["status"], &vars);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("central              https://centrl.clinic.test"),
        "{text}"
    );
    assert!(
        text.contains("host name does not exist: check it in the URL"),
        "{text}"
    );
}
