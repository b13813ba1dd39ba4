//! Sync by USB stick, the central's side: `import-bundle` applies a site's
//! bundle as that site's pushes, `export-bundle` writes the site's queue and
//! the central data after its cursor for the courier to take back.
//!
//! What must hold: the administrator gives the site's password, which is
//! checked against the stored Argon2id hash before its digest (the bundles'
//! key) checks the file; nothing is applied before both passed. Every push body
//! goes through the same endpoint code as over HTTP — judged by ownership,
//! staged idempotently, a site's own push dropping its stale queue entries —
//! then the final push seals it and integration runs before the command
//! returns, so a bundle imported twice, or followed by the same records over a
//! link, changes nothing. What the import refused is remembered and goes back
//! to the site in the next bundle written for it, with the confirmation that
//! lets the site drop what was accepted.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::db::{params, OptionalExtension};

use super::auth::SiteRow;
use super::staging::{Carrier, PushBody, Staged};
use super::{import_lock, pages, routing, verify_digest, Central, CentralError, Result};
use crate::wire::bundle::{self, Body, Confirmation, Direction, Header, Reader, Refused, Writer};
use crate::wire::credentials::{self, Secret};
use crate::wire::protocol::{code, Acknowledge, SyncRecord};

/// Records per page of a bundle for a site, and the bytes a page stops at.
const PAGE_RECORDS: u64 = 1000;
const PAGE_BYTES: usize = 4 << 20;

/// The meta key of a site's last imported bundle and what was refused of it.
fn bundle_in_key(site: u32) -> String {
    format!("bundle_in:{site}")
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub site: String,
    pub records: u64,
    /// Records skipped: the central holds a newer push of them already.
    pub stale: u64,
    /// Queue entries the site said it applied (from an earlier bundle).
    pub acknowledged: u64,
    pub bodies: u64,
    pub refused: Vec<Refused>,
    pub integrated: bool,
}

impl Central {
    /// The site named in a bundle, after its password was checked; returns
    /// the row and the digest (the bundle key).
    fn bundle_site(&self, name: &str, password: &str) -> Result<(SiteRow, Secret)> {
        let conn = self.conn()?;
        let row: Option<(u32, String, String, String, String, String)> = conn
            .query_row(
                "SELECT site_id, uuid, code, name, init_status, password_hash FROM site WHERE lower(name) = lower(?1)",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let Some((site_id, uuid, code, name, init_status, hash)) = row else {
            return Err(CentralError::Refused(format!(
                "site {name:?} is not on this central (see `fieldsync-central report`); nothing was changed"
            )));
        };
        let digest = credentials::password_digest(password);
        if !verify_digest(&hash, digest.expose()) {
            return Err(CentralError::Refused(format!(
                "that is not site {name}'s password; nothing was changed"
            )));
        }
        Ok((
            SiteRow {
                site_id,
                uuid,
                code,
                name,
                init_status,
                // A bundle never asks /site nor calls a test endpoint.
                om_central_url: String::new(),
                test_site: false,
            },
            digest,
        ))
    }

    /// `fieldsync-central import-bundle FILE --password-env VAR`.
    pub fn import_bundle(&self, path: &Path, password: &str) -> Result<Imported> {
        let claimed = bundle::peek_header(path)?;
        if claimed.direction != Direction::ToCentral {
            return Err(CentralError::Refused(format!(
                "{} was written by a central for site {:?}; take it to that site (`fieldsync import-bundle`); nothing was changed",
                path.display(),
                claimed.site_name
            )));
        }
        let (site, digest) = self.bundle_site(&claimed.site_name, password)?;
        let mut reader = Reader::open(path, &digest)?;
        // From here on only the checked header counts.
        let header = reader.header.clone();
        if header.direction != Direction::ToCentral
            || header.site_id != site.site_id
            || !header.site_name.eq_ignore_ascii_case(&site.name)
        {
            return Err(CentralError::Refused(format!(
                "{} is for site {:?} (id {}) of another central, not site {} (id {}); nothing was changed",
                path.display(),
                header.site_name,
                header.site_id,
                site.name,
                site.site_id
            )));
        }
        let bound: String = self.conn()?.query_row(
            "SELECT hardware_id FROM site WHERE site_id = ?1",
            [site.site_id],
            |r| r.get(0),
        )?;
        if !bound.is_empty() && header.hardware_id != bound {
            return Err(CentralError::Refused(format!(
                "{} was written on device {:?}, but site {} is bound to device {bound:?} (a replaced device? \
                 run `fieldsync-central site reset-hardware-id {}` first); nothing was changed",
                path.display(),
                header.hardware_id,
                site.name,
                site.name
            )));
        }
        let lock = import_lock::ImportLock::take(self, &site)?;
        // Integration runs here, before the command returns.
        let mut me = self.clone();
        me.background_integration = false;
        let mut done = Imported {
            site: site.name.clone(),
            ..Imported::default()
        };
        let applied = me.apply_bodies(&mut reader, &site, path, &mut done);
        if let Err(e) = applied {
            if done.bodies > 0 {
                // Rows this import staged stay staged (judged already); the
                // next import of a bundle of this site may go ahead.
                let marked = self.conn().and_then(|c| {
                    c.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![
                            import_lock::partial_key(site.site_id),
                            credentials::hex(&header.id)
                        ],
                    )?;
                    Ok(())
                });
                if let Err(m) = marked {
                    // Without the mark the next import waits for the site's
                    // own final push to seal these rows, as after a sync.
                    log::error!(
                        "site {}: could not mark the import as stopped half-way: {m}",
                        site.name
                    );
                }
                return Err(CentralError::Refused(format!(
                    "{e}; {} body(ies) of it were staged and wait: import a bundle of this site again (this one, if it was not the cause) to finish",
                    done.bodies
                )));
            }
            return Err(e);
        }
        let conn = self.conn()?;
        done.integrated = !self.integration_owed(&conn, site.site_id)?;
        conn.execute(
            "DELETE FROM meta WHERE key = ?1",
            [import_lock::partial_key(site.site_id)],
        )?;
        // Confirmed only after the integration committed: a cut before this
        // leaves the records integrated and unconfirmed, and the site sends
        // them again (skipped then as not newer).
        let confirmation = Confirmation {
            bundle: header.id,
            refused: done.refused.clone(),
        };
        let encoded = postcard::to_allocvec(&confirmation)
            .map_err(|e| CentralError::Refused(format!("encoding the confirmation: {e}")))?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![bundle_in_key(site.site_id), credentials::hex(&encoded)],
        )?;
        pages::record_site_cursor(&conn, site.site_id, header.cursor)?;
        drop(lock);
        log::info!(
            "bundle {} of site {}: {} record(s) in {} body(ies), {} already newer here, {} refused, {} queue entries acknowledged",
            path.display(),
            site.name,
            done.records,
            done.bodies,
            done.stale,
            done.refused.len(),
            done.acknowledged
        );
        Ok(done)
    }

    /// The bundle's bodies as the site's pushes and acknowledgements, through
    /// the same staging as a push over the link, then its final push.
    fn apply_bodies(
        &self,
        reader: &mut Reader,
        site: &SiteRow,
        path: &Path,
        done: &mut Imported,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        reader.bodies::<CentralError>(&mut |body, bytes| {
            let mut plain = Vec::new();
            bytes
                .take(MAX_PUSH_BODY + 1)
                .read_to_end(&mut plain)
                .map_err(|e| {
                    CentralError::Refused(format!("{}: a body cannot be read: {e}", path.display()))
                })?;
            if plain.len() as u64 > MAX_PUSH_BODY {
                return Err(CentralError::Refused(format!(
                    "{}: a body is over {} MiB; nothing after it was imported",
                    path.display(),
                    MAX_PUSH_BODY >> 20
                )));
            }
            match body {
                Body::Push => {
                    let push = PushBody::parse(&plain).map_err(CentralError::Invalid)?;
                    let (accepted, stale) =
                        self.stage_bundle_push(&mut conn, site, push.data, &mut done.refused)?;
                    done.bodies += 1;
                    done.records += accepted;
                    done.stale += stale;
                }
                Body::Ack => {
                    let ack: Acknowledge = serde_json::from_slice(&plain).map_err(|e| {
                        CentralError::Invalid(format!("an acknowledgement body: {e}"))
                    })?;
                    done.acknowledged +=
                        self.acknowledge_entries(&mut conn, site.site_id, &ack.sync_ids)?;
                }
                Body::Central | Body::Queue => {
                    return Err(CentralError::refused(
                        "the bundle holds pages for a site, not pushes",
                    ))
                }
            }
            Ok(())
        })?;
        // The final push: seals what was staged (only this bundle's: the lock
        // kept the site's own pushes out) and integrates it.
        self.final_push(&conn, site.site_id)
    }

    /// One push body as the site sent it; records refused are listed and the
    /// rest staged again, as the agent does. Returns the records staged and
    /// those skipped because a newer push of them is here already.
    fn stage_bundle_push(
        &self,
        conn: &mut super::db::Connection,
        site: &SiteRow,
        mut records: Vec<SyncRecord>,
        refused: &mut Vec<Refused>,
    ) -> Result<(u64, u64)> {
        loop {
            match self.stage(conn, site, records.clone(), Carrier::Bundle)? {
                Staged::Accepted { records, stale } => return Ok((records, stale)),
                Staged::Full { staged, bytes } => {
                    return Err(CentralError::Refused(format!(
                        "site {} has {staged} records ({} MiB) staged and not integrated; import the rest of \
                         the bundle after its next sync (what was imported so far stays)",
                        site.name,
                        bytes >> 20
                    )))
                }
                Staged::Integrating => {
                    return Err(CentralError::Refused(format!(
                        "site {}'s last push is being integrated; import the bundle again in a minute \
                         (what was imported so far stays)",
                        site.name
                    )))
                }
                Staged::Refused(r) => {
                    let code = if r.malformed {
                        code::INVALID_SYNC_RECORD
                    } else {
                        code::RECORD_NOT_OWNED_BY_SITE
                    };
                    records.retain(|rec| {
                        !r.records.iter().any(|x| {
                            x.table_name == rec.table_name && x.record_id == rec.record_id
                        })
                    });
                    for x in r.records {
                        log::warn!(
                            "site {}: {} {} refused ({code}: {})",
                            site.name,
                            x.table_name,
                            x.record_id,
                            x.reason
                        );
                        refused.push(Refused {
                            table: x.table_name,
                            id: x.record_id,
                            reason: format!("{code}: {}", x.reason),
                        });
                    }
                    if records.is_empty() {
                        return Ok((0, 0));
                    }
                }
            }
        }
    }

    /// `fieldsync-central export-bundle --site NAME --password-env VAR DIR`:
    /// the site's queue and the central data after `cursor` (default: where the
    /// site is known to be), with the answer to its last bundle.
    pub fn export_bundle(
        &self,
        name: &str,
        password: &str,
        dir: &Path,
        cursor: Option<u64>,
    ) -> Result<(PathBuf, u64)> {
        if !dir.is_dir() {
            return Err(CentralError::Refused(format!(
                "{} is not a directory: give the stick's directory",
                dir.display()
            )));
        }
        let (site, digest) = self.bundle_site(name, password)?;
        if site.init_status != "completed" {
            return Err(CentralError::Refused(format!(
                "site {} has not been initialised: its first sync must run over a link",
                site.name
            )));
        }
        let conn = self.conn()?;
        // One read transaction: the header's counts and the pages agree.
        let tx = conn.read_transaction()?;
        let hardware: String = tx.query_row(
            "SELECT hardware_id FROM site WHERE site_id = ?1",
            [site.site_id],
            |r| r.get(0),
        )?;
        let meta = |key: String| -> Result<Option<String>> {
            Ok(tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        let cursor = match cursor {
            Some(c) => c,
            None => meta(pages::site_cursor_key(site.site_id))?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        let confirms = match meta(bundle_in_key(site.site_id))? {
            Some(h) => unhex(&h)
                .and_then(|b| postcard::from_bytes::<Confirmation>(&b).ok())
                .map(Some)
                .ok_or_else(|| {
                    CentralError::Refused("the record of the site's last bundle is damaged".into())
                })?,
            None => None,
        };
        let hidden = pages::hidden(&tx, site.site_id)?;
        let max: u64 = tx.query_row("SELECT coalesce(max(id), 0) FROM changelog", [], |r| {
            r.get(0)
        })?;
        let central: u64 = tx.query_row(
            "SELECT count(*) FROM changelog WHERE id > ?1 AND (origin_site IS NULL OR origin_site <> ?2) \
             AND (?3 = '' OR instr(',' || ?3 || ',', ',' || table_name || ',') = 0)",
            params![cursor as i64, site.site_id, hidden],
            |r| r.get(0),
        )?;
        let (queued, first, last): (u64, Option<i64>, Option<i64>) = tx.query_row(
            "SELECT count(*), min(id), max(id) FROM sync_out WHERE site_id = ?1",
            [site.site_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let stores = routing::active_stores(&tx, site.site_id)?;
        let header = Header {
            format: bundle::FORMAT,
            direction: Direction::ToSite,
            id: bundle::new_id().map_err(|e| CentralError::Refused(format!("random: {e}")))?,
            kdf_rounds: bundle::KDF_ROUNDS,
            site_id: site.site_id,
            site_name: site.name.clone(),
            store: stores.first().cloned().unwrap_or_default(),
            first_seq: first.unwrap_or(0) as u64,
            last_seq: last.unwrap_or(0) as u64,
            records: central + queued,
            cursor,
            max_cursor: max.max(cursor),
            confirms,
            created_by: format!("fieldsync-central {}", env!("CARGO_PKG_VERSION")),
            hardware_id: hardware,
        };
        let file = dir.join(format!(
            "{}-from-central-{}-{}.fsb",
            bundle::file_part(&site.name),
            cursor,
            header.max_cursor
        ));
        let mut w = Writer::create(&file, &header, &digest)?;
        let mut after = cursor as i64;
        loop {
            let head = format!("{{\"maxCursor\":{},\"data\":[", header.max_cursor);
            let (body, n, last) = pages::page_body(
                &tx,
                pages::CENTRAL_PAGE,
                params![after, PAGE_RECORDS, site.site_id, hidden],
                head,
                |id| format!("\"ID\":{id}"),
                PAGE_BYTES,
            )?;
            if n == 0 {
                break;
            }
            w.body(Body::Central, &body)?;
            after = last;
        }
        let mut after = 0i64;
        let mut left = queued;
        loop {
            let head = format!("{{\"queueLength\":{left},\"data\":[");
            let (body, n, last) = pages::page_body(
                &tx,
                "SELECT id, table_name, record_id, action, data FROM sync_out WHERE site_id = ?1 AND id > ?2 \
                 ORDER BY id LIMIT ?3",
                params![site.site_id, after, PAGE_RECORDS],
                head,
                |id| format!("\"syncOutId\":\"{id}\""),
                PAGE_BYTES,
            )?;
            if n == 0 {
                break;
            }
            w.body(Body::Queue, &body)?;
            after = last;
            left = left.saturating_sub(n);
        }
        drop(tx);
        let path = w.finish()?;
        log::info!(
            "bundle {} for site {}: {} central record(s) after {cursor}, {queued} queued",
            path.display(),
            site.name,
            central
        );
        Ok((path, central + queued))
    }
}

/// Largest push body once inflated: the HTTP server's cap for gzip bodies.
const MAX_PUSH_BODY: u64 = 16 << 20;

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
