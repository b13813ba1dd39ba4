-- fieldsync store, schema version 1.
-- Idempotency lives here: every table that receives re-deliverable data is keyed so
-- that a second delivery of the same thing replaces, never adds.

-- Every legacy row this site holds, whatever its table, as the JSON object the wire
-- carries (legacy keys such as ID, store_ID). Keyed by (table, ID): a pulled row
-- upserts, so receiving it twice is harmless.
CREATE TABLE record (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT NOT NULL CHECK (json_valid(data) AND json_type(data) = 'object'
                                    AND json_extract(data, '$.ID') = record_id),
    -- 'local' when written on this device, 'sync' when written by integration.
    origin     TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'sync')),
    PRIMARY KEY (table_name, record_id)
);

-- Key/value settings: central URL, site name, password digest, hardware id, site
-- identity learned from the central, cursors, initialisation state.
CREATE TABLE setting (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Monotonic counters. outbox_seq orders local changes without trusting the clock.
CREATE TABLE counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counter VALUES ('outbox_seq', 0), ('receipt_seq', 0), ('si_number', 0),
                           ('response_number', 0);

-- One row, applying = 1 only inside the agent's integration transaction. Other
-- connections can never observe 1 (it is reset before commit and rolled back with
-- the transaction), so triggers below treat every outside write as a local edit.
CREATE TABLE sync_guard (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    applying INTEGER NOT NULL CHECK (applying IN (0, 1))
);
INSERT INTO sync_guard VALUES (1, 0);

-- The outbox (protocol §7.2): at most one entry per record, so ten edits push once
-- and insert-then-delete pushes one Delete. seq moves to the back on every change;
-- version lets a push delete only entries it actually sent (an edit during the
-- push bumps it and the entry stays).
CREATE TABLE outbox (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    action     TEXT NOT NULL CHECK (action IN ('Update', 'Delete')),
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'rejected')),
    reason     TEXT,
    PRIMARY KEY (table_name, record_id)
);

-- The sync buffer (§7.4): pulled rows waiting for integration. Key (table, record,
-- merge_drop): a newer receipt of a record replaces the older one; a merge is keyed
-- by both ids (merge_drop non-empty) so it never overwrites an upsert.
CREATE TABLE buffer (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    merge_drop TEXT NOT NULL DEFAULT '',
    -- 'invalid': a received record that cannot be understood (kept, visible in
    -- status, never integrated, replaced if a good copy arrives)
    action     TEXT NOT NULL CHECK (action IN ('upsert', 'delete', 'merge', 'invalid')),
    data       TEXT,
    rank       INTEGER NOT NULL,
    -- receipt order from counter receipt_seq, never the clock
    received   INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    error      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, record_id, merge_drop)
);
CREATE INDEX buffer_order ON buffer (action, rank, received);

-- The registry (src/registry.rs) copied in, so the triggers can classify rows.
CREATE TABLE registry (
    table_name   TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    owner_field  TEXT,
    parent_table TEXT,
    parent_field TEXT,
    -- integration and push order (§7.3, §7.4)
    rank         INTEGER NOT NULL
);
