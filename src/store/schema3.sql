-- fieldsync store, schema version 3 (issue 18: ownership for every writer).
--
-- 1. `record` gets a CHECK every writer meets, the agent included: the data is
--    TEXT (not a BLOB, which SQLite's JSON functions also read), a JSON object,
--    with an "ID" that is text and equals record_id. A CHECK passes when it is
--    NULL, so the ID test is wrapped in coalesce(…, 0): a row without "ID" fails.
--    Rows already stored that fail it are moved to record_quarantine (shown by
--    `fieldsync status`), and their outbox entries are set aside — never pushed as
--    deletes of rows that merely failed to move.
-- 2. `local_edit`: the records written on this device and not replaced by a
--    received copy since. Transfer numbering takes only received documents
--    (§7.5 rev 2), and received users stay read-only, by this table.
-- 3. `resave`: a scratch mark the insert trigger sets while an INSERT OR REPLACE
--    or upsert writes a row back unchanged (an ORM's ordinary save of a received
--    record), so the capture leaves it as it was: nothing queued, still received.
-- 4. The outbox gains state 'held': a dispensary store's transactions kept on the
--    site while its "include transactions in sync" preference is off (§9.7).
-- 5. `sync_guard` goes: the agent's own writes now run with the rules dropped
--    inside its own transaction, which no other connection can see; nothing is
--    left that another program could set to switch the rules off.

CREATE TABLE record_v3 (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT NOT NULL CHECK (
        typeof(data) = 'text' AND json_valid(data) AND json_type(data) = 'object'
        AND coalesce(json_type(data, '$.ID') = 'text' AND json_extract(data, '$.ID') = record_id, 0)),
    -- 'local' when written on this device, 'sync' when written by integration
    -- (informational: rules use local_edit).
    origin     TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'sync')),
    PRIMARY KEY (table_name, record_id)
);

CREATE TABLE record_quarantine (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       BLOB,
    reason     TEXT NOT NULL,
    PRIMARY KEY (table_name, record_id)
);

INSERT INTO record_v3 (table_name, record_id, data, origin)
SELECT table_name, record_id, data, origin FROM record
WHERE typeof(data) = 'text' AND json_valid(data) AND json_type(data) = 'object'
  AND coalesce(json_type(data, '$.ID') = 'text' AND json_extract(data, '$.ID') = record_id, 0);

INSERT INTO record_quarantine (table_name, record_id, data, reason)
SELECT table_name, record_id, data,
       'set aside by the schema 3 upgrade: not a JSON object with an "ID" equal to its record id'
FROM record
WHERE NOT (typeof(data) = 'text' AND json_valid(data) AND json_type(data) = 'object'
  AND coalesce(json_type(data, '$.ID') = 'text' AND json_extract(data, '$.ID') = record_id, 0));

DROP TABLE record;
ALTER TABLE record_v3 RENAME TO record;

CREATE TABLE outbox_v3 (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    action     TEXT NOT NULL CHECK (action IN ('Update', 'Delete')),
    version    INTEGER NOT NULL,
    -- pending → sent (confirmed, deleted at the end of the push); held: kept on
    -- the site (§9.7) until released; rejected waits for an operator.
    state      TEXT NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'sent', 'rejected', 'held')),
    reason     TEXT,
    push_key   INTEGER NOT NULL DEFAULT 10000,
    PRIMARY KEY (table_name, record_id)
);
INSERT INTO outbox_v3 SELECT table_name, record_id, seq, action, version, state, reason, push_key FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_push ON outbox (state, push_key, seq);

UPDATE outbox SET state = 'rejected',
       reason = 'invalid: set aside by the schema 3 upgrade (see record_quarantine)'
WHERE (table_name, record_id) IN (SELECT table_name, record_id FROM record_quarantine);

CREATE TABLE local_edit (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    PRIMARY KEY (table_name, record_id)
) WITHOUT ROWID;
INSERT INTO local_edit SELECT table_name, record_id FROM record WHERE origin = 'local';

CREATE TABLE resave (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    -- whether the row was in local_edit before the statement
    was_local  INTEGER NOT NULL,
    PRIMARY KEY (table_name, record_id)
) WITHOUT ROWID;

DROP TABLE sync_guard;
