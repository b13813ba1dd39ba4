//! A pull response from a hostile central: decoded as the cycle does (streaming,
//! each record into the sync buffer), then integrated. Must never panic.
#![no_main]

use fieldsync::sync::integration::{self, Site};
use fieldsync::store::Store;
use fieldsync::{store::buffer, wire::protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut store = Store::open_in_memory().expect("memory store");
    store.set_site_identity(2, "S_KAW").expect("identity");
    let conn = store.conn();
    let _ = protocol::decode_pull(data, &mut |rec| buffer::put(conn, &rec).map_err(|e| e.to_string()));
    let site = Site { active_store: Some("S_KAW".into()), initialised: true };
    let _ = integration::integrate(&mut store, &site, |_| {});
});
