-- fieldsync store, schema version 2.
-- 1. The push order lives in the outbox row: push_key = rank for upserts,
--    20000 - rank for deletes (after every upsert, children first), so
--    "ORDER BY push_key, seq LIMIT n" reads the next batch from an index instead
--    of sorting the whole outbox per batch (quadratic on a large outbox).
-- 2. State 'sent': a confirmed batch only marks its entries (rows and the push
--    index are clustered by seq, so that touches few pages); the push deletes
--    them all in one transaction at its end. Deleting per batch rewrote the
--    (table, ID) index, whose keys are random, once per batch: hundreds of MB
--    written to the SD card for a 100,000-record push.
CREATE TABLE outbox_v2 (
    table_name TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    action     TEXT NOT NULL CHECK (action IN ('Update', 'Delete')),
    version    INTEGER NOT NULL,
    -- pending → sent (confirmed by the central, deleted at the end of the push);
    -- an edit puts a sent entry back to pending; rejected waits for an operator.
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'rejected')),
    reason     TEXT,
    push_key   INTEGER NOT NULL DEFAULT 10000,
    PRIMARY KEY (table_name, record_id)
);
INSERT INTO outbox_v2 (table_name, record_id, seq, action, version, state, reason, push_key)
SELECT table_name, record_id, seq, action, version, state, reason,
       CASE WHEN action = 'Delete'
            THEN 20000 - coalesce((SELECT rank FROM registry r WHERE r.table_name = outbox.table_name), 10000)
            ELSE coalesce((SELECT rank FROM registry r WHERE r.table_name = outbox.table_name), 10000) END
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_push ON outbox (state, push_key, seq);
