-- fieldsync's own state file (<database>.state), version 1 (issue 26).
-- Only the agent's user may read or write this file: what it holds steers the
-- sync (cursors, initialisation, received rows waiting to be applied) and
-- must never be something the clinic's app wrote. It is a file apart from
-- the shared database, so every write that must follow one in the shared
-- file is its own transaction, committed after that one (a crash between
-- them repeats idempotent work: a page pulled again, a row applied again).

-- The agent's bookkeeping by key: identity, initialisation state, cursors,
-- what it learned of the link and the central, the last attempt, the key of
-- the record checks.
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Counters that must never go backwards and that no trigger needs: receipt
-- order of the buffer, numbers given to received transfers.
CREATE TABLE IF NOT EXISTS counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter VALUES ('receipt_seq', 0), ('si_number', 0), ('response_number', 0);

-- Received records that could not be applied where they arrived (a line
-- before its header) or cannot be read (§7.4). Key (table, record, merge_drop):
-- a newer receipt replaces the older one; a merge never overwrites an upsert.
CREATE TABLE IF NOT EXISTS buffer (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    merge_drop TEXT NOT NULL DEFAULT '',
    action     TEXT NOT NULL CHECK (action IN ('upsert', 'delete', 'merge', 'invalid')),
    data       TEXT,
    rank       INTEGER NOT NULL,
    received   INTEGER NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    error      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, record_id, merge_drop)
);
CREATE INDEX IF NOT EXISTS buffer_order ON buffer (action, rank, received);

-- USB bundles: which outbox entry versions went out in which bundle, and which
-- queue entries applied from the central's bundles await acknowledgement.
CREATE TABLE IF NOT EXISTS bundle_sent (
    bundle BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (bundle, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bundle_ack (
    sync_out_id TEXT PRIMARY KEY,
    bundle      BLOB
) WITHOUT ROWID;
