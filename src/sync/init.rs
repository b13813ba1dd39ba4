//! §5 steps 1, 2 and 7: who the central says this site is, initialisation, and
//! whether this site still has exactly one active store.
//!
//! What must hold: a central that reports another site (another `id` or
//! `siteId`) never touches local data; an initialised site is never initialised
//! again without a person deciding; the state moves `uninitialised → requested →
//! initialised` only forward (back only when the central refuses the
//! initialisation outright: §10.9 `site_already_initialised`), each move in its
//! own committed transaction.

use crate::error::Class;
use crate::store::InitState;
use crate::wire::protocol::{code, SiteInfo};
use crate::wire::transport::Transport;
use crate::wire::{ProtocolError, WireError};

use super::{Cycle, Step, SyncError};

/// What the initialisation step does next, from local state and the central's
/// `initialisationStatus` (§5 step 2). Pure, so it is tested by a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitAction {
    /// Already initialised: sync normally.
    Sync,
    /// Ask the central to build our queue.
    Initialise,
    /// The central is building it: wait.
    Poll,
    /// Built: pull everything (no pushes yet).
    Pull,
    /// The central asks for re-initialisation of an initialised site: a person decides.
    Attention,
}

pub fn init_action(local: InitState, central: &str) -> InitAction {
    match (local, central) {
        (InitState::Initialised, "new") => InitAction::Attention,
        (InitState::Initialised, _) => InitAction::Sync,
        (_, "started") => InitAction::Poll,
        (InitState::Requested, "completed") => InitAction::Pull,
        (InitState::Uninitialised, _) | (InitState::Requested, _) => InitAction::Initialise,
    }
}

impl<T: Transport> Cycle<'_, T> {
    /// §5 step 1: the central must be the one this site knows.
    pub(super) fn site_info(&mut self) -> Result<SiteInfo, SyncError> {
        let site = match self.client.site() {
            Err(WireError::Protocol(ProtocolError::Server { code: c, .. }))
                if c == code::SITE_HAS_NO_STORE =>
            {
                return Err(self.store_moved_away());
            }
            other => other?,
        };
        crash_point!("site-answered");
        if site.is_om_supply_central_server {
            return Err(SyncError::Attention(
                Class::Site,
                "the server says it is an Open mSupply central (v6); fieldsync speaks v5: check the central URL".into(),
            ));
        }
        match self.store.identity()? {
            Some(known) if known.uuid != site.id || known.site_id != site.site_id.to_string() => {
                Err(SyncError::Attention(
                    Class::Site,
                    format!(
                        "the central reports site {:?} (id {}), but this device belongs to site id {}; \
                         local data untouched — check the central URL and site name",
                        site.name, site.site_id, known.site_id
                    ),
                ))
            }
            Some(_) => Ok(site),
            None => {
                let tx = self.store.tx()?;
                tx.set_identity(&site.id, site.site_id, site.m_supply_central_site_id)?;
                tx.commit()?;
                Ok(site)
            }
        }
    }

    /// §5 step 2. Returns the state to sync in, or `None` when the cycle ends
    /// here quietly (nothing to do until the central finishes).
    pub(super) fn initialisation(
        &mut self,
        site: &SiteInfo,
    ) -> Result<Option<InitState>, SyncError> {
        let state = self.store.init_state()?;
        match init_action(state, &site.initialisation_status) {
            InitAction::Attention => Err(SyncError::Attention(
                Class::Site,
                "the central asks to re-initialise this site; local data is kept — call support before \
                 re-initialising (it replaces this device's copy)"
                    .into(),
            )),
            InitAction::Sync | InitAction::Pull => Ok(Some(state)),
            action @ (InitAction::Initialise | InitAction::Poll) => {
                self.initialise(action)?;
                Ok(Some(InitState::Requested))
            }
        }
    }

    fn initialise(&mut self, action: InitAction) -> Result<(), SyncError> {
        self.step(Step::Initialise, 0, None);
        if action == InitAction::Initialise {
            // Requested before asking: a central that initialised the site and
            // whose answer was lost says `completed` next time, and this site
            // then pulls instead of asking again (which §10.9 refuses).
            let before = self.store.init_state()?;
            self.set_init_state(InitState::Requested)?;
            match self.client.initialise() {
                Err(WireError::Protocol(ProtocolError::Server {
                    code: c, message, ..
                })) if c == code::SITE_ALREADY_INITIALISED => {
                    // Nothing was queued for this database: it must not pull
                    // the queue of the device the site belongs to.
                    self.set_init_state(before)?;
                    return Err(SyncError::Advised {
                        class: Class::Site,
                        message: format!(
                            "this site is already set up on another database or device ({message})"
                        ),
                        hint: "nothing was changed here. Two databases cannot sync as one site: \
                               use the one already set up; if this device replaces the old one, ask \
                               the administrator to run `fieldsync-central site reinitialise SITE` \
                               (or, on mSupply, reset the site's hardware id)"
                            .into(),
                    });
                }
                Ok(r) => {
                    crash_point!("initialise-answered");
                    match r.queue_length {
                        Some(n) => log::info!(
                            "initialisation: the central queued {n} records for this site"
                        ),
                        None => {
                            log::info!("initialisation: the central queued this site's records")
                        }
                    }
                    return Ok(());
                }
                // The central may still be building: timeout, cut link, 5xx, busy → poll.
                Err(e) if e.class().is_transient() => {
                    log::info!(
                        "initialisation request did not complete ({e}); waiting for the central"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let started = self.clock.now();
        let mut polls = 0;
        loop {
            let status = self.client.site_status()?;
            crash_point!("init-poll");
            if status.code == "idle" {
                break;
            }
            if self.clock.now() - started > self.cfg.init_wait {
                return Err(SyncError::still_busy(
                    status.code,
                    "initialisation still running; the next sync continues",
                ));
            }
            polls += 1;
            // Progress while the central builds our queue (status file, watchdog).
            self.step(Step::Initialise, polls, None);
            self.clock.sleep(self.cfg.init_poll);
        }
        let site = self.client.site()?;
        if site.initialisation_status == "completed" {
            self.set_init_state(InitState::Requested)?;
            Ok(())
        } else {
            Err(SyncError::still_busy(
                format!("initialisation_{}", site.initialisation_status),
                "the central has not completed this site's initialisation",
            ))
        }
    }

    fn set_init_state(&mut self, s: InitState) -> Result<(), SyncError> {
        let tx = self.store.tx()?;
        tx.set_init_state(s)?;
        tx.commit()?;
        Ok(())
    }

    /// §5 step 7 after a pull: requested → initialised once everything is in and
    /// exactly one store is active on this site; an initialised site checks that
    /// its store is still active here.
    pub(super) fn after_pull(
        &mut self,
        state: InitState,
        site: &SiteInfo,
    ) -> Result<(), SyncError> {
        if state == InitState::Requested {
            self.finish_initialisation(site)
        } else {
            self.check_active_store(site)
        }
    }

    fn finish_initialisation(&mut self, site: &SiteInfo) -> Result<(), SyncError> {
        if self.store.cursor()? < self.store.max_cursor()? {
            return Ok(()); // gaps left for the next cycle
        }
        let stores = self.store.stores_active_on(site.site_id)?;
        let [only] = stores.as_slice() else {
            return Err(SyncError::Attention(
                Class::Site,
                format!(
                    "the central lists {} active store(s) for this site; exactly one is needed — ask the \
                     administrator to make one store active on site {}",
                    stores.len(),
                    site.name
                ),
            ));
        };
        let tx = self.store.tx()?;
        tx.set_active_store(only)?;
        tx.set_init_state(InitState::Initialised)?;
        tx.commit()?;
        crash_point!("init-finished");
        log::info!("initialisation complete: active store {only}");
        Ok(())
    }

    fn set_active_store(&mut self, store: &str) -> Result<(), SyncError> {
        let tx = self.store.tx()?;
        tx.set_active_store(store)?;
        tx.commit()?;
        Ok(())
    }

    /// The central says this site has no active store any more (moved to another
    /// site, seed: moving a store): local edits of its data stop until one is
    /// assigned again; the data stays.
    fn store_moved_away(&mut self) -> SyncError {
        let active = self.store.active_store().ok().flatten().unwrap_or_default();
        if !active.is_empty() {
            if let Err(e) = self.set_active_store("") {
                return e;
            }
        }
        let which = if active.is_empty() {
            String::new()
        } else {
            format!(" (store {active} is no longer active on this site)")
        };
        SyncError::Attention(
            Class::Site,
            format!(
                "the central says this site has no active store{which}; its data here is now read-only — ask \
                 the administrator which site the store moved to"
            ),
        )
    }

    /// After initialisation: the central may move the active store off this site
    /// (seed: moving a store). Local edits of its data stop; a person is told.
    fn check_active_store(&mut self, site: &SiteInfo) -> Result<(), SyncError> {
        let Some(active) = self.store.active_store()? else {
            return Ok(());
        };
        let stores = self.store.stores_active_on(site.site_id)?;
        if active.is_empty() {
            // Assigned again after a move away: editing resumes.
            if let [only] = stores.as_slice() {
                self.set_active_store(only)?;
                log::info!("store {only} is active on this site again");
            }
            return Ok(());
        }
        // Only a store row that names another site is a move; a missing row is an
        // inconsistency to report, not a reason to stop local work.
        let moved = match self.store.get("store", &active)? {
            Some(row) => !stores.contains(&active) && row.get("sync_id_remote_site").is_some(),
            None => {
                log::warn!("this site holds no store row for its active store {active}");
                false
            }
        };
        if moved {
            // "" owns nothing: every store-data write is refused as another store's.
            self.set_active_store("")?;
            return Err(SyncError::Attention(
                Class::Site,
                format!("store {active} is no longer active on this site; its data here is now read-only"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_decisions() {
        use InitAction::*;
        use InitState::*;
        let table = [
            (Uninitialised, "new", Initialise),
            (Uninitialised, "error", Initialise),
            (Uninitialised, "completed", Initialise),
            (Uninitialised, "started", Poll),
            (Requested, "new", Initialise),
            (Requested, "error", Initialise),
            (Requested, "started", Poll),
            (Requested, "completed", Pull),
            (Initialised, "completed", Sync),
            (Initialised, "started", Sync),
            (Initialised, "new", Attention),
        ];
        for (local, central, want) in table {
            assert_eq!(init_action(local, central), want, "{local:?} + {central}");
        }
    }
}
