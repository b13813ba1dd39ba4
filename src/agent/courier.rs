//! The USB-stick commands: `fieldsync export DIR` and `fieldsync import-bundle
//! FILE`. The work is the sync layer's ([`crate::sync::courier`]); this takes
//! the lock, finds this site's identity and key, and says what happened.

use std::path::Path;

use crate::error::Class;
use crate::store::{InitState, Store};
use crate::sync::courier::{self, CourierError, Me};
use crate::wire::credentials::Secret;

use super::conf::Conf;
use super::settings::Settings;
use super::{credential, runner, CmdResult, Failure};

impl From<CourierError> for Failure {
    fn from(e: CourierError) -> Self {
        Failure::new(e.class(), e.to_string())
    }
}

/// This site as the bundles name it, and the bundles' key (the site's password
/// digest).
fn me(store: &mut Store) -> Result<(Me, Secret), Failure> {
    let db = store.path().to_path_buf();
    let settings = Settings::from_conf(&Conf::open(&db, store)?)?;
    let site_id = store
        .identity()?
        .and_then(|i| i.site_id.parse::<u32>().ok());
    let active = store.active_store()?.filter(|s| !s.is_empty());
    let (InitState::Initialised, Some(site_id), Some(active)) =
        (store.init_state()?, site_id, active)
    else {
        return Err(Failure::new(
            Class::NotConfigured,
            "this site has not completed its first sync: USB bundles need a site the central has initialised (sync once over a link)",
        ));
    };
    let places = credential::Places::from_env(store.path(), settings.credential_file.clone());
    credential::migrate(store, &places.file)?;
    let digest = places.read()?;
    Ok((
        Me {
            site_id,
            site_name: settings.site,
            store: active,
            hardware_id: settings.hardware_id,
        },
        digest,
    ))
}

/// `fieldsync export DIR`.
pub fn export(db: &Path, dir: &Path) -> CmdResult {
    let _lock = runner::lock(db)?;
    let mut store = Store::open_configured(db)?;
    let (me, digest) = me(&mut store)?;
    if !dir.is_dir() {
        return Err(Failure::new(
            Class::Input,
            format!(
                "{} is not a directory: give the stick's directory (e.g. /media/usb)",
                dir.display()
            ),
        ));
    }
    let e = courier::export(&mut store, dir, &me, &digest)?;
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

/// `fieldsync import-bundle FILE`.
pub fn import(db: &Path, file: &Path) -> CmdResult {
    let _lock = runner::lock(db)?;
    let mut store = Store::open_configured(db)?;
    let (me, digest) = me(&mut store)?;
    let i = courier::import(&mut store, file, &me, &digest)?;
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
