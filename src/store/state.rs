//! What the agent keeps about its own progress, typed: who this site is (as the
//! central said on first contact), how far initialisation got, the cursor into
//! the central's change log, what it learned of the link and the central, and
//! the last attempt. It lives in the agent's own state file, which the clinic's
//! app cannot write: a cursor moved, an initialisation state deleted or a hold
//! switched by another program would lose records silently (issue 26). The
//! triggers in the shared file read two of these — the active store and the
//! dispensary hold — so a copy of each is kept there too, written from here and
//! never read back by the agent ([`super::schema::restore_trigger_inputs`]).

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{set_setting, Store, StoreError, Tx};

/// Keys of the state file, and of the shared file's `setting` rows.
pub mod key {
    /// Where older fieldsync kept the password digest, in the shared file; read
    /// only to move it out (`agent::credential::migrate`), never written.
    pub const PASSWORD_DIGEST: &str = "password_digest";
    /// Site record id, `siteId` and central's id learned on first contact.
    pub const SITE_UUID: &str = "site_uuid";
    pub const SITE_ID: &str = "site_id";
    pub const CENTRAL_SITE_ID: &str = "central_site_id";
    /// The one active store. The shared file keeps a copy under the same key,
    /// which the ownership triggers read.
    pub const ACTIVE_STORE: &str = "active_store_id";
    pub const INIT_STATE: &str = "init_state";
    /// Central-records cursor (§5 step 5) and the `maxCursor` last seen.
    pub const CURSOR: &str = "central_cursor";
    pub const CENTRAL_MAX_CURSOR: &str = "central_max_cursor";
    /// The adaptive pull page size (§9.3), kept between cycles.
    pub const PULL_LIMIT: &str = "pull_limit";
    /// What the central said of gzip request bodies (§9.1): advertised, refused.
    pub const CENTRAL_GZIP: &str = "central_gzip";
    /// "1" while the active dispensary store keeps its transactions here (§9.7);
    /// the capture triggers read the shared file's copy.
    pub const HOLD_TRANSACTIONS: &str = "hold_transactions";
    /// The last finished attempt (JSON) and the last success (unix seconds,
    /// display only). The shared file keeps copies for apps to read.
    pub const LAST_ATTEMPT: &str = "last_attempt";
    pub const LAST_SUCCESS: &str = "last_success";
    /// Attempts since the last success (clock-free; the fleet metrics show it).
    pub const ATTEMPTS_SINCE_SUCCESS: &str = "attempts_since_success";
    /// The retried condition of the last syncs and how many in a row ended with it.
    pub const CONDITION_IN_A_ROW: &str = "condition_in_a_row";
    /// The last bundle written and read (USB sync), for `status`.
    pub const BUNDLE_OUT: &str = "bundle_out";
    pub const BUNDLE_IN: &str = "bundle_in";
    /// Which schema the shared file has, and the fingerprint of the registry,
    /// triggers and views this build installed there.
    pub const SHARED_SCHEMA: &str = "shared_schema";
    pub const SCHEMA_RULES: &str = "schema_rules";
    /// A repair of the rules, for `status` (JSON: count, detail, unix).
    pub const RULES_REPAIRED: &str = "rules_repaired";
    /// Set while an old digest's bytes may still be in the database file (the
    /// truncating checkpoint was refused because a reader held the WAL).
    pub const SCRUB_PENDING: &str = "credential_scrub_pending";
    /// Set by the upgrade that moved the state out while the shared file held a
    /// password digest from an older fieldsync: that one digest is moved to the
    /// credential file, once. A digest row another program writes later is
    /// never read.
    pub const DIGEST_TO_MOVE: &str = "digest_to_move";
    /// The secret key of the record checks (base64).
    pub const CHECK_KEY: &str = "check_key";
    /// What the last check of the shared file found (JSON), for `status`.
    pub const LAST_CHECK: &str = "last_check";
    /// Syncs since the last full check of the shared file.
    pub const SYNCS_SINCE_CHECK: &str = "syncs_since_check";
    /// Records the central is asked to send again (JSON list), see `check`.
    pub const RESTORE: &str = "restore";
    /// The central's epoch last compared against (compare extension [PC]).
    pub const CENTRAL_EPOCH: &str = "central_epoch";
    /// Why a comparison with the central is owed (a restore was seen); unset
    /// when none is. Set before the cursor moves back, so a power cut between
    /// the two still compares.
    pub const COMPARE_DUE: &str = "compare_due";
    /// What the last comparison with the central found (JSON), for `status`.
    pub const LAST_COMPARE: &str = "last_compare";
    /// Syncs since the last comparison with the central.
    pub const SYNCS_SINCE_COMPARE: &str = "syncs_since_compare";

    /// What moved from the shared file's `setting` into the state file with
    /// schema 5 (issue 26).
    pub const MOVED_TO_STATE: &[&str] = &[
        SITE_UUID,
        SITE_ID,
        CENTRAL_SITE_ID,
        ACTIVE_STORE,
        INIT_STATE,
        CURSOR,
        CENTRAL_MAX_CURSOR,
        PULL_LIMIT,
        CENTRAL_GZIP,
        HOLD_TRANSACTIONS,
        LAST_ATTEMPT,
        LAST_SUCCESS,
        ATTEMPTS_SINCE_SUCCESS,
        CONDITION_IN_A_ROW,
        BUNDLE_OUT,
        BUNDLE_IN,
        RULES_REPAIRED,
        SCRUB_PENDING,
    ];
}

/// Local initialisation state (§5): `uninitialised → requested → initialised`,
/// only forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    Uninitialised,
    Requested,
    Initialised,
}

impl InitState {
    pub fn as_str(self) -> &'static str {
        match self {
            InitState::Uninitialised => "uninitialised",
            InitState::Requested => "requested",
            InitState::Initialised => "initialised",
        }
    }

    fn parse(v: Option<&str>) -> InitState {
        match v {
            Some("initialised") => InitState::Initialised,
            Some("requested") => InitState::Requested,
            _ => InitState::Uninitialised,
        }
    }
}

/// Who the central said this site is, on first contact (§5 step 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The site record's `id`.
    pub uuid: String,
    pub site_id: String,
}

pub(in crate::store) fn get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT value FROM state WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(|e| StoreError::sqlite(format!("reading state {key}"), e))
}

/// Saves a value; an unchanged one writes nothing (the SD card is the budget:
/// an idle sync must not rewrite pages to say what they already say).
pub(in crate::store) fn set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value \
         WHERE value IS NOT excluded.value",
    )
    .and_then(|mut s| s.execute(params![key, value]))
    .map(drop)
    .map_err(|e| StoreError::sqlite(format!("saving state {key}"), e))
}

pub(in crate::store) fn unset(conn: &Connection, key: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM state WHERE key = ?1", [key])
        .map(drop)
        .map_err(|e| StoreError::sqlite(format!("removing state {key}"), e))
}

/// The whole number stored under `key`; absent is `None`.
fn number(v: Option<String>, key: &str) -> Result<Option<u64>, StoreError> {
    match v {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            StoreError::Schema(format!("state {key} holds {v:?}, not a whole number"))
        }),
    }
}

impl Store {
    /// A value of the state file.
    fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        get(self.agent(), key)
    }

    fn set_state_now(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(v) => set(self.agent(), key, v),
            None => unset(self.agent(), key),
        }
    }

    pub fn init_state(&self) -> Result<InitState, StoreError> {
        Ok(InitState::parse(self.state(key::INIT_STATE)?.as_deref()))
    }

    /// The one active store, once initialisation named it; "" while the central
    /// has moved it away (nothing of store data is writable then).
    pub fn active_store(&self) -> Result<Option<String>, StoreError> {
        self.state(key::ACTIVE_STORE)
    }

    /// Whether the active dispensary store keeps its transactions here (§9.7).
    pub fn hold(&self) -> Result<bool, StoreError> {
        Ok(self.state(key::HOLD_TRANSACTIONS)?.as_deref() == Some("1"))
    }

    /// The identity learned on first contact, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        Ok(
            match (self.state(key::SITE_UUID)?, self.state(key::SITE_ID)?) {
                (Some(uuid), Some(site_id)) => Some(Identity { uuid, site_id }),
                _ => None,
            },
        )
    }

    /// The central-records cursor (§5 step 5): everything up to it is held.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(number(self.state(key::CURSOR)?, key::CURSOR)?.unwrap_or(0))
    }

    /// The `maxCursor` the central last reported.
    pub fn max_cursor(&self) -> Result<u64, StoreError> {
        Ok(number(
            self.state(key::CENTRAL_MAX_CURSOR)?,
            key::CENTRAL_MAX_CURSOR,
        )?
        .unwrap_or(0))
    }

    /// The pull page size learned from the link (§9.3), if any.
    pub fn pull_limit(&self) -> Result<Option<u64>, StoreError> {
        number(self.state(key::PULL_LIMIT)?, key::PULL_LIMIT)
    }

    /// What the central said of gzip request bodies (§9.1), as last stored.
    pub fn central_gzip(&self) -> Result<Option<String>, StoreError> {
        self.state(key::CENTRAL_GZIP)
    }

    pub fn set_central_gzip(&self, v: Option<&str>) -> Result<(), StoreError> {
        self.set_state_now(key::CENTRAL_GZIP, v)
    }

    /// The last finished attempt, as `status` shows it (JSON).
    pub fn last_attempt(&self) -> Result<Option<Value>, StoreError> {
        Ok(self
            .state(key::LAST_ATTEMPT)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// When the last success finished (the device clock, for people only).
    pub fn last_success(&self) -> Result<Option<u64>, StoreError> {
        Ok(number(self.state(key::LAST_SUCCESS)?, key::LAST_SUCCESS).unwrap_or(None))
    }

    /// Attempts since the last success, counted without a clock.
    pub fn attempts_since_success(&self) -> Result<u64, StoreError> {
        Ok(number(
            self.state(key::ATTEMPTS_SINCE_SUCCESS)?,
            key::ATTEMPTS_SINCE_SUCCESS,
        )?
        .unwrap_or(0))
    }

    /// A state value that changes with every sync but records no progress
    /// (how many syncs since the last check or comparison, what the check
    /// found): kept here and saved in the commit of the attempt's record,
    /// so an idle sync writes the state file once, not once per counter
    /// (issue 31: 5 commits, 78 KB written per idle sync). A sync cut off
    /// before it records its attempt loses them: a check or comparison then
    /// comes one sync later, nothing else. Read back with [`Store::state_value`].
    pub(in crate::store) fn defer_state(&self, key: &'static str, value: String) {
        let mut d = self.deferred.borrow_mut();
        d.retain(|(k, _)| *k != key);
        d.push((key, value));
    }

    /// A state value as this process left it: deferred, or as saved.
    pub(in crate::store) fn state_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some((_, v)) = self.deferred.borrow().iter().find(|(k, _)| *k == key) {
            return Ok(Some(v.clone()));
        }
        get(self.agent(), key)
    }

    /// Saves what [`Store::defer_state`] kept, when no attempt will be
    /// recorded (a caller that runs a cycle without the runner).
    pub fn save_deferred(&mut self) -> Result<(), StoreError> {
        let later = std::mem::take(self.deferred.get_mut());
        if later.is_empty() {
            return Ok(());
        }
        let tx = self.tx()?;
        for (k, v) in &later {
            tx.set_state(k, v)?;
        }
        tx.commit()
    }

    /// Saves a finished attempt (JSON) in one commit with its counters:
    /// `last_success` and the attempts since it, counted without a clock. The
    /// shared file gets copies of the attempt and the success for apps to read.
    pub fn record_attempt(
        &mut self,
        attempt: &str,
        success: bool,
        finished_unix: u64,
    ) -> Result<(), StoreError> {
        let since = self.attempts_since_success()?;
        let later = std::mem::take(self.deferred.get_mut());
        let tx = self.tx()?;
        for (k, v) in &later {
            tx.set_state(k, v)?;
        }
        tx.set_state(key::LAST_ATTEMPT, attempt)?;
        set_setting(tx.conn(), key::LAST_ATTEMPT, attempt)?;
        if success {
            tx.set_state(key::LAST_SUCCESS, &finished_unix.to_string())?;
            set_setting(tx.conn(), key::LAST_SUCCESS, &finished_unix.to_string())?;
            tx.set_state(key::ATTEMPTS_SINCE_SUCCESS, "0")?;
        } else {
            tx.set_state(key::ATTEMPTS_SINCE_SUCCESS, &(since + 1).to_string())?;
        }
        tx.commit()
    }

    /// The retried condition the last syncs ended with and how many in a row.
    pub fn condition_in_a_row(&self) -> Result<Option<(String, u32)>, StoreError> {
        Ok(self.state(key::CONDITION_IN_A_ROW)?.and_then(|v| {
            let (c, n) = v.split_once(':')?;
            Some((c.to_string(), n.parse().unwrap_or(0)))
        }))
    }

    pub fn set_condition_in_a_row(&self, now: Option<(&str, u32)>) -> Result<(), StoreError> {
        let v = now.map(|(c, n)| format!("{c}:{n}"));
        self.set_state_now(key::CONDITION_IN_A_ROW, v.as_deref())
    }

    /// The last bundle written and read (USB sync), for `status` (JSON).
    pub fn bundles(&self) -> Result<(Option<Value>, Option<Value>), StoreError> {
        let json = |k| -> Result<Option<Value>, StoreError> {
            Ok(self.state(k)?.and_then(|t| serde_json::from_str(&t).ok()))
        };
        Ok((json(key::BUNDLE_OUT)?, json(key::BUNDLE_IN)?))
    }

    pub fn set_bundle_in(&self, summary: &str) -> Result<(), StoreError> {
        self.set_state_now(key::BUNDLE_IN, Some(summary))
    }

    /// A repair of the rules another program made necessary (JSON), if any.
    pub fn rules_repaired(&self) -> Result<Option<Value>, StoreError> {
        Ok(self
            .state(key::RULES_REPAIRED)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The password digest an older fieldsync kept in the shared file, while
    /// the upgrade's one move of it is due (never a row written since).
    pub fn digest_to_move(&self) -> Result<Option<String>, StoreError> {
        // A file no build with the state file has opened yet (`check` reads
        // one without upgrading it) still has it where it was.
        let upgraded = super::schema::is_current(self.conn())?;
        if upgraded && self.state(key::DIGEST_TO_MOVE)?.is_none() {
            return Ok(None);
        }
        Ok(self.legacy_settings()?.remove(key::PASSWORD_DIGEST))
    }

    /// Deletes the password digest an older fieldsync kept in the shared file,
    /// overwriting its bytes in the page (secure_delete), and notes that the
    /// file's free pages and WAL still need a scrub ([`Store::scrub_credential`]).
    pub fn forget_stored_digest(&mut self) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.conn()
            .execute_batch("PRAGMA secure_delete = ON")
            .map_err(|e| StoreError::sqlite("moving the credential out", e))?;
        tx.conn()
            .execute("DELETE FROM setting WHERE key = ?1", [key::PASSWORD_DIGEST])
            .map_err(|e| StoreError::sqlite("moving the credential out", e))?;
        tx.set_state(key::SCRUB_PENDING, "1")?;
        unset(tx.agent(), key::DIGEST_TO_MOVE)?;
        tx.commit()
    }

    /// Whether a moved-out digest may still be in the file's free space or WAL.
    pub fn scrub_pending(&self) -> Result<bool, StoreError> {
        Ok(self.state(key::SCRUB_PENDING)?.is_some())
    }

    /// Rewrites the shared file without free pages and truncates the WAL so no
    /// earlier page image holding a moved-out digest survives. The truncation
    /// waits `wait` for the clinic's app to stop reading; returns whether it
    /// got through (if not, the next run tries again).
    pub fn scrub_credential(&mut self, wait: std::time::Duration) -> Result<bool, StoreError> {
        if !self.scrub(wait)? {
            return Ok(false);
        }
        self.set_state_now(key::SCRUB_PENDING, None)?;
        self.truncate_wal();
        Ok(true)
    }
}

impl Tx<'_> {
    fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        get(self.agent(), key)
    }

    /// Saves a state value in the state file's part of this transaction.
    pub(in crate::store) fn set_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set(self.agent(), key, value)
    }

    pub fn init_state(&self) -> Result<InitState, StoreError> {
        Ok(InitState::parse(self.state(key::INIT_STATE)?.as_deref()))
    }

    pub fn set_init_state(&self, s: InitState) -> Result<(), StoreError> {
        self.set_state(key::INIT_STATE, s.as_str())
    }

    /// The active store, here and in the shared file's copy the triggers read.
    pub fn set_active_store(&self, store: &str) -> Result<(), StoreError> {
        self.set_state(key::ACTIVE_STORE, store)?;
        set_setting(self.conn(), key::ACTIVE_STORE, store)
    }

    /// The dispensary hold (§9.7), here and in the shared file's copy.
    pub(in crate::store) fn set_hold(&self, hold: bool) -> Result<(), StoreError> {
        let v = if hold { "1" } else { "0" };
        self.set_state(key::HOLD_TRANSACTIONS, v)?;
        set_setting(self.conn(), key::HOLD_TRANSACTIONS, v)
    }

    /// Remembers the identity the central gave on first contact.
    pub fn set_identity(
        &self,
        uuid: &str,
        site_id: u32,
        central_site_id: Option<u32>,
    ) -> Result<(), StoreError> {
        self.set_state(key::SITE_UUID, uuid)?;
        self.set_state(key::SITE_ID, &site_id.to_string())?;
        if let Some(c) = central_site_id {
            self.set_state(key::CENTRAL_SITE_ID, &c.to_string())?;
        }
        Ok(())
    }

    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(number(self.state(key::CURSOR)?, key::CURSOR)?.unwrap_or(0))
    }

    /// Moves the central-records cursor. The state file commits after the
    /// shared one: the cursor is never past records that are not on the card
    /// (§5 step 5).
    pub fn set_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.set_state(key::CURSOR, &cursor.to_string())
    }

    pub fn max_cursor(&self) -> Result<u64, StoreError> {
        Ok(number(
            self.state(key::CENTRAL_MAX_CURSOR)?,
            key::CENTRAL_MAX_CURSOR,
        )?
        .unwrap_or(0))
    }

    pub fn set_max_cursor(&self, max: u64) -> Result<(), StoreError> {
        self.set_state(key::CENTRAL_MAX_CURSOR, &max.to_string())
    }

    pub fn set_pull_limit(&self, limit: u32) -> Result<(), StoreError> {
        self.set_state(key::PULL_LIMIT, &limit.to_string())
    }
}
