//! Sync by USB stick, the site's side: the sync layer's second carrier. An
//! export is a push into a file — the outbox in push order through the same
//! batch rule as a push ([`super::push::offer`]), written as the bundle's push
//! bodies ([`crate::wire::bundle`]); an import is a pull from a file — the
//! central's pages applied by the same page rule as a pull
//! ([`super::pull::apply_records`]), then integration and transfer numbering
//! as after a sync.
//!
//! What must hold:
//! - export changes nothing the central has not confirmed: the outbox stays as
//!   it is (the same records may still go over a link, harmlessly); which entry
//!   versions went into the bundle is recorded only once the file is complete
//!   on the stick;
//! - import uses nothing of a bundle before its check passed and it was found
//!   to be this site's; central data moves the cursor in the transaction that
//!   stores it (as a pull page does), and a bundle that starts after this
//!   site's cursor is refused (it would leave a gap); queue entries are not
//!   acknowledged — the next bundle or the link does that, and a re-delivery
//!   upserts harmlessly;
//! - the central's confirmation of an earlier bundle removes exactly the entry
//!   versions that bundle carried, and sets aside the ones it refused.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::Class;
use crate::store::bundle::{ExportRead, RefusedRecord};
use crate::store::Store;
use crate::wire::bundle::{self, Body, BundleError, Direction, Header, Reader, Writer};
use crate::wire::credentials::Secret;
use crate::wire::page;

use super::batch::{self, Batch, Limits};
use super::integration::{self, Site};
use super::pull::{self, Carrier, Source};
use super::push::{offer, Offered};
use super::{transfer, SyncError};

/// Queue entries acknowledged per body of a site's bundle.
const ACKS_PER_BODY: usize = 10_000;

/// This site as its bundles name it.
#[derive(Debug, Clone)]
pub struct Me {
    pub site_id: u32,
    pub site_name: String,
    /// The active store.
    pub store: String,
    /// This device's `msupply-site-uuid`.
    pub hardware_id: String,
}

/// Why a bundle was not written or applied.
#[derive(Debug)]
pub enum CourierError {
    Bundle(BundleError),
    Sync(SyncError),
    /// The bundle is not one for this site, or not for now: the message says
    /// which and what to do; nothing was changed.
    Refused(String),
}

impl CourierError {
    pub fn class(&self) -> Class {
        match self {
            CourierError::Bundle(BundleError::Io(..)) => Class::Local,
            CourierError::Bundle(_) | CourierError::Refused(_) => Class::Input,
            CourierError::Sync(e) => e.class(),
        }
    }
}

impl fmt::Display for CourierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CourierError::Bundle(e) => e.fmt(f),
            CourierError::Sync(e) => e.fmt(f),
            CourierError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CourierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CourierError::Bundle(e) => Some(e),
            CourierError::Sync(e) => Some(e),
            CourierError::Refused(_) => None,
        }
    }
}

impl From<BundleError> for CourierError {
    fn from(e: BundleError) -> Self {
        CourierError::Bundle(e)
    }
}

impl From<SyncError> for CourierError {
    fn from(e: SyncError) -> Self {
        CourierError::Sync(e)
    }
}

impl From<crate::store::StoreError> for CourierError {
    fn from(e: crate::store::StoreError) -> Self {
        CourierError::Sync(e.into())
    }
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub path: PathBuf,
    pub records: u64,
    pub set_aside: u64,
    /// Queue entries it acknowledges.
    pub acknowledged: u64,
}

/// Writes the outbox as a bundle for the central in `dir` (a push into a file).
pub fn export(
    store: &mut Store,
    dir: &Path,
    me: &Me,
    digest: &Secret,
) -> Result<Exported, CourierError> {
    let id = bundle::new_id().map_err(|e| BundleError::Io(dir.to_path_buf(), e))?;
    let cursor = store.cursor()?;
    let read = store.export_read()?;
    let total = read.pending_count()?;
    let (first_seq, last_seq) = read.seq_range()?;
    let header = Header {
        format: bundle::FORMAT,
        direction: Direction::ToCentral,
        id,
        kdf_rounds: bundle::KDF_ROUNDS,
        site_id: me.site_id,
        site_name: me.site_name.clone(),
        store: me.store.clone(),
        first_seq,
        last_seq,
        // Waiting records; the few that cannot be sent are set aside instead.
        records: total,
        cursor,
        max_cursor: 0,
        confirms: None,
        created_by: format!("fieldsync {}", env!("CARGO_PKG_VERSION")),
        hardware_id: me.hardware_id.clone(),
    };
    let name = format!(
        "{}-to-central-{first_seq}-{last_seq}.fsb",
        bundle::file_part(&me.site_name)
    );
    let mut writer = Writer::create(&dir.join(&name), &header, digest)?;
    let (records, unsendable) = write_pushes(&read, &mut writer, total)?;
    let acknowledged = write_acks(&read, &mut writer)?;
    read.finish()?;
    let path = writer.finish()?;
    store.bundle_written(
        &id,
        &unsendable,
        &json!({
            "file": path.display().to_string(),
            "id": bundle::id_hex(&id),
            "records": records,
            "acknowledged": acknowledged,
            "unix": crate::clock::now_unix(),
        })
        .to_string(),
    )?;
    log::info!(
        "bundle {} written: {records} record(s), outbox seq {first_seq}..{last_seq}, {acknowledged} queue entr(ies) acknowledged",
        path.display()
    );
    Ok(Exported {
        path,
        records,
        set_aside: unsendable.len() as u64,
        acknowledged,
    })
}

/// The outbox in push order as push bodies, through the push's batch rule:
/// one pass, one batch in memory at a time. Returns how many records went in,
/// and the entries that can never be sent (outbox `seq`, reason).
fn write_pushes(
    read: &ExportRead,
    writer: &mut Writer,
    total: u64,
) -> Result<(u64, Vec<(i64, String)>), CourierError> {
    let limits = Limits {
        max_records: batch::MAX_BATCH_RECORDS,
        max_bytes: batch::DEFAULT_BATCH_BYTES,
    };
    let mut left = total;
    let mut b = Batch::new(left);
    let mut records = 0u64;
    let mut unsendable: Vec<(i64, String)> = Vec::new();
    let mut failed: Option<CourierError> = None;
    read.for_each_pending(|e| {
        let mut offered = offer(&mut b, &e, limits);
        if let Offered::Full = offered {
            let full = std::mem::replace(&mut b, Batch::new(left));
            left -= full.len() as u64;
            let (body, _) = full.finish();
            if let Err(err) = writer.body(Body::Push, &body) {
                failed = Some(err.into());
                return false;
            }
            b = Batch::new(left);
            // A fresh batch takes its first entry.
            offered = offer(&mut b, &e, limits);
        }
        match offered {
            Offered::Added => {
                records += 1;
                if let Err(err) = read.carried(e.seq) {
                    failed = Some(err.into());
                    return false;
                }
            }
            Offered::Unsendable(why) => {
                log::warn!(
                    "{} {} cannot be sent ({why}); set aside (see `fieldsync queue --rejected`)",
                    e.table,
                    e.id
                );
                unsendable.push((e.seq, why));
            }
            Offered::Full => {}
        }
        true
    })?;
    if let Some(f) = failed {
        return Err(f);
    }
    if !b.is_empty() {
        let (body, _) = b.finish();
        writer.body(Body::Push, &body)?;
    }
    Ok((records, unsendable))
}

/// The queue entries applied from the central's bundles, for the central to
/// drop, in bodies of at most [`ACKS_PER_BODY`] ids. Returns how many.
fn write_acks(read: &ExportRead, writer: &mut Writer) -> Result<u64, CourierError> {
    let mut ids: Vec<String> = Vec::new();
    let mut acknowledged = 0u64;
    let flush = |ids: &mut Vec<String>, writer: &mut Writer| -> Result<(), BundleError> {
        if !ids.is_empty() {
            writer.body(Body::Ack, json!({ "syncIDs": ids }).to_string().as_bytes())?;
            ids.clear();
        }
        Ok(())
    };
    let mut failed = None;
    read.for_each_applied_entry(|id| {
        ids.push(id);
        acknowledged += 1;
        if ids.len() >= ACKS_PER_BODY {
            if let Err(e) = flush(&mut ids, writer) {
                failed = Some(e);
            }
        }
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    flush(&mut ids, writer)?;
    Ok(acknowledged)
}

/// What an import applied.
#[derive(Debug, Default)]
pub struct Imported {
    pub central: u64,
    pub queued: u64,
    pub integrated: u64,
    pub failed: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub numbered: usize,
}

/// Applies the central's bundle `file` for this site (a pull from a file).
pub fn import(
    store: &mut Store,
    file: &Path,
    me: &Me,
    digest: &Secret,
) -> Result<Imported, CourierError> {
    let (mut reader, header) = open_checked(store, file, me, digest)?;
    let site = Site {
        active_store: Some(me.store.clone()),
        initialised: true,
    };
    let mut done = Imported::default();
    let mut tally = integration::Tally::default();
    let mut last = store.cursor()?;
    let name = file.display().to_string();
    reader.bodies::<CourierError>(&mut |body, bytes| {
        let source = match body {
            Body::Central => Source::Central,
            Body::Queue => Source::Queue,
            Body::Push | Body::Ack => {
                return Err(CourierError::Refused(
                    "the bundle holds a site's push; take it to the central".into(),
                ))
            }
        };
        let tx = store.receiving()?;
        let (applied, _) = pull::apply_records(
            &tx,
            source,
            Carrier::Bundle,
            &site,
            last,
            &mut tally,
            &mut |_| {},
            |each| page::decode_records(&name, bytes, each),
        )?;
        match source {
            Source::Central => {
                if let Some(id) = applied.last_id {
                    last = id;
                    tx.set_cursor(id)?;
                }
                done.central += applied.records;
            }
            Source::Queue => done.queued += applied.records,
        }
        tx.commit()?;
        Ok(())
    })?;
    settle_import(store, &header, last, &mut done)?;
    // What could not be applied as it arrived, then transfer numbers (they
    // leave with the next bundle or sync), as after a pull.
    let pass = integration::integrate(store, &site, |_| {})?;
    done.integrated = tally.integrated + pass.integrated;
    done.failed = store.buffer_counts()?.failed;
    let numbering = transfer::number_all(store, &me.store)?;
    done.numbered = numbering.numbered.len();
    store.refresh_hold()?;
    store.set_bundle_in(
        &json!({
            "file": name,
            "id": bundle::id_hex(&header.id),
            "records": done.central + done.queued,
            "confirmed": done.confirmed,
            "unix": crate::clock::now_unix(),
        })
        .to_string(),
    )?;
    log::info!(
        "bundle {name} applied: {} central, {} queued, {} confirmed, {} refused",
        done.central,
        done.queued,
        done.confirmed,
        done.refused
    );
    Ok(done)
}

/// Opens the bundle `file` and checks it is this site's, for now: nothing of it
/// is used before its check passed (the header is read again from the checked
/// file) and it does not start after this site's cursor (that would leave a gap).
fn open_checked(
    store: &Store,
    file: &Path,
    me: &Me,
    digest: &Secret,
) -> Result<(Reader, Header), CourierError> {
    // Which site it claims to be for, before its check: a bundle of another
    // site fails the check too, and this says why.
    let claimed = bundle::peek_header(file)?;
    if claimed.direction != Direction::ToSite {
        return Err(CourierError::Refused(format!(
            "{} is a bundle for the central (written by `fieldsync export`); take it to the central, nothing was changed",
            file.display()
        )));
    }
    check_ours(file, &claimed, me)?;
    let reader = Reader::open(file, digest)?;
    // From here on only the checked header counts.
    let header = reader.header.clone();
    if header.direction != Direction::ToSite {
        return Err(CourierError::Refused(format!(
            "{} is not a bundle for a site; nothing was changed",
            file.display()
        )));
    }
    check_ours(file, &header, me)?;
    if !header.hardware_id.is_empty() && header.hardware_id != me.hardware_id {
        return Err(CourierError::Refused(format!(
            "{} is for device {:?} of site {}, not this one ({:?}); nothing was changed",
            file.display(),
            header.hardware_id,
            me.site_name,
            me.hardware_id
        )));
    }
    let cursor = store.cursor()?;
    if header.cursor > cursor {
        return Err(CourierError::Refused(format!(
            "{} starts at central data position {} but this site holds up to {cursor}: ask the central for a bundle from {cursor} \
             (`fieldsync-central export-bundle --site {} --cursor {cursor} …`); nothing was changed",
            file.display(),
            header.cursor,
            me.site_name
        )));
    }
    Ok((reader, header))
}

/// After the bundle's pages: everything after the cursor this site may see was
/// in the bundle; and the central's confirmation of this site's last bundle.
fn settle_import(
    store: &mut Store,
    header: &Header,
    last: u64,
    done: &mut Imported,
) -> Result<(), CourierError> {
    let tx = store.tx()?;
    if header.max_cursor > last {
        tx.set_cursor(header.max_cursor)?;
    }
    let known = tx.max_cursor()?;
    tx.set_max_cursor(header.max_cursor.max(last).max(known))?;
    if let Some(c) = &header.confirms {
        let refused: Vec<RefusedRecord> = c
            .refused
            .iter()
            .map(|r| RefusedRecord {
                table: &r.table,
                id: &r.id,
                reason: &r.reason,
            })
            .collect();
        let confirmed = tx.bundle_confirmed(&c.bundle, &refused)?;
        done.confirmed = confirmed.removed;
        done.refused = confirmed.refused;
    }
    tx.commit()?;
    Ok(())
}

fn check_ours(file: &Path, h: &Header, me: &Me) -> Result<(), CourierError> {
    if h.site_id == me.site_id && h.site_name.eq_ignore_ascii_case(&me.site_name) {
        return Ok(());
    }
    Err(CourierError::Refused(format!(
        "{} is for site {:?} (id {}), and this is site {} (id {}); nothing was changed",
        file.display(),
        h.site_name,
        h.site_id,
        me.site_name,
        me.site_id
    )))
}
