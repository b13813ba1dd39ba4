//! A pull page from a hostile central: decoded as the cycle does (streaming, each
//! envelope read as the cycle reads it and applied where it arrives, or kept in
//! the sync buffer), then integrated. Must never panic; a page that breaks must
//! say how.
#![no_main]

use fieldsync::store::Store;
use fieldsync::sync::{self, integration};
use fieldsync::wire::page::{self, Unreadable};
use fieldsync::wire::WireError;
use libfuzzer_sys::fuzz_target;

thread_local! {
    // One store for the run, emptied after each input: opening one (schema and
    // rules) costs more than the input itself.
    static STORE: std::cell::RefCell<Store> = std::cell::RefCell::new({
        let mut s = Store::open_in_memory().expect("memory store");
        s.set_site_identity(2, "S_KAW", None).expect("identity");
        s
    });
}

fuzz_target!(|data: &[u8]| STORE.with_borrow_mut(|store| one(store, data)));

/// How a page may end: anything but a panic.
enum Ended {
    /// Not a page, or a record that cannot be read: the cycle's answers to those.
    Refused,
    Store(fieldsync::store::StoreError),
}
impl From<WireError> for Ended {
    fn from(_: WireError) -> Self {
        Ended::Refused
    }
}
impl From<Unreadable> for Ended {
    fn from(_: Unreadable) -> Self {
        Ended::Refused
    }
}

fn one(store: &mut Store, data: &[u8]) {
    let site = integration::Site {
        active_store: Some("S_KAW".into()),
        initialised: true,
    };
    let mut applied = 0u64;
    let mut tally = integration::Tally::default();
    let tx = store.receiving().expect("transaction");
    let outcome = page::decode_records::<Ended>("fuzz", data, &mut |rec| {
        integration::receive(&tx, &site, &sync::incoming(&rec), &mut tally)
            .map_err(Ended::Store)?;
        applied += 1;
        Ok(())
    });
    match outcome {
        Ok(h) => assert_eq!(h.records, applied, "every decoded record was received"),
        Err(Ended::Store(e)) => panic!("the store refused a received record: {e}"),
        Err(Ended::Refused) => {}
    }
    tx.commit().expect("commit");
    integration::integrate(store, &site, |_| {})
        .expect("integration of a buffer survives any rows");
    store.clear().expect("emptying the store");
}
