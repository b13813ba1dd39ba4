//! A USB bundle from a stick nobody controls: whatever the bytes, reading its
//! header and checking it must not panic, and nothing but a bundle written with
//! the key passes the check. The same bytes as bodies of a bundle written with
//! the key must come back exactly, whatever they hold.
#![no_main]

use fieldsync::wire::bundle::{self, Body, Direction, Header, Reader, Writer};
use fieldsync::wire::credentials::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("fs-fuzz-bundle-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let digest = Secret::new("0123456789abcdef".into());
    // Hostile bytes: refused, never a panic.
    let hostile = dir.join("hostile.fsb");
    std::fs::write(&hostile, data).unwrap();
    let _ = bundle::peek_header(&hostile);
    assert!(
        Reader::open(&hostile, &digest).is_err(),
        "bytes not written with the key passed the check"
    );
    // The same bytes as bodies of a real bundle: they come back as written.
    let header = Header {
        format: bundle::FORMAT,
        direction: Direction::ToSite,
        id: [1; 16],
        kdf_rounds: 1,
        site_id: 2,
        site_name: "kaw".into(),
        store: "S_KAW".into(),
        first_seq: 0,
        last_seq: 0,
        records: 0,
        cursor: 0,
        max_cursor: 0,
        confirms: None,
        created_by: "fuzz".into(),
    };
    let bodies: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let mut w = Writer::create(&dir.join("real.fsb"), &header, &digest).unwrap();
    for b in &bodies {
        w.body(Body::Queue, b).unwrap();
    }
    let path = w.finish().unwrap();
    let mut r = Reader::open(&path, &digest).expect("our own bundle passes");
    assert_eq!(r.header, header);
    let mut back: Vec<Vec<u8>> = Vec::new();
    r.bodies::<bundle::BundleError>(&mut |kind, body| {
        assert_eq!(kind, Body::Queue);
        let mut v = Vec::new();
        body.read_to_end(&mut v).unwrap();
        back.push(v);
        Ok(())
    })
    .unwrap();
    assert_eq!(back.len(), bodies.len());
    for (a, b) in back.iter().zip(&bodies) {
        assert_eq!(a.as_slice(), *b);
    }
});
