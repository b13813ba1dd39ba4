//! Who may read the files fieldsync keeps beside the database. Set exactly,
//! whatever the umask of whoever ran the command (a person's shell, systemd's
//! `UMask=`, a tablet's app):
//!
//! - the database and its `-wal`/`-shm`: [`SHARED`] (`0660`): the agent's user and
//!   the clinic app's group (the package's `fieldsync` group), never anyone else;
//! - the status snapshot: [`PUBLIC`] (`0644`): it holds no secret;
//! - the lock file, the site credential and the agent's own state file:
//!   [`PRIVATE`] (`0600`).
//!
//! A file only the agent may write is also checked when it is opened: it must
//! belong to the user the agent runs as (or root) and be writable by nobody
//! else ([`check_private`]); the clinic's app shares the directory, so it could
//! otherwise put a file of its own in that file's place.
//!
//! SQLite gives the `-wal` and `-shm` it creates the database file's mode, so
//! creating the database with the right mode is enough for all three.
//!
//! The directory is shared with the app's group, which may create files in
//! it: a name the agent opens could be a symbolic link the app planted. So no
//! file is opened through a link ([`open_exact`] refuses one, [`check_private`]
//! too), new files are made with `O_EXCL` and renamed into place, and the
//! directory gets the sticky bit ([`guard_dir`]), so the group can neither
//! remove nor rename a file the agent made.

use std::fs::{File, OpenOptions};
use std::path::Path;

pub const SHARED: u32 = 0o660;
pub const PUBLIC: u32 = 0o644;
pub const PRIVATE: u32 = 0o600;

/// Opens `path` for writing (created if missing, never truncated) with exactly
/// `mode`; never through a symbolic link (`O_NOFOLLOW`: another program may
/// have put one at that name).
pub fn open_exact(path: &Path, mode: u32, create_new: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode).custom_flags(libc::O_NOFOLLOW);
    }
    let f = o.open(path)?;
    set_exact(&f, mode)?;
    Ok(f)
}

/// Sets `mode` exactly: the umask only ever removes bits at creation.
pub fn set_exact(f: &File, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if f.metadata()?.permissions().mode() & 0o7777 != mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (f, mode);
    Ok(())
}

/// Before SQLite opens the database: creates it [`SHARED`] when missing; a
/// database others can read (made by an older fieldsync, `0644`) is put back to
/// [`SHARED`] with its `-wal` and `-shm`. Files this user does not own are left
/// as they are, with a warning.
pub fn guard_database(path: &Path) -> std::io::Result<()> {
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    if !path.exists() {
        return match open_exact(path, SHARED, true) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map(drop),
        };
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !m.is_file() || m.permissions().mode() & 0o007 == 0 {
                continue;
            }
            if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(SHARED)) {
                log::warn!(
                    "{} can be read by any user of this device and fieldsync cannot change that ({e}); \
                     `chmod 660` it as its owner",
                    p.display()
                );
            }
        }
    }
    Ok(())
}

/// The sticky bit on the database's directory when this user owns it and
/// others may write it (the package's `/var/lib/fieldsync`, `2770` before this
/// build): the app's group keeps creating its own files there, but can no
/// longer remove or rename the agent's (its state, configuration, credential,
/// lock) to put its own in their place.
pub fn guard_dir(db: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let m = std::fs::metadata(dir)?;
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 && Some(m.uid()) == effective_uid() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o1000))?;
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// The user this process runs as, from the owner of `/proc/self` (Linux and
/// Android; no unsafe call needed). `None` where that cannot be read.
pub fn effective_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    None
}

/// Why a file only the agent may write cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// It belongs to another user (not this one, not root).
    Owner { owner: u32, me: u32 },
    /// Others may write it, and this user cannot change that.
    Writable { mode: u32 },
    /// A symbolic link or something else than a plain file.
    NotAFile,
}

/// Checks a file only the agent may write: it must belong to this process's
/// user or root; group or other write bits are taken away when this user owns
/// it, and refuse it otherwise.
pub fn check_private(path: &Path) -> std::io::Result<Result<(), Untrusted>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::symlink_metadata(path)?;
        if !m.file_type().is_file() {
            return Ok(Err(Untrusted::NotAFile));
        }
        let Some(me) = effective_uid() else {
            return Ok(Ok(()));
        };
        if m.uid() != me && m.uid() != 0 {
            return Ok(Err(Untrusted::Owner { owner: m.uid(), me }));
        }
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            if m.uid() != me {
                return Ok(Err(Untrusted::Writable { mode }));
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o022))?;
        }
        Ok(Ok(()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(Ok(()))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_database_others_could_read_is_closed_with_its_wal() {
        let tmp = crate::testkit::tempdir::TempDir::new("modes");
        let d = tmp.path();
        let db = d.join("f.sqlite");
        guard_database(&db).unwrap();
        assert_eq!(mode(&db), SHARED);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wal = d.join("f.sqlite-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        guard_database(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (SHARED, SHARED));
        // A deliberate 0600 is not widened.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        guard_database(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn no_private_file_is_opened_through_a_link_and_the_shared_directory_gets_the_sticky_bit() {
        let tmp = crate::testkit::tempdir::TempDir::new("modes-link");
        let d = tmp.path();
        let target = d.join("target");
        std::fs::write(&target, "keep").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.join("f.sqlite.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            open_exact(&link, PRIVATE, false).is_err(),
            "opened through a link"
        );
        assert_eq!(mode(&target), 0o644, "the link's target was changed");
        assert_eq!(check_private(&link).unwrap(), Err(Untrusted::NotAFile));
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o2770)).unwrap();
        guard_dir(&d.join("f.sqlite")).unwrap();
        assert_eq!(mode(d), 0o3770);
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        guard_dir(&d.join("f.sqlite")).unwrap();
        assert_eq!(mode(d), 0o755, "a private directory is left as it is");
    }
}
