"""Remembered refusals: a leftover in inbound is not read again until it changes; it is still
counted and listed, and the memory survives the pruning of old scan DBs."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from functools import partial

from melodee_pipeline.samples import Tags, make_track, tag
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline_tests.conftest import age

_opened: list[str] | None = None  # set while a test records opens


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only inside opened_during()


def opened_during(inbound, fn) -> tuple[object, list[str]]:
    """Run fn with workers=1 scans in this process; return its result and the inbound files it opened."""
    global _opened
    _opened = []
    try:
        result = fn()
        return result, sorted(os.path.basename(p) for p in _opened if p.startswith(str(inbound)))
    finally:
        _opened = None


def refused(scan_db: str) -> dict[str, tuple]:
    conn = sqlite3.connect(scan_db)
    return {os.path.basename(p): (reason, since) for p, reason, since in
            conn.execute("SELECT file_path, validation_error, refused_since FROM scanned_files WHERE is_valid = 0")}


def created_at(scan_db: str) -> int:
    return sqlite3.connect(scan_db).execute("SELECT created_at FROM scanned_files LIMIT 1").fetchone()[0]


def leftovers(tmp_path):
    inbound = tmp_path / "in"
    make_track(str(inbound / "good.mp3"), Tags("A", "B", "T"))
    make_track(str(inbound / "no_title.flac"), Tags("A", "B"), seed=1)
    (inbound / "junk.ogg").write_text("not audio" * 50)
    age(inbound)
    return inbound


def test_unchanged_leftover_is_not_read_again_but_still_counted_and_listed(tmp_path):
    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    first, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"]
    assert (first.files, first.valid, first.invalid, first.unchanged) == (3, 1, 2, 0)
    time.sleep(1.1)  # a later second, so "since" tells the scans apart
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3"]
    assert (second.files, second.valid, second.invalid, second.unchanged) == (3, 1, 2, 2)
    assert refused(second.scan_db) == refused(first.scan_db)
    reason, since = refused(second.scan_db)["no_title.flac"]
    assert (reason, since) == ("missing title", created_at(first.scan_db))
    row = sqlite3.connect(second.scan_db).execute(
        "SELECT file_hash, file_size, modified_time FROM scanned_files WHERE file_path LIKE '%no_title.flac'").fetchone()
    st = os.stat(inbound / "no_title.flac")
    assert len(row[0]) == 64 and row[1:] == (st.st_size, int(st.st_mtime))


def test_a_changed_leftover_is_read_again_at_once(tmp_path):
    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    scan()
    tag(str(inbound / "no_title.flac"), Tags(title="Now Titled"))  # new bytes: the admin fixed the tags
    past = time.time() - 3600
    os.utime(inbound / "no_title.flac", (past, past))
    os.utime(inbound / "junk.ogg", (past - 60, past - 60))  # same bytes, another mtime
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"]
    assert (second.valid, second.invalid, second.unchanged) == (2, 1, 0)
    assert refused(second.scan_db) == {"junk.ogg": (refused(second.scan_db)["junk.ogg"][0], created_at(second.scan_db))}
    _, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "no_title.flac"]  # junk.ogg unchanged again
    os.chmod(inbound / "junk.ogg", 0o600)  # only its ctime changes (as when a chmod makes a file readable)
    _, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"]


def test_refusal_memory_survives_pruning_and_forgets_what_is_gone(tmp_path):
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0, keep_scan_dbs=1)
    scan()
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3"] and len(list(scans.glob("scan_*.db"))) == 1
    assert (scans / "refusals.db").exists()
    (inbound / "junk.ogg").unlink()
    third = scan()
    assert third.unchanged == 1
    remembered = sqlite3.connect(scans / "refusals.db").execute("SELECT path_bytes, reason FROM refusals").fetchall()
    assert remembered == [(os.fsencode(inbound / "no_title.flac"), "missing title")]
