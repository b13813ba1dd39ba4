//! The database lock a USB bundle import holds on its site: the site's own
//! pushes (in whatever process serves them) are told to come back later while
//! it runs, and an import waits for a sync that pushed and has not sealed yet.
//! A lock from an import that died expires; rows an import that stopped
//! half-way staged are marked, so the next import may go ahead and seal them.

use super::db::{params, OptionalExtension};

use super::auth::SiteRow;
use super::{Central, CentralError, Result};
use crate::wire::{bundle, credentials};

/// A lock older than this is from an import that died; it no longer counts.
const LOCK_EXPIRES_SECS: i64 = 3600;

fn lock_key(site: u32) -> String {
    format!("bundle_import:{site}")
}

/// Set while an import that stopped half-way left rows staged: the next
/// import may go ahead (and seals them with its own); a sync's final push
/// seals them too.
pub(super) fn partial_key(site: u32) -> String {
    format!("bundle_partial:{site}")
}

/// The token of a live import lock on `site`, if any (`api::push` refuses the
/// site's own pushes while one is held).
pub fn held(conn: &super::db::Connection, site: u32) -> Result<Option<String>> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([lock_key(site)], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| {
        let (token, until) = v.split_once(':')?;
        (until.parse::<i64>().ok()? > super::now()).then(|| token.to_string())
    }))
}

/// The site's pushes kept to this import while it runs; released on drop.
pub(super) struct ImportLock {
    central: Central,
    site: u32,
    pub(super) token: String,
}

impl ImportLock {
    pub(super) fn take(central: &Central, site: &SiteRow) -> Result<ImportLock> {
        let token = credentials::hex(
            &bundle::new_id().map_err(|e| CentralError::Refused(format!("random: {e}")))?,
        );
        let mut conn = central.conn()?;
        let tx = super::write_tx(&mut conn)?;
        if held(&tx, site.site_id)?.is_some() {
            return Err(CentralError::Refused(format!(
                "another bundle of site {} is being imported; wait for it to finish (a stale lock clears after an hour)",
                site.name
            )));
        }
        // Rows the site pushed over its link and has not sealed yet: its sync
        // is under way (the seal would take them in with the bundle's).
        let unsealed: i64 = tx.query_row(
            "SELECT count(*) FROM staging WHERE site_id = ?1 \
             AND NOT EXISTS (SELECT 1 FROM integration WHERE site_id = ?1)",
            [site.site_id],
            |r| r.get(0),
        )?;
        // What an import that stopped half-way staged is no sync under way.
        let partial: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1)",
            [partial_key(site.site_id)],
            |r| r.get(0),
        )?;
        if unsealed > 0 && !partial {
            return Err(CentralError::Refused(format!(
                "site {} is in the middle of a sync over its link ({unsealed} pushed record(s) not yet sealed); \
                 import the bundle when that sync has finished — nothing was changed",
                site.name
            )));
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![lock_key(site.site_id), format!("{token}:{}", super::now() + LOCK_EXPIRES_SECS)],
        )?;
        tx.commit()?;
        Ok(ImportLock {
            central: central.clone(),
            site: site.site_id,
            token,
        })
    }
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        let released = self.central.conn().and_then(|c| {
            c.execute(
                "DELETE FROM meta WHERE key = ?1 AND value LIKE ?2",
                params![lock_key(self.site), format!("{}:%", self.token)],
            )?;
            Ok(())
        });
        if let Err(e) = released {
            log::error!("site {}: releasing the bundle import lock: {e}", self.site);
        }
    }
}
