#!/usr/bin/env python3
"""A clinic app's use of the fieldsync store, with Python's standard sqlite3 only.

Records a stock count (a stocktake and one line) for the active store, shows it
queued for the central, shows that an edit of central data (an item) is
refused with fieldsync's message, and reads through the typed views.

    python3 examples/clinic_app.py /var/lib/fieldsync/fieldsync.sqlite ITEM_ID

The README's "For app developers" section explains each step.
"""
import json
import sqlite3
import sys
import uuid


def main(db_path, item_id):
    # isolation_level=None: we write BEGIN IMMEDIATE / COMMIT ourselves, so the
    # write lock is taken at the start and the transaction is ours alone.
    db = sqlite3.connect(db_path, isolation_level=None)
    # The sync writes in short transactions; wait for it instead of failing.
    db.execute("PRAGMA busy_timeout = 30000")

    store = db.execute(
        "SELECT value FROM setting WHERE key = 'active_store_id'").fetchone()
    if not store or not store[0]:
        print("not initialised: run the first sync before writing store data")
        return 3
    store = store[0]

    count_id = uuid.uuid4().hex.upper()
    line_id = uuid.uuid4().hex.upper()
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT INTO record (table_name, record_id, data) VALUES ('Stock_take', ?, ?)",
        (count_id, json.dumps({"ID": count_id, "store_ID": store, "status": "sg",
                               "Description": "monthly count", "serial_number": 1})))
    db.execute(
        "INSERT INTO record (table_name, record_id, data) VALUES ('Stock_take_lines', ?, ?)",
        (line_id, json.dumps({"ID": line_id, "stock_take_ID": count_id, "item_ID": item_id,
                              "snapshot_qty": 40, "stock_take_qty": 38})))
    db.execute("COMMIT")
    print(f"recorded stock count {count_id} with line {line_id}")

    for table, rid, action, state in db.execute(
            "SELECT table_name, record_id, action, state FROM outbox "
            "WHERE record_id IN (?, ?) ORDER BY seq", (count_id, line_id)):
        print(f"queued: {table} {rid} {action} {state}")

    try:
        db.execute(
            "UPDATE record SET data = json_set(data, '$.item_name', 'renamed here') "
            "WHERE table_name = 'item' AND record_id = ?", (item_id,))
        print("edit of central data was accepted (it must not be)")
        return 1
    except sqlite3.IntegrityError as e:
        print(f"refused: {e}")

    qty, counted = db.execute(
        "SELECT snapshot_qty, stock_take_qty FROM v_Stock_take_lines WHERE ID = ?",
        (line_id,)).fetchone()
    print(f"view: snapshot {qty:g}, counted {counted:g}")
    waiting = db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
    print(f"waiting to send: {waiting}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: clinic_app.py DATABASE ITEM_ID", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
