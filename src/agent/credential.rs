//! Where the site's credential lives. The password digest is password-equivalent
//! (protocol §2: whoever holds it pushes as the site), so it is kept apart from the
//! database the clinic's app reads and writes: in a file only the agent's user can
//! read (`0600`, `<db>.credential` by default, the `credential_file` setting
//! elsewhere), or in a systemd credential (`LoadCredential=` /
//! `LoadCredentialEncrypted=` named [`SYSTEMD_NAME`], read from
//! `$CREDENTIALS_DIRECTORY`), which wins when present.
//!
//! What must hold: no write path puts the digest in the database; a database
//! from before (digest in `setting`) is migrated on first use — the file is
//! written and synced *before* the row is deleted (a power cut in between leaves
//! both, and the next run finishes), and the freed page is overwritten and the
//! WAL truncated, so the old bytes do not linger in the file. No message names the
//! digest; they name the places looked at.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Class;
use crate::store::{modes, Store};
use crate::wire::credentials::Secret;

use super::Failure;

/// The credential's name under systemd (`LoadCredential=site-credential:…`).
pub const SYSTEMD_NAME: &str = "site-credential";

/// The default credential file: the database's path with `.credential` added.
pub fn default_file(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".credential");
    PathBuf::from(p)
}

/// Where the credential is read from, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    /// `$CREDENTIALS_DIRECTORY/site-credential`, when systemd set the directory.
    pub systemd: Option<PathBuf>,
    /// The file `init` writes.
    pub file: PathBuf,
}

impl Places {
    /// `configured`: the `credential_file` setting, if set; `credentials_dir`:
    /// `$CREDENTIALS_DIRECTORY`.
    pub fn new(db: &Path, configured: Option<PathBuf>, credentials_dir: Option<PathBuf>) -> Places {
        Places {
            systemd: credentials_dir.map(|d| d.join(SYSTEMD_NAME)),
            file: configured.unwrap_or_else(|| default_file(db)),
        }
    }

    /// With this process's `$CREDENTIALS_DIRECTORY`.
    pub fn from_env(db: &Path, configured: Option<PathBuf>) -> Places {
        Places::new(
            db,
            configured,
            std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        )
    }

    /// Reads the digest: the systemd credential if there is one, else the file.
    pub fn read(&self) -> Result<Secret, Failure> {
        let path = match &self.systemd {
            Some(p) if p.exists() => p,
            _ => &self.file,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let looked = match &self.systemd {
                    Some(s) => format!("{} or {}", s.display(), self.file.display()),
                    None => self.file.display().to_string(),
                };
                return Err(Failure::new(
                    Class::NotConfigured,
                    format!(
                        "no site credential (looked in {looked}): run `fieldsync init` again \
                         with the site's password, or restore the file"
                    ),
                ));
            }
            Err(e) => {
                return Err(Failure::new(
                    Class::Local,
                    format!(
                    "cannot read the site credential {}: {e}; run fieldsync as the user that ran \
                         `fieldsync init` (the package's: fieldsync)",
                    path.display()
                ),
                ))
            }
        };
        let digest = text.trim();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::new(
                Class::Input,
                format!(
                    "{} is not a site credential (64 hex digits expected); run `fieldsync init` \
                     again with the site's password",
                    path.display()
                ),
            ));
        }
        warn_if_shared(path);
        Ok(Secret::new(digest.to_ascii_lowercase()))
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "the site credential {} can be read by other users; `chmod 600` it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_: &Path) {}

/// Writes the digest to `path`, readable by its owner only whatever the umask:
/// a temporary created `0600`, synced, renamed over the old file, the directory
/// synced. A kill at any point leaves the old credential or the new one.
pub fn write(path: &Path, digest: &Secret) -> Result<(), Failure> {
    let fail = |what: &str, e: std::io::Error| {
        Failure::new(
            Class::Local,
            format!("{what} the site credential {}: {e}", path.display()),
        )
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = modes::open_exact(&tmp, modes::PRIVATE, true).map_err(|e| fail("creating", e))?;
    f.write_all(digest.expose().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("writing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| fail("saving", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Moves a digest stored in the database by an older fieldsync into `file`, then
/// deletes it there and scrubs it from the file's free space and WAL. Returns
/// whether there was one. Safe to repeat: a run cut short finishes next time.
pub fn migrate(store: &mut Store, file: &Path) -> Result<bool, Failure> {
    let Some(old) = store.digest_to_move()? else {
        if store.scrub_pending()? {
            scrub(store)?;
        }
        return Ok(false);
    };
    let old = Secret::new(old);
    // A file that already holds a credential (a run cut after writing it, or a
    // re-`init` since) is kept: it is the newer.
    let keep = Places::new(store.path(), Some(file.to_path_buf()), None)
        .read()
        .is_ok();
    if !keep {
        write(file, &old)?;
    }
    store.forget_stored_digest()?;
    log::info!(
        "the site credential moved out of the database into {}",
        file.display()
    );
    scrub(store)?;
    Ok(true)
}

/// How long a scrub waits for the clinic's app to stop reading. Defaults to
/// 2 s: waiting the full busy timeout would hold the sync up; the next run
/// tries again.
const SCRUB_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Clears a moved-out digest's old bytes from the database file and its WAL.
fn scrub(store: &mut Store) -> Result<(), Failure> {
    if !store.scrub_credential(SCRUB_WAIT)? {
        log::warn!(
            "another program held the database open; the old credential's bytes are cleared on the next run"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's directory; removed when the test passes.
    fn dir(name: &str) -> crate::testkit::tempdir::TempDir {
        crate::testkit::tempdir::TempDir::new(&format!("credential-{name}"))
    }

    const DIGEST: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    #[test]
    fn the_systemd_credential_wins_and_misses_name_both_places() {
        let d = dir("places");
        let db = d.join("f.sqlite");
        let creds = d.join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        let p = Places::new(&db, None, Some(creds.clone()));
        let e = p.read().unwrap_err();
        assert_eq!(e.class, Class::NotConfigured);
        assert!(e.message.contains("creds/site-credential"), "{}", e.message);
        assert!(e.message.contains("f.sqlite.credential"), "{}", e.message);
        write(&default_file(&db), &Secret::new(DIGEST.into())).unwrap();
        assert_eq!(p.read().unwrap().expose(), DIGEST);
        std::fs::write(creds.join(SYSTEMD_NAME), "A".repeat(64)).unwrap();
        assert_eq!(p.read().unwrap().expose(), "a".repeat(64));
    }

    #[test]
    fn a_file_that_is_not_a_credential_says_so_without_echoing_it() {
        let d = dir("bad");
        let f = d.join("c");
        std::fs::write(&f, "hunter2\n").unwrap();
        let e = Places::new(&d.join("db"), Some(f), None)
            .read()
            .unwrap_err();
        assert_eq!(e.class, Class::Input);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }

    #[cfg(unix)]
    #[test]
    fn written_owner_only_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let f = d.join("c");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&f, &Secret::new(DIGEST.into())).unwrap();
        let m = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{DIGEST}\n"));
    }
}
