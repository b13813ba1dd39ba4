//! The responding halves of transfers (protocol §6, "Transfers"; seed 000):
//! built by the central when it integrates the initiating half, with the dummy
//! number -1, sent to both parties' sites; the responding site numbers it.
//!
//! The responding half starts as a copy of the initiating half without its
//! `om_*` keys (Open mSupply's own fields, which describe the initiating
//! document), made whole with every column at its legacy default (§10.4).
//!
//! - a finalised customer invoice (`ci`, `fn`) to a store active on another site
//!   → a supplier invoice (`si`, `nw`, on hold) with its lines;
//! - a finalised request requisition (`request`, `fn`) to such a store → a
//!   response requisition (`response`, `nw`) with its lines.
//!
//! What must hold: each initiating document gets one responding half, however
//! often it is pushed (found by its link: `linked_transaction_id`,
//! `linked_requisition_id`); a responding store active on the central is numbered
//! here [PC].

use std::collections::BTreeSet;

use super::db::{params, Connection, Dialect, OptionalExtension};
use serde_json::{json, Value};

use super::routing::{self, active_site, get};
use super::{Result, CENTRAL_SITE_ID};
use crate::legacy::columns;
use crate::legacy::owner::field;

/// One kind of transfer document and its responding half.
struct Kind {
    header: &'static str,
    line: &'static str,
    /// The line's field naming its header.
    line_parent: &'static str,
    /// Initiating (`type`, `status`) and responding `type`.
    initiating: (&'static str, &'static str),
    responding: &'static str,
    number: &'static str,
    link: &'static str,
}

const INVOICE: Kind = Kind {
    header: "transact",
    line: "trans_line",
    line_parent: "transaction_ID",
    initiating: ("ci", "fn"),
    responding: "si",
    number: "invoice_num",
    link: "linked_transaction_id",
};

const REQUISITION: Kind = Kind {
    header: "requisition",
    line: "requisition_line",
    line_parent: "requisition_ID",
    initiating: ("request", "fn"),
    responding: "response",
    number: "serial_number",
    link: "linked_requisition_id",
};

/// Builds the responding half of `table` `id` if it is a finalised initiating
/// document to a store active on another site, and none exists yet.
pub fn respond(conn: &Connection, table: &str, id: &str) -> Result<()> {
    let kind = match table {
        "transact" => &INVOICE,
        "requisition" => &REQUISITION,
        _ => return Ok(()),
    };
    let Some(doc) = get(conn, kind.header, id)? else {
        return Ok(());
    };
    if (field(&doc, "type"), field(&doc, "status")) != kind.initiating {
        return Ok(());
    }
    let from_store = field(&doc, "store_ID").to_string();
    let Some(to_store) = routing::transfer_party(conn, kind.header, &doc, &from_store)? else {
        return Ok(());
    };
    let from_site = active_site(conn, &from_store)?.unwrap_or(CENTRAL_SITE_ID);
    let to_site = active_site(conn, &to_store)?.unwrap_or(CENTRAL_SITE_ID);
    if from_site == to_site && to_site != CENTRAL_SITE_ID {
        return Ok(()); // both on one site: it handles the transfer itself
    }
    let exists: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT record_id FROM record WHERE table_name = ?1 AND json_extract(data, '$.store_ID') = ?2 \
             AND json_extract(data, '$.{}') = ?3",
            kind.link
        ))?
        .query_row(params![kind.header, to_store, id], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Ok(());
    }
    let from_name = get(conn, "store", &from_store)?
        .map(|st| field(&st, "name_ID").to_string())
        .unwrap_or_default();
    let new_id = crate::wire::credentials::new_id();
    let number = if to_site == CENTRAL_SITE_ID {
        next_central_number(conn, kind, &to_store)?
    } else {
        -1
    };
    let mut half = strip_om(&doc);
    let their_ref = doc
        .get(kind.number)
        .map(|n| n.to_string())
        .unwrap_or_default();
    let mut fields = vec![
        ("ID", json!(new_id)),
        ("store_ID", json!(to_store)),
        ("name_ID", json!(from_name)),
        ("type", json!(kind.responding)),
        ("status", json!("nw")),
        (kind.number, json!(number)),
        (kind.link, json!(id)),
        ("their_ref", json!(their_ref)),
        ("user_ID", json!("")),
    ];
    if kind.header == "transact" {
        fields.extend([
            ("hold", json!(true)),
            ("confirm_date", json!("0000-00-00")),
            ("requisition_ID", json!("")),
        ]);
    }
    for (k, v) in fields {
        half[k] = v;
    }
    let mut created = vec![(kind.header, new_id.clone(), half)];
    let lines: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT data FROM record WHERE table_name = ?1 AND json_extract(data, '$.{}') = ?2 ORDER BY record_id",
            kind.line_parent
        ))?
        .query_map(params![kind.line, id], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    for text in lines {
        let Ok(line) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let mut l = strip_om(&line);
        let lid = crate::wire::credentials::new_id();
        l["ID"] = json!(lid);
        l[kind.line_parent] = json!(new_id);
        if kind.header == "transact" {
            l["type"] = json!("stock_in");
            l["item_line_ID"] = json!("");
            l["location_ID"] = json!("");
            l["cost_price"] = line.get("sell_price").cloned().unwrap_or(json!(0));
        }
        created.push((kind.line, lid, l));
    }
    // Whole rows, `om_*` at their empty defaults (§10.4): what the initiating
    // site set there describes its own document, not this one.
    for (table, _, row) in created.iter_mut() {
        columns::outgoing(table, row);
    }
    for (table, id, row) in &created {
        routing::write_row(conn, table, id, row, None)?;
    }
    // Both halves on both sites; the response also to the responding store's collectors.
    for (table, id, row) in &created {
        let mut to: BTreeSet<u32> = routing::recipients(conn, table, row, false)?;
        to.insert(to_site);
        to.insert(from_site);
        for site in to {
            routing::enqueue(conn, site, table, id, "update", Some(row), false)?;
        }
    }
    log::info!(
        "transfer: {} {id} of {from_store} → {} {new_id} for {to_store}",
        kind.initiating.0,
        kind.responding
    );
    Ok(())
}

fn strip_om(row: &Value) -> Value {
    match row {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with("om_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The next number of a responding document of a store active on the central.
fn next_central_number(conn: &Connection, kind: &Kind, store: &str) -> Result<i64> {
    let max: Option<i64> = conn
        .prepare_cached(&match conn.dialect() {
            Dialect::Sqlite => format!(
                "SELECT max(json_extract(data, '$.{0}')) FROM record WHERE table_name = ?1 \
                 AND json_extract(data, '$.store_ID') = ?2 AND json_extract(data, '$.type') = ?3",
                kind.number
            ),
            // json_extract gives text on PostgreSQL: numbers only, compared as numbers.
            Dialect::Postgres => format!(
                "SELECT CAST(max(CAST(data::jsonb ->> '{0}' AS numeric)) AS BIGINT) FROM record \
                 WHERE table_name = ?1 AND jsonb_typeof(data::jsonb -> '{0}') = 'number' \
                 AND json_extract(data, '$.store_ID') = ?2 AND json_extract(data, '$.type') = ?3",
                kind.number
            ),
        })?
        .query_row(params![kind.header, store, kind.responding], |r| r.get(0))?;
    Ok(max.unwrap_or(0).max(0) + 1)
}
