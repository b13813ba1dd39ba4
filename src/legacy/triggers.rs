//! The ownership rules and change capture as the SQL text of SQLite triggers on
//! the store's `record` table (protocol §7.1, §7.2): the same rules as
//! [`super::owner`], for every program that writes the agent's file — whatever
//! the statement form: INSERT, UPDATE, DELETE, INSERT OR REPLACE, upsert, INSERT
//! OR IGNORE, with `recursive_triggers` on or off.
//!
//! The text is generated from a few building blocks, so each rule is written
//! once and applied to whichever row it judges: a new row, the old one, or the
//! row an INSERT OR REPLACE would overwrite (REPLACE deletes without firing
//! delete triggers unless `recursive_triggers` is on, so the insert trigger
//! judges that row itself). The store installs it and compares it with the file
//! on every open (`store::rules`). RAISE messages are literals (SQLite before
//! 3.48 accepts nothing else, and the sqlite3 shells on devices are older); they
//! start with `fieldsync:` so the agent can tell a refusal from other errors.
//!
//! The triggers read the store's own tables: `registry` (this module's table
//! list, copied in), `setting` (the active store), `outbox`, `counter`,
//! `local_edit` and `resave`.

use super::registry::{DISPENSARY_HELD, UNKNOWN_ORDER};

/// The push order key of a delete: above every upsert's rank (an unknown
/// table's included), children first (§7.3): `DELETE_KEY_BASE - rank`.
const DELETE_KEY_BASE: u16 = 2 * UNKNOWN_ORDER;

/// A sequence counter above this (2^62) was not counted there: another program
/// set it, and the next change counts on from the outbox itself instead of
/// overflowing into a value SQLite stores as a float.
const SEQ_CEILING: i64 = 1 << 62;

/// Largest record text a local write may store: the row limit of
/// [`super::row::MAX_ROW_BYTES`].
const MAX_BYTES: usize = super::row::MAX_ROW_BYTES;

const ACTIVE: &str = "(SELECT value FROM setting WHERE key = 'active_store_id')";

/// A row as a trigger sees it: its table, id and data expressions.
#[derive(Clone, Copy)]
struct Row<'a> {
    table: &'a str,
    id: &'a str,
    data: &'a str,
}

const NEW: Row = Row {
    table: "NEW.table_name",
    id: "NEW.record_id",
    data: "NEW.data",
};
const OLD: Row = Row {
    table: "OLD.table_name",
    id: "OLD.record_id",
    data: "OLD.data",
};
/// The row an INSERT would overwrite (alias `e` in a subquery).
const EXISTING: Row = Row {
    table: "e.table_name",
    id: "e.record_id",
    data: "e.data",
};

fn kind(r: Row) -> String {
    format!("(SELECT kind FROM registry WHERE table_name = {})", r.table)
}

/// The owning store of a row, following a parent where the registry says so.
fn owner(r: Row) -> String {
    format!(
        "(SELECT CASE WHEN g.parent_table IS NULL THEN json_extract({d}, '$.' || g.owner_field) \
         ELSE (SELECT json_extract(p.data, '$.' || g.parent_field) FROM record p \
               WHERE p.table_name = g.parent_table AND p.record_id = json_extract({d}, '$.' || g.owner_field)) END \
         FROM registry g WHERE g.table_name = {t})",
        d = r.data,
        t = r.table
    )
}

/// Whether the `name` row `name_id` is a patient whose home store is active here.
fn patient_homed_here(name_id: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM record n WHERE n.table_name = 'name' AND n.record_id = {name_id} \
         AND json_extract(n.data, '$.type') = 'patient' \
         AND json_extract(n.data, '$.supplying_store_id') IS {ACTIVE})"
    )
}

/// What is judged of a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// A row being created: who owns it.
    Create,
    /// The new version of a changed row: who owns it.
    Become,
    /// A row that exists and is changed or deleted: may it be touched at all.
    Touch,
}

/// The refusals for a row: (message, condition that refuses).
fn refusals(r: Row, judge: Judge) -> Vec<(&'static str, String)> {
    let k = kind(r);
    let mut out = vec![(
        "fieldsync: central data is read-only on a remote site; change it on the central server",
        format!(
            "{k} IN ('central', 'central_store') \
             OR ({k} = 'name' AND json_extract({d}, '$.type') IS NOT 'patient')",
            d = r.data
        ),
    )];
    if judge == Judge::Touch {
        out.push((
            "fieldsync: messages cannot be edited or deleted once created",
            format!("{k} = 'message'"),
        ));
        out.push((
            "fieldsync: records received from the central are read-only here (users, barcodes)",
            format!(
                "{k} = 'created' AND NOT EXISTS (SELECT 1 FROM local_edit l \
                 WHERE l.table_name = {t} AND l.record_id = {i})",
                t = r.table,
                i = r.id
            ),
        ));
    }
    // A line whose header is gone can still be changed or deleted by the site
    // that wrote it (it owned the header then); nobody else's.
    let orphan_of_ours = if judge == Judge::Touch {
        format!(
            " AND NOT ((SELECT parent_table FROM registry WHERE table_name = {t}) IS NOT NULL \
             AND {o} IS NULL \
             AND EXISTS (SELECT 1 FROM local_edit l WHERE l.table_name = {t} AND l.record_id = {i}))",
            t = r.table,
            i = r.id,
            o = owner(r)
        )
    } else {
        String::new()
    };
    out.push((
        "fieldsync: record belongs to another store: this site holds a read-only copy",
        format!(
            "{k} IN ('store', 'patient', 'name', 'message') AND {o} IS NOT {ACTIVE}{orphan_of_ours}",
            o = owner(r)
        ),
    ));
    out.push((
        "fieldsync: record belongs to another store: patient records are written only for patients homed here",
        format!(
            "{k} = 'patient_join' AND NOT {}",
            patient_homed_here(&format!(
                "json_extract({d}, '$.' || (SELECT owner_field FROM registry WHERE table_name = {t}))",
                d = r.data,
                t = r.table
            ))
        ),
    ));
    out.push((
        "fieldsync: record belongs to another store: name_store_join may only join a patient homed here to the active store",
        format!(
            "{k} = 'name_store_join' AND NOT (json_extract({d}, '$.store_ID') IS {ACTIVE} AND {})",
            patient_homed_here(&format!("json_extract({}, '$.name_ID')", r.data)),
            d = r.data
        ),
    ));
    out
}

fn raise(message: &str, condition: &str) -> String {
    let message = message.replace('\'', "''");
    format!("    SELECT RAISE(ABORT, '{message}') WHERE {condition};\n")
}

/// What every written row must be, before any ownership rule.
fn shape(r: Row) -> String {
    let mut s = String::new();
    s += &raise(
        "fieldsync: unknown table: local writes need a table fieldsync knows (see `fieldsync tables`)",
        &format!(
            "NOT EXISTS (SELECT 1 FROM registry WHERE table_name = {})",
            r.table
        ),
    );
    s += &raise(
        "fieldsync: site not initialised: only local data may be written until the first sync has completed",
        &format!("{} <> 'local' AND {ACTIVE} IS NULL", kind(r)),
    );
    s += &raise(
        "fieldsync: the record has a key twice (SQLite would read the first, the central the last); write each key once",
        &format!(
            "CASE WHEN typeof({d}) = 'text' AND json_valid({d}) AND json_type({d}) = 'object' \
             THEN (SELECT count(*) FROM json_each({d})) <> (SELECT count(DISTINCT key) FROM json_each({d})) END",
            d = r.data
        ),
    );
    s += &raise(
        "fieldsync: record too large: a record holds at most 1 MiB of JSON",
        &format!("length(CAST({} AS BLOB)) > {MAX_BYTES}", r.data),
    );
    s
}

/// Whether the outbox entry of `r` is held on the site (§9.7).
fn held(r: Row) -> String {
    let tables = DISPENSARY_HELD
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "({} IN ({tables}) AND (SELECT value FROM setting WHERE key = 'hold_transactions') = '1')",
        r.table
    )
}

/// The outbox upsert of a change: one entry per record; each change moves it to
/// the back (new seq), bumps its version and sets its place in the push order; a
/// sent entry goes back to pending, a rejected one stays rejected. The sequence
/// is past every entry whatever another program did to its counter (reset it,
/// deleted it, stored text in it): an app's `UPDATE counter SET value = 0`
/// must not make every later write fail on the outbox's unique `seq` (issue 26).
fn capture(r: Row, action: &str, only_if: &str) -> String {
    let rank = format!(
        "coalesce((SELECT rank FROM registry WHERE table_name = {}), {UNKNOWN_ORDER})",
        r.table
    );
    let push_key = if action == "Delete" {
        format!("{DELETE_KEY_BASE} - {rank}")
    } else {
        rank
    };
    let h = held(r);
    format!(
        "    INSERT INTO counter (name, value) SELECT 'outbox_seq', coalesce((SELECT max(seq) FROM outbox), 0) + 1 \
                 WHERE {only_if}\n\
         \x20   ON CONFLICT (name) DO UPDATE SET value = max(CASE WHEN typeof(counter.value) = 'integer' \
                 AND counter.value < {SEQ_CEILING} THEN counter.value ELSE 0 END, \
                 coalesce((SELECT max(seq) FROM outbox), 0)) + 1;\n\
         \x20   INSERT INTO outbox (table_name, record_id, seq, action, version, push_key, state)\n\
         \x20   SELECT {t}, {i}, (SELECT value FROM counter WHERE name = 'outbox_seq'), '{action}', 1, {push_key},\n\
         \x20          CASE WHEN {h} THEN 'held' ELSE 'pending' END\n\
         \x20   WHERE {only_if}\n\
         \x20   ON CONFLICT (table_name, record_id) DO UPDATE\n\
         \x20      SET seq = excluded.seq, action = excluded.action, version = outbox.version + 1,\n\
         \x20          push_key = excluded.push_key,\n\
         \x20          state = CASE WHEN outbox.state = 'rejected' THEN 'rejected' ELSE excluded.state END;\n",
        t = r.table,
        i = r.id
    )
}

fn is_captured(r: Row) -> String {
    format!("{} <> 'local'", kind(r))
}

fn resaved(r: Row) -> String {
    format!(
        "EXISTS (SELECT 1 FROM resave s WHERE s.table_name = {} AND s.record_id = {})",
        r.table, r.id
    )
}

fn not_resaved(r: Row) -> String {
    format!("NOT {}", resaved(r))
}

/// Every trigger, (name, CREATE statement).
pub fn all() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();

    // INSERT: the new row, then any row with the same key that an INSERT OR
    // REPLACE or upsert would overwrite — judged as a change of it unless it is
    // written back unchanged (then marked in `resave`, and nothing is captured).
    let identical = "EXISTS (SELECT 1 FROM record e WHERE e.table_name = NEW.table_name \
                     AND e.record_id = NEW.record_id AND e.data IS NEW.data)";
    let mut body = shape(NEW);
    for (m, c) in refusals(NEW, Judge::Create) {
        body += &raise(m, &format!("({c}) AND NOT {identical}"));
    }
    for (m, c) in refusals(EXISTING, Judge::Touch) {
        body += &raise(
            m,
            &format!(
                "EXISTS (SELECT 1 FROM record e WHERE e.table_name = NEW.table_name \
                 AND e.record_id = NEW.record_id AND e.data IS NOT NEW.data AND ({c}))"
            ),
        );
    }
    // The mark is read only by the insert capture, and refreshed by every insert
    // of the key: one left behind by an ignored insert changes nothing.
    body +=
        "    DELETE FROM resave WHERE table_name = NEW.table_name AND record_id = NEW.record_id;\n";
    body += "    INSERT INTO resave SELECT NEW.table_name, NEW.record_id, EXISTS (SELECT 1 FROM local_edit l \
             WHERE l.table_name = NEW.table_name AND l.record_id = NEW.record_id) WHERE EXISTS (SELECT 1 FROM record e \
             WHERE e.table_name = NEW.table_name AND e.record_id = NEW.record_id AND e.data IS NEW.data) \
             ON CONFLICT DO NOTHING;\n";
    v.push((
        "fieldsync_insert",
        format!("CREATE TRIGGER fieldsync_insert BEFORE INSERT ON record\nBEGIN\n{body}END"),
    ));

    // UPDATE: keys never change; the old row must be touchable here and the new
    // one owned here. An update that leaves the data as it was is no change.
    let mut body = raise(
        "fieldsync: a record's table and ID cannot change; delete it and insert a new one",
        "NEW.table_name IS NOT OLD.table_name OR NEW.record_id IS NOT OLD.record_id",
    );
    body += &shape(NEW);
    for (m, c) in refusals(OLD, Judge::Touch) {
        body += &raise(m, &c);
    }
    for (m, c) in refusals(NEW, Judge::Become) {
        body += &raise(m, &c);
    }
    v.push((
        "fieldsync_update",
        format!(
            "CREATE TRIGGER fieldsync_update BEFORE UPDATE ON record\n\
             WHEN NEW.data IS NOT OLD.data OR NEW.table_name IS NOT OLD.table_name OR NEW.record_id IS NOT OLD.record_id\n\
             BEGIN\n{body}END"
        ),
    ));

    // DELETE: the row must be touchable here. (No cascade to lines: under
    // recursive_triggers a REPLACE of a header deletes it first, and would take its
    // lines along. A line whose header is gone stays deletable by its writer.)
    let mut body = String::new();
    body += &raise(
        "fieldsync: unknown table: local writes need a table fieldsync knows (see `fieldsync tables`)",
        "NOT EXISTS (SELECT 1 FROM registry WHERE table_name = OLD.table_name)",
    );
    body += &raise(
        "fieldsync: site not initialised: only local data may be written until the first sync has completed",
        &format!("{} <> 'local' AND {ACTIVE} IS NULL", kind(OLD)),
    );
    for (m, c) in refusals(OLD, Judge::Touch) {
        body += &raise(m, &c);
    }
    v.push((
        "fieldsync_delete",
        format!("CREATE TRIGGER fieldsync_delete BEFORE DELETE ON record\nBEGIN\n{body}END"),
    ));

    // Capture. A row written back unchanged (marked in `resave`) is no change:
    // nothing is queued and it stays as received — except that under
    // recursive_triggers the REPLACE already fired the delete capture, whose
    // Delete entry and local_edit removal are undone here.
    let only = format!("{} AND {}", is_captured(NEW), not_resaved(NEW));
    v.push((
        "fieldsync_insert_capture",
        format!(
            "CREATE TRIGGER fieldsync_insert_capture AFTER INSERT ON record\nBEGIN\n{}\
             \x20   INSERT INTO local_edit SELECT NEW.table_name, NEW.record_id WHERE {} ON CONFLICT DO NOTHING;\n\
             \x20   UPDATE outbox SET action = 'Update', push_key = coalesce((SELECT rank FROM registry \
                     WHERE table_name = NEW.table_name), {UNKNOWN_ORDER})\n\
             \x20   WHERE table_name = NEW.table_name AND record_id = NEW.record_id AND action = 'Delete' AND {};\n\
             \x20   INSERT INTO local_edit SELECT NEW.table_name, NEW.record_id WHERE EXISTS (SELECT 1 FROM resave s \
                     WHERE s.table_name = NEW.table_name AND s.record_id = NEW.record_id AND s.was_local) ON CONFLICT DO NOTHING;\n\
             \x20   DELETE FROM resave WHERE table_name = NEW.table_name AND record_id = NEW.record_id;\n\
             END",
            capture(NEW, "Update", &only),
            not_resaved(NEW),
            resaved(NEW)
        ),
    ));
    v.push((
        "fieldsync_update_capture",
        format!(
            "CREATE TRIGGER fieldsync_update_capture AFTER UPDATE ON record\nWHEN NEW.data IS NOT OLD.data\nBEGIN\n{}\
             \x20   INSERT INTO local_edit VALUES (NEW.table_name, NEW.record_id) ON CONFLICT DO NOTHING;\n\
             END",
            capture(NEW, "Update", &is_captured(NEW))
        ),
    ));
    v.push((
        "fieldsync_delete_capture",
        format!(
            "CREATE TRIGGER fieldsync_delete_capture AFTER DELETE ON record\nBEGIN\n{}\
             \x20   DELETE FROM local_edit WHERE table_name = OLD.table_name AND record_id = OLD.record_id;\n\
             END",
            capture(OLD, "Delete", &is_captured(OLD))
        ),
    ));
    v
}

/// Triggers of earlier schemas, dropped on upgrade.
pub const RETIRED: &[&str] = &[
    "record_guard_insert",
    "record_guard_update",
    "record_guard_delete",
    "record_capture_insert",
    "record_capture_update",
    "record_capture_delete",
];
