//! The configuration file: every setting of [`super::settings::KEYS`] that is
//! not left at its default, one `key = value` line each, beside the database
//! (`<database>.conf`) unless `FIELDSYNC_CONFIG` names another file. `fieldsync
//! init` and `fieldsync config` write it, whole (a temporary file, fsync,
//! rename); nothing else does.
//!
//! Why a file of its own (issue 26): these settings say where the site
//! credential is sent (the central's URL, the DNS servers, the CA to trust)
//! and which files the agent writes (the credential, the metrics, the LEDs).
//! In the database, which the clinic's app may write, one `UPDATE` sent the
//! credential to the app's own server. So the file must belong to the agent's
//! user (or root) and be writable by nobody else; one that is not is refused
//! with a message saying what to do, never read. A database from before keeps
//! its settings in its `setting` table: they are moved here once, the first
//! time this file is missing, and ignored from then on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Class;
use crate::store::{modes, Store, StoreError};

use super::settings::KEYS;
use super::Failure;

/// The configuration file of the database at `db`.
pub fn path_for(db: &Path) -> PathBuf {
    match std::env::var_os("FIELDSYNC_CONFIG").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let mut p = db.as_os_str().to_owned();
            p.push(".conf");
            PathBuf::from(p)
        }
    }
}

/// The settings as the file has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conf {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

/// The header of a written file.
const HEADER: &str =
    "# fieldsync configuration, written by `fieldsync init` and `fieldsync config set`.\n\
# One setting per line: key = value. `fieldsync config` lists every setting with\n\
# its default; the environment (FIELDSYNC_*) wins over this file.\n";

impl Conf {
    /// Reads the file of the database at `db` (none yet: an empty one). A file
    /// another user owns, or that others may write, is refused.
    pub fn read(db: &Path) -> Result<Conf, Failure> {
        let path = path_for(db);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Conf {
                    path,
                    values: BTreeMap::new(),
                })
            }
            Err(e) => {
                return Err(Failure::new(
                    Class::Local,
                    format!("cannot read the configuration {}: {e}", path.display()),
                ))
            }
        };
        match modes::check_private(&path) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(StoreError::Untrusted(path, why).into()),
            Err(e) => {
                return Err(Failure::new(
                    Class::Local,
                    format!("checking the configuration {}: {e}", path.display()),
                ))
            }
        }
        Ok(Conf {
            values: parse(&text)
                .map_err(|m| Failure::new(Class::Input, format!("{}: {m}", path.display())))?,
            path,
        })
    }

    /// The file of the database at `db`, with what an older fieldsync kept in
    /// the database's `setting` table moved into it the first time (the file
    /// written first, the rows deleted after: a cut between them leaves rows
    /// that are no longer read).
    pub fn open(db: &Path, store: &mut Store) -> Result<Conf, Failure> {
        let mut conf = Conf::read(db)?;
        if conf.path.exists() {
            return Ok(conf);
        }
        let old = store.legacy_settings()?;
        let moved: Vec<&str> = KEYS
            .iter()
            .map(|k| k.name)
            .filter(|k| old.contains_key(*k))
            .collect();
        if moved.is_empty() {
            return Ok(conf);
        }
        for k in &moved {
            conf.values.insert(k.to_string(), old[*k].clone());
        }
        conf.save()?;
        store.forget_legacy_settings(&moved)?;
        log::info!(
            "the settings moved out of the database into {} (another program can no longer change them)",
            conf.path.display()
        );
        Ok(conf)
    }

    /// The file of the database at `db` as it is, or — for a database from
    /// before the file, not moved yet — its settings as they are there.
    /// Writes nothing (`check`, `status`).
    pub fn peek(db: &Path, store: &Store) -> Result<Conf, Failure> {
        let mut conf = Conf::read(db)?;
        if !conf.path.exists() {
            let old = store.legacy_settings()?;
            for k in KEYS {
                if let Some(v) = old.get(k.name) {
                    conf.values.insert(k.name.to_string(), v.clone());
                }
            }
        }
        Ok(conf)
    }

    /// What the file says for `key`, if anything.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_string(), value.to_string());
    }

    pub fn unset(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file whole: readable by anyone (it holds no secret),
    /// writable by this user alone, whatever the umask; a cut leaves the old
    /// file or the new one.
    pub fn save(&self) -> Result<(), Failure> {
        let fail = |what: &str, e: std::io::Error| {
            Failure::new(
                Class::Local,
                format!("{what} the configuration {}: {e}", self.path.display()),
            )
        };
        let mut text = String::from(HEADER);
        for (k, v) in &self.values {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut f = modes::open_exact(&tmp, modes::PUBLIC, true).map_err(|e| fail("writing", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("writing", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("saving", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// `key = value` lines; `#` starts a comment line; blank lines are skipped. A
/// value is everything after the first `=`, trimmed.
fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "line {}: not `key = value`; fix it with `fieldsync config set KEY VALUE`",
                n + 1
            ));
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::tempdir::TempDir;

    #[test]
    fn written_whole_and_read_back() {
        let dir = TempDir::new("conf");
        let db = dir.join("f.sqlite");
        let mut c = Conf::read(&db).unwrap();
        assert_eq!(c.get("central_url"), None);
        c.set("central_url", "https://central.example.org");
        c.set("dns", "192.168.1.1, 1.1.1.1");
        c.save().unwrap();
        let back = Conf::read(&db).unwrap();
        assert_eq!(back.get("central_url"), Some("https://central.example.org"));
        assert_eq!(back.get("dns"), Some("192.168.1.1, 1.1.1.1"));
        assert!(parse("no equals sign").unwrap_err().contains("line 1"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_write_is_closed_and_another_user_s_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("conf-mode");
        let db = dir.join("f.sqlite");
        let mut c = Conf::read(&db).unwrap();
        c.set("site_name", "kaw");
        c.save().unwrap();
        let p = path_for(&db);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        Conf::read(&db).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644,
            "the group and other write bits go"
        );
    }
}
