//! Finding what reached the shared file without passing the rules (issue 26).
//!
//! The triggers judge and capture every write of every program — unless a
//! program switches them off for its connection (SQLite lets any connection),
//! drops and re-creates them, or edits the outbox itself. So the agent keeps,
//! for every record as the site last synced it, a row in `record_check`:
//! whether the site may edit that version, and a MAC over it keyed by a
//! secret in the agent's own state file, which the clinic's app cannot read.
//! A record whose MAC no longer matches was changed since it was synced.
//! Changed through the triggers, it has an outbox entry; changed behind them,
//! it has none — and [`Store::check_records`] finds it, judges it by the same
//! rules ([`crate::legacy::owner`]) against the agent's own idea of the active
//! store, and queues it when the site may make that change, or asks the
//! central for its copy when it may not. The outbox is repaired on the way:
//! entries marked sent or held by another program go back to pending.
//!
//! What holds: a check row is written in the transaction that writes the
//! version it describes (a received record, a confirmed push), so the two
//! never disagree after a crash; nothing here deletes a record — a change the
//! site may not make is set aside and restored from the central's copy.

use ring::hmac;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{state, Store, StoreError, Tx};
use crate::legacy::owner::{self, Rows, Write, Writer};
use crate::legacy::registry::{self, Kind, DISPENSARY_HELD};

/// Records read and checked per transaction: the write lock the clinic's app
/// waits for is held for milliseconds, not for a whole scan, and the chunk's
/// rows in memory stay a few hundred kilobytes (1,000 rows of ~1 KB held
/// 2 MB, most of a push's peak heap; issue 31).
const RECORDS_PER_CHECK: usize = 250;
/// Findings kept in full for `status` and the log; the counts cover the rest.
pub const LISTED: usize = 50;
/// Records kept on the list the central is asked to send again.
const MAX_RESTORE: usize = 10_000;

/// The secret the checks are keyed with (32 random bytes in the state file).
pub struct Key(Option<hmac::Key>);

impl Key {
    pub(super) fn none() -> Key {
        Key(None)
    }

    /// The state file's key, made the first time.
    pub(super) fn load(agent: &Connection) -> Result<Key, StoreError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = match state::get(agent, state::key::CHECK_KEY)?
            .and_then(|k| b64.decode(k).ok())
            .filter(|b| b.len() == 32)
        {
            Some(b) => b,
            None => {
                use ring::rand::SecureRandom;
                let mut b = vec![0u8; 32];
                ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| {
                    StoreError::Schema("no random source for the record checks".into())
                })?;
                state::set(agent, state::key::CHECK_KEY, &b64.encode(&b))?;
                b
            }
        };
        Ok(Key(Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes))))
    }

    /// The first 8 bytes of the HMAC of the length-prefixed `parts`.
    fn tag(&self, parts: &[&[u8]]) -> i64 {
        let Some(key) = &self.0 else {
            return 0;
        };
        let mut ctx = hmac::Context::with_key(key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
        }
        let t = ctx.sign();
        i64::from_le_bytes(t.as_ref()[..8].try_into().expect("8 bytes"))
    }

    fn mine_mac(&self, table: &str, id: &str, mine: bool) -> i64 {
        self.tag(&[b"mine", table.as_bytes(), id.as_bytes(), &[u8::from(mine)]])
    }

    fn mac(&self, table: &str, id: &str, mine: bool, data: &[u8]) -> i64 {
        self.tag(&[
            b"data",
            table.as_bytes(),
            id.as_bytes(),
            &[u8::from(mine)],
            data,
        ])
    }
}

/// The rows a judgement of this site's own write looks at, with the answer
/// for a created row (`user`, `barcode`) given: whether this site made it.
/// With `memo`, each header field read is kept for the next judgement (a
/// confirmation run writes no record, so a line's header read once stays true).
struct Judged<'t, 'a> {
    tx: &'t Tx<'a>,
    created_here: bool,
    memo: Option<&'t Confirming>,
}

impl Rows for Judged<'_, '_> {
    type Error = StoreError;
    fn row(&self, table: &str, id: &str) -> Result<Option<Value>, StoreError> {
        self.tx.get(table, id)
    }
    fn field(&self, table: &str, id: &str, name: &str) -> Result<Option<String>, StoreError> {
        let read = || self.tx.get_field(table, id, name);
        let Some(memo) = self.memo else {
            return read();
        };
        // Only the field is kept, never the row: a memo of whole rows held
        // megabytes of parsed JSON during a check.
        let key = (table.to_string(), id.to_string(), name.to_string());
        if let Some(hit) = memo.fields.borrow().get(&key) {
            return Ok(hit.clone());
        }
        let value = read()?;
        let mut fields = memo.fields.borrow_mut();
        if fields.len() >= CONFIRMING_FIELDS {
            fields.clear();
        }
        fields.insert(key, value.clone());
        Ok(value)
    }
    fn created_by_writer(&self, _: &str, _: &str) -> Result<Option<bool>, StoreError> {
        Ok(Some(self.created_here))
    }
}

/// Fields a [`Confirming`] keeps at most (a few hundred bytes each).
const CONFIRMING_FIELDS: usize = 1024;

/// What a run of judgements shares — a push's confirmations, a chunk of the
/// check (issue 31: each judgement read the active store and its line's
/// header again): the agent's active store, read once, and the header fields
/// the judgements read. Only for a run that writes no record meanwhile.
pub(in crate::store) struct Confirming {
    active: Option<String>,
    fields: std::cell::RefCell<std::collections::HashMap<(String, String, String), Option<String>>>,
}

impl Tx<'_> {
    /// Starts a run of confirmations (see [`Confirming`]).
    pub(in crate::store) fn confirming(&self) -> Result<Confirming, StoreError> {
        Ok(Confirming {
            active: state::get(self.agent(), state::key::ACTIVE_STORE)?.filter(|a| !a.is_empty()),
            fields: Default::default(),
        })
    }

    /// Whether this site may edit `row` (its active store's data, its own
    /// patients, a created row it made), by the rules and the agent's own
    /// idea of the active store — never the shared file's copy of it.
    fn may_edit(&self, table: &str, row: &Value, created_here: bool) -> Result<bool, StoreError> {
        let active = state::get(self.agent(), state::key::ACTIVE_STORE)?;
        self.may_edit_as(active.as_deref(), None, table, row, created_here)
    }

    fn may_edit_as(
        &self,
        active: Option<&str>,
        memo: Option<&Confirming>,
        table: &str,
        row: &Value,
        created_here: bool,
    ) -> Result<bool, StoreError> {
        let Some(active) = active.filter(|a| !a.is_empty()) else {
            return Ok(false);
        };
        let stores = [active.to_string()];
        let writer = Writer {
            stores: &stores,
            primary: false,
        };
        let rows = Judged {
            tx: self,
            created_here,
            memo,
        };
        Ok(owner::judge(&writer, table, Write::Upsert(row), None, &rows)?.is_none())
    }

    /// [`Tx::mark_synced`] for a record of this site's confirmed push, in a
    /// run of confirmations.
    pub(in crate::store) fn mark_confirmed(
        &self,
        run: &Confirming,
        table: &str,
        id: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        if is_local(table) {
            return Ok(());
        }
        let mine = match serde_json::from_str::<Value>(text) {
            Ok(row) => self.may_edit_as(run.active.as_deref(), Some(run), table, &row, true)?,
            Err(_) => false,
        };
        self.write_check(table, id, text, mine)
    }

    /// Notes `text` as the version of `table`/`id` the site last synced (it
    /// was received, or pushed and confirmed); `created_here`: a created row
    /// this site made.
    pub(in crate::store) fn mark_synced(
        &self,
        table: &str,
        id: &str,
        text: &str,
        created_here: bool,
    ) -> Result<(), StoreError> {
        if is_local(table) {
            return Ok(());
        }
        let mine = match serde_json::from_str::<Value>(text) {
            Ok(row) => self.may_edit(table, &row, created_here)?,
            Err(_) => false,
        };
        self.write_check(table, id, text, mine)
    }

    fn write_check(&self, table: &str, id: &str, text: &str, mine: bool) -> Result<(), StoreError> {
        let key = self.check_key();
        self.conn()
            .prepare_cached(
                "INSERT INTO record_check (table_name, record_id, mine, mine_mac, mac) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (table_name, record_id) DO UPDATE SET mine = excluded.mine, \
                 mine_mac = excluded.mine_mac, mac = excluded.mac",
            )
            .and_then(|mut s| {
                s.execute(params![
                    table,
                    id,
                    mine,
                    key.mine_mac(table, id, mine),
                    key.mac(table, id, mine, text.as_bytes())
                ])
            })
            .map(drop)
            .map_err(|e| StoreError::sqlite("noting a synced record", e))
    }

    /// The record is gone on both sides (a received delete, a confirmed one).
    pub(in crate::store) fn forget_synced(&self, table: &str, id: &str) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("DELETE FROM record_check WHERE table_name = ?1 AND record_id = ?2")
            .and_then(|mut s| s.execute(params![table, id]))
            .map(drop)
            .map_err(|e| StoreError::sqlite("noting a synced delete", e))
    }

    /// Whether this site may edit the record it holds as `row`; a created row
    /// (`user`, `barcode`) counts as made here when its synced version said so.
    pub(in crate::store) fn may_edit_synced(
        &self,
        table: &str,
        id: &str,
        row: &Value,
    ) -> Result<bool, StoreError> {
        let key = self.check_key();
        let created_here = self
            .conn()
            .query_row(
                "SELECT mine, mine_mac FROM record_check WHERE table_name = ?1 AND record_id = ?2",
                params![table, id],
                |r| Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(|e| StoreError::sqlite("reading a record's synced version", e))?
            .is_some_and(|(m, mm)| m && mm == key.mine_mac(table, id, m));
        self.may_edit(table, row, created_here)
    }

    /// Queues the record as it is now for the central (found missing or
    /// older there by the comparison).
    pub(in crate::store) fn requeue(&self, table: &str, id: &str) -> Result<(), StoreError> {
        self.enqueue(table, id, false)
    }

    /// Queues a change of `table`/`id` as the capture trigger would have.
    fn enqueue(&self, table: &str, id: &str, delete: bool) -> Result<(), StoreError> {
        let rank = i64::from(registry::order(table));
        let push_key = if delete {
            2 * i64::from(registry::UNKNOWN_ORDER) - rank
        } else {
            rank
        };
        let held = !delete
            && state::get(self.agent(), state::key::HOLD_TRANSACTIONS)?.as_deref() == Some("1")
            && DISPENSARY_HELD.contains(&table);
        let err = |e| StoreError::sqlite("queueing a change found by the check", e);
        let c = self.conn();
        c.execute(
            "INSERT INTO counter (name, value) VALUES ('outbox_seq', coalesce((SELECT max(seq) FROM outbox), 0) + 1) \
             ON CONFLICT (name) DO UPDATE SET value = max(counter.value, coalesce((SELECT max(seq) FROM outbox), 0)) + 1",
            [],
        )
        .map_err(err)?;
        c.execute(
            "INSERT INTO outbox (table_name, record_id, seq, action, version, push_key, state) \
             VALUES (?1, ?2, (SELECT value FROM counter WHERE name = 'outbox_seq'), ?3, 1, ?4, ?5) \
             ON CONFLICT (table_name, record_id) DO UPDATE SET seq = excluded.seq, action = excluded.action, \
             version = outbox.version + 1, push_key = excluded.push_key, state = excluded.state",
            params![
                table,
                id,
                if delete { "Delete" } else { "Update" },
                push_key,
                if held { "held" } else { "pending" }
            ],
        )
        .map(drop)
        .map_err(err)
    }
}

fn is_local(table: &str) -> bool {
    registry::lookup(table).is_some_and(|t| t.kind == Kind::Local)
}

impl Store {
    /// What the last check found (for `status`).
    pub fn last_check(&self) -> Result<Option<Checked>, StoreError> {
        Ok(self
            .state_value(state::key::LAST_CHECK)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Records found changed behind the rules that the central has not yet
    /// been asked to send again (it cannot be asked, or the link was down).
    pub fn restore_waiting(&self) -> Result<u64, StoreError> {
        Ok(state::get(self.agent(), state::key::RESTORE)?
            .and_then(|t| serde_json::from_str::<Vec<(String, String)>>(&t).ok())
            .map_or(0, |l| l.len() as u64))
    }
}

/// Whether the shared file holds the record, whatever its text.
fn held_here(conn: &Connection, table: &str, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM record WHERE table_name = ?1 AND record_id = ?2)",
        params![table, id],
        |r| r.get(0),
    )
}

/// Whether the site ever synced a version of the record.
fn was_synced(conn: &Connection, table: &str, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM record_check WHERE table_name = ?1 AND record_id = ?2)",
        params![table, id],
        |r| r.get(0),
    )
}

/// What became of a record whose set-aside change a person dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The central's copy is asked for at the next sync.
    Restore,
    /// Only ever written here: removed.
    Deleted,
    /// Nothing left to undo (a refused delete of a record never synced).
    Nothing,
}

/// What changed behind the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Written since it was synced, with no outbox entry.
    Edited,
    /// Never synced, and no outbox entry.
    Created,
    /// Gone since it was synced, with no outbox entry.
    Deleted,
    /// Changed through the triggers (it has an outbox entry) although the site
    /// may not change it: the triggers' inputs were changed behind them.
    NotOurs,
}

/// What the check did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repair {
    /// The site may make this change: queued for the central.
    Queued,
    /// It may not: set aside, and the central's copy asked for.
    Restore,
    /// A record written here that the site may not write and the central never
    /// had: set aside for a person (`fieldsync queue --rejected`).
    SetAside,
}

/// The reasons a check sets an outbox entry aside with.
const RESTORED: &str =
    "changed behind fieldsync's rules and not this site's to change; the central's copy is asked for";
const HELD_FOR_A_PERSON: &str =
    "written behind fieldsync's rules and not this site's to write; nothing of it is sent \
     (`fieldsync queue drop TABLE ID --yes` discards it)";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub table: String,
    pub id: String,
    pub change: Change,
    pub repair: Repair,
}

/// What a check of the shared file found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checked {
    pub records: u64,
    pub queued: u64,
    pub restore: u64,
    /// Written behind the rules, not the site's, never synced: for a person.
    pub set_aside: u64,
    /// Outbox entries another program marked sent or held, back to pending.
    pub outbox_repaired: u64,
    /// The first [`LISTED`] findings.
    pub findings: Vec<Finding>,
}

impl Checked {
    fn found(&mut self, f: Finding) {
        match f.repair {
            Repair::Queued => self.queued += 1,
            Repair::Restore => self.restore += 1,
            Repair::SetAside => self.set_aside += 1,
        }
        log::warn!(
            "{} {} was {} behind fieldsync's rules; {}",
            f.table,
            f.id,
            match f.change {
                Change::Edited => "changed",
                Change::Created => "written",
                Change::Deleted => "deleted",
                Change::NotOurs => "changed through rules another program had altered",
            },
            match f.repair {
                Repair::Queued => "the site may make that change: queued for the central",
                Repair::Restore =>
                    "the site may not: set aside, and the central's copy is asked for",
                Repair::SetAside =>
                    "the site may not write it: set aside for a person (`fieldsync queue --rejected`)",
            }
        );
        if self.findings.len() < LISTED {
            self.findings.push(f);
        }
    }

    pub fn clean(&self) -> bool {
        self.queued + self.restore + self.set_aside + self.outbox_repaired == 0
    }
}

/// One record as the check reads it.
struct Seen {
    table: String,
    id: String,
    data: Vec<u8>,
    check: Option<(bool, i64, i64)>,
    outbox: Option<String>,
}

impl Store {
    /// Checks every record of the shared file against the version the site
    /// last synced, in short transactions; repairs what it can (see the module
    /// comment). The restore list is kept for the next sync.
    pub fn check_records(&mut self) -> Result<Checked, StoreError> {
        let mut checked = Checked {
            outbox_repaired: self.repair_outbox()?,
            ..Checked::default()
        };
        let mut after = (String::new(), String::new());
        let mut restore: Vec<(String, String)> = Vec::new();
        loop {
            let chunk = self.read_chunk(&after)?;
            let Some(last) = chunk.last() else {
                break;
            };
            after = (last.table.clone(), last.id.clone());
            let tx = self.tx()?;
            // The check writes no record: the rows its judgements read hold
            // for the chunk.
            let run = tx.confirming()?;
            for seen in &chunk {
                checked.records += 1;
                if let Some(f) = tx.judge_seen(&run, seen)? {
                    if f.repair == Repair::Restore {
                        restore.push((f.table.clone(), f.id.clone()));
                    }
                    checked.found(f);
                }
            }
            tx.commit()?;
        }
        let tx = self.tx()?;
        for f in tx.deleted_behind()? {
            if f.repair == Repair::Restore {
                restore.push((f.table.clone(), f.id.clone()));
            }
            checked.found(f);
        }
        tx.commit()?;
        self.note_restore(restore)?;
        Ok(checked)
    }

    fn read_chunk(&self, after: &(String, String)) -> Result<Vec<Seen>, StoreError> {
        let err = |e| StoreError::sqlite("checking the records", e);
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT r.table_name, r.record_id, CAST(r.data AS BLOB), c.mine, c.mine_mac, c.mac, o.state \
                 FROM record r \
                 LEFT JOIN record_check c ON c.table_name = r.table_name AND c.record_id = r.record_id \
                 LEFT JOIN outbox o ON o.table_name = r.table_name AND o.record_id = r.record_id \
                 WHERE (r.table_name, r.record_id) > (?1, ?2) \
                 ORDER BY r.table_name, r.record_id LIMIT ?3",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![after.0, after.1, RECORDS_PER_CHECK as i64], |r| {
                let mine: Option<bool> = r.get(3)?;
                Ok(Seen {
                    table: r.get(0)?,
                    id: r.get(1)?,
                    data: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                    check: match mine {
                        Some(m) => Some((m, r.get(4)?, r.get(5)?)),
                        None => None,
                    },
                    outbox: r.get(6)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Outbox entries only a push marks `sent` (none runs now) or only a
    /// dispensary's hold keeps `held`, put back; and a sequence counter another
    /// program reset or broke, put past every entry. Returns the entries moved.
    fn repair_outbox(&mut self) -> Result<u64, StoreError> {
        let hold = self.hold()?;
        let tables = DISPENSARY_HELD
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let tx = self.tx()?;
        let err = |e| StoreError::sqlite("repairing the outbox", e);
        let c = tx.conn();
        let mut n = c
            .execute(
                "UPDATE outbox SET state = 'pending' WHERE state = 'sent'",
                [],
            )
            .map_err(err)? as u64;
        n += c
            .execute(
                &format!(
                    "UPDATE outbox SET state = 'pending' WHERE state = 'held' \
                     AND NOT (?1 AND table_name IN ({tables}))"
                ),
                [hold],
            )
            .map_err(err)? as u64;
        c.execute(
            "INSERT INTO counter (name, value) VALUES ('outbox_seq', coalesce((SELECT max(seq) FROM outbox), 0)) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value \
             WHERE typeof(counter.value) <> 'integer' OR counter.value < excluded.value \
                OR counter.value > 4611686018427387904",
            [],
        )
        .map_err(err)?;
        if n > 0 {
            log::warn!(
                "{n} outbox entr(ies) were marked sent or held by another program; back in the queue"
            );
        }
        tx.commit()?;
        Ok(n)
    }

    /// A person discards a set-aside change (`fieldsync queue drop`): its
    /// outbox entry goes, and the record goes back to what the central holds
    /// — asked for again when it was ever synced, removed when it was only
    /// ever written here. Nothing is sent for it. `None` when `table`/`id` has
    /// no set-aside entry (a pending one is still on its way and is not
    /// dropped).
    pub fn drop_set_aside(&mut self, table: &str, id: &str) -> Result<Option<Dropped>, StoreError> {
        let err = |e| StoreError::sqlite("dropping a set-aside change", e);
        let (exists, synced) = {
            let tx = self.tx()?;
            let exists: bool = tx
                .conn()
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM outbox WHERE table_name = ?1 AND record_id = ?2 AND state = 'rejected')",
                    params![table, id],
                    |r| r.get(0),
                )
                .map_err(err)?;
            (exists, was_synced(tx.conn(), table, id).map_err(err)?)
        };
        if !exists {
            return Ok(None);
        }
        // The central's copy is asked for before the entry goes: a power cut
        // between the two asks for it while the entry is still set aside
        // (harmless), never drops the entry without the ask.
        if synced {
            self.note_restore(vec![(table.to_string(), id.to_string())])?;
        }
        let tx = self.tx()?;
        tx.conn()
            .execute(
                "DELETE FROM outbox WHERE table_name = ?1 AND record_id = ?2 AND state = 'rejected'",
                params![table, id],
            )
            .map_err(err)?;
        let dropped = if synced {
            Dropped::Restore
        } else if held_here(tx.conn(), table, id).map_err(err)? {
            // Not read as a row: a record set aside for being unreadable
            // (text that is not UTF-8) must be droppable too.
            tx.delete_received(table, id)?;
            Dropped::Deleted
        } else {
            Dropped::Nothing
        };
        tx.commit()?;
        Ok(Some(dropped))
    }

    /// Adds records to the list the central is asked to send again.
    pub(in crate::store) fn restore_later(
        &mut self,
        found: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        if found.is_empty() {
            return Ok(());
        }
        self.note_restore(found)
    }

    fn note_restore(&mut self, found: Vec<(String, String)>) -> Result<(), StoreError> {
        let mut list: Vec<(String, String)> = state::get(self.agent(), state::key::RESTORE)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        for r in found {
            if !list.contains(&r) && list.len() < MAX_RESTORE {
                list.push(r);
            }
        }
        if list.is_empty() {
            return state::unset(self.agent(), state::key::RESTORE);
        }
        state::set(
            self.agent(),
            state::key::RESTORE,
            &serde_json::to_string(&list).unwrap_or_default(),
        )
    }

    /// The records the central is asked to send again (table, id).
    pub fn to_restore(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(state::get(self.agent(), state::key::RESTORE)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// The central was asked for these: off the list.
    pub fn restore_requested(&mut self, done: &[(String, String)]) -> Result<(), StoreError> {
        let left: Vec<(String, String)> = self
            .to_restore()?
            .into_iter()
            .filter(|r| !done.contains(r))
            .collect();
        state::unset(self.agent(), state::key::RESTORE)?;
        self.note_restore(left)
    }

    /// Saves what a check found (for `status`), with the sync's attempt.
    pub fn save_check(&self, c: &Checked) -> Result<(), StoreError> {
        self.defer_state(
            state::key::LAST_CHECK,
            serde_json::to_string(c).unwrap_or_default(),
        );
        Ok(())
    }

    /// Syncs since the last full check, counting this one (`reset`: a check
    /// ran, the count starts again); saved with the sync's attempt.
    pub fn syncs_since_check(&self, reset: bool) -> Result<u64, StoreError> {
        let n = if reset {
            0
        } else {
            self.state_value(state::key::SYNCS_SINCE_CHECK)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                + 1
        };
        self.defer_state(state::key::SYNCS_SINCE_CHECK, n.to_string());
        Ok(n)
    }
}

impl Tx<'_> {
    /// Judges one record of the scan; `None` when it is as synced or waits in
    /// the outbox as it may.
    fn judge_seen(&self, run: &Confirming, seen: &Seen) -> Result<Option<Finding>, StoreError> {
        if is_local(&seen.table) {
            return Ok(None);
        }
        let key = self.check_key();
        // The answer of the synced version, when its own MAC holds.
        let was_mine = seen
            .check
            .map(|(m, mm, _)| m && mm == key.mine_mac(&seen.table, &seen.id, m));
        let unchanged = seen.check.is_some_and(|(m, mm, mac)| {
            mm == key.mine_mac(&seen.table, &seen.id, m)
                && mac == key.mac(&seen.table, &seen.id, m, &seen.data)
        });
        if unchanged {
            if seen.outbox.is_some() && was_mine == Some(false) {
                // An entry for a copy that did not change: another program
                // queued it; nothing to send.
                self.conn()
                    .execute(
                        "DELETE FROM outbox WHERE table_name = ?1 AND record_id = ?2",
                        params![seen.table, seen.id],
                    )
                    .map_err(|e| StoreError::sqlite("dropping a forged outbox entry", e))?;
            }
            return Ok(None);
        }
        let row: Option<Value> = std::str::from_utf8(&seen.data)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok());
        let finding = |change, repair| Finding {
            table: seen.table.clone(),
            id: seen.id.clone(),
            change,
            repair,
        };
        let synced = seen.check.is_some();
        let may = match (was_mine, &row) {
            (Some(false), _) => false,
            // Not a row at all: the push sets it aside with its reason.
            (_, None) => true,
            (_, Some(r)) => self.may_edit_as(
                run.active.as_deref(),
                Some(run),
                &seen.table,
                r,
                was_mine.unwrap_or(true),
            )?,
        };
        Ok(match (&seen.outbox, may, synced) {
            // Captured by the triggers, and the site may make it: it waits to go.
            (Some(_), true, _) => None,
            (None, true, _) => {
                self.enqueue(&seen.table, &seen.id, false)?;
                Some(finding(
                    if synced {
                        Change::Edited
                    } else {
                        Change::Created
                    },
                    Repair::Queued,
                ))
            }
            // A synced record the site may not change: set aside, and the
            // central's copy asked for.
            (entry, false, true) => {
                self.set_aside_behind(&seen.table, &seen.id, RESTORED)?;
                Some(finding(
                    if entry.is_some() {
                        Change::NotOurs
                    } else {
                        Change::Edited
                    },
                    Repair::Restore,
                ))
            }
            // Written here behind the rules, never synced, and not the site's
            // to write: nothing of it goes, and nothing is deleted by a check;
            // it waits in `queue --rejected` for a person.
            (entry, false, false) => {
                if entry.is_none() {
                    self.enqueue(&seen.table, &seen.id, false)?;
                }
                self.set_aside_behind(&seen.table, &seen.id, HELD_FOR_A_PERSON)?;
                Some(finding(Change::Created, Repair::SetAside))
            }
        })
    }

    /// A change the site may not make: its outbox entry, if any, is set aside
    /// with the reason (nothing of it goes to the central).
    fn set_aside_behind(&self, table: &str, id: &str, why: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE outbox SET state = 'rejected', reason = ?3 WHERE table_name = ?1 AND record_id = ?2",
                params![table, id, why],
            )
            .map(drop)
            .map_err(|e| StoreError::sqlite("setting a change aside", e))
    }

    /// Records synced and gone since, with no outbox entry: deleted behind the
    /// rules. The site's own are queued as deletes; others' are asked for.
    fn deleted_behind(&self) -> Result<Vec<Finding>, StoreError> {
        let err = |e| StoreError::sqlite("checking for deleted records", e);
        let gone: Vec<(String, String, bool, i64)> = self
            .conn()
            .prepare(
                "SELECT c.table_name, c.record_id, c.mine, c.mine_mac FROM record_check c \
                 WHERE NOT EXISTS (SELECT 1 FROM record r WHERE r.table_name = c.table_name AND r.record_id = c.record_id) \
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.table_name = c.table_name AND o.record_id = c.record_id)",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .map_err(err)?;
        let key = self.check_key();
        let mut out = Vec::new();
        for (table, id, mine, mine_mac) in gone {
            let mine = mine && mine_mac == key.mine_mac(&table, &id, mine);
            let repair = if mine {
                self.enqueue(&table, &id, true)?;
                Repair::Queued
            } else {
                // Not the site's to delete: the central sends its copy back.
                self.forget_synced(&table, &id)?;
                Repair::Restore
            };
            out.push(Finding {
                table,
                id,
                change: Change::Deleted,
                repair,
            });
        }
        Ok(out)
    }
}

/// Fills `record_check` for every record of a file that had none (the upgrade
/// to schema 5): what is there now is taken as synced, the site's own records
/// by `local_edit` (what an app did behind the rules before this build cannot
/// be told apart any more).
pub(super) fn fill(tx: &Tx) -> Result<u64, StoreError> {
    let err = |e| StoreError::sqlite("noting the synced records", e);
    let rows: Vec<(String, String, String, bool)> = tx
        .conn()
        .prepare(
            "SELECT r.table_name, r.record_id, r.data, EXISTS (SELECT 1 FROM local_edit l \
             WHERE l.table_name = r.table_name AND l.record_id = r.record_id) FROM record r \
             WHERE NOT EXISTS (SELECT 1 FROM record_check c WHERE c.table_name = r.table_name AND c.record_id = r.record_id)",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(err)?;
    let n = rows.len() as u64;
    for (table, id, data, local) in rows {
        tx.mark_synced(&table, &id, &data, local)?;
    }
    Ok(n)
}

impl Tx<'_> {
    /// Whether `table`/`id` has a change waiting in the outbox that a received
    /// copy must not overwrite (pending, held, or being sent): the site's newer
    /// version wins and is pushed. `Some(true)`: the waiting change is a delete.
    pub fn waiting_change(&self, table: &str, id: &str) -> Result<Option<bool>, StoreError> {
        waiting(self.conn(), table, id)
    }
}

fn waiting(conn: &Connection, table: &str, id: &str) -> Result<Option<bool>, StoreError> {
    conn.prepare_cached(
        "SELECT action = 'Delete' FROM outbox WHERE table_name = ?1 AND record_id = ?2 \
         AND state IN ('pending', 'held', 'sent')",
    )
    .and_then(|mut s| s.query_row(params![table, id], |r| r.get(0)).optional())
    .map_err(|e| StoreError::sqlite("reading the outbox", e))
}
