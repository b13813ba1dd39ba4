-- Schema 4 (issue 14): which outbox entries went out in which USB bundle, so the
-- central's confirmation of a bundle removes exactly those versions (an entry
-- edited after the export has a new seq and stays).
CREATE TABLE bundle_sent (
    bundle BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (bundle, seq)
) WITHOUT ROWID;
-- Queue entries applied from the central's bundles: acknowledged by the next
-- bundle to the central (`bundle` names it), dropped when the central confirms
-- that bundle or the link acknowledges them.
CREATE TABLE bundle_ack (
    sync_out_id TEXT PRIMARY KEY,
    bundle      BLOB
) WITHOUT ROWID;
