//! Sync by USB stick, the site's side: `fieldsync export DIR` writes the outbox
//! as a bundle for the central ([`crate::wire::bundle`]); `fieldsync
//! import-bundle FILE` applies the central's bundle as a pull would.
//!
//! What must hold:
//! - export changes nothing the central has not confirmed: the outbox stays as
//!   it is (the same records may still go over a link, harmlessly); it records
//!   which entry versions went into which bundle, in the transaction that read
//!   them, committed only once the file is complete on the stick;
//! - import uses nothing of a bundle before its check passed and it was found
//!   to be this site's; central data moves the cursor in the transaction that
//!   stores it (as a pull page does), and a bundle that starts after this
//!   site's cursor is refused (it would leave a gap); queue entries are not
//!   acknowledged — the link does that later, and a re-delivery upserts
//!   harmlessly;
//! - the central's confirmation of an earlier bundle removes exactly the entry
//!   versions that bundle carried, and sets aside the ones it refused.

use std::path::{Path, PathBuf};

use rusqlite::params;
use serde_json::json;

use crate::error::Class;
use crate::field::status;
use crate::store::{key, outbox, Store, StoreError};
use crate::sync::batch::{self, Batch, Limits, Offer};
use crate::sync::integration::{self, Site};
use crate::sync::{incoming, transfer};
use crate::wire::bundle::{self, BundleError, Direction, Header, Kind, Reader, Writer};
use crate::wire::credentials::Secret;
use crate::wire::decode::{self, PullError};

use super::settings::Settings;
use super::{credential, runner, CmdResult, Failure};

impl From<BundleError> for Failure {
    fn from(e: BundleError) -> Self {
        let class = match e {
            BundleError::Io(..) => Class::Local,
            _ => Class::Input,
        };
        Failure::new(class, e.to_string())
    }
}

/// This site as the bundles name it.
struct Identity {
    site_id: u32,
    site_name: String,
    store: String,
    /// The `credential_file` setting (see [`digest`]).
    credential_file: Option<std::path::PathBuf>,
}

fn identity(store: &Store) -> Result<Identity, Failure> {
    let settings = Settings::load(store)?;
    let initialised = store.setting(key::INIT_STATE)?.as_deref() == Some("initialised");
    let site_id = store.number(key::SITE_ID)?;
    let active = store.active_store()?.filter(|s| !s.is_empty());
    match (initialised, site_id, active) {
        (true, Some(id), Some(active)) => Ok(Identity {
            site_id: id as u32,
            site_name: settings.site,
            store: active,
            credential_file: settings.credential_file,
        }),
        _ => Err(Failure::new(
            Class::NotConfigured,
            "this site has not completed its first sync: USB bundles need a site the central has initialised (sync once over a link)",
        )),
    }
}

/// The site's password digest: the bundles' key.
fn digest(store: &mut Store, me: &Identity) -> Result<Secret, Failure> {
    let places = credential::Places::from_env(store.path(), me.credential_file.clone());
    credential::migrate(store, &places.file)?;
    places.read()
}

/// What `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub path: PathBuf,
    pub records: u64,
    pub set_aside: u64,
}

/// `fieldsync export DIR`.
pub fn export(db: &Path, dir: &Path) -> CmdResult {
    let _lock = runner::lock(db)?;
    let mut store = Store::open_configured(db)?;
    let e = export_bundle(&mut store, dir)?;
    runner::refresh_metrics(&store);
    println!(
        "wrote {} with {} record(s){}; take it to the central (`fieldsync-central import-bundle`)",
        e.path.display(),
        e.records,
        if e.set_aside > 0 {
            format!(" ({} set aside: `fieldsync queue --rejected`)", e.set_aside)
        } else {
            String::new()
        }
    );
    Ok(())
}

pub fn export_bundle(store: &mut Store, dir: &Path) -> Result<Exported, Failure> {
    let me = identity(store)?;
    let digest = digest(store, &me)?;
    if !dir.is_dir() {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{} is not a directory: give the stick's directory (e.g. /media/usb)",
                dir.display()
            ),
        ));
    }
    let id = bundle::new_id().map_err(|e| Failure::new(Class::Local, format!("random: {e}")))?;
    let cursor = store.number(key::CURSOR)?.unwrap_or(0);
    let sql = |what: &'static str| move |e| StoreError::sqlite(what, e);
    // What goes into the bundle is noted in temporary tables (this connection
    // only, never the file), so the outbox is read in a snapshot without the
    // write lock: the clinic's app keeps writing while the stick is written.
    store
        .conn()
        .execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS bundle_out (seq INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS bundle_ack_out (id TEXT PRIMARY KEY);
             DELETE FROM temp.bundle_out; DELETE FROM temp.bundle_ack_out;",
        )
        .map_err(sql("noting the bundle"))?;
    let snapshot = store
        .conn()
        .unchecked_transaction()
        .map_err(sql("reading the outbox"))?;
    let conn: &rusqlite::Connection = &snapshot;
    let total = outbox::pending_count(conn)?;
    let (first, last): (Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT min(seq), max(seq) FROM outbox WHERE state = 'pending'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql("reading the outbox"))?;
    let header = Header {
        format: bundle::FORMAT,
        direction: Direction::ToCentral,
        id,
        kdf_rounds: bundle::KDF_ROUNDS,
        site_id: me.site_id,
        site_name: me.site_name.clone(),
        store: me.store,
        first_seq: first.unwrap_or(0) as u64,
        last_seq: last.unwrap_or(0) as u64,
        // Waiting records; the few that cannot be sent are set aside instead.
        records: total,
        cursor,
        max_cursor: 0,
        confirms: None,
        created_by: format!("fieldsync {}", env!("CARGO_PKG_VERSION")),
    };
    let name = format!(
        "{}-to-central-{}-{}.fsb",
        bundle::file_part(&me.site_name),
        header.first_seq,
        header.last_seq
    );
    let mut writer = Writer::create(&dir.join(&name), &header, &digest)?;
    let limits = Limits {
        max_records: batch::MAX_BATCH_RECORDS,
        max_bytes: batch::DEFAULT_BATCH_BYTES,
    };
    let mut left = total;
    let mut b = Batch::new(left);
    let mut records = 0u64;
    let mut unsendable: Vec<(i64, String, String, String)> = Vec::new();
    let mut failed: Option<Failure> = None;
    let mut note = conn
        .prepare_cached("INSERT OR IGNORE INTO temp.bundle_out (seq) VALUES (?1)")
        .map_err(sql("noting the bundle"))?;
    // One pass over the outbox in push order; a batch at a time in memory.
    outbox::for_each_pending(conn, usize::MAX, |e| {
        let problem = match (&e.unreadable, &e.data) {
            (Some(why), _) => Some(format!("invalid: {why}")),
            (None, Some(data)) if !e.delete => crate::store::row::check(data, Some(&e.id))
                .err()
                .map(|p| format!("{}: {p}", p.code())),
            _ => None,
        };
        if let Some(why) = problem {
            unsendable.push((e.seq, e.table, e.id, why));
            return true;
        }
        let mut offer = b.offer(&e, limits);
        if offer == Offer::Full {
            let full = std::mem::replace(&mut b, Batch::new(left));
            left -= full.len() as u64;
            let (body, _) = full.finish();
            if let Err(err) = writer.body(Kind::Push, &body) {
                failed = Some(err.into());
                return false;
            }
            b = Batch::new(left);
            offer = b.offer(&e, limits);
        }
        match offer {
            Offer::Added => {
                records += 1;
                if let Err(err) = note.execute([e.seq]) {
                    failed = Some(StoreError::sqlite("noting the bundle", err).into());
                    return false;
                }
            }
            Offer::TooLarge(n) => {
                unsendable.push((e.seq, e.table, e.id, format!("too_large: {n} bytes")))
            }
            Offer::Full => unreachable!("a fresh batch takes its first entry"),
        }
        true
    })?;
    drop(note);
    if let Some(f) = failed {
        return Err(f);
    }
    if !b.is_empty() {
        let (body, _) = b.finish();
        writer.body(Kind::Push, &body)?;
    }
    // The queue entries applied from the central's bundles, for the central to
    // drop (bounded bodies of at most ACKS_PER_BODY ids).
    let acks = ack_bodies(conn, &mut writer)?;
    // Ends the read; keeps the notes (a rollback would drop them).
    snapshot.commit().map_err(sql("noting the bundle"))?;
    let path = writer.finish()?;
    // The file is complete on the stick: now, in one short write transaction,
    // what it carried is recorded (entry versions still in the outbox) and
    // what could not go is set aside (unless it was edited meanwhile).
    let tx = store.tx()?;
    tx.execute(
        "DELETE FROM bundle_sent WHERE seq NOT IN (SELECT seq FROM outbox)",
        [],
    )
    .map_err(sql("tidying the bundle records"))?;
    tx.execute(
        "INSERT OR IGNORE INTO bundle_sent (bundle, seq) \
         SELECT ?1, seq FROM temp.bundle_out WHERE seq IN (SELECT seq FROM outbox)",
        [&id[..]],
    )
    .map_err(sql("recording the bundle"))?;
    tx.execute(
        "UPDATE bundle_ack SET bundle = ?1 WHERE sync_out_id IN (SELECT id FROM temp.bundle_ack_out)",
        [&id[..]],
    )
    .map_err(sql("recording the bundle"))?;
    for (seq, t, rid, why) in &unsendable {
        let n = tx
            .execute(
                "UPDATE outbox SET state = 'rejected', reason = ?2 WHERE seq = ?1 AND state = 'pending'",
                params![seq, why],
            )
            .map_err(sql("setting a record aside"))?;
        if n > 0 {
            log::warn!(
                "{t} {rid} cannot be sent ({why}); set aside (see `fieldsync queue --rejected`)"
            );
        }
    }
    crate::store::set_setting(
        &tx,
        key::BUNDLE_OUT,
        &json!({
            "file": path.display().to_string(),
            "id": bundle::id_hex(&id),
            "records": records,
            "acknowledged": acks,
            "unix": status::now_unix(),
        })
        .to_string(),
    )?;
    tx.commit()
        .map_err(|e| StoreError::sqlite("recording the bundle", e))?;
    let _ = store
        .conn()
        .execute_batch("DELETE FROM temp.bundle_out; DELETE FROM temp.bundle_ack_out;");
    log::info!(
        "bundle {} written: {records} record(s), outbox seq {}..{}, {acks} queue entr(ies) acknowledged",
        path.display(),
        header.first_seq,
        header.last_seq
    );
    Ok(Exported {
        path,
        records,
        set_aside: unsendable.len() as u64,
    })
}

/// Queue entries acknowledged per body of a site's bundle.
const ACKS_PER_BODY: usize = 10_000;

/// Writes the acknowledgement bodies; returns how many entries they name.
fn ack_bodies(conn: &rusqlite::Connection, writer: &mut Writer) -> Result<u64, Failure> {
    let sql = |e| StoreError::sqlite("reading the applied queue entries", e);
    let mut stmt = conn
        .prepare("SELECT sync_out_id FROM bundle_ack ORDER BY sync_out_id")
        .map_err(sql)?;
    let mut note = conn
        .prepare("INSERT OR IGNORE INTO temp.bundle_ack_out (id) VALUES (?1)")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut ids: Vec<String> = Vec::new();
    let mut total = 0u64;
    let flush = |ids: &mut Vec<String>, writer: &mut Writer| -> Result<(), Failure> {
        if !ids.is_empty() {
            let body = json!({ "syncIDs": ids }).to_string();
            writer.body(Kind::Ack, body.as_bytes())?;
            ids.clear();
        }
        Ok(())
    };
    while let Some(r) = rows.next().map_err(sql)? {
        let id: String = r.get(0).map_err(sql)?;
        note.execute([&id]).map_err(sql)?;
        ids.push(id);
        total += 1;
        if ids.len() >= ACKS_PER_BODY {
            flush(&mut ids, writer)?;
        }
    }
    flush(&mut ids, writer)?;
    Ok(total)
}

/// What `import-bundle` applied.
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

/// `fieldsync import-bundle FILE`.
pub fn import(db: &Path, file: &Path) -> CmdResult {
    let _lock = runner::lock(db)?;
    let mut store = Store::open_configured(db)?;
    let i = import_bundle(&mut store, file)?;
    runner::refresh_metrics(&store);
    println!(
        "applied {}: {} central record(s), {} queued record(s), {} integrated, {} not applied yet; \
         {} sent record(s) confirmed by the central, {} refused",
        file.display(),
        i.central,
        i.queued,
        i.integrated,
        i.failed,
        i.confirmed,
        i.refused
    );
    if i.failed > 0 {
        return Err(Failure::new(
            Class::Integration,
            format!(
                "{} received record(s) could not be applied yet (see `fieldsync status`)",
                i.failed
            ),
        ));
    }
    Ok(())
}

pub fn import_bundle(store: &mut Store, file: &Path) -> Result<Imported, Failure> {
    let me = identity(store)?;
    // Which site it claims to be for, before its check: a bundle of another
    // site fails the check too, and this says why.
    let claimed = bundle::peek_header(file)?;
    if claimed.direction != Direction::ToSite {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{} is a bundle for the central (written by `fieldsync export`); take it to the central, nothing was changed",
                file.display()
            ),
        ));
    }
    let foreign = |h: &Header| {
        Failure::new(
            Class::Input,
            format!(
                "{} is for site {:?} (id {}), and this is site {} (id {}); nothing was changed",
                file.display(),
                h.site_name,
                h.site_id,
                me.site_name,
                me.site_id
            ),
        )
    };
    let ours =
        |h: &Header| h.site_id == me.site_id && h.site_name.eq_ignore_ascii_case(&me.site_name);
    if !ours(&claimed) {
        return Err(foreign(&claimed));
    }
    let digest = digest(store, &me)?;
    let mut reader = Reader::open(file, &digest)?;
    // From here on only the checked header counts.
    let header = reader.header.clone();
    if header.direction != Direction::ToSite || !ours(&header) {
        return Err(foreign(&header));
    }
    let cursor = store.number(key::CURSOR)?.unwrap_or(0);
    if header.cursor > cursor {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{} starts at central data position {} but this site holds up to {cursor}: ask the central for a bundle from {cursor} \
                 (`fieldsync-central export-bundle --site {} --cursor {cursor} …`); nothing was changed",
                file.display(),
                header.cursor,
                me.site_name
            ),
        ));
    }
    let site = Site {
        active_store: Some(me.store.clone()),
        initialised: true,
    };
    let mut done = Imported::default();
    let mut report = integration::Report::default();
    let mut last = cursor;
    reader.bodies::<Failure>(&mut |kind, body| {
        let tx = store.tx_unruled()?;
        let mut n = 0u64;
        let mut each = |rec: crate::wire::protocol::SyncRecord| -> Result<(), Failure> {
            if kind == Kind::Central {
                let Some(id) = rec.id else {
                    return Err(Failure::new(Class::Site, "a central record without ID in the bundle"));
                };
                if id <= last {
                    return Ok(()); // held already
                }
                last = id;
            }
            integration::receive(&tx, &site, &incoming(&rec), &mut report)?;
            if let (Kind::Queue, Some(sid)) = (kind, &rec.sync_out_id) {
                // Acknowledged by the next bundle to the central, with this
                // page's records already committed.
                tx.prepare_cached("INSERT OR IGNORE INTO bundle_ack (sync_out_id) VALUES (?1)")
                    .and_then(|mut st| st.execute([sid]))
                    .map_err(|e| StoreError::sqlite("noting an applied queue entry", e))?;
            }
            n += 1;
            Ok(())
        };
        match kind {
            Kind::Central | Kind::Queue => match decode::decode_pull(body, &mut each) {
                Ok(_) => {}
                Err(PullError::Stopped(f)) => return Err(f),
                Err(PullError::Broken { detail, .. }) => {
                    return Err(Failure::new(
                        Class::Site,
                        format!(
                            "{}: a page of the bundle cannot be read ({detail}); nothing of that page was applied",
                            file.display()
                        ),
                    ))
                }
            },
            Kind::Push | Kind::Ack => {
                return Err(Failure::new(
                    Class::Input,
                    "the bundle holds a site's push; take it to the central",
                ))
            }
        }
        if kind == Kind::Central {
            crate::store::set_setting(&tx, key::CURSOR, &last.to_string())?;
            done.central += n;
        } else {
            done.queued += n;
        }
        tx.commit()?;
        Ok(())
    })?;
    // Everything after the cursor this site may see was in the bundle.
    let tx = store.tx()?;
    if header.max_cursor > last {
        crate::store::set_setting(&tx, key::CURSOR, &header.max_cursor.to_string())?;
    }
    let known = crate::store::get_setting(&tx, key::CENTRAL_MAX_CURSOR)?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    crate::store::set_setting(
        &tx,
        key::CENTRAL_MAX_CURSOR,
        &header.max_cursor.max(last).max(known).to_string(),
    )?;
    if let Some(c) = &header.confirms {
        for r in &c.refused {
            done.refused += tx
                .execute(
                    "UPDATE outbox SET state = 'rejected', reason = ?3 WHERE table_name = ?1 AND record_id = ?2 \
                     AND seq IN (SELECT seq FROM bundle_sent WHERE bundle = ?4)",
                    params![r.table, r.id, r.reason, &c.bundle[..]],
                )
                .map_err(|e| StoreError::sqlite("setting refused records aside", e))?
                as u64;
        }
        done.confirmed =
            tx.execute(
                "DELETE FROM outbox WHERE state IN ('pending', 'sent') \
                 AND seq IN (SELECT seq FROM bundle_sent WHERE bundle = ?1)",
                [&c.bundle[..]],
            )
            .map_err(|e| StoreError::sqlite("removing confirmed records", e))? as u64;
        tx.execute("DELETE FROM bundle_sent WHERE bundle = ?1", [&c.bundle[..]])
            .map_err(|e| StoreError::sqlite("removing confirmed records", e))?;
        // The queue entries that bundle acknowledged are gone from the central.
        tx.execute("DELETE FROM bundle_ack WHERE bundle = ?1", [&c.bundle[..]])
            .map_err(|e| StoreError::sqlite("removing confirmed records", e))?;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("saving the bundle's cursor", e))?;
    // What could not be applied as it arrived, then transfer numbers (they
    // leave with the next bundle or sync), as after a pull.
    let pass = integration::integrate(store, &site, |_| {})?;
    done.integrated = report.integrated + pass.integrated;
    done.failed = crate::store::buffer::counts(store.conn())?.failed;
    let (numbered, _) = transfer::number_all(store, &me.store)?;
    done.numbered = numbered.len();
    let _ = store.refresh_hold()?;
    store.set_setting(
        key::BUNDLE_IN,
        &json!({
            "file": file.display().to_string(),
            "id": bundle::id_hex(&header.id),
            "records": done.central + done.queued,
            "confirmed": done.confirmed,
            "unix": status::now_unix(),
        })
        .to_string(),
    )?;
    log::info!(
        "bundle {} applied: {} central, {} queued, {} confirmed, {} refused",
        file.display(),
        done.central,
        done.queued,
        done.confirmed,
        done.refused
    );
    Ok(done)
}
