-- Ownership rules and change capture, enforced by SQLite itself so that every
-- program writing this file obeys them (protocol §7.1, §7.2). Dropped and recreated
-- on every open so they always match this build.
--
-- Writes made while sync_guard.applying = 1 (the agent's integration transaction)
-- pass unchecked and are never captured: nothing received is echoed.
--
-- RAISE messages are literals (SQLite before 3.48 accepts nothing else, and the
-- sqlite3 shells on devices are older); they start with 'fieldsync:' so the agent
-- can tell a refusal from other errors and add the table and record to it.

DROP VIEW IF EXISTS record_kind;
DROP TRIGGER IF EXISTS record_guard_insert;
DROP TRIGGER IF EXISTS record_guard_update;
DROP TRIGGER IF EXISTS record_guard_delete;
DROP TRIGGER IF EXISTS record_capture_insert;
DROP TRIGGER IF EXISTS record_capture_update;
DROP TRIGGER IF EXISTS record_capture_delete;

CREATE TRIGGER record_guard_insert BEFORE INSERT ON record
WHEN (SELECT applying FROM sync_guard) = 0
BEGIN
    SELECT RAISE(ABORT, 'fieldsync: unknown table: local writes need a table fieldsync knows (see the registry in the README)')
    WHERE NOT EXISTS (SELECT 1 FROM registry WHERE table_name = NEW.table_name);

    SELECT RAISE(ABORT, 'fieldsync: site not initialised: only local data may be written until the first sync has completed')
    WHERE (SELECT kind FROM registry WHERE table_name = NEW.table_name) <> 'local'
      AND (SELECT value FROM setting WHERE key = 'active_store_id') IS NULL;

    SELECT RAISE(ABORT, 'fieldsync: central data is read-only on a remote site; change it on the central server')
    WHERE (SELECT kind FROM registry WHERE table_name = NEW.table_name) IN ('central', 'central_store')
       OR ((SELECT kind FROM registry WHERE table_name = NEW.table_name) = 'name'
           AND json_extract(NEW.data, '$.type') IS NOT 'patient');

    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: this site holds a read-only copy')
    WHERE (SELECT kind FROM registry WHERE table_name = NEW.table_name) IN ('store', 'patient', 'name', 'message')
      AND (SELECT CASE WHEN r.parent_table IS NULL
                       THEN json_extract(NEW.data, '$.' || r.owner_field)
                       ELSE (SELECT json_extract(p.data, '$.' || r.parent_field) FROM record p
                             WHERE p.table_name = r.parent_table
                               AND p.record_id = json_extract(NEW.data, '$.' || r.owner_field))
                  END
           FROM registry r WHERE r.table_name = NEW.table_name)
          IS NOT (SELECT value FROM setting WHERE key = 'active_store_id');

    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: name_store_join may only join a patient homed here to the active store')
    WHERE (SELECT kind FROM registry WHERE table_name = NEW.table_name) = 'name_store_join'
      AND NOT (json_extract(NEW.data, '$.store_ID') IS (SELECT value FROM setting WHERE key = 'active_store_id')
               AND EXISTS (SELECT 1 FROM record n
                           WHERE n.table_name = 'name'
                             AND n.record_id = json_extract(NEW.data, '$.name_ID')
                             AND json_extract(n.data, '$.type') = 'patient'
                             AND json_extract(n.data, '$.supplying_store_id')
                                 IS (SELECT value FROM setting WHERE key = 'active_store_id')));
END;

CREATE TRIGGER record_guard_update BEFORE UPDATE ON record
WHEN (SELECT applying FROM sync_guard) = 0
BEGIN
    SELECT RAISE(ABORT, 'fieldsync: a record''s table and ID cannot change; delete it and insert a new one')
    WHERE NEW.table_name IS NOT OLD.table_name OR NEW.record_id IS NOT OLD.record_id;

    SELECT RAISE(ABORT, 'fieldsync: unknown table: local writes need a table fieldsync knows (see the registry in the README)')
    WHERE NOT EXISTS (SELECT 1 FROM registry WHERE table_name = OLD.table_name);

    SELECT RAISE(ABORT, 'fieldsync: site not initialised: only local data may be written until the first sync has completed')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) <> 'local'
      AND (SELECT value FROM setting WHERE key = 'active_store_id') IS NULL;

    SELECT RAISE(ABORT, 'fieldsync: central data is read-only on a remote site; change it on the central server')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) IN ('central', 'central_store')
       OR ((SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'name'
           AND (json_extract(OLD.data, '$.type') IS NOT 'patient'
                OR json_extract(NEW.data, '$.type') IS NOT 'patient'));

    SELECT RAISE(ABORT, 'fieldsync: messages cannot be edited once created')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'message';

    SELECT RAISE(ABORT, 'fieldsync: users received from the central are read-only here')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'user' AND OLD.origin <> 'local';

    -- Both the stored row and the new one must belong to the active store: an edit
    -- can neither take a record over nor give it away.
    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: this site holds a read-only copy')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) IN ('store', 'patient', 'name')
      AND ((SELECT CASE WHEN r.parent_table IS NULL
                        THEN json_extract(OLD.data, '$.' || r.owner_field)
                        ELSE (SELECT json_extract(p.data, '$.' || r.parent_field) FROM record p
                              WHERE p.table_name = r.parent_table
                                AND p.record_id = json_extract(OLD.data, '$.' || r.owner_field))
                   END
            FROM registry r WHERE r.table_name = OLD.table_name)
           IS NOT (SELECT value FROM setting WHERE key = 'active_store_id')
        OR (SELECT CASE WHEN r.parent_table IS NULL
                        THEN json_extract(NEW.data, '$.' || r.owner_field)
                        ELSE (SELECT json_extract(p.data, '$.' || r.parent_field) FROM record p
                              WHERE p.table_name = r.parent_table
                                AND p.record_id = json_extract(NEW.data, '$.' || r.owner_field))
                   END
            FROM registry r WHERE r.table_name = OLD.table_name)
           IS NOT (SELECT value FROM setting WHERE key = 'active_store_id'));

    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: name_store_join may only join a patient homed here to the active store')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'name_store_join'
      AND NOT (json_extract(OLD.data, '$.store_ID') IS (SELECT value FROM setting WHERE key = 'active_store_id')
               AND json_extract(NEW.data, '$.store_ID') IS (SELECT value FROM setting WHERE key = 'active_store_id')
               AND EXISTS (SELECT 1 FROM record n
                           WHERE n.table_name = 'name'
                             AND n.record_id = json_extract(NEW.data, '$.name_ID')
                             AND json_extract(n.data, '$.type') = 'patient'
                             AND json_extract(n.data, '$.supplying_store_id')
                                 IS (SELECT value FROM setting WHERE key = 'active_store_id')));
END;

CREATE TRIGGER record_guard_delete BEFORE DELETE ON record
WHEN (SELECT applying FROM sync_guard) = 0
BEGIN
    SELECT RAISE(ABORT, 'fieldsync: unknown table: local writes need a table fieldsync knows (see the registry in the README)')
    WHERE NOT EXISTS (SELECT 1 FROM registry WHERE table_name = OLD.table_name);

    SELECT RAISE(ABORT, 'fieldsync: site not initialised: only local data may be written until the first sync has completed')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) <> 'local'
      AND (SELECT value FROM setting WHERE key = 'active_store_id') IS NULL;

    SELECT RAISE(ABORT, 'fieldsync: central data is read-only on a remote site; change it on the central server')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) IN ('central', 'central_store')
       OR ((SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'name'
           AND json_extract(OLD.data, '$.type') IS NOT 'patient');

    SELECT RAISE(ABORT, 'fieldsync: messages cannot be deleted once created')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'message';

    SELECT RAISE(ABORT, 'fieldsync: users received from the central are read-only here')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'user' AND OLD.origin <> 'local';

    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: this site holds a read-only copy')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) IN ('store', 'patient', 'name')
      AND (SELECT CASE WHEN r.parent_table IS NULL
                       THEN json_extract(OLD.data, '$.' || r.owner_field)
                       ELSE (SELECT json_extract(p.data, '$.' || r.parent_field) FROM record p
                             WHERE p.table_name = r.parent_table
                               AND p.record_id = json_extract(OLD.data, '$.' || r.owner_field))
                  END
           FROM registry r WHERE r.table_name = OLD.table_name)
          IS NOT (SELECT value FROM setting WHERE key = 'active_store_id');

    SELECT RAISE(ABORT, 'fieldsync: record belongs to another store: name_store_join may only join a patient homed here to the active store')
    WHERE (SELECT kind FROM registry WHERE table_name = OLD.table_name) = 'name_store_join'
      AND json_extract(OLD.data, '$.store_ID') IS NOT (SELECT value FROM setting WHERE key = 'active_store_id');
END;

-- Capture: one outbox entry per record; each change moves it to the back (new seq)
-- and bumps its version; push_key (schema 2) holds its place in the push order;
-- an entry already sent goes back to pending, a rejected one stays rejected. A rejected entry stays rejected until an operator retries.
CREATE TRIGGER record_capture_insert AFTER INSERT ON record
WHEN (SELECT applying FROM sync_guard) = 0
 AND (SELECT kind FROM registry WHERE table_name = NEW.table_name) <> 'local'
BEGIN
    UPDATE counter SET value = value + 1 WHERE name = 'outbox_seq';
    INSERT INTO outbox (table_name, record_id, seq, action, version, push_key)
    VALUES (NEW.table_name, NEW.record_id,
            (SELECT value FROM counter WHERE name = 'outbox_seq'), 'Update', 1,
            coalesce((SELECT rank FROM registry WHERE table_name = NEW.table_name), 10000))
    ON CONFLICT (table_name, record_id) DO UPDATE
       SET seq = excluded.seq, action = 'Update', version = outbox.version + 1, push_key = excluded.push_key,
           state = CASE WHEN outbox.state = 'rejected' THEN 'rejected' ELSE 'pending' END;
END;

CREATE TRIGGER record_capture_update AFTER UPDATE ON record
WHEN (SELECT applying FROM sync_guard) = 0
 AND (SELECT kind FROM registry WHERE table_name = NEW.table_name) <> 'local'
 AND NEW.data IS NOT OLD.data
BEGIN
    UPDATE counter SET value = value + 1 WHERE name = 'outbox_seq';
    INSERT INTO outbox (table_name, record_id, seq, action, version, push_key)
    VALUES (NEW.table_name, NEW.record_id,
            (SELECT value FROM counter WHERE name = 'outbox_seq'), 'Update', 1,
            coalesce((SELECT rank FROM registry WHERE table_name = NEW.table_name), 10000))
    ON CONFLICT (table_name, record_id) DO UPDATE
       SET seq = excluded.seq, action = 'Update', version = outbox.version + 1, push_key = excluded.push_key,
           state = CASE WHEN outbox.state = 'rejected' THEN 'rejected' ELSE 'pending' END;
END;

CREATE TRIGGER record_capture_delete AFTER DELETE ON record
WHEN (SELECT applying FROM sync_guard) = 0
 AND (SELECT kind FROM registry WHERE table_name = OLD.table_name) <> 'local'
BEGIN
    UPDATE counter SET value = value + 1 WHERE name = 'outbox_seq';
    INSERT INTO outbox (table_name, record_id, seq, action, version, push_key)
    VALUES (OLD.table_name, OLD.record_id,
            (SELECT value FROM counter WHERE name = 'outbox_seq'), 'Delete', 1,
            20000 - coalesce((SELECT rank FROM registry WHERE table_name = OLD.table_name), 10000))
    ON CONFLICT (table_name, record_id) DO UPDATE
       SET seq = excluded.seq, action = 'Delete', version = outbox.version + 1, push_key = excluded.push_key,
           state = CASE WHEN outbox.state = 'rejected' THEN 'rejected' ELSE 'pending' END;
END;
