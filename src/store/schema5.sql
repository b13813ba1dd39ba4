-- fieldsync store, schema version 5 (issue 26: the shared database).
--
-- 1. The agent's own state leaves this file for `<database>.state`, which only
--    the agent's user may write (moved there by the Rust upgrade step before
--    this runs): the buffer, the bundle bookkeeping and the counters no
--    trigger reads. `setting` keeps only what the triggers read (the active
--    store, the dispensary hold) and copies for apps to read (the last
--    attempt); the agent never trusts what it reads back from here.
-- 2. `record_check`: for every record as the site last synced it (received,
--    or pushed and confirmed), whether the site may edit that version and a
--    MAC over table, id, that answer and the data, keyed by a secret in the
--    agent's state file (and a MAC over the answer alone, so it can be trusted
--    once the data has changed). A record whose MAC no longer matches was
--    changed since it was synced: through the triggers (then it has an outbox
--    entry) or behind them (triggers switched off, the outbox edited); the
--    agent finds the latter, judges them by the rules, and queues them or has
--    them restored (`store::check`). Nothing of it is trusted without its MAC.
CREATE TABLE record_check (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    -- 1: the site may edit the synced version (its own store's data, its
    -- patients, a created row it made); 0: a read-only copy
    mine       INTEGER NOT NULL,
    mine_mac   INTEGER NOT NULL,
    mac        INTEGER NOT NULL,
    PRIMARY KEY (table_name, record_id)
) WITHOUT ROWID;

DROP TABLE IF EXISTS buffer;
DROP TABLE IF EXISTS bundle_sent;
DROP TABLE IF EXISTS bundle_ack;
DELETE FROM counter WHERE name <> 'outbox_seq';
