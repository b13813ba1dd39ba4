//! A pull page held whole before anything of it is applied: the client reads
//! the answer off the link into a [`Page`], and only then does the cycle take
//! the store's write lock to apply it. A stalled or slow link therefore never
//! holds the lock that the clinic's app waits for (issue 26): the lock lasts as
//! long as the local writes, not the network.
//!
//! Memory stays bounded: a page lives in memory up to [`IN_MEMORY`] and spills
//! to an unnamed temporary file beyond (deleted before anything is written to
//! it, so it leaves nothing behind and, read back within seconds, usually never
//! reaches the SD card). Decoding streams from it as it did from the socket,
//! one record at a time, each bounded by [`MAX_RECORD_BYTES_ON_WIRE`].

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::rc::Rc;

use super::decode::{self, Broken, Partial, PullError, PullHeader};
use super::protocol::SyncRecord;
use super::{ProtocolError, TransportError, WireError};

/// Bytes of a page kept in memory before the rest goes to a temporary file.
/// Defaults to 4 MiB: a page of 1,000 ordinary legacy rows is about 1 MB.
pub const IN_MEMORY: usize = 4 << 20;
/// Largest page read. Defaults to 64 MiB: a full page of ordinary rows is far
/// below this; above it the page limit is halved and the page asked again.
pub const MAX_PAGE_BYTES: u64 = 64 << 20;
/// Bytes one record may take on the wire (escapes included) before decoding is
/// abandoned: twice the store's record limit. Bounds memory whatever a central sends.
pub const MAX_RECORD_BYTES_ON_WIRE: u64 = 2 * crate::legacy::row::MAX_ROW_BYTES as u64;

/// A pulled record that could not be read (over the per-record limit, or not a
/// record envelope) and that the cycle can set aside by its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub record: Partial,
    /// Records of the page decoded before it.
    pub before: u64,
    pub why: String,
}

/// Where a page's bytes are held.
enum Held {
    Memory(Vec<u8>),
    File(File),
}

/// One pull answer, read whole off the link.
pub struct Page {
    path: String,
    held: Held,
    bytes: u64,
}

impl Page {
    /// Reads `body` to its end: into memory, spilling to a temporary file past
    /// [`IN_MEMORY`]; over [`MAX_PAGE_BYTES`] it stops with
    /// [`TransportError::TooLarge`]. `seen` counts bytes as they arrive (progress).
    pub fn read(path: &str, mut body: impl Read, seen: &Cell<u64>) -> Result<Page, WireError> {
        let mut mem = Vec::with_capacity(64 << 10);
        let mut file: Option<File> = None;
        let mut buf = vec![0u8; 64 << 10];
        let mut bytes = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::client::read_error(e, "reading the answer")),
            };
            bytes += n as u64;
            seen.set(bytes);
            if bytes > MAX_PAGE_BYTES {
                return Err(TransportError::TooLarge(MAX_PAGE_BYTES).into());
            }
            match &mut file {
                Some(f) => f.write_all(&buf[..n]).map_err(spill_error)?,
                None if mem.len() + n > IN_MEMORY => {
                    let mut f = spill_file().map_err(spill_error)?;
                    f.write_all(&mem).map_err(spill_error)?;
                    f.write_all(&buf[..n]).map_err(spill_error)?;
                    mem = Vec::new();
                    file = Some(f);
                }
                None => mem.extend_from_slice(&buf[..n]),
            }
        }
        let held = match file {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(spill_error)?;
                Held::File(f)
            }
            None => Held::Memory(mem),
        };
        Ok(Page {
            path: path.to_string(),
            held,
            bytes,
        })
    }

    /// Bytes the page took on the wire (after any decompression by the transport).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first bytes of the page, for telling an HTML page from a v5 answer.
    pub fn starts_with_markup(&mut self) -> bool {
        let mut start = [0u8; 256];
        let n = match &mut self.held {
            Held::Memory(m) => {
                let n = m.len().min(start.len());
                start[..n].copy_from_slice(&m[..n]);
                n
            }
            Held::File(f) => f.read(&mut start).unwrap_or(0),
        };
        super::client::looks_like_html(&start[..n])
    }

    /// The first 4 KiB, to name an intercepting page (what cannot be read
    /// back is left out: the page is only named).
    pub fn head(&mut self) -> Vec<u8> {
        let mut start = Vec::new();
        if let Ok(r) = self.reader() {
            let _ = r.take(4096).read_to_end(&mut start);
        }
        start
    }

    /// The page from its start.
    fn reader(&mut self) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(match &mut self.held {
            Held::Memory(m) => Box::new(Cursor::new(m.as_slice())),
            Held::File(f) => {
                f.seek(SeekFrom::Start(0))?;
                Box::new(&*f)
            }
        })
    }

    /// Decodes the page, handing each record to `each` (one record in memory at
    /// a time). A record that cannot be read is returned as [`Unreadable`] with
    /// what is known of its ids; a page that is not a v5 answer as
    /// [`ProtocolError::NotV5`]; a page cut short as a cut link.
    pub fn decode<E: From<WireError> + From<Unreadable>>(
        mut self,
        each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
    ) -> Result<PullHeader, E> {
        let path = std::mem::take(&mut self.path);
        let reader = self.reader().map_err(spill_error)?;
        decode_records(&path, reader, each)
    }
}

/// Decodes a pull page from `reader` (a held [`Page`], or a body of a USB
/// bundle), one record at a time; see [`Page::decode`]. `path` names the page
/// in errors.
pub fn decode_records<E: From<WireError> + From<Unreadable>>(
    path: &str,
    reader: impl Read,
    each: &mut dyn FnMut(SyncRecord) -> Result<(), E>,
) -> Result<PullHeader, E> {
    let path = path.to_string();
    let since = Rc::new(Cell::new(0u64));
    let mut counted = BufReader::new(Budget {
        inner: reader,
        since_record: since.clone(),
        over: false,
    });
    let mut per_record = |rec: SyncRecord| {
        since.set(0);
        each(rec)
    };
    let result = decode::decode_pull(&mut counted, &mut per_record);
    let over = counted.get_ref().over;
    match result {
        Ok(h) => Ok(h),
        Err(PullError::Stopped(e)) => Err(e),
        Err(PullError::Broken {
            kind,
            detail,
            inside,
            before,
        }) => Err(match (kind, inside) {
            (_, Some(record)) if over => Unreadable {
                record,
                before,
                why: format!("over {MAX_RECORD_BYTES_ON_WIRE} bytes on the wire"),
            }
            .into(),
            // A record whose envelope has the wrong shape is that record's
            // problem, not the page's: it is set aside by its ids.
            (Broken::Data, Some(record)) => Unreadable {
                record,
                before,
                why: detail,
            }
            .into(),
            (Broken::Eof | Broken::Io, _) => WireError::from(TransportError::interrupted(format!(
                "{path}: the answer was cut off ({detail})"
            )))
            .into(),
            (Broken::Syntax | Broken::Data, _) => {
                WireError::from(ProtocolError::NotV5 { path, detail }).into()
            }
        }),
    }
}

/// An unnamed temporary file: created exclusively under a random name in the
/// system's temporary directory and unlinked at once, so no other program can
/// have put it there, open it, or find it afterwards.
fn spill_file() -> std::io::Result<File> {
    let dir = std::env::temp_dir();
    for _ in 0..8 {
        let name = format!("fieldsync-page-{}", crate::wire::credentials::new_id());
        let path = dir.join(name);
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        match o.open(&path) {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

fn spill_error(e: std::io::Error) -> WireError {
    TransportError::Interrupted {
        detail: format!(
            "holding a large page in {}: {e}",
            std::env::temp_dir().display()
        ),
        source: Some(Box::new(e)),
    }
    .into()
}

/// Enforces the per-record byte budget while a page is decoded: once one record
/// has taken more than [`MAX_RECORD_BYTES_ON_WIRE`] without completing, it
/// refuses to read on, so a single giant record cannot grow memory.
struct Budget<R> {
    inner: R,
    since_record: Rc<Cell<u64>>,
    over: bool,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_RECORD_BYTES_ON_WIRE {
            self.over = true;
            return Err(std::io::Error::other(format!(
                "a single record is over {MAX_RECORD_BYTES_ON_WIRE} bytes; refusing to read on"
            )));
        }
        let n = self.inner.read(buf)?;
        self.since_record.set(self.since_record.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum E {
        Wire(WireError),
        Unreadable,
    }
    impl From<WireError> for E {
        fn from(e: WireError) -> E {
            E::Wire(e)
        }
    }
    impl From<Unreadable> for E {
        fn from(_: Unreadable) -> E {
            E::Unreadable
        }
    }

    fn records(page: Page) -> Vec<String> {
        let mut ids = Vec::new();
        page.decode::<E>(&mut |r| {
            ids.push(r.record_id);
            Ok(())
        })
        .unwrap();
        ids
    }

    #[test]
    fn a_large_page_spills_to_a_file_and_decodes_the_same() {
        let rows: Vec<String> = (0..6000)
            .map(|i| format!(r#"{{"ID":{i},"tableName":"item","recordId":"I{i}","action":"update","recordData":{{"ID":"I{i}","pad":"{}"}}}}"#, "x".repeat(900)))
            .collect();
        let body = format!("{{\"maxCursor\":6000,\"data\":[{}]}}", rows.join(","));
        assert!(body.len() > IN_MEMORY);
        let seen = Cell::new(0);
        let page = Page::read("/central_records", body.as_bytes(), &seen).unwrap();
        assert!(matches!(page.held, Held::File(_)), "spilled");
        assert_eq!(seen.get(), body.len() as u64);
        let ids = records(page);
        assert_eq!(ids.len(), 6000);
        assert_eq!(ids[5999], "I5999");
    }

    #[test]
    fn a_cut_page_is_a_cut_link_and_garbage_is_not_v5() {
        let seen = Cell::new(0);
        let cut = Page::read("/p", &br#"{"data":[{"ID":1,"tableName":"item""#[..], &seen).unwrap();
        match cut.decode::<E>(&mut |_| Ok(())).unwrap_err() {
            E::Wire(e) => assert_eq!(e.class(), crate::error::Class::Transient, "{e}"),
            E::Unreadable => panic!("a cut page is not one bad record"),
        }
        let junk = Page::read("/p", &b"{\"data\":5}"[..], &seen).unwrap();
        assert!(matches!(
            junk.decode::<E>(&mut |_| Ok(())).unwrap_err(),
            E::Wire(WireError::Protocol(ProtocolError::NotV5 { .. }))
        ));
    }
}
