//! One import line (or `put` argument) from a person or another program: parsed
//! as `fieldsync import` parses it, validated and written as a local edit
//! through the ownership rules. Must never panic and never leave a half-written
//! record.
#![no_main]

use fieldsync::agent::records::parse_record;
use fieldsync::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = parse_record(text, "fuzz") else {
        return;
    };
    let mut s = Store::open_in_memory().expect("memory store");
    s.set_site_identity(2, "S_KAW", None).expect("identity");
    let (table, row) = match (
        value.get("table").and_then(|t| t.as_str()),
        value.get("record"),
    ) {
        (Some(t), Some(r)) => (t.to_string(), r.clone()),
        _ => ("transact".to_string(), value.clone()),
    };
    let count = |s: &Store| -> (u64, u64) {
        let o = s.outbox_counts().unwrap();
        (o.pending + o.held + o.rejected, s.count_records(None).unwrap())
    };
    let before = count(&s);
    let tx = s.tx().expect("tx");
    let ok = tx.put_local(&table, &row, "fuzz").is_ok();
    drop(tx); // roll back either way
    assert_eq!(
        before,
        count(&s),
        "a rolled-back write leaves nothing (ok = {ok})"
    );
    // Written and committed, a record is whole: one outbox entry, one row.
    let tx = s.tx().expect("tx");
    if tx.put_local(&table, &row, "fuzz").is_ok() {
        tx.commit().expect("commit");
        let after = count(&s);
        assert_eq!(after.1, before.1 + 1, "one record written");
        assert!(after.0 >= before.0 + 1, "and its outbox entry");
    }
});
