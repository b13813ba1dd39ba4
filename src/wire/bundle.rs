//! Bundles: sync by USB stick for a site without a link. A bundle is a file a
//! courier carries: from the site, its outbox as the push bodies the central
//! already accepts; from the central, the site's queue and the central data
//! after the site's cursor as the pull pages the agent already reads.
//!
//! Layout (all lengths little-endian u32):
//!
//! ```text
//! "FSBUNDLE" | header length | header (postcard) |
//! { kind (1 byte) | body length | body (gzip, then ChaCha20-Poly1305) }* | kind 0 | length 0 |
//! HMAC-SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! Keys: PBKDF2-HMAC-SHA-256 of the site's password digest, salted with the
//! bundle's random id, `kdf_rounds` rounds (100,000 by default), gives the HMAC
//! key and the body key. Only the site and an administrator who knows the
//! password can make or read a bundle; a lost stick gives neither the records
//! (encrypted) nor a fast way to guess the password (every guess costs the
//! rounds, where the bare digest would cost one hash).
//!
//! What must hold: nothing in a bundle is used before its HMAC was checked over
//! the whole file, and what is used are the bytes that were checked —
//! [`Reader::open`] copies the file into a private, already-unlinked temporary
//! file while it hashes it, and everything after comes from that copy (a stick
//! that changes, or reads back differently, cannot slip anything in); every
//! body is bounded when inflated; a bundle is written under a temporary name,
//! synced and renamed, so a stick pulled out early never carries half a bundle
//! under the real name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::{aead, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

use super::credentials::Secret;

const MAGIC: &[u8; 8] = b"FSBUNDLE";
/// This build writes and reads format 1.
pub const FORMAT: u16 = 2;
/// Largest header and largest compressed body accepted.
const MAX_HEADER: u32 = 4 << 20;
const MAX_BODY: u32 = 32 << 20;
/// Key-derivation rounds a writer uses, and the most a reader accepts (a
/// forged header cannot make a reader spin for long).
pub const KDF_ROUNDS: u32 = 100_000;
/// Rounds a bundle may ask for: a header is read before its HMAC is checked,
/// so a forged one must not buy seconds of work (issue 27, F10).
pub const MAX_KDF_ROUNDS: u32 = 4 * KDF_ROUNDS;
/// Largest body once inflated: a push body is at most 16 MiB (`batch_bytes`),
/// a page of 1000 records of at most 1 MiB each could be larger, so pages are
/// written in bounded bytes too (see the central's export).
pub const MAX_INFLATED: u64 = 256 << 20;

/// Which way a bundle travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// A site's outbox for the central.
    ToCentral,
    /// The central's queue and data for a site.
    ToSite,
}

/// What a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A push body (`{"queueLength":n,"data":[…]}`, §3 POST queued_records).
    Push = 1,
    /// A `central_records` page.
    Central = 2,
    /// A `queued_records` page.
    Queue = 3,
    /// The queue entries a site applied from the central's bundles
    /// (`{"syncIDs":[…]}`, §3 POST acknowledged_records).
    Ack = 4,
}

impl Body {
    fn from_byte(b: u8) -> Option<Body> {
        match b {
            1 => Some(Body::Push),
            2 => Some(Body::Central),
            3 => Some(Body::Queue),
            4 => Some(Body::Ack),
            _ => None,
        }
    }
}

/// A record of a site's bundle the central refused, sent back in the central's
/// next bundle so the site sets it aside as a refused push would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub table: String,
    pub id: String,
    pub reason: String,
}

/// The central's answer to a site bundle it imported: carried in the next
/// bundle for that site, it lets the site drop what the central now holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The site bundle's id.
    pub bundle: [u8; 16],
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u16,
    pub direction: Direction,
    /// Random, to name this bundle in a confirmation; the keys' salt.
    pub id: [u8; 16],
    /// Rounds of the key derivation ([`KDF_ROUNDS`]).
    pub kdf_rounds: u32,
    pub site_id: u32,
    pub site_name: String,
    /// The site's active store.
    pub store: String,
    /// To the central: the first and last outbox sequence carried. To a site:
    /// the first and last queue entry (`syncOutId`).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Records in the bodies.
    pub records: u64,
    /// To the central: the site's central-records cursor when it wrote the
    /// bundle (what it holds). To a site: where the central data starts.
    pub cursor: u64,
    /// To a site: the change-log position the central data reaches.
    pub max_cursor: u64,
    /// To a site: the central's answer to the last bundle it imported from it.
    pub confirms: Option<Confirmation>,
    /// `fieldsync 0.1.0`.
    pub created_by: String,
    /// The device the bundle is from (to the central) or for (to a site): its
    /// `msupply-site-uuid`; "" when the central has none bound. Format 2.
    pub hardware_id: String,
}

/// Why a bundle cannot be used; the messages say what to do.
#[derive(Debug)]
pub enum BundleError {
    Io(PathBuf, std::io::Error),
    /// Not a bundle at all, or of a format this build does not read.
    NotABundle(PathBuf, String),
    /// The check failed: damaged on the stick, cut short, or not written with
    /// this site's password.
    Check(PathBuf),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::Io(p, e) if e.kind() == std::io::ErrorKind::PermissionDenied => write!(
                f,
                "bundle {}: {e}: this user may not write or read there. A stick mounted by root \
                 or by `pi` is theirs: mount it for the fieldsync group (e.g. `sudo mount -o \
                 uid=fieldsync,gid=fieldsync /dev/sda1 /media/usb`, or udisks), or copy the file \
                 through a directory fieldsync can use",
                p.display()
            ),
            BundleError::Io(p, e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => write!(
                f,
                "bundle {}: {e}: the stick is read-only (its lock switch, or mounted read-only)",
                p.display()
            ),
            BundleError::Io(p, e) => write!(f, "bundle {}: {e}", p.display()),
            BundleError::NotABundle(p, why) => write!(
                f,
                "{} is not a fieldsync bundle this version can read ({why}); bring the file `fieldsync export` or `fieldsync-central export-bundle` wrote",
                p.display()
            ),
            BundleError::Check(p) => write!(
                f,
                "bundle {} fails its check: it was damaged or cut short on the way, or written with another site's password; nothing was changed — write a new bundle and copy it again",
                p.display()
            ),
        }
    }
}

impl std::error::Error for BundleError {}

/// The HMAC key and the body key of one bundle.
struct Keys {
    mac: hmac::Key,
    body: aead::LessSafeKey,
}

fn keys(digest: &Secret, header: &Header) -> Keys {
    let mut out = [0u8; 64];
    let mut salt = b"fieldsync-bundle-1".to_vec();
    salt.extend_from_slice(&header.id);
    let rounds = std::num::NonZeroU32::new(header.kdf_rounds.clamp(1, MAX_KDF_ROUNDS))
        .expect("clamped above zero");
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        digest.expose().as_bytes(),
        &mut out,
    );
    let body = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &out[32..])
        .expect("a 32-byte ChaCha20 key");
    Keys {
        mac: hmac::Key::new(hmac::HMAC_SHA256, &out[..32]),
        body: aead::LessSafeKey::new(body),
    }
}

/// Body `n`'s nonce: the keys are this bundle's own, so a counter is unique.
fn nonce(n: u64) -> aead::Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    aead::Nonce::assume_unique_for_key(b)
}

/// A random bundle id.
pub fn new_id() -> std::io::Result<[u8; 16]> {
    super::credentials::random_bytes()
}

/// Hex of an id, for file names and logs.
pub fn id_hex(id: &[u8; 16]) -> String {
    super::credentials::hex(id)
}

/// A site name as part of a bundle's file name: letters, digits, `-` and `_`
/// kept, anything else `_`.
pub fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes a bundle: bodies are gzipped as they are added; [`Writer::finish`]
/// appends the HMAC, syncs and renames the file into place.
pub struct Writer {
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    mac: hmac::Context,
    body_key: aead::LessSafeKey,
    bodies: u64,
    tmp: PathBuf,
    path: PathBuf,
}

impl Writer {
    pub fn create(path: &Path, header: &Header, digest: &Secret) -> Result<Writer, BundleError> {
        let io = |e| BundleError::Io(path.to_path_buf(), e);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".part");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(io)?;
        let keys = keys(digest, header);
        let mut w = Writer {
            out: Some(BufWriter::new(file)),
            mac: hmac::Context::with_key(&keys.mac),
            body_key: keys.body,
            bodies: 0,
            tmp,
            path: path.to_path_buf(),
        };
        let head = postcard::to_allocvec(header)
            .map_err(|e| io(std::io::Error::other(format!("encoding the header: {e}"))))?;
        w.put(MAGIC).map_err(io)?;
        w.put(&(head.len() as u32).to_le_bytes()).map_err(io)?;
        w.put(&head).map_err(io)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.mac.update(b);
        match &mut self.out {
            Some(out) => out.write_all(b),
            None => Err(std::io::Error::other("bundle already finished")),
        }
    }

    /// Adds one body (gzipped, then encrypted, here).
    pub fn body(&mut self, kind: Body, plain: &[u8]) -> Result<(), BundleError> {
        let path = self.path.clone();
        let io = |e| BundleError::Io(path.clone(), e);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(plain).map_err(io)?;
        let mut body = gz.finish().map_err(io)?;
        self.body_key
            .seal_in_place_append_tag(nonce(self.bodies), aead::Aad::from([kind as u8]), &mut body)
            .map_err(|_| io(std::io::Error::other("encrypting a body")))?;
        self.bodies += 1;
        if body.len() as u64 > u64::from(MAX_BODY) {
            return Err(io(std::io::Error::other(
                "a body is too large for a bundle",
            )));
        }
        self.put(&[kind as u8]).map_err(io)?;
        self.put(&(body.len() as u32).to_le_bytes()).map_err(io)?;
        self.put(&body).map_err(io)
    }

    /// Ends the bundle: end mark, HMAC, fsync, rename into place.
    pub fn finish(mut self) -> Result<PathBuf, BundleError> {
        let path = self.path.clone();
        let io = |e| BundleError::Io(path.clone(), e);
        self.put(&[0]).map_err(io)?;
        self.put(&0u32.to_le_bytes()).map_err(io)?;
        let tag = self.mac.clone().sign();
        let mut out = self.out.take().expect("not finished yet");
        out.write_all(tag.as_ref()).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is on the stick only once its directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An unfinished bundle leaves no file behind.
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a bundle whose HMAC was checked, from a private copy of the checked bytes.
pub struct Reader {
    file: BufReader<File>,
    path: PathBuf,
    pub header: Header,
    body_key: aead::LessSafeKey,
    bodies: u64,
    /// The copy's length: bodies end here.
    end: u64,
}

/// Reads just the header, unchecked: to know which site a bundle claims to be
/// from before its password is known (the central's import) and to say whose
/// it is when it is not this site's. Nothing in it may be relied on until
/// [`Reader::open`] checked the file; its checked header is `Reader::header`.
pub fn peek_header(path: &Path) -> Result<Header, BundleError> {
    let mut f = BufReader::new(File::open(path).map_err(|e| BundleError::Io(path.into(), e))?);
    read_header(&mut f, path).map(|(h, _)| h)
}

/// The header and the bytes it was read from (magic and length included).
fn read_header(f: &mut impl Read, path: &Path) -> Result<(Header, Vec<u8>), BundleError> {
    let not = |why: &str| BundleError::NotABundle(path.to_path_buf(), why.to_string());
    let mut start = [0u8; 12];
    f.read_exact(&mut start)
        .map_err(|_| not("too short to be one"))?;
    if &start[..8] != MAGIC {
        return Err(not("it does not start with FSBUNDLE"));
    }
    let n = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
    if n > MAX_HEADER {
        return Err(not("its header is too large"));
    }
    let mut bytes = start.to_vec();
    bytes.resize(12 + n as usize, 0);
    f.read_exact(&mut bytes[12..])
        .map_err(|_| not("cut short"))?;
    let header: Header =
        postcard::from_bytes(&bytes[12..]).map_err(|e| not(&format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(not(&format!(
            "format {}, this build reads {FORMAT} (write the bundle again with this version)",
            header.format
        )));
    }
    if header.kdf_rounds == 0 || header.kdf_rounds > MAX_KDF_ROUNDS {
        return Err(not(&format!(
            "its key derivation asks for {} rounds; at most {MAX_KDF_ROUNDS} are read",
            header.kdf_rounds
        )));
    }
    Ok((header, bytes))
}

/// A temporary file only this process can reach: created with mode 0600 in
/// the temporary directory and unlinked at once.
fn private_file() -> std::io::Result<File> {
    let id = new_id()?;
    let path = std::env::temp_dir().join(format!(".fieldsync-bundle-{}", id_hex(&id)));
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = opts.open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

impl Reader {
    /// Opens a bundle and checks its HMAC over the whole file with the keys
    /// derived from `digest`, copying what it checks into a private file that
    /// everything afterwards reads.
    pub fn open(path: &Path, digest: &Secret) -> Result<Reader, BundleError> {
        let io = |e| BundleError::Io(path.to_path_buf(), e);
        let mut src = BufReader::new(File::open(path).map_err(io)?);
        // The header names the salt, so it is read first; it is hashed with the
        // rest, so nothing in it counts until the check passed.
        let (header, head) = read_header(&mut src, path)?;
        let keys = keys(digest, &header);
        let mut mac = hmac::Context::with_key(&keys.mac);
        let mut copy = BufWriter::new(private_file().map_err(io)?);
        mac.update(&head);
        copy.write_all(&head).map_err(io)?;
        // Everything but the last 32 bytes is hashed and copied; those are the tag.
        let mut held: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = src.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            held.extend_from_slice(&buf[..n]);
            if held.len() > 32 {
                let upto = held.len() - 32;
                mac.update(&held[..upto]);
                copy.write_all(&held[..upto]).map_err(io)?;
                held.drain(..upto);
            }
        }
        if held.len() < 32 || !super::credentials::constant_time_eq(mac.sign().as_ref(), &held) {
            return Err(BundleError::Check(path.to_path_buf()));
        }
        let mut file = copy.into_inner().map_err(|e| io(e.into_error()))?;
        let end = file.stream_position().map_err(io)?;
        file.seek(SeekFrom::Start(head.len() as u64)).map_err(io)?;
        Ok(Reader {
            file: BufReader::new(file),
            path: path.to_path_buf(),
            header,
            body_key: keys.body,
            bodies: 0,
            end,
        })
    }

    /// Hands each body to `each` as an inflating reader (bounded by
    /// [`MAX_INFLATED`]), in the order written.
    pub fn bodies<E: From<BundleError>>(
        &mut self,
        each: &mut dyn FnMut(Body, &mut dyn Read) -> Result<(), E>,
    ) -> Result<(), E> {
        let path = self.path.clone();
        let broken = |why: &str| BundleError::NotABundle(path.clone(), why.to_string());
        loop {
            let mut frame = [0u8; 5];
            self.file
                .read_exact(&mut frame)
                .map_err(|_| broken("cut short"))?;
            let len = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
            if frame[0] == 0 {
                return Ok(());
            }
            let kind = Body::from_byte(frame[0]).ok_or_else(|| broken("unknown body kind"))?;
            let at = self
                .file
                .stream_position()
                .map_err(|e| BundleError::Io(path.clone(), e))?;
            if len > MAX_BODY || at + u64::from(len) > self.end {
                return Err(broken("a body is too large or runs past the end").into());
            }
            let mut sealed = vec![0u8; len as usize];
            self.file
                .read_exact(&mut sealed)
                .map_err(|e| BundleError::Io(path.clone(), e))?;
            let gz = self
                .body_key
                .open_in_place(nonce(self.bodies), aead::Aad::from([frame[0]]), &mut sealed)
                .map_err(|_| BundleError::Check(path.clone()))?;
            self.bodies += 1;
            let mut inflated = flate2::read::GzDecoder::new(&gz[..]).take(MAX_INFLATED);
            each(kind, &mut inflated)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT,
            direction: Direction::ToCentral,
            id: [7; 16],
            kdf_rounds: 1_000,
            site_id: 2,
            site_name: "kaw".into(),
            store: "S_KAW".into(),
            first_seq: 1,
            last_seq: 2,
            records: 2,
            cursor: 0,
            max_cursor: 0,
            confirms: None,
            created_by: "fieldsync test".into(),
            hardware_id: "HW1".into(),
        }
    }

    fn write(dir: &Path, digest: &Secret) -> PathBuf {
        let mut w = Writer::create(&dir.join("b.fsb"), &header(), digest).unwrap();
        w.body(Body::Push, br#"{"queueLength":2,"data":[]}"#)
            .unwrap();
        w.body(Body::Queue, b"second").unwrap();
        w.finish().unwrap()
    }

    /// A test's directory; removed when the test passes.
    fn dir(name: &str) -> crate::testkit::tempdir::TempDir {
        crate::testkit::tempdir::TempDir::new(&format!("bundle-{name}"))
    }

    #[test]
    fn file_names_keep_to_safe_characters() {
        assert_eq!(file_part("Kaw North/2"), "Kaw_North_2");
    }

    #[test]
    fn round_trip_then_every_flipped_byte_is_refused() {
        let d = dir("flip");
        let digest = Secret::new("abc".into());
        let p = write(&d, &digest);
        assert!(!d.join("b.fsb.part").exists());
        let mut r = Reader::open(&p, &digest).unwrap();
        assert_eq!(r.header, header());
        let mut seen = vec![];
        r.bodies::<BundleError>(&mut |k, body| {
            let mut s = String::new();
            body.read_to_string(&mut s).unwrap();
            seen.push((k, s));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[1], (Body::Queue, "second".to_string()));
        let bytes = std::fs::read(&p).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(d.join("x.fsb"), &b).unwrap();
            let e = Reader::open(&d.join("x.fsb"), &digest).err();
            assert!(e.is_some(), "byte {i} flipped and still accepted");
        }
        // Cut short anywhere: refused too.
        for cut in [10, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(d.join("x.fsb"), &bytes[..cut]).unwrap();
            assert!(Reader::open(&d.join("x.fsb"), &digest).is_err());
        }
        let e = Reader::open(&p, &Secret::new("other".into()))
            .err()
            .unwrap();
        assert!(matches!(e, BundleError::Check(_)), "{e}");
        assert!(e.to_string().contains("nothing was changed"), "{e}");
    }
}
