//! What the agent keeps about its own progress, typed: who this site is (as the
//! central said on first contact), how far initialisation got, the cursor into
//! the central's change log, what it learned of the link and the central, and
//! the last attempt. The layers above read and write these by name here, never
//! as raw rows, so where they live is this module's business.

use serde_json::Value;

use super::{get_setting, Store, StoreError, Tx};

/// Row keys. The configuration keys are documented in `agent::settings`; the
/// rest is the agent's own bookkeeping.
pub mod key {
    pub const CENTRAL_URL: &str = "central_url";
    pub const SITE_NAME: &str = "site_name";
    /// Where older fieldsync kept the password digest; read only to move it out
    /// (`agent::credential::migrate`), never written.
    pub const PASSWORD_DIGEST: &str = "password_digest";
    pub const CREDENTIAL_FILE: &str = "credential_file";
    pub const PROGRESS_SECS: &str = "progress_secs";
    pub const DNS: &str = "dns";
    pub const HARDWARE_ID: &str = "hardware_id";
    pub const ALLOW_HTTP: &str = "allow_insecure_http";
    /// Site record id, `siteId` and central's id learned on first contact.
    pub const SITE_UUID: &str = "site_uuid";
    pub const SITE_ID: &str = "site_id";
    pub const CENTRAL_SITE_ID: &str = "central_site_id";
    /// The one active store; the ownership triggers read this key.
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
    /// the capture triggers read it.
    pub const HOLD_TRANSACTIONS: &str = "hold_transactions";
    pub const BATCH_RECORDS: &str = "batch_records";
    pub const BATCH_BYTES: &str = "batch_bytes";
    pub const INTEGRATION_WAIT: &str = "integration_wait_secs";
    pub const INIT_POLL: &str = "init_poll_secs";
    pub const RETRY_BASE: &str = "retry_base_ms";
    pub const CA_FILE: &str = "ca_file";
    pub const LED: &str = "led";
    pub const ATTENTION_LED: &str = "attention_led";
    /// The last finished attempt (JSON) and the last success (unix seconds, display only).
    pub const LAST_ATTEMPT: &str = "last_attempt";
    pub const LAST_SUCCESS: &str = "last_success";
    /// Attempts since the last success (clock-free; the fleet metrics show it).
    pub const ATTEMPTS_SINCE_SUCCESS: &str = "attempts_since_success";
    /// The retried condition of the last syncs and how many in a row ended with it.
    pub const CONDITION_IN_A_ROW: &str = "condition_in_a_row";
    /// Where the fleet metrics file goes; unset: none is written.
    pub const METRICS_FILE: &str = "metrics_file";
    /// The last bundle written and read (USB sync), for `status`.
    pub const BUNDLE_OUT: &str = "bundle_out";
    pub const BUNDLE_IN: &str = "bundle_in";
    /// Fingerprint of the registry and triggers this file was migrated with.
    pub const SCHEMA_RULES: &str = "schema_rules";
    /// A repair of the rules, for `status` (JSON: count, detail, unix).
    pub const RULES_REPAIRED: &str = "rules_repaired";
    /// Set while an old digest's bytes may still be in the database file (the
    /// truncating checkpoint was refused because a reader held the WAL).
    pub const SCRUB_PENDING: &str = "credential_scrub_pending";
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

/// The whole number stored under `key`; absent is `None`.
fn number(v: Option<String>, key: &str) -> Result<Option<u64>, StoreError> {
    match v {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            StoreError::Schema(format!("setting {key} holds {v:?}, not a whole number"))
        }),
    }
}

impl Store {
    pub fn init_state(&self) -> Result<InitState, StoreError> {
        Ok(InitState::parse(self.setting(key::INIT_STATE)?.as_deref()))
    }

    /// The one active store, once initialisation named it; "" while the central
    /// has moved it away (nothing of store data is writable then).
    pub fn active_store(&self) -> Result<Option<String>, StoreError> {
        self.setting(key::ACTIVE_STORE)
    }

    /// The identity learned on first contact, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        Ok(
            match (self.setting(key::SITE_UUID)?, self.setting(key::SITE_ID)?) {
                (Some(uuid), Some(site_id)) => Some(Identity { uuid, site_id }),
                _ => None,
            },
        )
    }

    /// The central-records cursor (§5 step 5): everything up to it is held.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(self.number(key::CURSOR)?.unwrap_or(0))
    }

    /// The `maxCursor` the central last reported.
    pub fn max_cursor(&self) -> Result<u64, StoreError> {
        Ok(self.number(key::CENTRAL_MAX_CURSOR)?.unwrap_or(0))
    }

    /// The pull page size learned from the link (§9.3), if any.
    pub fn pull_limit(&self) -> Result<Option<u64>, StoreError> {
        self.number(key::PULL_LIMIT)
    }

    /// What the central said of gzip request bodies (§9.1), as last stored.
    pub fn central_gzip(&self) -> Result<Option<String>, StoreError> {
        self.setting(key::CENTRAL_GZIP)
    }

    pub fn set_central_gzip(&self, v: &str) -> Result<(), StoreError> {
        self.set_setting(key::CENTRAL_GZIP, v)
    }

    /// The last finished attempt, as `status` shows it (JSON).
    pub fn last_attempt(&self) -> Result<Option<Value>, StoreError> {
        Ok(self
            .setting(key::LAST_ATTEMPT)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Saves a finished attempt (JSON) in one commit with its counters:
    /// `last_success` and the attempts since it, counted without a clock.
    pub fn record_attempt(
        &mut self,
        attempt: &str,
        success: bool,
        finished_unix: u64,
    ) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.set(key::LAST_ATTEMPT, attempt)?;
        if success {
            tx.set(key::LAST_SUCCESS, &finished_unix.to_string())?;
            tx.set(key::ATTEMPTS_SINCE_SUCCESS, "0")?;
        } else {
            let n = number(
                get_setting(tx.conn(), key::ATTEMPTS_SINCE_SUCCESS)?,
                key::ATTEMPTS_SINCE_SUCCESS,
            )?
            .unwrap_or(0);
            tx.set(key::ATTEMPTS_SINCE_SUCCESS, &(n + 1).to_string())?;
        }
        tx.commit()
    }

    /// Deletes the password digest an older fieldsync kept in the database,
    /// overwriting its bytes in the page (secure_delete), and notes that the
    /// file's free pages and WAL still need a scrub ([`Store::scrub_credential`]).
    pub fn forget_stored_digest(&mut self) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.conn()
            .execute_batch("PRAGMA secure_delete = ON")
            .map_err(|e| StoreError::sqlite("moving the credential out", e))?;
        tx.unset(key::PASSWORD_DIGEST)?;
        tx.set(key::SCRUB_PENDING, "1")?;
        tx.commit()
    }

    /// Whether a moved-out digest may still be in the file's free space or WAL.
    pub fn scrub_pending(&self) -> Result<bool, StoreError> {
        Ok(self.setting(key::SCRUB_PENDING)?.is_some())
    }

    /// Rewrites the file without free pages and truncates the WAL so no
    /// earlier page image holding a moved-out digest survives. The truncation
    /// waits `wait` for the clinic's app to stop reading; returns whether it
    /// got through (if not, the next run tries again).
    pub fn scrub_credential(&mut self, wait: std::time::Duration) -> Result<bool, StoreError> {
        if !self.scrub(wait)? {
            return Ok(false);
        }
        // This write goes to the fresh WAL; its frames hold no digest.
        self.unset_setting(key::SCRUB_PENDING)?;
        self.truncate_wal();
        Ok(true)
    }

    /// The last bundle read (USB sync), for `status` (JSON).
    pub fn set_bundle_in(&self, summary: &str) -> Result<(), StoreError> {
        self.set_setting(key::BUNDLE_IN, summary)
    }

    /// The retried condition the last syncs ended with and how many in a row.
    pub fn condition_in_a_row(&self) -> Result<Option<(String, u32)>, StoreError> {
        Ok(self.setting(key::CONDITION_IN_A_ROW)?.and_then(|v| {
            let (c, n) = v.split_once(':')?;
            Some((c.to_string(), n.parse().unwrap_or(0)))
        }))
    }

    pub fn set_condition_in_a_row(&self, now: Option<(&str, u32)>) -> Result<(), StoreError> {
        match now {
            Some((c, n)) => self.set_setting(key::CONDITION_IN_A_ROW, &format!("{c}:{n}")),
            None => self.unset_setting(key::CONDITION_IN_A_ROW).map(drop),
        }
    }
}

impl Tx<'_> {
    pub fn init_state(&self) -> Result<InitState, StoreError> {
        Ok(InitState::parse(self.setting(key::INIT_STATE)?.as_deref()))
    }

    pub fn set_init_state(&self, s: InitState) -> Result<(), StoreError> {
        self.set(key::INIT_STATE, s.as_str())
    }

    pub fn set_active_store(&self, store: &str) -> Result<(), StoreError> {
        self.set(key::ACTIVE_STORE, store)
    }

    /// Remembers the identity the central gave on first contact.
    pub fn set_identity(
        &self,
        uuid: &str,
        site_id: u32,
        central_site_id: Option<u32>,
    ) -> Result<(), StoreError> {
        self.set(key::SITE_UUID, uuid)?;
        self.set(key::SITE_ID, &site_id.to_string())?;
        if let Some(c) = central_site_id {
            self.set(key::CENTRAL_SITE_ID, &c.to_string())?;
        }
        Ok(())
    }

    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(number(self.setting(key::CURSOR)?, key::CURSOR)?.unwrap_or(0))
    }

    /// Moves the central-records cursor, in the transaction that stores the
    /// records it covers (§5 step 5).
    pub fn set_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.set(key::CURSOR, &cursor.to_string())
    }

    pub fn max_cursor(&self) -> Result<u64, StoreError> {
        Ok(number(
            self.setting(key::CENTRAL_MAX_CURSOR)?,
            key::CENTRAL_MAX_CURSOR,
        )?
        .unwrap_or(0))
    }

    pub fn set_max_cursor(&self, max: u64) -> Result<(), StoreError> {
        self.set(key::CENTRAL_MAX_CURSOR, &max.to_string())
    }

    pub fn set_pull_limit(&self, limit: u32) -> Result<(), StoreError> {
        self.set(key::PULL_LIMIT, &limit.to_string())
    }
}
