"""The ledger's schema: tables, column migrations, data migrations, and the state lists as SQL."""

from __future__ import annotations

from enum import StrEnum

from mirror_scan.kinds import DECIDED_STATUSES, EXPORTED_STATES, FINISHED_STEPS, MOVING_STATES

SCHEMA_VERSION = 11  # 10: holds (legal holds on items: purge refuses them); 11: sealed items (store/sealing.py)
# A writer waits this long for another writer's transaction. Transactions last milliseconds (none is ever
# held across a subprocess, a network call or a wait for work), so running out of it means something
# is wrong with another process, and is reported as "busy", never as damage.
BUSY_TIMEOUT_MS = 15_000
# Every process checks the pages of the database once before using it (SQLite's quick_check reads the
# whole file, about 1 GB/s): in full up to this size, above it the small tables that hold the quarantine
# index, the allowlist and the move journal (the daemon checks the whole file once a day).
FULL_PAGE_CHECK_MAX_BYTES = 2 << 30
CRITICAL_TABLES = ("meta", "quarantine", "moves", "allowlist", "followups", "hash_lists", "attributions")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompt_sets (id TEXT PRIMARY KEY, prompts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    frames INTEGER NOT NULL,
    prompt_set TEXT NOT NULL REFERENCES prompt_sets(id),
    sims BLOB NOT NULL,
    embedding BLOB NOT NULL,
    created REAL NOT NULL,
    UNIQUE (sha256, model_id)
);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    root BLOB,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    status TEXT NOT NULL,
    verdict TEXT,
    reason TEXT,
    result_id INTEGER REFERENCES results(id),
    model_id TEXT,
    policy_id TEXT,
    severity REAL,
    format TEXT,
    first_seen REAL NOT NULL,
    scanned_at REAL,
    decided_at REAL,
    action TEXT,
    acted_at REAL
);
CREATE INDEX IF NOT EXISTS files_verdict ON files (verdict);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE TABLE IF NOT EXISTS picture_hashes (
    sha256 TEXT NOT NULL,
    frame INTEGER NOT NULL,
    md5 TEXT,
    pdq TEXT,
    quality INTEGER,
    variants TEXT,
    PRIMARY KEY (sha256, frame)
);
CREATE TABLE IF NOT EXISTS video_hashes (
    sha256 TEXT NOT NULL,
    idx INTEGER NOT NULL,
    pdq TEXT NOT NULL,
    quality INTEGER NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (sha256, idx)
);
CREATE TABLE IF NOT EXISTS hash_lists (
    name TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    imported REAL NOT NULL,
    source TEXT,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hash_list_entries (
    list TEXT NOT NULL REFERENCES hash_lists(name),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    note TEXT,
    source TEXT
);
CREATE INDEX IF NOT EXISTS hash_list_entries_list ON hash_list_entries (list);
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    config TEXT NOT NULL,
    action TEXT NOT NULL,
    checkpoint TEXT,
    state TEXT,
    fetched REAL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS hash_pushes (
    target TEXT NOT NULL,
    value TEXT NOT NULL,
    content_id TEXT,
    pushed REAL NOT NULL,
    PRIMARY KEY (target, value)
);
CREATE TABLE IF NOT EXISTS allowlist (sha256 TEXT PRIMARY KEY, added REAL NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    dir BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    original BLOB NOT NULL,
    mirror_root BLOB NOT NULL,
    remote TEXT,
    key TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_sha256 ON quarantine (sha256);
CREATE INDEX IF NOT EXISTS quarantine_original ON quarantine (original);
CREATE TABLE IF NOT EXISTS attributions (item TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS followups (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    plan INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (item, action, target)
);
CREATE INDEX IF NOT EXISTS followups_due ON followups (state, next_try);
CREATE TABLE IF NOT EXISTS mirrors (root BLOB PRIMARY KEY, remote TEXT NOT NULL, recorded REAL NOT NULL,
                                    by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moves (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    kind TEXT NOT NULL,
    step TEXT NOT NULL,
    target BLOB,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    decision TEXT NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS decisions_item ON decisions (item);
CREATE TABLE IF NOT EXISTS item_history (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL,
    at REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS item_history_item ON item_history (item);
CREATE TABLE IF NOT EXISTS item_objects (
    item TEXT NOT NULL,
    key TEXT NOT NULL,
    role TEXT NOT NULL,
    variant TEXT,
    path BLOB NOT NULL,
    sha256 TEXT,
    size INTEGER,
    state TEXT NOT NULL,
    PRIMARY KEY (item, key)
);
CREATE INDEX IF NOT EXISTS item_objects_key ON item_objects (key);
CREATE TABLE IF NOT EXISTS holds (
    item TEXT PRIMARY KEY,
    until REAL,
    why TEXT NOT NULL,
    who TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS console_users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS console_tokens (name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
                                           created REAL NOT NULL, last_used REAL);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash TEXT PRIMARY KEY,
    who TEXT NOT NULL,
    kind TEXT NOT NULL,
    admin INTEGER NOT NULL,
    communities TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
"""

# Columns added after schema 1, added in place to older databases (ALTER TABLE ... ADD COLUMN).
MIGRATIONS = {
    # schema 9: pict-rs's hash of the item's upload (its variants and motion still are its companions)
    "quarantine": {
        "seen_count": "INTEGER NOT NULL DEFAULT 1",
        "last_seen": "REAL",
        "pictrs_hash": "TEXT",
        "pictrs_aliases": "TEXT",  # JSON list: the names the upload had in pict-rs (its URLs in Lemmy)
        "meta_behind": "INTEGER NOT NULL DEFAULT 0",  # meta.json has not caught up with the ledger yet
        "objects_pending": "INTEGER NOT NULL DEFAULT 0",  # the upload's objects are still to be found
        # schema 11: the plaintext's md5 (the bucket's ETag check; a sealing process cannot read it back),
        # and for a sealed item its recipient and the sha256 of data.age as written (store/sealing.py)
        "md5": "TEXT",
        "sealed_to": "TEXT",
        "sealed_sha256": "TEXT",
    },
    "item_objects": {"md5": "TEXT", "sealed_sha256": "TEXT"},  # schema 11: as the item's own
    "moves": {"method": "TEXT", "decided_by": "TEXT"},  # schema 9: who asked for a restore
    # schema 3: what the decode said about the bytes (row labels, notes such as "partial", caps hit)
    "results": {"detail": "TEXT", "partial": "INTEGER NOT NULL DEFAULT 0"},
    # schema 4: objects scanned in their bucket (`bucket scan`): origin 'bucket', path NAME:bucket/key
    "files": {"error_count": "INTEGER NOT NULL DEFAULT 0", "etag": "TEXT", "origin": "TEXT"},
    # schema 5: each frame's 8 rotations and mirror images (space-separated PDQ), so a decision from the
    # ledger (rescore, a copy, a list imported later) matches lists exactly as the scan did
    "picture_hashes": {"variants": "TEXT"},
}

# Data migrations, run once when a database older than the key is opened.
DATA_MIGRATIONS = {
    # schema 6: one spelling for "upstream pending" (files.action had a space, quarantine.state an underscore)
    6: "UPDATE files SET action='upstream_pending' WHERE action='upstream pending'",
}


def _sql_list(values: tuple[StrEnum, ...]) -> str:
    """An SQL list of fixed enum values (never user text): the states are spelled once, here."""
    return "(" + ", ".join(f"'{value.value}'" for value in values) + ")"


DECIDED_SQL = _sql_list(DECIDED_STATUSES)
EXPORTED_SQL = _sql_list(EXPORTED_STATES)
MOVING_SQL = _sql_list(MOVING_STATES)
FINISHED_SQL = _sql_list(FINISHED_STEPS)
