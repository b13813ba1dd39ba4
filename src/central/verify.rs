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
//!
//! The same extension compares (`Fieldsync-Extensions: verify, compare`):
//! `POST /sync/v5/fieldsync/compare` answers the site's summaries of nodes of
//! the tree of [`crate::legacy::digest`] with the central's own, over the
//! records this site holds by the central's routing, read in one read
//! transaction (one consistent state, no write lock taken). And every answer
//! carries the central's epoch (`Fieldsync-Epoch`), which changes when the
//! database is found older than the one this central last served: a restore
//! from a backup, which the sites must be told of without a person.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::SiteRow;
use super::routing::{self, get};
use super::{write_tx, Central, Result};
use crate::legacy::digest::{self, Summary, LEAF, MAX_PREFIX};
use crate::legacy::registry::{self, Kind, DISPENSARY_ONLY};
use crate::wire::protocol::{
    CompareAnswer, CompareRequest, Leaf, Node, NodeAnswer, RecordKey, RequeueAnswer, Requeued,
    MAX_COMPARE_NODES, MAX_REQUEUE,
};

/// The response header that advertises the extension, and its value.
pub const HEADER: &str = "fieldsync-extensions";
pub const EXTENSIONS: &str = "verify, compare";
/// The response header that carries the central's epoch [PC].
pub const EPOCH_HEADER: &str = "fieldsync-epoch";
/// The header of a `central_records` answer that says where the change log
/// really ends [PC] (`maxCursor` is never below the cursor asked from, §4).
pub const LOG_END_HEADER: &str = "fieldsync-log-end";

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
        conn: &mut super::db::Connection,
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
    conn: &super::db::Connection,
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

/// Why a compare request cannot be answered (the site's mistake: 400).
pub fn compare_problem(ask: &CompareRequest) -> Option<String> {
    if ask.nodes.len() > MAX_COMPARE_NODES {
        return Some(format!(
            "{} nodes in one compare request; at most {MAX_COMPARE_NODES}",
            ask.nodes.len()
        ));
    }
    ask.nodes.iter().find_map(|n| {
        if !digest::valid_prefix(&n.prefix) {
            Some(format!(
                "prefix {:?} of {} is not lowercase hex of at most {MAX_PREFIX} digits",
                n.prefix, n.table
            ))
        } else if n.hash.len() != 32
            || !n
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Some(format!(
                "hash of {} {:?} is not 32 lowercase hex digits",
                n.table, n.prefix
            ))
        } else if ask.root && !n.prefix.is_empty() {
            Some("a root compare request names whole tables (empty prefixes)".into())
        } else {
            None
        }
    })
}

/// What the central holds under one asked node.
struct Tally {
    node: Node,
    mine: Summary,
    children: [Summary; 16],
    /// The records, while there are at most [`LEAF`].
    leaves: Vec<Leaf>,
}

impl Central {
    /// `POST /sync/v5/fieldsync/compare`: the central's side of each node the
    /// site summarised (see the module comment). `ask` is checked already
    /// ([`compare_problem`]).
    pub(crate) fn compare(
        &self,
        conn: &super::db::Connection,
        site: &SiteRow,
        ask: CompareRequest,
    ) -> Result<CompareAnswer> {
        // One snapshot for every table of the request.
        let tx = conn.read_transaction()?;
        let mut nodes = ask.nodes;
        if ask.root {
            let named: std::collections::HashSet<String> =
                nodes.iter().map(|n| n.table.clone()).collect();
            for t in registry::tables() {
                if !named.contains(t.name) {
                    nodes.push(Node {
                        table: t.name.to_string(),
                        prefix: String::new(),
                        count: 0,
                        hash: Summary::default().hash(),
                    });
                }
            }
        }
        let dispensary = routing::has_dispensary(&tx, site.site_id)?;
        let mut tallies: Vec<Tally> = nodes
            .into_iter()
            .map(|node| Tally {
                node,
                mine: Summary::default(),
                children: [Summary::default(); 16],
                leaves: Vec::new(),
            })
            .collect();
        let mut tables: Vec<String> = tallies.iter().map(|t| t.node.table.clone()).collect();
        tables.sort_unstable();
        tables.dedup();
        routing::with_memo(|| {
            for table in &tables {
                routing::scan_table(&tx, table, |id, data| {
                    let bucket = digest::bucket(&id);
                    let wanted = tallies
                        .iter()
                        .any(|t| &t.node.table == table && bucket.starts_with(&t.node.prefix));
                    if !wanted {
                        return Ok(());
                    }
                    let Ok(row) = serde_json::from_str::<Value>(&data) else {
                        return Ok(());
                    };
                    if !holds(&tx, site.site_id, dispensary, table, &row)? {
                        return Ok(());
                    }
                    let d = digest::record(table, &id, &data);
                    for t in tallies
                        .iter_mut()
                        .filter(|t| &t.node.table == table && bucket.starts_with(&t.node.prefix))
                    {
                        t.mine.add(&d);
                        if let Some(c) = bucket.as_bytes().get(t.node.prefix.len()) {
                            t.children[usize::from(hex_value(*c))].add(&d);
                        }
                        if t.leaves.len() as u64 <= LEAF {
                            t.leaves.push(Leaf {
                                id: id.clone(),
                                hash: digest::hex(&d),
                            });
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        drop(tx);
        let nodes = tallies
            .into_iter()
            .filter_map(|t| {
                let same = t.mine.count == t.node.count && t.mine.hash() == t.node.hash;
                // A table neither side holds anything of is not worth a word.
                if same && t.mine.count == 0 && ask.root && t.node.count == 0 {
                    return None;
                }
                let (children, records) = if same {
                    (None, None)
                } else if t.mine.count <= LEAF || t.node.prefix.len() >= MAX_PREFIX {
                    (None, Some(t.leaves))
                } else {
                    let kids = t
                        .children
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.count > 0)
                        .map(|(i, s)| Node {
                            table: t.node.table.clone(),
                            prefix: format!("{}{}", t.node.prefix, HEX[i] as char),
                            count: s.count,
                            hash: s.hash(),
                        })
                        .collect();
                    (Some(kids), None)
                };
                Some(NodeAnswer {
                    table: t.node.table,
                    prefix: t.node.prefix,
                    same,
                    children,
                    records,
                })
            })
            .collect();
        Ok(CompareAnswer { nodes })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(root: bool, prefix: &str, hash: &str) -> CompareRequest {
        CompareRequest {
            root,
            nodes: vec![Node {
                table: "item".into(),
                prefix: prefix.into(),
                count: 1,
                hash: hash.into(),
            }],
        }
    }

    #[test]
    fn compare_requests_are_checked_before_anything_is_read() {
        let zero = Summary::default().hash();
        assert_eq!(compare_problem(&ask(true, "", &zero)), None);
        assert_eq!(compare_problem(&ask(false, "0a", &zero)), None);
        assert!(compare_problem(&ask(true, "0", &zero))
            .unwrap()
            .contains("whole tables"));
        assert!(compare_problem(&ask(false, "0A", &zero))
            .unwrap()
            .contains("lowercase hex"));
        assert!(compare_problem(&ask(false, "", "xyz"))
            .unwrap()
            .contains("32 lowercase hex"));
        // A multi-byte character where a slice would cut it: refused, no panic.
        let odd = format!("{}é{}", "0".repeat(15), "0".repeat(15));
        assert_eq!(odd.len(), 32);
        assert!(compare_problem(&ask(false, "", &odd)).is_some());
        let mut many = ask(false, "", &zero);
        many.nodes = vec![many.nodes[0].clone(); MAX_COMPARE_NODES + 1];
        assert!(compare_problem(&many).unwrap().contains("at most"));
    }
}
