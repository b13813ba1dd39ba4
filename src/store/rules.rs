//! The store's ownership rules and change capture in the file: installed,
//! switched off for the agent's own connection, and verified. The trigger text
//! itself is generated beside the Rust rules, in [`crate::legacy::triggers`].
//!
//! The agent's own writes of received data pass the rules because its
//! connection switches its triggers off for the transaction
//! ([`set_enabled`], [`crate::store::Store::without_rules`]): no other
//! connection ever sees the file without them, and there is no flag another
//! program could set to turn them off for everyone.

use rusqlite::Connection;

use crate::legacy::triggers;
use crate::store::StoreError;

/// Drops every rule trigger (ours and retired ones) in the caller's transaction.
pub fn drop_all(conn: &Connection) -> Result<(), StoreError> {
    let names = triggers::all()
        .into_iter()
        .map(|(n, _)| n)
        .chain(triggers::RETIRED.iter().copied());
    let sql: String = names
        .map(|n| format!("DROP TRIGGER IF EXISTS {n};"))
        .collect();
    conn.execute_batch(&sql)
        .map_err(|e| StoreError::sqlite("dropping the store's rules", e))
}

/// Turns this connection's triggers off (`on = false`) or on again: the agent's
/// own writes of received data pass the rules and are not captured. The setting
/// belongs to the connection, not the file: every other program writing the
/// file meets the rules all along, and nothing is written to say so (dropping
/// and creating the triggers instead rewrote the schema's pages in every pull
/// transaction). Prepared statements are compiled again on the change.
pub fn set_enabled(conn: &Connection, on: bool) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        on,
    )
    .map(|_| ())
    .map_err(|e| StoreError::sqlite("switching the store's rules for this connection", e))
}

/// Creates every rule trigger in the caller's transaction.
pub fn create_all(conn: &Connection) -> Result<(), StoreError> {
    let sql: String = triggers::all()
        .into_iter()
        .map(|(_, s)| format!("{s};\n"))
        .collect();
    conn.execute_batch(&sql)
        .map_err(|e| StoreError::sqlite("installing the store's rules", e))
}

/// What [`verify`] found wrong, for the log and `status`.
pub fn verify(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let err = |e| StoreError::sqlite("checking the store's rules", e);
    let mut problems = Vec::new();
    for (name, want) in triggers::all() {
        let have: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1 AND tbl_name = 'record'",
                [name],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(err)?;
        match have {
            None => problems.push(format!("trigger {name} was missing")),
            Some(s) if s.trim() != want.trim() => {
                problems.push(format!("trigger {name} was altered"))
            }
            Some(_) => {}
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_parses_on_the_bundled_engine() {
        let s = crate::store::Store::open_in_memory().unwrap();
        assert_eq!(verify(s.conn()).unwrap(), Vec::<String>::new());
        for (name, sql) in triggers::all() {
            assert!(sql.contains(name), "{name}");
            assert!(
                !sql.contains("applying"),
                "no flag can switch the rules off"
            );
        }
    }
}
