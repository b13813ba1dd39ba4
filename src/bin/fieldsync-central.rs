//! `fieldsync-central`: the reference central's command line (serve and administer).

use std::path::PathBuf;
use std::process::ExitCode;

use fieldsync::central::Central;

const USAGE: &str = "\
usage: fieldsync-central [--db PATH] <command>

  serve [--listen ADDR]                       serve the v5 API (default 127.0.0.1:8080)
  site add NAME --code CODE (--password-env VAR | --password-file F)
  site password NAME (--password-env VAR | --password-file F)
  site reset-hardware-id NAME                 the next device to connect is bound
  site reinitialise NAME                      ask the site to initialise again
  store add ID --code CODE --name NAME [--site SITE]   (no --site: active on the central)
  store move ID [--site SITE]                 make the store active on another site
  store copy STORE --site SITE --kind collector|transfer|none
  put TABLE JSON                              central (or central store) data
  delete TABLE ID
  merge TABLE KEEP_ID DROP_ID                 item, name or clinician
  get TABLE ID
  report [--json]                             every site and its last connection

--db defaults to ./central.sqlite. TLS: put a reverse proxy in front (README).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldsync-central: {e}");
            ExitCode::from(2)
        }
    }
}

fn take(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    if i + 1 >= args.len() {
        return None;
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}

fn password(args: &mut Vec<String>) -> Result<String, String> {
    if let Some(v) = take(args, "--password-env") {
        return std::env::var(&v).map_err(|_| format!("environment variable {v} is not set"));
    }
    if let Some(f) = take(args, "--password-file") {
        return std::fs::read_to_string(&f)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("{f}: {e}"));
    }
    Err("give the password with --password-env VAR or --password-file F (never on the command line)".into())
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let db = take(&mut args, "--db")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("central.sqlite"));
    fieldsync::field::logging::init(log::LevelFilter::Info, None);
    let central = Central::open(&db).map_err(|e| e.to_string())?;
    let word = |args: &mut Vec<String>, what: &str| -> Result<String, String> {
        if args.is_empty() {
            Err(format!("missing {what}"))
        } else {
            Ok(args.remove(0))
        }
    };
    let cmd = word(&mut args, "command")?;
    let e = |e: fieldsync::central::AdminError| e.to_string();
    match cmd.as_str() {
        "serve" => {
            let listen = take(&mut args, "--listen").unwrap_or_else(|| "127.0.0.1:8080".into());
            let listener = std::net::TcpListener::bind(&listen)
                .map_err(|e| format!("listen on {listen}: {e}"))?;
            log::info!(
                "fieldsync-central serving v5 on http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            fieldsync::central::http::serve(central, listener).map_err(|e| e.to_string())
        }
        "site" => {
            let sub = word(&mut args, "site command")?;
            match sub.as_str() {
                "add" => {
                    let name = word(&mut args, "NAME")?;
                    let code = take(&mut args, "--code").unwrap_or_else(|| name.to_uppercase());
                    let pw = password(&mut args)?;
                    let id = central.add_site(&name, &code, &pw).map_err(e)?;
                    println!("site {name} added with siteId {id}");
                    Ok(())
                }
                "password" => {
                    let name = word(&mut args, "NAME")?;
                    let pw = password(&mut args)?;
                    central.set_password(&name, &pw).map_err(e)
                }
                "reset-hardware-id" => central
                    .reset_hardware_id(&word(&mut args, "NAME")?)
                    .map_err(e),
                "reinitialise" => central
                    .request_reinitialise(&word(&mut args, "NAME")?)
                    .map_err(e),
                other => Err(format!("unknown site command {other:?}")),
            }
        }
        "store" => {
            let sub = word(&mut args, "store command")?;
            match sub.as_str() {
                "add" => {
                    let id = word(&mut args, "ID")?;
                    let code = take(&mut args, "--code").unwrap_or_else(|| id.clone());
                    let name = take(&mut args, "--name").unwrap_or_else(|| id.clone());
                    let site = take(&mut args, "--site");
                    central
                        .add_store(&id, &code, &name, site.as_deref())
                        .map_err(e)
                }
                "move" => {
                    let id = word(&mut args, "ID")?;
                    let site = take(&mut args, "--site");
                    central.move_store(&id, site.as_deref()).map_err(e)
                }
                "copy" => {
                    let store = word(&mut args, "STORE")?;
                    let site = take(&mut args, "--site").ok_or("--site is required")?;
                    let kind = take(&mut args, "--kind").ok_or("--kind is required")?;
                    central.set_copy(&store, &site, &kind).map_err(e)
                }
                other => Err(format!("unknown store command {other:?}")),
            }
        }
        "put" => {
            let table = word(&mut args, "TABLE")?;
            let text = word(&mut args, "JSON")?;
            let row: serde_json::Value =
                serde_json::from_str(&text).map_err(|err| format!("record: not JSON: {err}"))?;
            central.put(&table, &row).map_err(e)
        }
        "delete" => {
            let table = word(&mut args, "TABLE")?;
            central.delete(&table, &word(&mut args, "ID")?).map_err(e)
        }
        "merge" => {
            let table = word(&mut args, "TABLE")?;
            let keep = word(&mut args, "KEEP_ID")?;
            central
                .merge(&table, &keep, &word(&mut args, "DROP_ID")?)
                .map_err(e)
        }
        "get" => {
            let table = word(&mut args, "TABLE")?;
            match central.get(&table, &word(&mut args, "ID")?).map_err(e)? {
                Some(v) => {
                    println!("{v}");
                    Ok(())
                }
                None => Err("no such record".into()),
            }
        }
        "report" => {
            let json = args.iter().any(|a| a == "--json");
            let now = fieldsync::field::status::now_unix() as i64;
            let rows = central.report(now).map_err(e)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<5} {:<16} {:<10} {:<12} {:<8} {:<22} LAST CONNECTED",
                    "ID", "SITE", "STATUS", "STORES", "QUEUED", "HARDWARE"
                );
                for r in rows {
                    let last = r.last_seen.map_or("never".to_string(), |t| {
                        fieldsync::field::status::ago(t as u64, now as u64)
                    });
                    println!(
                        "{:<5} {:<16} {:<10} {:<12} {:<8} {:<22} {last}{}",
                        r.site_id,
                        r.name,
                        r.init_status,
                        r.stores.join(","),
                        r.queued,
                        if r.hardware_id_bound {
                            "bound"
                        } else {
                            "unbound"
                        },
                        if r.silent {
                            "  ** silent for over a month **"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("unknown command {other:?}; see --help")),
    }
}
