//! Bundles: sync by USB stick for a site without a link. A bundle is a file a
//! courier carries: from the site, its outbox as the push bodies the central
//! already accepts; from the central, the site's queue and the central data
//! after the site's cursor as the pull pages the agent already reads.
//!
//! Layout (all lengths little-endian u32):
//!
//! ```text
//! "FSBUNDLE" | header length | header (postcard) |
//! { kind (1 byte) | body length | body (gzip) }* | kind 0 | length 0 |
//! HMAC-SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! What must hold: nothing in a bundle is used before its HMAC — keyed with the
//! site's password digest, which only the site and an administrator who knows
//! the password have — was checked over the whole file ([`Reader::open`] reads it
//! through once, in bounded memory, before handing anything out), so a
//! corrupted, cut or forged bundle changes nothing; every body is bounded when
//! inflated; a bundle is written under a temporary name, synced and renamed, so
//! a stick pulled out early never carries half a bundle under the real name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::credentials::Secret;

const MAGIC: &[u8; 8] = b"FSBUNDLE";
/// This build writes and reads format 1.
pub const FORMAT: u16 = 1;
/// Largest header and largest compressed body accepted.
const MAX_HEADER: u32 = 4 << 20;
const MAX_BODY: u32 = 64 << 20;
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
pub enum Kind {
    /// A push body (`{"queueLength":n,"data":[…]}`, §3 POST queued_records).
    Push = 1,
    /// A `central_records` page.
    Central = 2,
    /// A `queued_records` page.
    Queue = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Push),
            2 => Some(Kind::Central),
            3 => Some(Kind::Queue),
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
    /// Random, to name this bundle in a confirmation.
    pub id: [u8; 16],
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

fn key(digest: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, digest.expose().as_bytes())
}

/// A random bundle id.
pub fn new_id() -> std::io::Result<[u8; 16]> {
    super::credentials::random_bytes()
}

/// Hex of an id, for file names and logs.
pub fn id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a bundle: bodies are gzipped as they are added; [`Writer::finish`]
/// appends the HMAC, syncs and renames the file into place.
pub struct Writer {
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    mac: hmac::Context,
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
        let mut w = Writer {
            out: Some(BufWriter::new(file)),
            mac: hmac::Context::with_key(&key(digest)),
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

    /// Adds one body (gzipped here).
    pub fn body(&mut self, kind: Kind, plain: &[u8]) -> Result<(), BundleError> {
        let path = self.path.clone();
        let io = |e| BundleError::Io(path.clone(), e);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(plain).map_err(io)?;
        let body = gz.finish().map_err(io)?;
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

/// Reads a bundle whose HMAC was checked.
pub struct Reader {
    file: BufReader<File>,
    path: PathBuf,
    pub header: Header,
    /// Where the HMAC starts: bodies end before it.
    end: u64,
}

/// Reads just the header, unchecked: to know which site a bundle claims to be
/// from before its password is known (the central's import). Nothing else in
/// it may be used until [`Reader::open`] checked it.
pub fn peek_header(path: &Path) -> Result<Header, BundleError> {
    let mut f = BufReader::new(File::open(path).map_err(|e| BundleError::Io(path.into(), e))?);
    read_header(&mut f, path, &mut |_| {})
}

fn read_header(
    f: &mut impl Read,
    path: &Path,
    mac: &mut dyn FnMut(&[u8]),
) -> Result<Header, BundleError> {
    let not = |why: &str| BundleError::NotABundle(path.to_path_buf(), why.to_string());
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)
        .map_err(|_| not("too short to be one"))?;
    if &magic != MAGIC {
        return Err(not("it does not start with FSBUNDLE"));
    }
    mac(&magic);
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(|_| not("cut short"))?;
    mac(&len);
    let n = u32::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(not("its header is too large"));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).map_err(|_| not("cut short"))?;
    mac(&head);
    let header: Header = postcard::from_bytes(&head).map_err(|e| not(&format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(not(&format!(
            "format {}, this build reads {FORMAT}",
            header.format
        )));
    }
    Ok(header)
}

impl Reader {
    /// Opens a bundle and checks its HMAC over the whole file with `digest`
    /// before anything in it is used.
    pub fn open(path: &Path, digest: &Secret) -> Result<Reader, BundleError> {
        let io = |e| BundleError::Io(path.to_path_buf(), e);
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len < 8 + 4 + 5 + 32 {
            return Err(BundleError::NotABundle(
                path.to_path_buf(),
                "too short to be one".into(),
            ));
        }
        let end = len - 32;
        let mut f = BufReader::new(File::open(path).map_err(io)?);
        let mut mac = hmac::Context::with_key(&key(digest));
        // The header is read (and hashed) first, so a file that is no bundle at
        // all says so rather than failing its check.
        let header = read_header(&mut f, path, &mut |b| mac.update(b))?;
        let mut at = f.stream_position().map_err(io)?;
        let mut buf = vec![0u8; 64 << 10];
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            f.read_exact(&mut buf[..want]).map_err(io)?;
            mac.update(&buf[..want]);
            at += want as u64;
        }
        let mut tag = [0u8; 32];
        f.read_exact(&mut tag).map_err(io)?;
        let expected = mac.sign();
        if !constant_time_eq(expected.as_ref(), &tag) {
            return Err(BundleError::Check(path.to_path_buf()));
        }
        let mut file = f;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let header2 = read_header(&mut file, path, &mut |_| {})?;
        debug_assert_eq!(header, header2);
        Ok(Reader {
            file,
            path: path.to_path_buf(),
            header,
            end,
        })
    }

    /// Hands each body to `each` as an inflating reader (bounded by
    /// [`MAX_INFLATED`]), in the order written.
    pub fn bodies<E: From<BundleError>>(
        &mut self,
        each: &mut dyn FnMut(Kind, &mut dyn Read) -> Result<(), E>,
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
            let kind = Kind::from_byte(frame[0]).ok_or_else(|| broken("unknown body kind"))?;
            if len > MAX_BODY {
                return Err(broken("a body is too large").into());
            }
            let at = self
                .file
                .stream_position()
                .map_err(|e| BundleError::Io(path.clone(), e))?;
            if at + u64::from(len) > self.end {
                return Err(broken("a body runs past the end").into());
            }
            {
                let limited = (&mut self.file).take(u64::from(len));
                let mut inflated = flate2::read::GzDecoder::new(limited).take(MAX_INFLATED);
                each(kind, &mut inflated)?;
            }
            // Whatever `each` left unread of the body is skipped.
            self.file
                .seek(SeekFrom::Start(at + u64::from(len)))
                .map_err(|e| BundleError::Io(path.clone(), e))?;
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT,
            direction: Direction::ToCentral,
            id: [7; 16],
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
        }
    }

    fn write(dir: &Path, digest: &Secret) -> PathBuf {
        let mut w = Writer::create(&dir.join("b.fsb"), &header(), digest).unwrap();
        w.body(Kind::Push, br#"{"queueLength":2,"data":[]}"#)
            .unwrap();
        w.body(Kind::Queue, b"second").unwrap();
        w.finish().unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fs-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
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
        assert_eq!(seen[1], (Kind::Queue, "second".to_string()));
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
        std::fs::remove_dir_all(d).unwrap();
    }
}
