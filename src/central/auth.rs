//! The checks every v5 request passes, in the order §6 gives: site, password,
//! version, hardware id, active store. A request failing an earlier check binds
//! nothing.
//!
//! Also: repeated wrong passwords for a site lock its logins for a while (1 min
//! after 5 in a row, doubling to an hour) without verifying more guesses, answered
//! with the legacy `site_auth_timeout` that clients treat as transient; `version`
//! must be plain decimal digits (no sign, padding or leading zero); a site's last
//! connection is written at most once a minute, so polling sites do not take the
//! write lock on every request.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::api::Reply;
use super::{now, routing, verify_digest, Central, Result};
use crate::wire::protocol::code;

/// Wrong passwords in a row before a site's logins are refused for a while.
pub const WRONG_PASSWORDS_ALLOWED: i64 = 5;
/// The first lock after them, doubling with each further one, up to `MAX_LOCK`.
pub const FIRST_LOCK_SECS: i64 = 60;
pub const MAX_LOCK_SECS: i64 = 3600;
/// A site's `last_seen` is written at most this often.
const LAST_SEEN_EVERY_SECS: i64 = 60;

/// The site a request is from, once every check passed.
#[derive(Debug, Clone)]
pub struct SiteRow {
    pub site_id: u32,
    pub uuid: String,
    pub code: String,
    pub name: String,
    pub init_status: String,
}

/// site_id, uuid, code, name, password hash, generation, hardware id, init status,
/// failed logins, locked until.
type StoredSite = (
    u32,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    i64,
    i64,
);

/// A `version` header: decimal digits only, no sign, spaces or leading zero.
pub fn parse_version(v: &str) -> Option<u32> {
    if v.is_empty()
        || v.len() > 9
        || !v.bytes().all(|b| b.is_ascii_digit())
        || (v.len() > 1 && v.starts_with('0'))
    {
        return None;
    }
    v.parse().ok()
}

impl Central {
    /// Runs the checks on a request's headers (names lowercased). `Err` is the
    /// answer to send.
    pub fn authenticate(
        &self,
        conn: &Connection,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Result<std::result::Result<SiteRow, Reply>> {
        let unknown = || {
            Reply::error(
                401,
                code::SITE_NAME_NOT_FOUND,
                "Site name not found; check the site name",
                Value::Null,
            )
        };
        let Some(decoded) = header("authorization")
            .and_then(|h| h.strip_prefix("Basic ").map(str::to_string))
            .and_then(|b| crate::wire::credentials::base64_decode(b.trim()))
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return Ok(Err(unknown()));
        };
        let Some((name, digest)) = decoded.split_once(':') else {
            return Ok(Err(unknown()));
        };
        let row: Option<StoredSite> = conn
            .prepare_cached(
                "SELECT site_id, uuid, code, name, password_hash, password_gen, hardware_id, init_status, \
                 failed_logins, locked_until FROM site WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .optional()?;
        let Some((
            site_id,
            uuid,
            code_,
            sname,
            hash,
            generation,
            hardware,
            init_status,
            failed,
            locked_until,
        )) = row
        else {
            return Ok(Err(unknown()));
        };
        let t = now();
        if locked_until > t {
            return Ok(Err(Reply::error(
                429,
                code::SITE_AUTH_TIMEOUT,
                &format!(
                    "too many wrong passwords for this site; logins are refused for {} s",
                    locked_until - t
                ),
                Value::Null,
            )));
        }
        if !self.password_ok(site_id, generation, &hash, digest) {
            let failed = failed + 1;
            let lock = if failed >= WRONG_PASSWORDS_ALLOWED {
                let doublings = (failed - WRONG_PASSWORDS_ALLOWED).min(10) as u32;
                t + (FIRST_LOCK_SECS << doublings).min(MAX_LOCK_SECS)
            } else {
                0
            };
            conn.execute(
                "UPDATE site SET failed_logins = ?2, locked_until = ?3 WHERE site_id = ?1",
                params![site_id, failed, lock],
            )?;
            if lock > 0 {
                log::warn!(
                    "site {sname}: {failed} wrong passwords in a row; logins refused until +{} s",
                    lock - t
                );
            }
            return Ok(Err(Reply::error(
                401,
                code::SITE_INCORRECT_PASSWORD,
                "Incorrect password; check the site password",
                Value::Null,
            )));
        }
        if failed > 0 {
            conn.execute(
                "UPDATE site SET failed_logins = 0, locked_until = 0 WHERE site_id = ?1",
                [site_id],
            )?;
        }
        let (min, max) = self.versions;
        let version_ok = header("version")
            .as_deref()
            .and_then(parse_version)
            .is_some_and(|v| v >= min && v <= max);
        if !version_ok {
            return Ok(Err(Reply::error(
                409,
                code::API_VERSION_INCOMPATIBLE,
                "Sync API version not supported; upgrade required",
                json!({"major": 5, "minor": 0, "minVersion": min, "maxVersion": max}),
            )));
        }
        let device = header("msupply-site-uuid").unwrap_or_default();
        let device = device.trim();
        if device.is_empty() || (!hardware.is_empty() && hardware != device) {
            return Ok(Err(Reply::error(
                401,
                code::SITE_INCORRECT_HARDWARE_ID,
                "Hardware id not registered for this site; ask the administrator to reset it",
                Value::Null,
            )));
        }
        if routing::active_stores(conn, site_id)?.is_empty() {
            return Ok(Err(Reply::error(
                401,
                code::SITE_HAS_NO_STORE,
                "This site has no active store",
                Value::Null,
            )));
        }
        // Bind on first contact; note the connection for the report (display only).
        let stale = {
            let mut w = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let last = w.get(&site_id).copied().unwrap_or(0);
            if t - last >= LAST_SEEN_EVERY_SECS || hardware.is_empty() {
                w.insert(site_id, t);
                true
            } else {
                false
            }
        };
        if stale {
            conn.execute(
                "UPDATE site SET hardware_id = CASE WHEN hardware_id = '' THEN ?2 ELSE hardware_id END, last_seen = ?3 \
                 WHERE site_id = ?1",
                params![site_id, device, t],
            )?;
        }
        Ok(Ok(SiteRow {
            site_id,
            uuid,
            code: code_,
            name: sname,
            init_status,
        }))
    }

    fn password_ok(&self, site: u32, generation: i64, hash: &str, digest: &str) -> bool {
        let digest = digest.to_lowercase();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(site, generation))
            .cloned();
        if let Some(c) = cached {
            return crate::wire::credentials::constant_time_eq(c.as_bytes(), digest.as_bytes());
        }
        let ok = verify_digest(hash, &digest);
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((site, generation), digest);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_plain_digits() {
        assert_eq!(parse_version("14"), Some(14));
        for bad in ["+14", "014", " 14", "14 ", "1.4", "", "-1", "99999999999"] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }
}
