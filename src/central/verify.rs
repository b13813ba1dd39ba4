//! The central's half of this project's verification extension [PC]: a site
//! that found records changed behind its rules, which it may not change
//! itself, asks for the central's copies again (`POST
//! /sync/v5/fieldsync/requeue`). Every answer of this central advertises the
//! extension (`Fieldsync-Extensions: verify`), the way compressed pushes are
//! advertised (§9.1); an agent never calls it on a central that did not.
//!
//! What holds: only what the site may hold is sent (its routing, as
//! initialisation would); nothing is changed on the central; the answer says,
//! record by record, whether a copy was queued, whether the central has none,
//! or whether the site should not hold that record at all.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::SiteRow;
use super::routing::{self, get};
use super::{write_tx, Central, Result};
use crate::legacy::registry::{self, Kind, DISPENSARY_ONLY};
use crate::wire::protocol::{RecordKey, RequeueAnswer, Requeued, MAX_REQUEUE};

/// The response header that advertises the extension, and its value.
pub const HEADER: &str = "fieldsync-extensions";
pub const EXTENSIONS: &str = "verify";

/// `POST /sync/v5/fieldsync/requeue` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Requeue {
    pub records: Vec<RecordKey>,
}

impl Central {
    /// `POST /sync/v5/fieldsync/requeue`: queues the central's copy of each
    /// named record the site may hold.
    pub(crate) fn requeue(
        &self,
        conn: &mut rusqlite::Connection,
        site: &SiteRow,
        ask: Requeue,
    ) -> Result<RequeueAnswer> {
        let tx = write_tx(conn)?;
        let mut out = Vec::with_capacity(ask.records.len());
        let dispensary = routing::has_dispensary(&tx, site.site_id)?;
        routing::with_memo(|| {
            for key in ask.records.into_iter().take(MAX_REQUEUE) {
                let status = match get(&tx, &key.table_name, &key.record_id)? {
                    None => Requeued::Absent,
                    Some(row) if holds(&tx, site.site_id, dispensary, &key.table_name, &row)? => {
                        routing::enqueue(
                            &tx,
                            site.site_id,
                            &key.table_name,
                            &key.record_id,
                            "update",
                            Some(&row),
                            false,
                        )?;
                        Requeued::Queued
                    }
                    Some(_) => Requeued::NotHeld,
                };
                out.push((key, status));
            }
            Ok(())
        })?;
        tx.commit()?;
        let queued = out.iter().filter(|(_, s)| *s == Requeued::Queued).count();
        log::info!(
            "site {}: {queued} record(s) queued again on its request (changed behind its rules)",
            site.name
        );
        Ok(RequeueAnswer { records: out })
    }
}

/// Whether `site` holds `row` of `table` by the central's routing: central
/// data every site reads (dispensary-only tables only a dispensary site), the
/// rest where initialisation would queue it.
fn holds(
    conn: &rusqlite::Connection,
    site: u32,
    dispensary: bool,
    table: &str,
    row: &Value,
) -> Result<bool> {
    Ok(match registry::row_kind(table, row) {
        Kind::Central | Kind::Created => dispensary || !DISPENSARY_ONLY.contains(&table),
        Kind::Local => false,
        _ => routing::recipients(conn, table, row, true)?.contains(&site),
    })
}
