//! A push from a hostile or careless site, through the reference central's real
//! HTTP server on loopback: the request head, the body framing, gzip inflation,
//! authentication, the push-body parser, the judge and staging. The first byte
//! chooses the form: bit 0 gzips the body, bit 1 sends the rest as a whole raw
//! request (head and all) instead of a push body behind a well-formed head.
//!
//! What must hold: every request gets an answer that is a 200 or a 4xx naming
//! its problem (never a 500, never a dropped connection after a complete
//! request, never a panic), and the central keeps answering.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use fieldsync::central::{http, Central};
use fieldsync::wire::credentials::{basic_auth, password_digest};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    addr: SocketAddr,
    auth: String,
    /// Serves for the life of the fuzzing process (kept, so nothing leaks).
    _server: http::Server,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // tmpfs: the central commits with synchronous=FULL, and a disk's fsync
        // would make each run cost milliseconds.
        let dir =
            std::path::Path::new("/dev/shm").join(format!("fieldsync-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let central = Central::open(&dir.join("central.sqlite")).unwrap();
        central.add_site("kaw", "KAW", "pw").unwrap();
        central
            .add_store("S_KAW", "KAW", "Kawakawa", Some("kaw"))
            .unwrap();
        let server = http::spawn(central, "127.0.0.1:0").unwrap();
        let f = Fixture {
            addr: server.addr,
            auth: basic_auth("kaw", &password_digest("pw"))
                .expose()
                .to_string(),
            _server: server,
        };
        let (status, text) = f.send(&f.request("POST", "/sync/v5/initialise", b"", false));
        assert_eq!(status, 200, "initialise: {text}");
        // Pushes are judged only after initialisation (before it they get 409).
        for _ in 0..500 {
            if f.send(&f.request("GET", "/sync/v5/site_status", b"", false))
                .1
                .contains("idle")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    })
}

impl Fixture {
    fn request(&self, method: &str, path: &str, body: &[u8], gzip: bool) -> Vec<u8> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: central\r\nAuthorization: {}\r\n\
             msupply-site-uuid: HW-FUZZ\r\napp-version: fuzz\r\napp-name: fieldsync\r\nversion: 14\r\n\
             Connection: close\r\nContent-Length: {}\r\n",
            self.auth,
            body.len()
        );
        if gzip {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Sends one request and reads the answer to its end: (status, whole answer).
    fn send(&self, raw: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).expect("the central accepts connections");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A raw request may be refused before its body is read: the write may then fail.
        let _ = s.write_all(raw);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (mode, rest) = data.split_first().map_or((0, &[][..]), |(m, r)| (*m, r));
    if mode & 2 == 2 {
        // A raw request: whatever answer comes must be well formed, and a
        // complete push must still be served afterwards.
        let (status, text) = f.send(rest);
        assert!(
            status == 0 || (200..500).contains(&status),
            "raw request answered {status}: {text}"
        );
    } else {
        let body = if mode & 1 == 1 {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(rest).unwrap();
            enc.finish().unwrap()
        } else {
            rest.to_vec()
        };
        let (status, text) =
            f.send(&f.request("POST", "/sync/v5/queued_records", &body, mode & 1 == 1));
        assert!(
            status == 200 || (400..500).contains(&status),
            "push answered {status}: {text}"
        );
        if status != 200 {
            assert!(
                text.contains("\"code\""),
                "a refusal names its code: {text}"
            );
        }
    }
    let (status, text) = f.send(&f.request(
        "POST",
        "/sync/v5/queued_records",
        br#"{"queueLength":1,"data":[]}"#,
        false,
    ));
    assert_eq!(status, 200, "the central still serves pushes: {text}");
});
