//! The column registry: every column of each legacy table as a real mSupply
//! central sends it, its wire type and its legacy default (protocol §10.2), and
//! the legacy wire formats every row leaves the reference central in (§10.3).
//!
//! A legacy central stores rows in typed columns, so what it sends is always
//! whole and always in §3's formats; remote sites (Open mSupply above all)
//! rely on both: a missing `store.logo` or a date sent as `"2026-12-03T00:00:00"`
//! fails the whole record there, and Open mSupply never retries it. The
//! reference central keeps what sites push as they pushed it (unknown keys
//! included, §7.4) and makes it whole and legacy-shaped on the way out
//! ([`outgoing`]).
//!
//! Where the lists come from: the columns Open mSupply's v5 translations read
//! from a legacy central (`server/service/src/sync/translations/*.rs`, with the
//! wire type each field is parsed as), completed by the fields the seeds and
//! this project's own rows use; see `tables.rs` for the table-by-table sources.

use serde_json::{Map, Value};

mod tables;

/// A column's wire type, which fixes its legacy default and its normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// Text; empty is `""`.
    Text,
    /// The ID of another row; none is `""` (never `null`).
    Key,
    /// A date, `"YYYY-MM-DD"`; none is `"0000-00-00"`.
    Date,
    /// A time of day in whole seconds after midnight; none is `0`.
    Time,
    /// An ISO date-time (Open mSupply's `om_*` fields); none is `null`.
    DateTime,
    Bool,
    Int,
    Float,
    /// An object or array as JSON; none is `null`.
    Json,
    /// Any value, `null` when unset (the legacy table keeps `null` here).
    Nullable,
}

/// A column of a legacy table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub col: Col,
    /// What a legacy central sends when nobody set it, as JSON text.
    default: &'static str,
}

impl Column {
    /// What a legacy central sends when nobody set the column.
    pub fn default_value(&self) -> Value {
        serde_json::from_str(self.default).unwrap_or(Value::Null)
    }

    /// `value` in the column's legacy form, or `None` when it already is
    /// (or is nothing this column knows how to mend: it travels as it came).
    fn normal(&self, value: &Value) -> Option<Value> {
        match (self.col, value) {
            (
                Col::Text | Col::Key | Col::Date | Col::Time | Col::Int | Col::Float | Col::Bool,
                Value::Null,
            ) => Some(self.default_value()),
            // Empty is "not set" for every typed column; some of Open mSupply's
            // dates and numbers refuse "" (and a few dates refuse 0000-00-00,
            // whence their default).
            (
                Col::Date | Col::Time | Col::Int | Col::Float | Col::Bool | Col::Json,
                Value::String(s),
            ) if s.is_empty() => Some(self.default_value()),
            (Col::Date, Value::String(s)) => date(s).map(Value::from),
            (Col::Time, Value::String(s)) => time_of_day(s).map(Value::from),
            _ => None,
        }
    }
}

/// The legacy "no date".
pub const NO_DATE: &str = "0000-00-00";

/// `"2026-12-03T00:00:00"` or `"2026-12-03 08:15:00"` as a legacy date;
/// `None` when `s` already is one or is not a date at all.
fn date(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let is_date = b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    (is_date && b.len() > 10 && matches!(b[10], b'T' | b' ')).then(|| s[..10].to_string())
}

/// `"20:50:54"` or `"20:50"` (a fraction of a second dropped) as seconds after
/// midnight; `None` for anything else.
fn time_of_day(s: &str) -> Option<u32> {
    let mut parts = s.split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let sec: u32 = match parts.next() {
        Some(p) => p.split('.').next()?.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec.min(59))
}

/// The columns of `table`, empty for a table this registry does not list
/// (its rows travel as they came).
pub fn columns(table: &str) -> impl Iterator<Item = Column> {
    tables::TABLES
        .binary_search_by(|(t, _)| (*t).cmp(table))
        .map(|i| tables::TABLES[i].1)
        .unwrap_or(&[])
        .iter()
        .map(|&(name, col, default)| Column { name, col, default })
}

fn is_listed(table: &str) -> bool {
    tables::TABLES
        .binary_search_by(|(t, _)| (*t).cmp(table))
        .is_ok()
}

/// The tables the registry lists.
pub fn listed() -> impl Iterator<Item = &'static str> {
    tables::TABLES.iter().map(|(t, _)| *t)
}

/// Makes `row` whole (every column of its table, the legacy default where
/// nobody set one) and legacy-shaped (dates, times, empty keys as §3 says);
/// keys the registry does not know stay as they are. Returns whether anything
/// changed. Not an object: left alone.
pub fn outgoing(table: &str, row: &mut Value) -> bool {
    let Value::Object(map) = row else {
        return false;
    };
    let mut changed = false;
    for c in columns(table) {
        let mended = match map.get(c.name) {
            None => Some(c.default_value()),
            Some(v) => c.normal(v),
        };
        if let Some(v) = mended {
            map.insert(c.name.to_string(), v);
            changed = true;
        }
    }
    changed
}

/// [`outgoing`] for a row as stored text: the same text when nothing changes
/// (no re-encoding on the hot path), else the mended row's.
pub fn outgoing_text(table: &str, text: &str) -> Option<String> {
    if !is_listed(table) {
        return None;
    }
    let mut row: Value = serde_json::from_str(text).ok()?;
    outgoing(table, &mut row).then(|| row.to_string())
}

/// A row of `table` with only its ID and every other column at its default:
/// what a real central holds for a row created with nothing else set.
pub fn blank(table: &str, id: &str) -> Value {
    let mut map = Map::new();
    map.insert("ID".into(), Value::from(id));
    let mut row = Value::Object(map);
    outgoing(table, &mut row);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registry_is_sorted_and_has_no_column_twice() {
        let names: Vec<&str> = listed().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "tables must be sorted for the binary search");
        for (t, cols) in tables::TABLES {
            let mut seen = std::collections::HashSet::new();
            for (c, _, default) in *cols {
                assert!(seen.insert(*c), "{t}.{c} listed twice");
                assert!(
                    serde_json::from_str::<Value>(default).is_ok(),
                    "{t}.{c}: default {default} is not JSON"
                );
            }
            assert!(cols.iter().any(|(c, ..)| *c == "ID"), "{t} has no ID");
        }
        // Every table the ownership registry knows and sites receive is listed,
        // but for the few Open mSupply does not read.
        for t in crate::legacy::registry::tables() {
            let unread = [
                "patient_event",
                "name_note",
                "number",
                "log",
                "permission",
                "message_read",
            ];
            assert!(
                is_listed(t.name) || unread.contains(&t.name),
                "{} has no columns",
                t.name
            );
        }
    }

    #[test]
    fn dates_times_and_keys_leave_in_legacy_form() {
        assert_eq!(date("2026-12-03T00:00:00").as_deref(), Some("2026-12-03"));
        assert_eq!(date("2026-12-03 08:15:00").as_deref(), Some("2026-12-03"));
        assert_eq!(date(""), None);
        assert_eq!(date("2026-12-03"), None);
        assert_eq!(date("0000-00-00"), None);
        assert_eq!(date("03/12/2026"), None);
        assert_eq!(time_of_day("20:50:54"), Some(75_054));
        assert_eq!(time_of_day("00:00"), Some(0));
        assert_eq!(time_of_day("23:59:59.999"), Some(86_399));
        assert_eq!(time_of_day("24:00:00"), None);
        assert_eq!(time_of_day("noon"), None);
        let col = |table: &str, name: &str| columns(table).find(|c| c.name == name).unwrap();
        assert_eq!(
            col("transact", "requisition_ID").normal(&Value::Null),
            Some(json!(""))
        );
        assert_eq!(
            col("transact", "entry_time").normal(&json!("01:00:00")),
            Some(json!(3600))
        );
        assert_eq!(col("transact", "entry_time").normal(&json!(3600)), None);
        assert_eq!(col("transact", "om_status").normal(&Value::Null), None);
        assert_eq!(
            col("transact", "om_created_datetime").normal(&json!("2026-12-03T20:50:54")),
            None
        );
        assert_eq!(
            col("name", "date_of_birth").normal(&json!("1990-05-01T00:00:00")),
            Some(json!("1990-05-01"))
        );
        assert_eq!(
            col("name", "date_of_birth").normal(&json!("")),
            Some(json!(NO_DATE))
        );
        // A date Open mSupply needs real gets its default, never 0000-00-00.
        assert_eq!(
            col("transact", "entry_date").normal(&json!("")),
            Some(json!("1970-01-01"))
        );
        assert_eq!(
            col("transact", "insuranceDiscountRate").normal(&json!("")),
            Some(json!(0))
        );
    }

    #[test]
    fn a_row_goes_out_whole_with_its_unknown_keys() {
        let mut row = json!({"ID": "S1", "name": "Moa", "x_app_field": [1, 2]});
        assert!(outgoing("store", &mut row));
        assert!(columns("store").count() >= 8);
        for c in columns("store") {
            assert!(row.get(c.name).is_some(), "store.{} missing", c.name);
            if c.name != "ID" {
                assert_eq!(row[c.name], c.default_value(), "store.{}", c.name);
            }
        }
        assert_eq!(row["logo"], "");
        assert_eq!(row["store_mode"], "store");
        assert_eq!(row["x_app_field"], json!([1, 2]));
        assert_eq!(row["name"], "Moa");
        // Whole already: nothing to do, the stored text goes as it is.
        assert!(!outgoing("store", &mut row));
        assert_eq!(outgoing_text("store", &row.to_string()), None);
        assert_eq!(outgoing_text("no_such_table", "{\"ID\":\"x\"}"), None);
    }
}
