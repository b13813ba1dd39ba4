//! Read-only SQL views over the `record` table, one per known legacy table
//! (`v_item`, `v_transact`, …), generated from the registry: the common legacy
//! fields as typed columns, so a clinic app, `sqlite3` or a report tool can
//! query the store without JSON functions.
//!
//! What must hold: a view only reads (SQLite views take no writes without
//! INSTEAD OF triggers, and none are made), so every write still goes through
//! `record` and its rules; the views are rewritten with the rules whenever this
//! build's registry or column list differs from the file's (see `schema`), so
//! they never name a table the registry no longer has. Every view has `ID`,
//! the owner field where the table has one, its typed columns, `origin` (`local`
//! or `sync`) and `data` (the whole row as JSON, fields the columns leave out
//! included).

use crate::legacy::registry::{self, Owner};

/// SQL type a column is read as.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Text,
    Int,
    Real,
    /// JSON true/false as 1/0.
    Bool,
}

use Ty::{Bool, Int, Real, Text};

/// The common fields of the tables apps and reports read most, by legacy name
/// (mSupply's own spelling, capitals included). Other tables get `ID`, owner,
/// `origin` and `data`.
const COLUMNS: &[(&str, &[(&str, Ty)])] = &[
    (
        "item",
        &[
            ("code", Text),
            ("item_name", Text),
            ("default_pack_size", Int),
            ("category_ID", Text),
            ("is_vaccine", Bool),
        ],
    ),
    (
        "name",
        &[
            ("code", Text),
            ("name", Text),
            ("type", Text),
            ("date_of_birth", Text),
        ],
    ),
    (
        "store",
        &[
            ("code", Text),
            ("name", Text),
            ("store_mode", Text),
            ("sync_id_remote_site", Int),
            ("name_ID", Text),
        ],
    ),
    (
        "transact",
        &[
            ("invoice_num", Int),
            ("type", Text),
            ("status", Text),
            ("name_ID", Text),
            ("entry_date", Text),
            ("confirm_date", Text),
            ("comment", Text),
            ("linked_transaction_id", Text),
        ],
    ),
    (
        "trans_line",
        &[
            ("item_ID", Text),
            ("item_name", Text),
            ("item_line_ID", Text),
            ("batch", Text),
            ("expiry_date", Text),
            ("quantity", Real),
            ("pack_size", Int),
            ("cost_price", Real),
            ("sell_price", Real),
            ("line_number", Int),
        ],
    ),
    (
        "item_line",
        &[
            ("item_ID", Text),
            ("batch", Text),
            ("expiry_date", Text),
            ("available", Real),
            ("quantity", Real),
            ("pack_size", Int),
            ("cost_price", Real),
            ("sell_price", Real),
            ("location_ID", Text),
        ],
    ),
    (
        "requisition",
        &[
            ("serial_number", Int),
            ("type", Text),
            ("status", Text),
            ("name_ID", Text),
            ("date_entered", Text),
            ("periodID", Text),
            ("programID", Text),
        ],
    ),
    (
        "requisition_line",
        &[
            ("item_ID", Text),
            ("itemName", Text),
            ("stock_on_hand", Real),
            ("daily_usage", Real),
            ("suggested_quantity", Real),
            ("Cust_stock_order", Real),
            ("actualQuan", Real),
        ],
    ),
    (
        "Stock_take",
        &[
            ("serial_number", Int),
            ("status", Text),
            ("stock_take_date", Text),
            ("Description", Text),
            ("comment", Text),
        ],
    ),
    (
        "Stock_take_lines",
        &[
            ("item_ID", Text),
            ("item_name", Text),
            ("item_line_ID", Text),
            ("Batch", Text),
            ("expiry", Text),
            ("snapshot_qty", Real),
            ("snapshot_packsize", Int),
            ("stock_take_qty", Real),
        ],
    ),
    (
        "Location",
        &[("code", Text), ("Description", Text), ("hold", Bool)],
    ),
    ("name_store_join", &[("name_ID", Text), ("inactive", Bool)]),
    ("item_store_join", &[("item_ID", Text), ("inactive", Bool)]),
    (
        "message",
        &[
            ("toStoreID", Text),
            ("type", Text),
            ("status", Text),
            ("body", Text),
        ],
    ),
    (
        "temperature_log",
        &[
            ("sensor_ID", Text),
            ("location_ID", Text),
            ("temperature", Real),
            ("date", Text),
            ("time", Int),
        ],
    ),
    (
        "user",
        &[
            ("name", Text),
            ("first_name", Text),
            ("last_name", Text),
            ("active", Bool),
        ],
    ),
    ("pref", &[("item", Text), ("user_ID", Text)]),
    ("list_master", &[("code", Text), ("description", Text)]),
    (
        "list_master_line",
        &[("item_master_ID", Text), ("item_ID", Text)],
    ),
    (
        "period",
        &[
            ("name", Text),
            ("startDate", Text),
            ("endDate", Text),
            ("periodScheduleID", Text),
        ],
    ),
];

/// The view's name for a legacy table.
pub fn view_name(table: &str) -> String {
    format!("v_{table}")
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn column(field: &str, ty: Ty) -> String {
    // Field names are our own constants; the JSON path quotes them anyway.
    let path = format!("json_extract(data, '$.\"{field}\"')");
    let expr = match ty {
        Ty::Text => path,
        Ty::Int => format!("CAST({path} AS INTEGER)"),
        Ty::Real => format!("CAST({path} AS REAL)"),
        Ty::Bool => format!("CASE {path} WHEN 1 THEN 1 WHEN 0 THEN 0 END"),
    };
    format!("{expr} AS {}", quote(field))
}

/// `(view name, CREATE VIEW statement)` for every registry table, in rank order.
pub fn views() -> Vec<(String, String)> {
    registry::tables()
        .map(|t| {
            let mut cols = vec!["record_id AS \"ID\"".to_string()];
            let owner = match t.owner {
                Owner::Field("ID") | Owner::None => None,
                Owner::Field(f) | Owner::Parent { field: f, .. } => Some(f),
            };
            if let Some(f) = owner {
                cols.push(column(f, Ty::Text));
            }
            let extra = COLUMNS
                .iter()
                .find(|(name, _)| *name == t.name)
                .map_or(&[][..], |(_, c)| c);
            for (f, ty) in extra.iter().filter(|(f, _)| Some(*f) != owner) {
                cols.push(column(f, *ty));
            }
            cols.push("origin".into());
            cols.push("data".into());
            let name = view_name(t.name);
            let sql = format!(
                "CREATE VIEW {} AS SELECT {} FROM record WHERE table_name = '{}' {MARK};\n",
                quote(&name),
                cols.join(", "),
                t.name
            );
            (name, sql)
        })
        .collect()
}

/// Marks the views fieldsync made (SQLite keeps a view's text as written), so
/// an app's own views are never touched.
const MARK: &str = "/* made by fieldsync from its table registry */";

/// Drops the views fieldsync made, this build's and older ones (of tables a
/// newer registry may no longer have), and any view under one of this build's
/// view names (another program's replacement: the name is fieldsync's).
pub fn drop_all(conn: &rusqlite::Connection) -> Result<(), super::StoreError> {
    let err = |e| super::StoreError::sqlite("dropping the views", e);
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'view' AND instr(sql, ?1) > 0")
        .and_then(|mut s| {
            s.query_map([MARK], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(err)?;
    for (name, _) in views() {
        let is_view: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?1)",
                [&name],
                |r| r.get(0),
            )
            .map_err(err)?;
        if is_view && !names.contains(&name) {
            names.push(name);
        }
    }
    for n in names {
        conn.execute_batch(&format!("DROP VIEW IF EXISTS {};", quote(&n)))
            .map_err(err)?;
    }
    Ok(())
}

/// What differs from this build's views: one missing, or replaced by another
/// program (its text is not this build's). A name an app uses for a table of
/// its own is left to the app.
pub fn verify(conn: &rusqlite::Connection) -> Result<Vec<String>, super::StoreError> {
    let err = |e| super::StoreError::sqlite("checking the views", e);
    let mut problems = Vec::new();
    for (name, want) in views() {
        let have: Option<(String, Option<String>)> = conn
            .query_row(
                "SELECT type, sql FROM sqlite_master WHERE lower(name) = lower(?1)",
                [&name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(err)?;
        match have {
            None => problems.push(format!("view {name} was missing")),
            Some((t, sql))
                if t == "view"
                    && sql.as_deref().map(|s| s.trim().trim_end_matches(';'))
                        != Some(want.trim().trim_end_matches(';')) =>
            {
                problems.push(format!("view {name} was replaced"))
            }
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// Creates the views; a name an app already uses for its own table is left to
/// the app (with a warning), never a reason the store cannot open.
pub fn create_all(conn: &rusqlite::Connection) -> Result<(), super::StoreError> {
    for (name, sql) in views() {
        let taken: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE lower(name) = lower(?1))",
                [&name],
                |r| r.get(0),
            )
            .map_err(|e| super::StoreError::sqlite("reading the schema", e))?;
        if taken {
            log::warn!("{name} already names another program's table or view; fieldsync's view of that name is not made");
            continue;
        }
        conn.execute_batch(&sql)
            .map_err(|e| super::StoreError::sqlite(format!("creating view {name}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use serde_json::json;

    #[test]
    fn views_type_the_common_fields_and_refuse_writes() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_site_identity(1, "S", None).unwrap();
        s.put(
            "transact",
            &json!({"ID": "T1", "store_ID": "S", "invoice_num": 7, "type": "si", "hold": false}),
        )
        .unwrap();
        s.put(
            "trans_line",
            &json!({"ID": "L1", "transaction_ID": "T1", "quantity": 2.5, "pack_size": 10}),
        )
        .unwrap();
        let (num, ty, store): (i64, String, String) = s
            .conn()
            .query_row(
                "SELECT invoice_num, typeof(invoice_num), store_ID FROM v_transact WHERE ID = 'T1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((num, ty.as_str(), store.as_str()), (7, "integer", "S"));
        let (q, pack, parent): (f64, i64, String) = s
            .conn()
            .query_row(
                "SELECT quantity, pack_size, transaction_ID FROM v_trans_line",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((q, pack, parent.as_str()), (2.5, 10, "T1"));
        let e = s
            .conn()
            .execute("UPDATE v_transact SET status = 'fn'", [])
            .unwrap_err();
        assert!(e.to_string().contains("cannot modify"), "{e}");
        let n: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND name LIKE 'v\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n as usize, crate::legacy::registry::tables().count());
        let marked: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND instr(sql, ?1) > 0",
                [super::MARK],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(marked as usize, crate::legacy::registry::tables().count());
        // An app's own report view over `record` survives a rewrite of ours.
        s.conn()
            .execute_batch(
                "CREATE VIEW v_my_report AS SELECT record_id FROM record WHERE table_name = 'transact'",
            )
            .unwrap();
        super::drop_all(s.conn()).unwrap();
        super::create_all(s.conn()).unwrap();
        let mine: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'v_my_report'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(mine, 1);
    }
}
