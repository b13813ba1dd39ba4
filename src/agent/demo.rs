//! `fieldsync demo`: the whole job on an embedded default. A reference central on a
//! loopback port with a temporary directory, one clinic site with its active store,
//! a hub store on the central, an agent that initialises, writes sample records,
//! syncs both ways, and a transfer that comes back numbered. Prints what happened.

use std::path::Path;

use serde_json::json;

use crate::agent::config::{self, InitOptions};
use crate::agent::runner;
use crate::agent::{self, Failure};
use crate::central::{self, Central};
use crate::error::Class;
use crate::store::Store;
use crate::sync::Report;

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(Class::Local, format!("demo: {e}"))
}

pub fn run(dir: Option<&Path>) -> Result<(), Failure> {
    let tmp = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("fieldsync-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&tmp).map_err(fail)?;
    let central = Central::open(&tmp.join("central.sqlite")).map_err(fail)?;
    central
        .add_site("kawakawa", "KAW", "demo-password")
        .map_err(fail)?;
    central
        .add_store("S_KAW", "KAW", "Kawakawa clinic", Some("kawakawa"))
        .map_err(fail)?;
    central
        .add_store("S_HUB", "HUB", "Regional hub", None)
        .map_err(fail)?;
    central
        .put(
            "unit",
            &json!({"ID": "U_TAB", "units": "Tablet", "comment": "", "order_number": 1}),
        )
        .map_err(fail)?;
    for (id, name) in [
        ("I_PARA", "Paracetamol 500mg"),
        ("I_AMOX", "Amoxicillin 250mg"),
    ] {
        central
            .put(
                "item",
                &json!({"ID": id, "item_name": name, "code": id, "unit_ID": "U_TAB"}),
            )
            .map_err(fail)?;
    }
    let addr = central::http::spawn(central.clone(), "127.0.0.1:0")
        .map_err(fail)?
        .addr;
    println!("central: http://{addr} (data in {})", tmp.display());

    let db = tmp.join("agent.sqlite");
    config::init(
        &db,
        &InitOptions {
            url: format!("http://{addr}"),
            site: "kawakawa".into(),
            password: "demo-password".into(),
            allow_insecure_http: false,
            led: None,
            attention_led: None,
        },
    )?;
    let mut store = Store::open(&db)?;
    let mut setup = runner::setup(&store)?;
    let (origin, dns) = (
        setup.settings.origin.clone(),
        setup.settings.net.dns.clone(),
    );

    let r = runner::sync_once(&db, &mut store, &mut setup, || runner::probe(&origin, &dns));
    show("1. first sync (initialisation)", &r)?;
    println!(
        "   active store: {}",
        store.active_store()?.unwrap_or_default()
    );

    // A clinic's day: a stock line, and a finalised customer invoice to the hub.
    store.put("item_line", &json!({"ID": "IL1", "store_ID": "S_KAW", "item_ID": "I_PARA", "quantity": 500, "pack_size": 1}))?;
    store.put(
        "transact",
        &json!({"ID": "CI1", "store_ID": "S_KAW", "name_ID": "N_S_HUB", "type": "ci", "status": "fn",
                "invoice_num": 1, "hold": false, "linked_transaction_id": "", "entry_date": "2026-11-22"}),
    )?;
    store.put(
        "trans_line",
        &json!({"ID": "CL1", "transaction_ID": "CI1", "item_ID": "I_PARA", "quantity": 100, "sell_price": 0.02}),
    )?;
    let refused = store.put(
        "item",
        &json!({"ID": "I_PARA", "item_name": "renamed locally"}),
    );
    println!(
        "   local edit of central data: {}",
        refused
            .err()
            .map(|e| e.to_string())
            .unwrap_or("accepted?!".into())
    );
    println!("   waiting to send: {}", store.outbox_pending()?);

    let r = runner::sync_once(&db, &mut store, &mut setup, || runner::probe(&origin, &dns));
    show("2. second sync (push)", &r)?;
    let si = central
        .conn()
        .map_err(fail)?
        .query_row(
            "SELECT data FROM record WHERE table_name = 'transact' AND json_extract(data, '$.linked_transaction_id') = 'CI1'",
            [],
            |row| row.get::<_, String>(0),
        )
        .map_err(fail)?;
    println!("   central holds CI1 and created the hub's supplier invoice: {si}");

    let r = runner::sync_once(&db, &mut store, &mut setup, || runner::probe(&origin, &dns));
    show("3. third sync (idle)", &r)?;
    println!();
    agent::status(&db, false)?;
    Ok(())
}

fn show(title: &str, r: &Report) -> Result<(), Failure> {
    println!(
        "{title}: {:?} — pushed {}, pulled {} central + {} queued, integrated {}, {} requests, {} B sent, {} B received",
        r.outcome(),
        r.pushed,
        r.pulled_central,
        r.pulled_queue,
        r.integrated,
        r.requests,
        r.bytes_sent,
        r.bytes_received
    );
    if let Some(e) = &r.error {
        return Err(Failure::new(
            r.class.unwrap_or(Class::Local),
            format!("demo sync failed: {e}"),
        ));
    }
    Ok(())
}
