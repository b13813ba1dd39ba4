//! Telling the sites that this central went back in time [PC].
//!
//! A central restored from last night's backup answers pushes and pulls as
//! if nothing happened; what the sites sent since the backup is gone, and its
//! change log reuses numbers the sites have passed. Nobody may have to notice
//! for the sites to repair it, so the central notices itself: every write of
//! a synced record counts up `meta.generation` (a trigger, so no write path
//! can forget it), and `serve` keeps a note beside the database
//! (`<db>.epoch`: epoch and generation). A database whose generation is below
//! the note's was replaced by an older copy: it gets a new random epoch, which
//! every answer carries (`Fieldsync-Epoch`); a site that sees the epoch change
//! compares all it holds with the central and repairs (sync::verify).
//!
//! What holds: the note is written only after the database has what it
//! describes (a note behind the database is harmless; one ahead would call a
//! healthy database restored, so it is never written ahead); a restore the
//! note cannot reveal (the note restored with it) is still caught by the
//! sites' cursor check and their periodic comparison.

use std::path::{Path, PathBuf};

use super::db::{Connection, OptionalExtension};

use super::{Central, Result};

/// The note beside the database.
pub fn note_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".epoch");
    PathBuf::from(p)
}

/// A new random epoch: 16 hex digits.
fn fresh() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // Without a random source the clock must do: an epoch only has to differ.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b = (super::now() as u64).to_le_bytes();
    }
    crate::legacy::digest::hex(&b)
}

/// The database's epoch, made the first time.
pub(super) fn load(conn: &Connection) -> Result<String> {
    if let Some(e) = conn
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        return Ok(e);
    }
    let e = fresh();
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', ?1) ON CONFLICT (key) DO NOTHING",
        [&e],
    )?;
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })?,
    )
}

fn generation(conn: &Connection) -> Result<u64> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'generation'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0)
        .max(0) as u64)
}

fn read_note(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
}

impl Central {
    /// The epoch every answer carries.
    pub fn epoch(&self) -> String {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// At `serve` start: a database older than the note gets a new epoch
    /// (and a log line that says what happened); the note is brought up to
    /// date either way. Returns whether the database was found restored.
    pub fn check_restored(&self) -> Result<bool> {
        let conn = self.conn()?;
        let (epoch, now) = (load(&conn)?, generation(&conn)?);
        let note = self.note_path();
        let restored = match read_note(&note) {
            Some((noted, was)) if noted == epoch && now < was => {
                let new = fresh();
                conn.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [&new])?;
                log::warn!(
                    "this database is older than the one this central last served \
                     ({now} record writes, the note {} says {was}): it was restored from a \
                     backup or lost writes. New epoch {new}: every site compares its records \
                     with this central at its next sync and sends again what it lost",
                    note.display()
                );
                *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = new;
                true
            }
            _ => {
                *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
                false
            }
        };
        self.write_note()?;
        Ok(restored)
    }

    /// Brings the note up to the database (called now and then by `serve`,
    /// and when it stops). A failure is logged, never fatal: the note only
    /// helps detection.
    pub fn write_note(&self) -> Result<()> {
        let conn = self.conn()?;
        let (epoch, now) = (load(&conn)?, generation(&conn)?);
        let note = self.note_path();
        if read_note(&note) == Some((epoch.clone(), now)) {
            return Ok(());
        }
        let tmp = note.with_extension("epoch.tmp");
        let written = std::fs::write(&tmp, format!("{epoch} {now}\n"))
            .and_then(|()| std::fs::rename(&tmp, &note));
        if let Err(e) = written {
            log::warn!(
                "could not write {}: {e} (restore detection is weaker until it can)",
                note.display()
            );
        }
        Ok(())
    }
}
