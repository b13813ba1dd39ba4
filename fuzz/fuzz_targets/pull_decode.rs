//! A pull page from a hostile central: decoded as the cycle does (streaming, each
//! envelope read as the cycle reads it and written to the sync buffer), then
//! integrated. Must never panic; a page that breaks must say how and after how
//! many records.
#![no_main]

use fieldsync::store::{buffer, Store};
use fieldsync::sync::{self, integration};
use fieldsync::wire::decode::{self, PullError};
use libfuzzer_sys::fuzz_target;

thread_local! {
    // One store for the run, emptied after each input: opening one (schema and
    // rules) costs more than the input itself.
    static STORE: std::cell::RefCell<Store> = std::cell::RefCell::new({
        let mut s = Store::open_in_memory().expect("memory store");
        s.set_site_identity(2, "S_KAW").expect("identity");
        s
    });
}

fuzz_target!(|data: &[u8]| STORE.with_borrow_mut(|store| one(store, data)));

fn one(store: &mut Store, data: &[u8]) {
    let mut written = 0u64;
    let outcome = {
        let conn = store.conn();
        decode::decode_pull(data, &mut |rec| {
            buffer::put(conn, &sync::incoming(&rec)).map(|()| written += 1)
        })
    };
    match outcome {
        Ok(h) => assert_eq!(
            h.records, written,
            "every decoded record reached the buffer"
        ),
        Err(PullError::Broken { before, .. }) => assert_eq!(before, written),
        Err(PullError::Stopped(e)) => panic!("the buffer refused a record: {e}"),
    }
    let site = integration::Site {
        active_store: Some("S_KAW".into()),
        initialised: true,
    };
    integration::integrate(store, &site, |_| {})
        .expect("integration of a buffer survives any rows");
    store
        .without_rules(|tx| {
            tx.execute_batch(
                "DELETE FROM buffer; DELETE FROM record; DELETE FROM outbox; DELETE FROM local_edit; \
                 DELETE FROM record_quarantine; DELETE FROM resave;",
            )
            .map_err(|e| fieldsync::store::StoreError::sqlite("emptying", e))
        })
        .expect("emptying the store");
}
