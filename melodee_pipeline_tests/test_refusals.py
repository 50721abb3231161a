"""Remembered refusals: a leftover in inbound is not read again until it changes; it is still
counted and listed, and the memory survives the pruning of old scan DBs."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from functools import partial
from pathlib import Path

import pytest

from melodee_pipeline.samples import Tags, make_track, tag
from melodee_pipeline.scan import refusals, scanner
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline_tests import conftest
from melodee_pipeline_tests.conftest import age


def opened_during(inbound, fn) -> tuple[object, list[str]]:
    """Run fn with workers=1 scans in this process; return its result and the inbound files it opened."""
    result, opened = conftest.opened_during(fn)
    return result, sorted(os.path.basename(p) for p in opened if p.startswith(str(inbound)))


def refused(scan_db: str) -> dict[str, tuple]:
    conn = sqlite3.connect(scan_db)
    return {os.path.basename(p): (reason, since) for p, reason, since in
            conn.execute("SELECT file_path, validation_error, refused_since FROM scanned_files WHERE is_valid = 0")}


def created_at(scan_db: str) -> int:
    return sqlite3.connect(scan_db).execute("SELECT created_at FROM scanned_files LIMIT 1").fetchone()[0]


@pytest.fixture(params=["in memory", "one query a file"])
def memory(request, monkeypatch):
    """Up to IN_MEMORY_MAX remembered refusals are looked up in a dict; beyond, one query a file."""

    if request.param == "one query a file":
        monkeypatch.setattr(refusals, "IN_MEMORY_MAX", -1)


def leftovers(tmp_path):
    inbound = tmp_path / "in"
    make_track(str(inbound / "good.mp3"), Tags("A", "B", "T"))
    make_track(str(inbound / "no_title.flac"), Tags("A", "B"), seed=1)
    (inbound / "junk.ogg").write_text("not audio" * 50)
    age(inbound)
    return inbound


def test_unchanged_leftover_is_not_read_again_but_still_counted_and_listed(tmp_path, memory):
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
    assert len(row[0]) == 64 and row[1:] == (st.st_size, st.st_mtime_ns // 10**9)


def test_a_changed_leftover_is_read_again_at_once(tmp_path, memory):
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


IDENTITY = ("file_path", "path_bytes", "file_size", "file_hash", "modified_time", "is_valid", "validation_error",
            "mtime_ns", "inode", "ctime_ns", "refused_since")


def rows(scan_db: str, columns: tuple[str, ...]) -> dict[bytes, tuple]:
    conn = sqlite3.connect(scan_db)
    return {row[1]: row for row in conn.execute(f"SELECT {', '.join(columns)} FROM scanned_files WHERE is_valid = 0")}


def test_a_recalled_row_is_the_refusal_as_first_written_whatever_the_name(tmp_path, memory):
    """A recalled leftover's row is copied from what is remembered, not built again: it must say
    what the scan that read the file said, for a name that is not UTF-8 too."""
    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    odd = os.path.join(os.fsencode(inbound), b"caf\xe9 \xff.mp3")
    with open(odd, "wb") as f:
        f.write(b"\xff\xfb not really audio " * 40)
    past = time.time() - 3600
    os.utime(odd, (past, past))
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    first = scan()
    time.sleep(1.1)
    second = scan()
    assert second.unchanged == 3 and second.files == first.files == 4
    assert rows(second.scan_db, IDENTITY) == rows(first.scan_db, IDENTITY)
    assert rows(second.scan_db, IDENTITY)[odd][0] == f"{inbound}/caf\\xe9 \\xff.mp3"
    # Whole: its tags as read then, and the scan that wrote it (it was not read again).
    assert whole_rows(second.scan_db) == whole_rows(first.scan_db)
    assert whole_rows(second.scan_db)[os.fsencode(inbound / "no_title.flac")]["artist"] == "A"
    assert {r["created_at"] for r in whole_rows(second.scan_db).values()} == {created_at(first.scan_db)}


def whole_rows(scan_db: str) -> dict[bytes, dict]:
    conn = sqlite3.connect(scan_db)
    conn.row_factory = sqlite3.Row
    return {r["path_bytes"]: dict(r) for r in conn.execute("SELECT * FROM scanned_files WHERE is_valid = 0")}


@pytest.mark.parametrize("name", ["refusals.db", "refusals-v2.db", "refusals-v3.db"])
def test_refusals_an_older_version_remembered_are_left_to_it(tmp_path, name):
    """An older version's file (v1: before file_path and modified_time; v2: reasons that repeat
    the file's name; v3: a table of its own, not a scan DB) is neither read nor changed: that version, rolled back to, still works with
    it. This one reads those files once."""
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scans.mkdir()
    old = sqlite3.connect(scans / name)
    v2 = ", file_path TEXT NOT NULL, modified_time INTEGER" if name != "refusals.db" else ""
    old.execute("CREATE TABLE refusals (path_bytes BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
                "ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, reason TEXT NOT NULL, file_hash TEXT NOT NULL, "
                f"first_refused INTEGER NOT NULL{v2})")
    st = os.stat(inbound / "junk.ogg")
    old.execute(f"INSERT INTO refusals VALUES (?, ?, ?, ?, ?, 'corrupt or not audio: old', ?, 1{', ?, 1' if v2 else ''})",
                (os.fsencode(inbound / "junk.ogg"), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, "0" * 64,
                 *([str(inbound / "junk.ogg")] if v2 else [])))
    old.commit()
    old.close()
    before = (scans / name).read_bytes()
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    first, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"] and first.unchanged == 0
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3"] and second.unchanged == 2
    assert (scans / name).read_bytes() == before


def test_a_scan_that_ends_while_another_reads_takes_nothing_from_it(tmp_path, memory, monkeypatch):
    """What a scan recalls and the rows it keeps come from one copy of the remembered refusals:
    another scan of the same inbound (`scan-inbound` beside a run) may replace them meanwhile."""

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    first = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
    real = refusals.Refusals.finish

    def another_scan_first(self, *args):
        monkeypatch.setattr(refusals.Refusals, "finish", real)
        (inbound / "junk.ogg").unlink()
        other = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
        assert other.files == 2 and [os.path.basename(p) for p, _ in remembered(scans, inbound)] == [b"no_title.flac"]
        return real(self, *args)

    monkeypatch.setattr(refusals.Refusals, "finish", another_scan_first)
    second = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
    assert (second.files, second.invalid, second.unchanged) == (3, 2, 2)
    assert rows(second.scan_db, IDENTITY) == rows(first.scan_db, IDENTITY)


def test_inbounds_sharing_a_scan_db_directory_keep_their_own_memories(tmp_path):
    """`scan-inbound` of another folder, or a second install, into the same directory: each
    inbound's leftovers stay remembered."""
    inbound, other, scans = leftovers(tmp_path), tmp_path / "other", str(tmp_path / "scans")
    other.mkdir()
    (other / "bad.mp3").write_bytes(b"not audio" * 40)
    age(other)
    for expected in (0, 2):
        assert scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0).unchanged == expected
        scan_inbound(str(other), scans, workers=1, min_file_age_seconds=0)
    assert scan_inbound(str(other), scans, workers=1, min_file_age_seconds=0).unchanged == 1


def test_a_new_tag_reader_reads_the_leftovers_once_again(tmp_path, monkeypatch):
    """A refusal is the verdict of one mutagen and one version of our reading code: after an
    upgrade (a parser bug fixed), the leftovers are read once more, and the old memory goes."""
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    scan()
    assert scan().unchanged == 2
    old = memory_of(scans, inbound)
    monkeypatch.setattr(refusals, "READER", "mutagen 99.0; melodee-pipeline reader 2")
    upgraded, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"] and upgraded.unchanged == 0
    assert scan().unchanged == 2
    # The old reader's memory may be a second install's (another version, the same directory):
    # it goes once unused for a week, at the next write of this one.
    assert old.exists()
    os.utime(old, (time.time() - 8 * 86400, time.time() - 8 * 86400))
    (inbound / "junk.ogg").write_text("changed, still not audio")
    scan()
    assert not old.exists() and sorted(p.name for p in scans.glob(refusals.PREFIX + "*")) == [memory_of(scans, inbound).name]


def memory_of(scans, inbound) -> Path:
    return Path(refusals.memory_path(str(scans), str(inbound)))


def remembered(scans, inbound) -> list[tuple[bytes, str]]:
    """The remembered refusals of `inbound`: (path, reason) by path."""
    return sqlite3.connect(memory_of(scans, inbound)).execute(
        "SELECT path_bytes, validation_error FROM scanned_files ORDER BY path_bytes").fetchall()


def test_a_name_the_listing_repeats_copies_no_other_refusal(tmp_path, memory, monkeypatch):
    """A directory listing may return a name twice (a rename racing readdir, network filesystems).
    Recalled twice, a leftover must still count once when deciding whether every remembered
    refusal was recalled: else the copy takes the stale refusal of a file just read again, valid."""
    from melodee_pipeline.scan import scanner

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    scan()
    tag(str(inbound / "no_title.flac"), Tags(title="Now Titled"))
    past = time.time() - 3600
    os.utime(inbound / "no_title.flac", (past, past))
    real = scanner.walk_inbound

    def junk_twice(*args, **kwargs):
        for path, st in real(*args, **kwargs):
            yield path, st
            if path.endswith(b"junk.ogg"):
                yield path, st

    monkeypatch.setattr(scanner, "walk_inbound", junk_twice)
    second = scan()
    valid = {os.path.basename(p) for (p,) in sqlite3.connect(second.scan_db).execute(
        "SELECT file_path FROM scanned_files WHERE is_valid = 1")}
    assert valid == {"good.mp3", "no_title.flac"}
    assert set(refused(second.scan_db)) == {"junk.ogg"}
    assert [os.path.basename(p) for p, _ in remembered(scans, inbound)] == [b"junk.ogg"]


def test_two_names_shown_alike_are_two_files(tmp_path):
    """`display_path` spells the byte 0xE9 `\\xe9`, as a file may be named: two names, one shown
    form. Each keeps its row (a valid track once lost its row to a refused neighbour's)."""
    inbound, scans = tmp_path / "in", str(tmp_path / "scans")
    make_track(str(inbound / "caf\\xe9.mp3"), Tags("A", "B", "T"))
    with open(os.path.join(os.fsencode(inbound), b"caf\xe9.mp3"), "wb") as f:
        f.write(b"\xff\xfb not really audio " * 40)
    age(inbound)
    for scan in range(2):  # read, then recalled
        result = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
        assert (result.files, result.valid, result.invalid, result.unchanged) == (2, 1, 1, scan)
        shown = sqlite3.connect(result.scan_db).execute("SELECT file_path, is_valid FROM scanned_files ORDER BY is_valid")
        assert shown.fetchall() == [(f"{inbound}/caf\\xe9.mp3", 0), (f"{inbound}/caf\\xe9.mp3", 1)]


def test_refusal_memory_survives_pruning_and_forgets_what_is_gone(tmp_path, memory):
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0, keep_scan_dbs=1)
    scan()
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3"] and len(list(scans.glob("scan_*.db"))) == 1
    assert memory_of(scans, inbound).exists()
    as_second = {p: r for p, r in rows(second.scan_db, IDENTITY).items() if p.endswith(b"no_title.flac")}
    (inbound / "junk.ogg").unlink()
    third = scan()
    assert third.unchanged == 1
    assert rows(third.scan_db, IDENTITY) == as_second  # one of the two recalled: its row alone is copied
    assert remembered(scans, inbound) == [(os.fsencode(inbound / "no_title.flac"), "missing title")]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.levels.append(record.levelno)


def test_one_log_event_per_reason_not_per_file(tmp_path):
    inbound = tmp_path / "in"
    for i in range(6):
        make_track(str(inbound / "untitled" / f"{i}.mp3"), Tags("A", "B"), seed=i)
    for i in range(4):
        (inbound / "junk" / f"{i}.flac").parent.mkdir(parents=True, exist_ok=True)
        (inbound / "junk" / f"{i}.flac").write_text(f"not audio {i}" * 30)
    make_track(str(inbound / "good.mp3"), Tags("A", "B", "T"))
    age(inbound)
    for busy in ("busy1", "busy2"):
        make_track(str(inbound / busy / "x.mp3"), Tags("A", "B", "T"))
    logger = logging.getLogger("test_refusals.events")
    logger.setLevel(logging.INFO)
    handler = Records()
    logger.addHandler(handler)
    try:
        result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=2, min_file_age_seconds=60, logger=logger)
        again = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=2, min_file_age_seconds=60, logger=logger)
    finally:
        logger.removeHandler(handler)
    assert (result.invalid, result.skipped, again.unchanged) == (10, 2, 10)
    msgs = handler.messages
    assert len(msgs) == 2, msgs  # one a scan: its summary, refusals and skips
    assert [m.splitlines()[1:] for m in msgs] == [[
        "refused 10 files: missing title (6), corrupt or not audio (4)",
        "skipped 2 files: modified less than 60s ago (still being copied?) (2 paths, 2 files)",
    ], [
        "refused 10 files: missing title (6), corrupt or not audio (4); 10 of them unchanged since an earlier scan, not read again",
        "skipped 2 files: modified less than 60s ago (still being copied?) (2 paths, 2 files)",
    ]]
    assert handler.levels == [logging.WARNING, logging.INFO]  # a warning for news only
    assert not any(".mp3" in m or ".flac" in m for m in msgs)


def test_refusals_command_lists_every_refused_file_and_skipped_path(tmp_path, capsys):
    from melodee_pipeline.cli import main

    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    make_track(str(inbound / "busy" / "x.mp3"), Tags("A", "B", "T"))
    first = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=60)
    assert main(["refusals", "--scan", first.scan_db]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{inbound / 'junk.ogg'}\tcorrupt or not audio: ") and lines[0].endswith("\trefused in this scan")
    assert lines[1:] == [f"{inbound / 'no_title.flac'}\tmissing title\trefused in this scan",
                         f"{inbound / 'busy'}\tskipped: modified less than 60s ago (still being copied?) (1 file)\t"]
    assert err == f"2 refused files, 1 skipped path in {first.scan_db}\n"
    time.sleep(1.1)
    second = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=60)
    assert main(["refusals", "--dir", str(scans)]) == 0
    out, err = capsys.readouterr()
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created_at(first.scan_db)))
    assert out.splitlines()[1] == f"{inbound / 'no_title.flac'}\tmissing title\tstill refused, unchanged since {since} UTC"
    assert err.endswith(f"in {second.scan_db}\n")
    assert main(["refusals", "--dir", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: no scan database in {tmp_path / 'nothing'}\n"


def test_refusals_command_takes_a_runs_scan_id(env, libs, capsys):
    from melodee_pipeline.cli import main

    (libs["inbound"] / "junk.mp3").write_bytes(b"not audio" * 100)
    scan = scan_inbound(str(libs["inbound"]), str(libs["scandbs"]), workers=1, min_file_age_seconds=0)
    for spelled in (scan.scan_id, scan.scan_id.removeprefix("scan_")):
        assert main(["refusals", "--scan", spelled]) == 0
        out, err = capsys.readouterr()
        assert out.startswith(f"{libs['inbound'] / 'junk.mp3'}\tcorrupt or not audio: ") and err.endswith(f"in {scan.scan_db}\n")
    assert main(["refusals", "--scan", "scan_20000101_000000_0000"]) == 2
    assert "no scan DB for scan scan_20000101_000000_0000" in capsys.readouterr().err


def test_a_scan_with_nothing_to_read_starts_no_worker(tmp_path, monkeypatch):
    """Starting workers costs more than a run over remembered refusals (a spawn imports mediafile
    in each): they start only when a file is to be read."""
    from melodee_pipeline.scan import scanner

    inbound = leftovers(tmp_path)
    (inbound / "good.mp3").unlink()
    started = []
    real = scanner.process_pool
    monkeypatch.setattr(scanner, "process_pool", lambda *a: started.append(a) or real(*a))
    scan = partial(scan_inbound, str(inbound), str(tmp_path / "scans"), workers=2, min_file_age_seconds=0)
    assert scan().invalid == 2 and len(started) == 1
    assert scan().unchanged == 2 and len(started) == 1
    (inbound / "junk.ogg").write_text("changed, still not audio")
    assert scan().unchanged == 1 and len(started) == 2


def test_a_bug_in_our_own_code_is_not_a_corrupt_file_and_is_not_remembered(tmp_path, monkeypatch, memory, caplog):
    """An exception our own code raises while reading tags is refused as an internal error (not
    "corrupt or not audio"), and the file is read again by the next scan: once the bug is fixed,
    the file goes through. Data the parser chokes on stays "corrupt" and remembered."""
    from melodee_pipeline.scan import tags

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)

    def buggy(value, name, warnings):
        raise TypeError("a bug of ours")

    with monkeypatch.context() as mp:
        mp.setattr(tags, "clean_text", buggy)
        first = scan()
    reasons = {name: reason for name, (reason, _) in refused(first.scan_db).items()}
    assert reasons["good.mp3"].startswith(tags.INTERNAL_ERROR) and "TypeError: a bug of ours" in reasons["good.mp3"]
    assert reasons["junk.ogg"].startswith("corrupt or not audio")
    assert f"{tags.INTERNAL_ERROR} (2)" in caplog.text  # its own reason in the run's log, counted
    second, opened = opened_during(inbound, scan)  # the bug fixed
    assert opened == ["good.mp3", "no_title.flac"]  # read again; junk.ogg stays remembered
    assert second.valid == 1 and "good.mp3" not in refused(second.scan_db)


def test_the_remembered_refusals_are_held_in_memory_only_while_few(tmp_path, monkeypatch):
    """A million remembered refusals must not sit in memory for the whole scan: past
    IN_MEMORY_MAX each file is looked up in the scan DB."""
    from melodee_pipeline.scan import scandb

    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)  # remembers 2
    st = os.stat(inbound / "junk.ogg")
    held = {}
    for limit in (2, 1):
        monkeypatch.setattr(refusals, "IN_MEMORY_MAX", limit)
        _, path, note = refusals.start(str(memory_of(scans, inbound)), str(scans))
        r = refusals.Refusals(scandb.connect(path), str(memory_of(scans, inbound)))
        held[limit] = (r.known is not None, r.recall(os.fsencode(inbound / "junk.ogg"), st) is not None, note)
    assert held == {2: (True, True, None), 1: (False, True, None)}


def test_a_scan_db_that_cannot_be_pruned_is_a_line_of_the_report_not_a_failure(tmp_path, monkeypatch):
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"

    def gone(*args):
        raise FileNotFoundError(2, "No such file or directory", "scan_x.db")  # pruned by a scan beside this one

    monkeypatch.setattr(scanner.scandb, "prune", gone)
    logger = logging.getLogger("test_refusals.prune")
    logger.setLevel(logging.INFO)
    handler = Records()
    logger.addHandler(handler)
    try:
        result = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0, logger=logger)
    finally:
        logger.removeHandler(handler)
    assert result.invalid == 2
    [message] = handler.messages
    assert message.splitlines()[1].startswith("refused 2 files")
    assert message.splitlines()[-1] == "could not delete old scan DBs: [Errno 2] No such file or directory: 'scan_x.db'"


def test_a_folder_skipped_for_a_while_keeps_what_is_remembered_of_it(tmp_path):
    """A refused file whose folder gains a file still being copied: that scan skips the folder
    whole, and must not forget the refusal (the next scan would read the file again, and its
    "unchanged since" would start over)."""
    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=60)
    first, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3", "junk.ogg", "no_title.flac"] and first.invalid == 2
    make_track(str(inbound / "arriving.mp3"), Tags("A", "B", "T2"))  # inbound itself is now busy
    busy, opened = opened_during(inbound, scan)
    assert opened == [] and (busy.files, busy.skipped) == (0, 4)
    later, opened = opened_during(inbound, partial(scan, min_file_age_seconds=0))  # copied in by now
    assert opened == ["arriving.mp3", "good.mp3"] and later.unchanged == 2
    columns = ("file_path", "path_bytes", "validation_error", "refused_since")
    assert rows(later.scan_db, columns) == rows(first.scan_db, columns)  # as first refused, not again


def test_a_damaged_memory_costs_one_full_read_and_says_so(tmp_path):
    """The remembered refusals are a cache: garbage in their file (a disk error, a foreign file
    under the name) is reported on the scan's summary, every file is read, and the next scan
    remembers again."""
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0, logger=logging.getLogger("t.damaged"))
    logging.getLogger("t.damaged").setLevel(logging.INFO)
    scan()
    for garbage in (b"not a database" * 100, None):
        if garbage is None:  # a real SQLite file, but not ours
            memory_of(scans, inbound).unlink()
            sqlite3.connect(memory_of(scans, inbound)).execute("CREATE TABLE other (x)").connection.commit()
        else:
            memory_of(scans, inbound).write_bytes(garbage)
        handler = Records()
        logging.getLogger("t.damaged").addHandler(handler)
        try:
            result, opened = opened_during(inbound, scan)
        finally:
            logging.getLogger("t.damaged").removeHandler(handler)
        assert opened == ["good.mp3", "junk.ogg", "no_title.flac"] and (result.invalid, result.unchanged) == (2, 0)
        assert f"remembered refusals {memory_of(scans, inbound)} unusable" in handler.messages[0]
        assert len(remembered(scans, inbound)) == 2 and scan().unchanged == 2
    # Unusable while nothing is refused: replaced all the same, not reported again on every run.
    (inbound / "junk.ogg").unlink()
    (inbound / "no_title.flac").unlink()
    memory_of(scans, inbound).write_bytes(b"not a database" * 100)
    for _ in range(2):
        handler = Records()
        logging.getLogger("t.damaged").addHandler(handler)
        try:
            assert scan().invalid == 0
        finally:
            logging.getLogger("t.damaged").removeHandler(handler)
    assert len(handler.messages) == 1 and "unusable" not in handler.messages[0] and remembered(scans, inbound) == []


def test_a_memory_that_cannot_be_written_fails_no_scan(tmp_path, monkeypatch, memory):
    """Writing what is remembered is housekeeping: failing (a full disk), the scan is whole, the
    summary says so, and the next scan reads the leftovers again."""
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0, logger=logging.getLogger("t.full"))
    first = scan()
    (inbound / "junk.ogg").unlink()

    def full(*args):
        raise OSError(28, "No space left on device")

    handler = Records()
    logging.getLogger("t.full").setLevel(logging.INFO)
    logging.getLogger("t.full").addHandler(handler)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(refusals.os, "replace", full)
            second = scan()
    finally:
        logging.getLogger("t.full").removeHandler(handler)
    assert (second.files, second.invalid, second.unchanged) == (2, 1, 1)
    assert set(refused(second.scan_db)) == {"no_title.flac"}  # the gone file's row is not this scan's
    assert handler.messages[0].splitlines()[-1].startswith(f"could not remember this scan's refusals in {memory_of(scans, inbound)} (")
    assert sorted(p.name for p in scans.iterdir() if not p.name.startswith("scan_")) == [memory_of(scans, inbound).name]  # nothing half-written
    assert len(remembered(scans, inbound)) == 2  # the first scan's memory stands
    assert scan().unchanged == 1 and remembered(scans, inbound) == [(os.fsencode(inbound / "no_title.flac"), "missing title")]
    assert first.scan_id in sqlite3.connect(first.scan_db).execute("SELECT value FROM scan_info WHERE key = 'scan_id'").fetchone()


def test_what_is_remembered_is_one_file_naming_its_scan(tmp_path):
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    first = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    beside = sorted(p.name for p in scans.iterdir() if not p.name.startswith("scan_"))
    assert beside == [memory_of(scans, inbound).name]  # no -wal, -shm or temp file left
    memory = sqlite3.connect(memory_of(scans, inbound))
    assert memory.execute("SELECT key, value FROM scan_info").fetchall() == [("refusals_of", first.scan_id)]
    assert memory.execute("SELECT count(*) FROM scanned_files WHERE is_valid = 1").fetchone() == (0,)


def test_a_memory_damaged_inside_its_pages_costs_one_full_read(tmp_path):
    """Header, schema and scan_info intact, bad bytes in every data page (a bad sector): the scan
    notes it and reads every file; it must not fail, nor every scan after it."""
    inbound, scans = tmp_path / "in", tmp_path / "scans"
    inbound.mkdir()
    for i in range(300):
        (inbound / f"junk{i:03d}.ogg").write_bytes(b"not audio" * 50)
    age(inbound)
    scan = partial(scan_inbound, str(inbound), str(scans), workers=1, min_file_age_seconds=0, logger=logging.getLogger("t.pages"))
    scan()
    data = bytearray(memory_of(scans, inbound).read_bytes())
    for page in range(3, len(data) // 4096):
        data[page * 4096 + 100:page * 4096 + 200] = b"\xa5" * 100
    memory_of(scans, inbound).write_bytes(data)
    handler = Records()
    logging.getLogger("t.pages").addHandler(handler)
    try:
        damaged = scan()
    finally:
        logging.getLogger("t.pages").removeHandler(handler)
    assert (damaged.invalid, damaged.unchanged) == (300, 0)
    assert "unusable (damaged (quick_check failed))" in handler.messages[0]
    assert scan().unchanged == 300


def test_a_scan_db_put_in_the_memorys_place_is_not_taken_for_it(tmp_path):
    """Scan DBs hold valid rows, albums and their own scan_info: copied over the memory (by hand,
    by a restore), one must not become every later scan's start, nor its valid file a refusal."""
    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    begun_from_memory = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    memory_of(scans, inbound).write_bytes(open(begun_from_memory.scan_db, "rb").read())
    second = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    assert (second.valid, second.invalid, second.unchanged) == (1, 2, 0)
    assert scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0).unchanged == 2
    assert [os.path.basename(p) for p, _ in remembered(scans, inbound)] == [b"junk.ogg", b"no_title.flac"]


def test_a_file_that_could_not_be_read_is_read_again_by_the_next_scan(tmp_path, monkeypatch, memory):
    """"unreadable: Permission denied" (or an I/O error) says nothing of the file: granted the
    permission (a group, a scan as another user), the same unchanged bytes must be read."""
    from melodee_pipeline.scan import tags

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    real_open = open

    def denied(path, *args, **kwargs):
        if os.fsencode(path).endswith(b"good.mp3"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(tags, "open", denied, raising=False)
        first = scan()
    assert refused(first.scan_db)["good.mp3"][0] == "unreadable: Permission denied"
    second, opened = opened_during(inbound, scan)
    assert opened == ["good.mp3"] and second.valid == 1 and second.unchanged == 2


def test_a_leftover_recalled_within_the_same_second_is_still_a_leftover(tmp_path, capsys):
    from melodee_pipeline.cli import main

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    first = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
    second = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)  # most often the same second
    assert second.unchanged == 2
    assert main(["refusals", "--scan", second.scan_db]) == 0
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created_at(first.scan_db)))
    assert capsys.readouterr().out.splitlines()[1] == f"{inbound / 'no_title.flac'}\tmissing title\tstill refused, unchanged since {since} UTC"


def scan_killed(inbound, scans, patch: str) -> None:
    """A scan in its own process, killed (os._exit) where `patch` says."""
    import subprocess
    import sys

    scan = f"import os, sys\n{patch}\nfrom melodee_pipeline.scan import scanner\n" \
           "scanner.scan_inbound(sys.argv[1], sys.argv[2], workers=1, min_file_age_seconds=0)\n"
    assert subprocess.run([sys.executable, "-c", scan, str(inbound), str(scans)]).returncode == 9


def test_a_scan_killed_while_its_db_is_created_leaves_no_db_without_an_id(tmp_path, capsys):
    """Killed between the copy of the memory and its scan_id: no `scan_*.db` that `refusals` and
    `undo` would refuse as "not a scan database"; the part left behind is pruned an hour later."""
    from melodee_pipeline.cli import main
    from melodee_pipeline.scan import scandb

    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    first = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    scan_killed(inbound, scans, "from melodee_pipeline.scan import scandb\nscandb.set_info = lambda *a, **k: os._exit(9)")
    [part] = [p for p in scans.iterdir() if p.name.endswith(scandb.PART)]
    assert sorted(scans.glob("scan_*.db")) == [Path(first.scan_db)]
    assert main(["refusals", "--dir", str(scans)]) == 0 and capsys.readouterr().err.endswith(f"in {first.scan_db}\n")
    left = [p for p in scans.iterdir() if p.name.startswith(part.name)]  # with its -wal and -shm
    assert len(left) == 3
    for p in left:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    later = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0, keep_scan_dbs=5)
    assert not any(p.exists() for p in left) and later.unchanged == 2


def test_our_bug_inside_mediafiles_wrapper_is_an_internal_error(tmp_path, monkeypatch):
    """mediafile re-raises whatever its call into mutagen raised (our `_Opened` runs there) as
    its own MutagenError: that is not the parser's verdict on the file, so it is not remembered."""
    from melodee_pipeline.scan import mediaopen, tags

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)

    def buggy(self, *args):
        raise AttributeError("'NoneType' object has no attribute 'add_tags'")

    with monkeypatch.context() as mp:
        mp.setattr(mediaopen._Opened, "__init__", buggy)
        first = scan()
    assert refused(first.scan_db)["good.mp3"][0].startswith(tags.INTERNAL_ERROR)
    second, opened = opened_during(inbound, scan)
    assert "good.mp3" in opened and "good.mp3" not in refused(second.scan_db)


def test_an_io_error_behind_the_parsers_error_is_unreadable_and_read_again(tmp_path, monkeypatch, memory):
    """A large file is hashed, then opened again by mutagen, which wraps an I/O error there (a NAS
    hiccup) in its own error: that is "unreadable", not "corrupt", and the next scan reads it."""
    import builtins
    import errno

    from melodee_pipeline.scan import tags

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    monkeypatch.setattr(tags, "IN_MEMORY_BYTES", 100)  # every file is large: hashed, then opened by path
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    real_open, opens = builtins.open, []

    def flaky(file, *args, **kwargs):
        if isinstance(file, (str, bytes)) and os.fsencode(file).endswith(b"good.mp3"):
            opens.append(file)
            if len(opens) == 2:  # the hash read went fine; the tag read fails
                raise OSError(errno.EIO, "Input/output error")
        return real_open(file, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(builtins, "open", flaky)
        first = scan()
    assert len(opens) == 2 and refused(first.scan_db)["good.mp3"][0] == "unreadable: Input/output error"
    second, opened = opened_during(inbound, scan)
    assert "good.mp3" in opened and second.valid == 1


def test_refusals_of_a_directory_lists_the_newest_finished_scan(tmp_path, capsys):
    """A scan killed mid-walk leaves a scan DB holding every remembered row, some of files gone
    since: `refusals --dir` shows the newest scan that finished, and says so of a killed one."""
    from melodee_pipeline.cli import main

    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    done = scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    scan_killed(inbound, scans, "from melodee_pipeline import faults\nfaults.point = lambda name: os._exit(9)")
    [dead] = [p for p in scans.glob("scan_*.db") if str(p) != done.scan_db]
    assert main(["refusals", "--dir", str(scans)]) == 0
    assert capsys.readouterr().err == f"2 refused files, 0 skipped paths in {done.scan_db}\n"
    assert main(["refusals", "--scan", str(dead)]) == 0
    assert "did not finish" in capsys.readouterr().err


def test_listing_refusals_leaves_no_file_beside_the_scan_dbs(tmp_path, capsys):
    from melodee_pipeline.cli import main

    inbound, scans = leftovers(tmp_path), tmp_path / "scans"
    for _ in range(2):
        scan_inbound(str(inbound), str(scans), workers=1, min_file_age_seconds=0)
    before = sorted(p.name for p in scans.iterdir())
    assert main(["refusals", "--dir", str(scans)]) == 0
    assert sorted(p.name for p in scans.iterdir()) == before


@pytest.mark.parametrize("keep", [10, 100, 300, 1000])
def test_a_truncated_mp3_is_corrupt_and_remembered(tmp_path, keep):
    """mutagen says "not enough data" with an IOError of its own (no errno): that is the file's
    bytes (a partial download), not an I/O failure, so it is refused as corrupt and not read again."""
    inbound, scans = tmp_path / "in", str(tmp_path / "scans")
    whole = tmp_path / "whole.mp3"
    make_track(str(whole), Tags("A", "B", "T"))
    inbound.mkdir()
    (inbound / "partial.mp3").write_bytes(whole.read_bytes()[:keep])
    age(inbound)
    first = scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0)
    [(reason, _)] = refused(first.scan_db).values()
    assert reason.startswith("corrupt or not audio: "), reason
    assert scan_inbound(str(inbound), scans, workers=1, min_file_age_seconds=0).unchanged == 1


def test_a_file_that_stays_unreadable_does_not_rewrite_the_memory_each_run(tmp_path, monkeypatch):
    from melodee_pipeline.scan import tags

    inbound, scans = leftovers(tmp_path), str(tmp_path / "scans")
    real_open = open

    def denied(path, *args, **kwargs):
        if os.fsencode(path).endswith(b"good.mp3"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(tags, "open", denied, raising=False)
    scan = partial(scan_inbound, str(inbound), scans, workers=1, min_file_age_seconds=0)
    scan()
    written = os.stat(memory_of(scans, inbound)).st_ino  # each write renames a new file over it
    again = scan()
    assert (again.invalid, again.unchanged) == (3, 2) and os.stat(memory_of(scans, inbound)).st_ino == written
