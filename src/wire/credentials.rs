//! Site credentials and device identity: the password digest, the Basic auth value
//! of protocol §2, and the hardware id.
//!
//! SHA-256 and randomness come from `ring`, base64 from `base64`: both are linked
//! already through ureq's rustls, so they cost the device binary nothing. The
//! digest is password-equivalent: it is stored apart from the database, sent, and
//! never logged; [`Secret`] redacts it from `Debug`.

use std::fmt;

/// A value that must never be printed (digest, Authorization header).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Lowercase hex SHA-256 of the UTF-8 password (unsalted, as §2 requires).
pub fn password_digest(password: &str) -> Secret {
    Secret(hex(&sha256(password.as_bytes())))
}

/// `Basic base64(site name ":" digest)`.
pub fn basic_auth(site_name: &str, digest: &Secret) -> Secret {
    Secret(format!(
        "Basic {}",
        base64(format!("{site_name}:{}", digest.0).as_bytes())
    ))
}

/// Equal bytes, compared in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Decodes standard base64; `None` on anything malformed.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(input).ok()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// 16 random bytes from the OS.
pub fn random_bytes() -> std::io::Result<[u8; 16]> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| std::io::Error::other("no random source"))?;
    Ok(b)
}

/// A new record or device id: 32 uppercase hex digits [PC].
pub fn new_id() -> String {
    let bytes = random_bytes().unwrap_or_else(|_| {
        // No /dev/urandom (a locked-down container): fall back to time and pid,
        // hashed; still unique enough for ids, never used for secrets.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        let mut b = [0u8; 16];
        b.copy_from_slice(&sha256(seed.as_bytes())[..16]);
        b
    });
    hex(&bytes).to_uppercase()
}

/// The hardware id: derived from the OS machine id where there is one (so a
/// reinstall of fieldsync keeps it), else random. Called once by `init`; the value
/// is stored and never regenerated [PC].
pub fn derive_hardware_id(machine_id_paths: &[&str]) -> String {
    for p in machine_id_paths {
        if let Ok(text) = std::fs::read_to_string(p) {
            let id = text.trim();
            if !id.is_empty() {
                // Hashed, with a label: the machine id itself is not sent out (systemd
                // asks applications not to expose it).
                return hex(&sha256(format!("fieldsync-hardware-id:{id}").as_bytes()))[..32]
                    .to_uppercase();
            }
        }
    }
    new_id()
}

pub const MACHINE_ID_PATHS: &[&str] = &["/etc/machine-id", "/var/lib/dbus/machine-id"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_test_vector() {
        let d = password_digest("password");
        assert_eq!(
            d.expose(),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(
            basic_auth("username", &d).expose(),
            "Basic dXNlcm5hbWU6NWU4ODQ4OThkYTI4MDQ3MTUxZDBlNTZmOGRjNjI5Mjc3MzYwM2QwZDZhYWJiZGQ2MmExMWVmNzIxZDE1NDJkOA=="
        );
        assert_eq!(format!("{d:?}"), "Secret(***)");
    }

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha256(&million)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(base64_decode(&base64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert!(base64_decode("a$b").is_none());
    }

    #[test]
    fn hardware_id_is_stable_for_a_machine_id() {
        let tmp = crate::testkit::tempdir::TempDir::new("hw");
        let dir = tmp.join("machine-id");
        std::fs::write(&dir, "abc123\n").unwrap();
        let p = dir.to_str().unwrap();
        let a = derive_hardware_id(&[p]);
        assert_eq!(a, derive_hardware_id(&["/nonexistent", p]));
        assert_eq!(a.len(), 32);
        assert_ne!(
            derive_hardware_id(&["/nonexistent"]),
            derive_hardware_id(&["/nonexistent"])
        );
        std::fs::remove_file(dir).unwrap();
    }
}
