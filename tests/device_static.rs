//! The static aarch64 agent (issue 16) as a tablet would run it: under
//! `qemu-aarch64` with an empty library prefix (no host library reachable, as on
//! Android, where no glibc exists), against the reference central on loopback
//! reached *by name* through a DNS server of the test — not `/etc/hosts`, not the
//! system's resolver. Initialise, pull, a local write, push, status, and `check`.
//!
//! Runs when `FIELDSYNC_STATIC_AGENT` names the binary (`cross/build.sh
//! aarch64-static` builds it; CI sets it); otherwise it says so and checks nothing.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Env;
use fieldsync::testkit::dns::DnsServer;

fn static_agent() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("FIELDSYNC_STATIC_AGENT")?);
    assert!(
        p.exists(),
        "FIELDSYNC_STATIC_AGENT={} does not exist",
        p.display()
    );
    Some(p)
}

/// Runs the static agent under qemu with `root` as its whole library prefix and
/// no environment but what is given (no HOME, no PATH: a bare app process).
fn run(bin: &Path, root: &Path, db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg("-L")
        .arg(root)
        .arg(bin)
        .arg("--db")
        .arg(db)
        .args(args);
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("qemu-aarch64 runs")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_static_agent_syncs_by_name_with_no_library_reachable() {
    let Some(bin) = static_agent() else {
        eprintln!("note: FIELDSYNC_STATIC_AGENT is not set; this test checks nothing here");
        return;
    };
    // No interpreter, no shared library: nothing for a loader to find.
    let elf = std::fs::read(&bin).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    if common::have("readelf") {
        let r = Command::new("readelf")
            .args(["-d", "-l"])
            .arg(&bin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(
            !text.contains("(NEEDED)"),
            "the static agent needs a shared library:\n{text}"
        );
        assert!(
            !text.contains("INTERP"),
            "the static agent asks for an interpreter:\n{text}"
        );
    }

    let env = Env::new("static");
    env.site("tab", "S_TAB");
    env.central
        .put(
            "item",
            &serde_json::json!({"ID": "I1", "item_name": "Paracetamol"}),
        )
        .unwrap();
    let dns = DnsServer::start(&[("central.clinic.test", Ipv4Addr::LOCALHOST)]).unwrap();
    let root = env.dir.join("empty-root");
    std::fs::create_dir_all(&root).unwrap();
    let db = env.dir.join("tab.sqlite");
    let url = format!("http://central.clinic.test:{}", env.addr.port());
    let dns_addr = dns.addr.to_string();
    let vars = [("FIELDSYNC_DNS", dns_addr.as_str()), ("PW", "pw-tab")];

    ok(
        &run(
            &bin,
            &root,
            &db,
            &[
                "init",
                "--url",
                &url,
                "--site",
                "tab",
                "--password-env",
                "PW",
                "--allow-insecure-http",
            ],
            &vars,
        ),
        "init",
    );
    let checked = ok(&run(&bin, &root, &db, &["check"], &vars), "check");
    assert!(
        checked.contains("central.clinic.test → 127.0.0.1"),
        "{checked}"
    );
    ok(&run(&bin, &root, &db, &["sync"], &vars), "first sync");
    let item = ok(&run(&bin, &root, &db, &["get", "item", "I1"], &vars), "get");
    assert!(item.contains("Paracetamol"), "{item}");
    ok(
        &run(
            &bin,
            &root,
            &db,
            &[
                "put",
                "item_line",
                r#"{"ID":"IL1","store_ID":"S_TAB","item_ID":"I1","quantity":3}"#,
            ],
            &vars,
        ),
        "put",
    );
    ok(&run(&bin, &root, &db, &["sync"], &vars), "second sync");
    assert_eq!(
        env.central.get("item_line", "IL1").unwrap().unwrap()["quantity"],
        3,
        "the tablet's record reached the central"
    );
    let status = ok(
        &run(&bin, &root, &db, &["status", "--json"], &vars),
        "status",
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["outbox_pending"], 0, "{v}");
    assert!(
        dns.answered.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the name came from the test's DNS server"
    );
    // A name nobody knows: offline, and the message names the server asked.
    let out = run(
        &bin,
        &root,
        &db,
        &[
            "config",
            "set",
            "central_url",
            &format!("http://nowhere.clinic.test:{}", env.addr.port()),
        ],
        &vars,
    );
    ok(&out, "config set");
    let out = run(&bin, &root, &db, &["sync"], &vars);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no such name") && said.contains(&dns_addr),
        "{said}"
    );
}
