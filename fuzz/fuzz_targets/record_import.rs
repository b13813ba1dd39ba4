//! One import line (or `put` argument) from a person or another program: parsed,
//! validated and written as a local edit through the ownership triggers. Must
//! never panic and never leave a half-written record.
#![no_main]

use fieldsync::store::{self, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return };
    let mut s = Store::open_in_memory().expect("memory store");
    s.set_site_identity(2, "S_KAW").expect("identity");
    let (table, row) = match (value.get("table").and_then(|t| t.as_str()), value.get("record")) {
        (Some(t), Some(r)) => (t.to_string(), r.clone()),
        _ => ("transact".to_string(), value.clone()),
    };
    let before: i64 = s.conn().query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    let tx = s.tx().expect("tx");
    let ok = store::put_local(&tx, &table, &row, "fuzz").is_ok();
    drop(tx); // roll back either way
    let after: i64 = s.conn().query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(before, after, "a rolled-back write leaves nothing (ok = {ok})");
});
