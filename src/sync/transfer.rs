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

use crate::store::numbering::Numbering;
use crate::store::{Store, StoreError};

/// What gets numbered: supplier invoices and response requisitions.
const KINDS: &[Numbering] = &[
    Numbering {
        table: "transact",
        doc_type: "si",
        number: "invoice_num",
        link: "linked_transaction_id",
        counter: "si_number",
    },
    Numbering {
        table: "requisition",
        doc_type: "response",
        number: "serial_number",
        link: "linked_requisition_id",
        counter: "response_number",
    },
];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Numbered {
    pub table: String,
    pub id: String,
    pub number: i64,
    pub linked: String,
}

/// What a numbering pass did.
#[derive(Debug, Default)]
pub struct Pass {
    pub numbered: Vec<Numbered>,
    /// Documents with no number and no link to an initiating one: not touched.
    pub unlinked: Vec<String>,
    /// Documents that could not be numbered (the store's highest number leaves
    /// none after it): not touched, with the reason.
    pub failed: Vec<String>,
}

/// Numbers every unnumbered, linked responding document of the active store.
/// One that cannot be numbered is reported and left, never blocks the rest.
pub fn number_all(store: &mut Store, active_store: &str) -> Result<Pass, StoreError> {
    let mut pass = Pass::default();
    for kind in KINDS {
        for (id, link) in store.unnumbered(kind, active_store)? {
            if link.is_empty() {
                pass.unlinked.push(format!("{} {id}", kind.table));
                continue;
            }
            match store.give_number(kind, &id, active_store) {
                Ok(number) => pass.numbered.push(Numbered {
                    table: kind.table.into(),
                    id,
                    number,
                    linked: link,
                }),
                Err(e @ StoreError::BadRecord { .. }) => {
                    pass.failed.push(format!("{} {id}: {e}", kind.table));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn received(s: &mut Store, rows: &[serde_json::Value]) {
        let tx = s.receiving().unwrap();
        for row in rows {
            tx.write_received("transact", row["ID"].as_str().unwrap(), &row.to_string())
                .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn numbers_linked_supplier_invoices_once_and_queues_them() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        let rows: Vec<_> = [("SI1", -1, "CI1"), ("SI0", 4, "CI0"), ("SI2", -1, "")]
            .iter()
            .map(|(id, num, link)| {
                json!({"ID": id, "store_ID": "S", "type": "si", "invoice_num": num,
                       "linked_transaction_id": link})
            })
            .collect();
        received(&mut s, &rows);
        let Pass {
            numbered, unlinked, ..
        } = number_all(&mut s, "S").unwrap();
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
        assert_eq!(s.outbox_pending().unwrap(), 1);
        let again = number_all(&mut s, "S").unwrap();
        assert!(again.numbered.is_empty(), "never renumbered");
    }

    #[test]
    fn numbers_read_leniently_and_never_wrap() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        received(
            &mut s,
            &[
                json!({"ID": "OLD", "store_ID": "S", "type": "si", "invoice_num": "12",
                       "linked_transaction_id": "C0"}),
                json!({"ID": "NEW", "store_ID": "S", "type": "si", "invoice_num": -1,
                       "linked_transaction_id": "C1"}),
            ],
        );
        let pass = number_all(&mut s, "S").unwrap();
        assert_eq!(pass.numbered[0].number, 13, "\"12\" counts as 12");
        received(
            &mut s,
            &[
                json!({"ID": "MAX", "store_ID": "S", "type": "si", "invoice_num": i64::MAX,
                       "linked_transaction_id": "C2"}),
                json!({"ID": "LATE", "store_ID": "S", "type": "si", "invoice_num": -1,
                       "linked_transaction_id": "C3"}),
            ],
        );
        let pass = number_all(&mut s, "S").unwrap();
        assert!(pass.numbered.is_empty());
        assert_eq!(pass.failed.len(), 1, "{:?}", pass.failed);
        assert!(
            pass.failed[0].contains("no next number"),
            "{:?}",
            pass.failed
        );
        assert_eq!(
            s.get("transact", "LATE").unwrap().unwrap()["invoice_num"],
            -1
        );
    }

    #[test]
    fn documents_written_here_keep_their_number() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        // Case 40: a response requisition written locally with serial 0 is pushed
        // with 0, never renumbered.
        s.put(
            "requisition",
            &json!({"ID": "R0", "store_ID": "S", "type": "response", "serial_number": 0,
                    "linked_requisition_id": "REQ1"}),
        )
        .unwrap();
        let pass = number_all(&mut s, "S").unwrap();
        assert!(pass.numbered.is_empty(), "{:?}", pass.numbered);
        assert_eq!(
            s.get("requisition", "R0").unwrap().unwrap()["serial_number"],
            0
        );
    }
}
