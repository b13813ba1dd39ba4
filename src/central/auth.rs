//! The checks every v5 request passes, in the order §6 gives: site, password,
//! version, hardware id, active store. A request failing an earlier check binds
//! nothing.
//!
//! Strangers (§10.9): to a caller that has not authenticated, a site name that
//! does not exist and a wrong password are the same answer (401
//! `site_incorrect_password`, "site name or password incorrect") at the same
//! cost (one Argon2 verification: a dummy one for an unknown name, a real one
//! for a wrong password even when the right digest is cached). Wrong passwords
//! slow the answers to their address — per (site name, address), and per
//! address over every name — but the right password is never refused nor
//! slowed: it is checked first, and a back-off only delays the answer to a
//! wrong one, off the worker pool. The back-offs are in the database
//! (`login_backoff`), where `report` shows them and `site clear-backoff`
//! clears them. Once authenticated, the site's own agent gets the precise
//! codes (version, hardware id, no store).
//!
//! Also: `version` must be plain decimal digits (no sign, padding or leading
//! zero); the hardware id is bound once, atomically (two devices racing after a
//! reset: one wins, the other is refused); a site's last connection is written
//! at most once a minute, so polling sites do not take the write lock on every
//! request.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use super::db::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::api::{Reply, Request};
use super::{hash_digest, now, routing, verify_digest, Central, Result};
use crate::wire::protocol::code;

/// Wrong passwords from one address (for one site name) answered at once;
/// after them each answer waits longer.
pub const FREE_WRONG_PASSWORDS: i64 = 3;
/// The longest wait before a wrong-password answer.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Wrong passwords from one address over every site name weigh this much
/// less than for one name (a mistyped name or two is not an attack).
const ADDRESS_WEIGHT: i64 = 4;
/// A back-off is forgotten after this long without a wrong password.
pub const BACKOFF_FORGET_SECS: i64 = 3600;
/// Back-offs kept at most; the oldest go first (a flood of made-up names
/// cannot grow the table).
const MAX_BACKOFFS: i64 = 10_000;
/// The site name as kept in a back-off: at most this many characters.
const NAME_KEY_CHARS: usize = 64;
/// The back-off row that counts an address over every name.
const ANY_NAME: &str = "*";
/// How long a request waits to note `last_seen` before leaving it for later.
const LAST_SEEN_WAIT: Duration = Duration::from_millis(200);
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
    /// Non-empty: the administrator marked this site as the Open mSupply
    /// central server, reached at this URL (seed 004, §10.1).
    pub om_central_url: String,
    /// The administrator allowed this site the test endpoints (§10.8).
    pub test_site: bool,
}

/// A refused request: the answer, and how long to hold it back (wrong
/// passwords from an address that keeps sending them).
#[derive(Debug)]
pub struct Denied {
    pub reply: Reply,
    pub delay: Duration,
}

impl From<Reply> for Denied {
    fn from(reply: Reply) -> Denied {
        Denied {
            reply,
            delay: Duration::ZERO,
        }
    }
}

/// One back-off, for `report`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backoff {
    /// The site name as sent (lowercased), or `*`: every name from the address.
    pub site_name: String,
    pub address: String,
    pub wrong_passwords: i64,
    /// Unix seconds of the last one (the server's clock).
    pub last: i64,
    /// How long the next wrong answer to it waits, in seconds.
    pub delay_secs: u64,
}

/// A stored site: what the checks need.
struct Stored {
    site: SiteRow,
    hash: String,
    generation: i64,
    hardware: String,
}

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

/// The wait before answering the `failures`-th wrong password in a row.
pub fn delay_for(failures: i64) -> Duration {
    if failures <= FREE_WRONG_PASSWORDS {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_WRONG_PASSWORDS - 1).min(16) as u32;
    Duration::from_millis(250u64 << doublings).min(MAX_DELAY)
}

/// The answer to a caller that has not authenticated: the same whether the
/// name or the password was wrong.
fn not_authenticated() -> Reply {
    Reply::error(
        401,
        code::SITE_INCORRECT_PASSWORD,
        "Site name or password incorrect; check both",
        Value::Null,
    )
}

/// An Argon2 hash with the central's parameters, to verify against when the
/// site name is unknown: the same work as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_digest("fieldsync: no such site").unwrap_or_default())
}

impl Central {
    /// Authenticates `req` from `source` ([`Central::authenticate`]); a
    /// failure of the central itself is a 500 to the caller.
    pub fn authenticated(
        &self,
        req: &Request,
        source: IpAddr,
    ) -> std::result::Result<SiteRow, Denied> {
        let checked = self.conn().and_then(|conn| {
            self.authenticate(&conn, &|n| req.header(n).map(str::to_string), source)
        });
        match checked {
            Ok(r) => r,
            Err(e) => {
                log::error!("authentication: {e}");
                Err(Reply::error(
                    500,
                    "internal_error",
                    "the central failed; see its log",
                    Value::Null,
                )
                .into())
            }
        }
    }

    /// Runs the checks on a request's headers (names lowercased). `Err` is the
    /// answer to send.
    pub fn authenticate(
        &self,
        conn: &Connection,
        header: &dyn Fn(&str) -> Option<String>,
        source: IpAddr,
    ) -> Result<std::result::Result<SiteRow, Denied>> {
        let Some(decoded) = header("authorization")
            .and_then(|h| h.strip_prefix("Basic ").map(str::to_string))
            .and_then(|b| crate::wire::credentials::base64_decode(b.trim()))
            .and_then(|b| String::from_utf8(b).ok())
        else {
            // No credentials at all: not a guess, nothing to slow down.
            return Ok(Err(not_authenticated().into()));
        };
        let Some((name, digest)) = decoded.split_once(':') else {
            return Ok(Err(not_authenticated().into()));
        };
        let stored = stored_site(conn, name)?;
        let right = match &stored {
            Some(s) => self.password_ok(s.site.site_id, s.generation, &s.hash, digest),
            None => {
                // The same work as a wrong password for a site that exists.
                let _ = verify_digest(dummy_hash(), digest);
                false
            }
        };
        let Some(Stored { site, hardware, .. }) = stored.filter(|_| right) else {
            let delay = wrong_password(conn, name, source)?;
            return Ok(Err(Denied {
                reply: not_authenticated(),
                delay,
            }));
        };
        forgive(conn, name, source)?;
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
            )
            .into()));
        }
        let device = header("msupply-site-uuid").unwrap_or_default();
        let device = device.trim();
        let wrong_device = || {
            Reply::error(
                401,
                code::SITE_INCORRECT_HARDWARE_ID,
                "Hardware id not registered for this site; ask the administrator to reset it",
                Value::Null,
            )
        };
        if device.is_empty() || (!hardware.is_empty() && hardware != device) {
            return Ok(Err(wrong_device().into()));
        }
        if routing::active_stores(conn, site.site_id)?.is_empty() {
            return Ok(Err(Reply::error(
                401,
                code::SITE_HAS_NO_STORE,
                "This site has no active store",
                Value::Null,
            )
            .into()));
        }
        let t = now();
        if hardware.is_empty() {
            // Bound on first contact, once: of two devices racing after a
            // reset, the second finds the first's id and is refused.
            conn.execute(
                "UPDATE site SET hardware_id = ?2, last_seen = ?3 WHERE site_id = ?1 AND hardware_id = ''",
                params![site.site_id, device, t],
            )?;
            let bound: String = conn.query_row(
                "SELECT hardware_id FROM site WHERE site_id = ?1",
                [site.site_id],
                |r| r.get(0),
            )?;
            if bound != device {
                return Ok(Err(wrong_device().into()));
            }
        }
        // Note the connection for the report (display only).
        let stale = {
            let mut w = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let last = w.get(&site.site_id).copied().unwrap_or(0);
            if t - last >= LAST_SEEN_EVERY_SECS {
                w.insert(site.site_id, t);
                true
            } else {
                false
            }
        };
        if stale && !hardware.is_empty() {
            // Display only: written if the write lock is free within a
            // moment, else at the site's next request. It takes no writer's
            // turn (writers are served in arrival order and would starve a
            // write that waits outside the queue) and never fails a request.
            conn.busy_timeout(LAST_SEEN_WAIT)?;
            let written = conn.execute(
                "UPDATE site SET last_seen = ?2 WHERE site_id = ?1",
                params![site.site_id, t],
            );
            conn.busy_timeout(super::BUSY_TIMEOUT)?;
            if let Err(e) = written {
                log::debug!("site {}: last_seen not written now: {e}", site.name);
                self.last_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&site.site_id);
            }
        }
        Ok(Ok(site))
    }

    /// Whether `digest` is the site's password digest. A wrong one always
    /// costs one Argon2 verification (the same as an unknown site); the right
    /// one is verified once per password and then compared with the cache.
    fn password_ok(&self, site: u32, generation: i64, hash: &str, digest: &str) -> bool {
        let digest = digest.to_lowercase();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(site, generation))
            .cloned();
        if let Some(c) = cached {
            if crate::wire::credentials::constant_time_eq(c.as_bytes(), digest.as_bytes()) {
                return true;
            }
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

    /// The back-offs in force (more wrong passwords than answered at once),
    /// newest first.
    pub fn backoffs(&self) -> Result<Vec<Backoff>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT site_name, address, failures, last FROM login_backoff \
             WHERE last >= ?1 ORDER BY last DESC",
        )?;
        let rows = stmt.query_map([now() - BACKOFF_FORGET_SECS], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (site_name, address, failures, last): (String, String, i64, i64) = row?;
            let weighted = if site_name == ANY_NAME {
                failures / ADDRESS_WEIGHT
            } else {
                failures
            };
            if weighted > FREE_WRONG_PASSWORDS {
                out.push(Backoff {
                    delay_secs: delay_for(weighted + 1).as_secs(),
                    site_name,
                    address,
                    wrong_passwords: failures,
                    last,
                });
            }
        }
        Ok(out)
    }

    /// Clears the back-offs of site `name` (every address), or all of them
    /// with `None`. Returns how many went.
    pub fn clear_backoffs(&self, name: Option<&str>) -> Result<u64> {
        let conn = self.conn()?;
        let n = match name {
            Some(n) => conn.execute(
                "DELETE FROM login_backoff WHERE site_name = ?1",
                [name_key(n)],
            )?,
            None => conn.execute("DELETE FROM login_backoff", [])?,
        };
        Ok(n as u64)
    }
}

fn stored_site(conn: &Connection, name: &str) -> Result<Option<Stored>> {
    Ok(conn
        .prepare_cached(
            "SELECT site_id, uuid, code, name, password_hash, password_gen, hardware_id, init_status, \
             om_central_url, test_site FROM site WHERE lower(name) = lower(?1)",
        )?
        .query_row([name], |r| {
            Ok(Stored {
                site: SiteRow {
                    site_id: r.get(0)?,
                    uuid: r.get(1)?,
                    code: r.get(2)?,
                    name: r.get(3)?,
                    init_status: r.get(7)?,
                    om_central_url: r.get(8)?,
                    test_site: r.get(9)?,
                },
                hash: r.get(4)?,
                generation: r.get(5)?,
                hardware: r.get(6)?,
            })
        })
        .optional()?)
}

/// A site name as back-offs key it: the names are case-insensitive, and a
/// made-up one cannot be long.
fn name_key(name: &str) -> String {
    name.to_lowercase().chars().take(NAME_KEY_CHARS).collect()
}

/// Counts a wrong password (or an unknown name) from `source`, for the name
/// and for the address over every name; returns how long to hold the answer.
fn wrong_password(conn: &Connection, name: &str, source: IpAddr) -> Result<Duration> {
    let t = now();
    let address = source.to_string();
    let count = |key: &str| -> Result<i64> {
        Ok(conn
            .prepare_cached(
                "INSERT INTO login_backoff (site_name, address, failures, last) VALUES (?1, ?2, 1, CAST(?3 AS BIGINT)) \
                 ON CONFLICT (site_name, address) DO UPDATE SET \
                 failures = CASE WHEN login_backoff.last < CAST(?3 AS BIGINT) - CAST(?4 AS BIGINT) \
                 THEN 1 ELSE login_backoff.failures + 1 END, last = CAST(?3 AS BIGINT) \
                 RETURNING failures",
            )?
            .query_row(params![key, address, t, BACKOFF_FORGET_SECS], |r| r.get(0))?)
    };
    let for_name = count(&name_key(name))?;
    let for_address = count(ANY_NAME)?;
    conn.prepare_cached(
        "DELETE FROM login_backoff WHERE (site_name, address) IN \
         (SELECT site_name, address FROM login_backoff ORDER BY last \
          LIMIT (SELECT CASE WHEN count(*) > ?1 THEN count(*) - ?1 ELSE 0 END FROM login_backoff))",
    )?
    .execute([MAX_BACKOFFS])?;
    let delay = delay_for(for_name.max(for_address / ADDRESS_WEIGHT));
    // The administrator hears of it at the first, second, fourth… wrong
    // password of a name from an address: a guesser cannot flood the log.
    if for_name.count_ones() == 1 && for_name <= 1 << 10 {
        log::warn!(
            "wrong password or unknown site {:?} from {address} ({for_name} in a row){}",
            name_key(name),
            if delay.is_zero() {
                String::new()
            } else {
                format!("; answers to it wait {} ms", delay.as_millis())
            }
        );
    } else if delay >= MAX_DELAY && for_name % 50 == 0 {
        log::warn!(
            "{for_name} wrong passwords for site {name:?} from {address}; answers to it wait {} s",
            delay.as_secs()
        );
    }
    Ok(delay)
}

/// The right password from `source`: its back-off for that name goes.
fn forgive(conn: &Connection, name: &str, source: IpAddr) -> Result<()> {
    let key = name_key(name);
    let address = source.to_string();
    let held: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM login_backoff WHERE site_name = ?1 AND address = ?2)",
        )?
        .query_row(params![key, address], |r| r.get(0))?;
    if held {
        conn.execute(
            "DELETE FROM login_backoff WHERE site_name = ?1 AND address = ?2",
            params![key, address],
        )?;
    }
    Ok(())
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

    #[test]
    fn answers_to_wrong_passwords_slow_down_up_to_a_ceiling() {
        for n in 0..=FREE_WRONG_PASSWORDS {
            assert_eq!(delay_for(n), Duration::ZERO);
        }
        assert_eq!(
            delay_for(FREE_WRONG_PASSWORDS + 1),
            Duration::from_millis(250)
        );
        assert_eq!(
            delay_for(FREE_WRONG_PASSWORDS + 2),
            Duration::from_millis(500)
        );
        assert_eq!(delay_for(1_000_000), MAX_DELAY);
    }
}
