//! Transfer numbering (protocol §7.5): the responding half of a transfer arrives
//! from the central with number -1; this site gives it the store's next number and
//! queues that change for push, so the central and the initiating site see it.
//!
//! Only documents *received* from the central, and not edited here since, are
//! numbered (§7.5 rev 2): a document written on this site keeps the number its
//! writer gave, even 0 (the store's `local_edit` table says which are which).
//!
//! What must hold: a number is given once. The new number, the counter and the
//! outbox entry are written in one transaction (the number through the ordinary
//! local-write path, so the store's trigger captures it); rows already numbered
//! (≥ 1) are never renumbered, and a re-delivered -1 copy of a numbered invoice is
//! ignored by integration, never renumbered.

use rusqlite::{params, Connection};

use crate::store::StoreError;
use crate::store::{self, Store};

/// What gets numbered: (table, type, number field, link field, counter).
const KINDS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "transact",
        "si",
        "invoice_num",
        "linked_transaction_id",
        "si_number",
    ),
    (
        "requisition",
        "response",
        "serial_number",
        "linked_requisition_id",
        "response_number",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Numbered {
    pub table: String,
    pub id: String,
    pub number: i64,
    pub linked: String,
}

/// Numbers every unnumbered, linked responding document of the active store.
/// Unlinked ones with a number below 1 are returned in `unlinked`, not touched.
pub fn number_all(
    store: &mut Store,
    active_store: &str,
) -> Result<(Vec<Numbered>, Vec<String>), StoreError> {
    let mut numbered = Vec::new();
    let mut unlinked = Vec::new();
    for &(table, doc_type, num_field, link_field, counter) in KINDS {
        for (id, link) in candidates(
            store.conn(),
            table,
            doc_type,
            num_field,
            link_field,
            active_store,
        )? {
            if link.is_empty() {
                unlinked.push(format!("{table} {id}"));
                continue;
            }
            let tx = store.tx()?;
            let next = next_number(&tx, table, doc_type, num_field, counter, active_store)?;
            store::put_local(
                &tx,
                table,
                &serde_json::json!({"ID": id, num_field: next}),
                "transfer numbering",
            )?;
            tx.execute(
                "UPDATE counter SET value = ?2 WHERE name = ?1",
                params![counter, next],
            )
            .map_err(|e| StoreError::sqlite("saving the number counter", e))?;
            tx.commit()
                .map_err(|e| StoreError::sqlite("committing a transfer number", e))?;
            numbered.push(Numbered {
                table: table.into(),
                id,
                number: next,
                linked: link,
            });
        }
    }
    Ok((numbered, unlinked))
}

fn candidates(
    conn: &Connection,
    table: &str,
    doc_type: &str,
    num_field: &str,
    link_field: &str,
    active: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT record_id, coalesce(json_extract(data, '$.{link_field}'), '') FROM record r \
             WHERE table_name = ?1 AND json_extract(data, '$.store_ID') = ?2 \
               AND json_extract(data, '$.type') = ?3 \
               AND coalesce(json_extract(data, '$.{num_field}'), 0) < 1 \
               AND NOT EXISTS (SELECT 1 FROM local_edit l \
                               WHERE l.table_name = r.table_name AND l.record_id = r.record_id) \
             ORDER BY record_id"
        ))
        .map_err(|e| StoreError::sqlite("finding transfers to number", e))?;
    let rows = stmt
        .query_map(params![table, active, doc_type], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| StoreError::sqlite("finding transfers to number", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| StoreError::sqlite("finding transfers to number", e))
}

/// max(saved counter, highest number in the store) + 1.
fn next_number(
    conn: &Connection,
    table: &str,
    doc_type: &str,
    num_field: &str,
    counter: &str,
    active: &str,
) -> Result<i64, StoreError> {
    let highest: i64 = conn
        .query_row(
            &format!(
                "SELECT max(coalesce((SELECT value FROM counter WHERE name = ?4), 0), \
                            coalesce((SELECT max(json_extract(data, '$.{num_field}')) FROM record \
                                      WHERE table_name = ?1 AND json_extract(data, '$.store_ID') = ?2 \
                                        AND json_extract(data, '$.type') = ?3), 0))"
            ),
            params![table, active, doc_type, counter],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::sqlite("reading the number counter", e))?;
    Ok(highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_linked_supplier_invoices_once_and_queues_them() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S").unwrap();
        s.without_rules(|tx| {
            for (id, num, link) in [("SI1", -1, "CI1"), ("SI0", 4, "CI0"), ("SI2", -1, "")] {
                let row = json!({"ID": id, "store_ID": "S", "type": "si", "invoice_num": num,
                                 "linked_transaction_id": link});
                tx.execute(
                    "INSERT INTO record (table_name, record_id, data, origin) VALUES ('transact', ?1, ?2, 'sync')",
                    params![id, row.to_string()],
                )
                .map_err(|e| StoreError::sqlite("t", e))?;
            }
            Ok(())
        })
        .unwrap();
        let (numbered, unlinked) = number_all(&mut s, "S").unwrap();
        assert_eq!(
            numbered,
            vec![Numbered {
                table: "transact".into(),
                id: "SI1".into(),
                number: 5,
                linked: "CI1".into()
            }]
        );
        assert_eq!(unlinked, vec!["transact SI2"]);
        assert_eq!(s.get("transact", "SI1").unwrap().unwrap()["invoice_num"], 5);
        assert_eq!(crate::store::outbox::pending_count(s.conn()).unwrap(), 1);
        let (again, _) = number_all(&mut s, "S").unwrap();
        assert!(again.is_empty(), "never renumbered");
    }

    #[test]
    fn documents_written_here_keep_their_number() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S").unwrap();
        // Case 40: a response requisition written locally with serial 0 is pushed
        // with 0, never renumbered.
        s.put(
            "requisition",
            &json!({"ID": "R0", "store_ID": "S", "type": "response", "serial_number": 0,
                    "linked_requisition_id": "REQ1"}),
        )
        .unwrap();
        let (numbered, _) = number_all(&mut s, "S").unwrap();
        assert!(numbered.is_empty(), "{numbered:?}");
        assert_eq!(
            s.get("requisition", "R0").unwrap().unwrap()["serial_number"],
            0
        );
    }
}
