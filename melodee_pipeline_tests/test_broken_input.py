"""Hostile and broken input: each gets a clear message; none loses a byte or escapes staging."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from melodee_pipeline.grouping import group_albums
from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline_tests.conftest import album, inbound_read_only, snapshot


def scanned(dirs) -> str:
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    return scan.scan_db


def test_file_vanishing_between_scan_and_move_fails_only_that_file(dirs):
    files = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two", "Three"], ".mp3")
    scan_db = scanned(dirs)
    files[1].unlink()
    result = stage_albums(scan_db, str(dirs["staging"]), workers=2)
    assert (result.files_moved, result.files_failed, result.albums_failed) == (2, 1, 1)
    target = dirs["staging"] / "BAN" / "Band" / "2001 - Record"
    doc = json.loads((target / "album.melodee.json").read_text())
    assert [t["name"] for t in doc["tracks"]] == ["One", "Three"]
    assert "No such file or directory" in doc["validation"]["errors"][0] and "02 Two.mp3" in doc["validation"]["errors"][0]
    row = sqlite3.connect(scan_db).execute("SELECT status, error FROM albums").fetchone()
    assert row == ("partial", "1 of 3 files failed")


def test_inbound_disappearing_mid_run_loses_nothing(dirs):
    album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    before = snapshot(dirs["inbound"])
    scan_db = scanned(dirs)
    moved_away = dirs["inbound"].parent / "elsewhere"
    dirs["inbound"].rename(moved_away)
    result = stage_albums(scan_db, str(dirs["staging"]), workers=2)
    assert result.albums_failed == 1 and result.files_moved == 0
    assert sorted(snapshot(moved_away).values()) == sorted(before.values())


def test_staging_root_missing_is_a_clear_error(dirs, capsys, monkeypatch):
    from melodee_pipeline.cli import main

    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    scan_db = scanned(dirs)
    monkeypatch.delenv("MELODEE_DATABASE_URL", raising=False)
    monkeypatch.setenv("MELODEE_HOME", str(dirs["scans"] / "nohome"))  # no database configured
    assert main(["process-scan", "--scan", scan_db, "--staging", str(dirs["staging"] / "gone")]) == 2
    assert capsys.readouterr().err == f"error: staging path {dirs['staging'] / 'gone'} does not exist or is not a directory\n"
    assert main(["process-scan", "--scan", str(dirs["scans"] / "nope.db"), "--staging", str(dirs["staging"])]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_very_long_and_bidi_tags_and_non_utf8_names_are_staged_safely(dirs):
    long_value = "x" * 10_000
    make_track(str(dirs["inbound"] / "long.mp3"), Tags(long_value, long_value, long_value, None, 1, None, 2000), seed=1)
    make_track(str(dirs["inbound"] / "bidi.mp3"), Tags("Band\u202e3pm.exe", "Rec\u200ford", "Ti\u2066tle", None, 1, None, 2000), seed=2)
    make_track(str(dirs["inbound"] / "x.ogg"), Tags("Café", "Été", "Ça", None, 1, None, 2000), seed=3)
    raw = os.fsencode(str(dirs["inbound"])) + b"/\xff\xfe broken name.ogg"
    os.rename(str(dirs["inbound"] / "x.ogg"), raw)
    before = snapshot(dirs["inbound"])
    result = stage_albums(scanned(dirs), str(dirs["staging"]), workers=2)
    assert result.files_moved == 3 and result.files_failed == 0
    names = []
    for dirpath, dnames, fnames in os.walk(dirs["staging"]):
        for n in dnames + fnames:
            assert len(n.encode()) <= 255
            assert not set(n) & set("\u202e\u200f\u2066")
            names.append(n)
    assert "Band3pm.exe" in names and "2000 - Record" in names
    doc = json.loads((dirs["staging"] / "CAF" / "Café" / "2000 - Été" / "album.melodee.json").read_text())
    assert doc["tracks"][0]["original_path"].endswith("\\xff\\xfe broken name.ogg")
    assert sorted(before.values()) == sorted(v for k, v in snapshot(dirs["staging"]).items() if not k.endswith(".json"))


def test_symlink_planted_in_staging_cannot_redirect_writes(dirs, tmp_path):
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    outside = tmp_path / "outside"
    outside.mkdir()
    (dirs["staging"] / "BAN").mkdir()
    os.symlink(outside, dirs["staging"] / "BAN" / "Band")
    scan_db = scanned(dirs)
    result = stage_albums(scan_db, str(dirs["staging"]), workers=1)
    assert result.albums_failed == 1 and list(outside.iterdir()) == []
    error = sqlite3.connect(scan_db).execute("SELECT error FROM albums").fetchone()[0]
    assert "outside the staging root" in error
    assert len(list(dirs["inbound"].rglob("*.mp3"))) == 1


# The checks below need file permissions to bind, which they do not for root: the CLI runs with
# every capability dropped (setpriv), so even root obeys the mode bits, as an ordinary user would.
def unprivileged(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "MELODEE_HOME": os.path.join(cwd, "home"), "HOME": cwd}
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-m", "melodee_pipeline.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def shared_dir(tmp_path):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to bind")
    yield tmp_path


def test_unreadable_file_is_invalid_and_stays(shared_dir):
    inbound = shared_dir / "in"
    make_track(str(inbound / "secret.mp3"), Tags("A", "B", "T"))
    make_track(str(inbound / "open.mp3"), Tags("A", "B", "U"), seed=2)
    os.chmod(inbound / "secret.mp3", 0o000)
    proc = unprivileged(["scan-inbound", "--path", str(inbound), "--output", str(shared_dir / "scans"), "--min-file-age", "0"], str(shared_dir))
    assert proc.returncode == 0, proc.stderr
    rows = dict(sqlite3.connect(proc.stdout.strip()).execute("SELECT file_path, validation_error FROM scanned_files"))
    assert rows[str(inbound / "secret.mp3")] == "unreadable: Permission denied"
    assert rows[str(inbound / "open.mp3")] == ""


def test_read_only_staging_is_refused_and_keeps_files(shared_dir):
    inbound, staging = shared_dir / "in", shared_dir / "staging"
    album(inbound, "Band", "Record", 2001, ["One", "Two"], ".mp3")
    album(inbound, "Other", "Disc", 2002, ["Three"], ".mp3", seed=5)
    staging.mkdir()
    os.chmod(staging, 0o555)
    before = snapshot(inbound)
    scan = unprivileged(["scan-inbound", "--path", str(inbound), "--output", str(shared_dir / "scans"), "--min-file-age", "0"], str(shared_dir))
    proc = unprivileged(["process-scan", "--scan", scan.stdout.strip(), "--staging", str(staging)], str(shared_dir))
    assert proc.returncode == 2
    assert proc.stderr == f"error: staging path {staging} refuses writes: Permission denied\n"
    assert snapshot(inbound) == before and list(staging.iterdir()) == []
    # Writable root, read-only artist folder: that album fails, the other is staged.
    os.chmod(staging, 0o755)
    (staging / "BAN").mkdir()
    os.chmod(staging / "BAN", 0o555)
    proc = unprivileged(["process-scan", "--scan", scan.stdout.strip(), "--staging", str(staging)], str(shared_dir))
    assert proc.returncode == 0, proc.stderr  # only a run in which every album failed exits 1
    assert "staged 1, failed 1" in proc.stdout and "files moved 1" in proc.stdout
    assert len(list(inbound.rglob("*.mp3"))) == 2 and (staging / "OTH" / "Other" / "2002 - Disc" / "01 - Three.mp3").exists()


def test_unwritable_scan_db_directory_is_a_clear_error(shared_dir):
    (shared_dir / "in").mkdir()
    locked = shared_dir / "scans"
    locked.mkdir()
    os.chmod(locked, 0o555)
    proc = unprivileged(["scan-inbound", "--path", str(shared_dir / "in"), "--output", str(locked)], str(shared_dir))
    assert proc.returncode == 2
    assert proc.stderr == f"error: scan DB directory {locked} is not writable\n"


def test_an_inbound_that_cannot_be_emptied_is_one_warning_and_the_next_run_tries_again(dirs, monkeypatch, caplog):
    """A read-only inbound (a mount, an NFS export): the bytes are staged, the inbound copies stay,
    and the run says so once, with the reason and a path, not only in each album's sidecar."""
    import logging

    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".mp3")
    (tracks[0].parent / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not much of a picture")
    before, writable = snapshot(dirs["inbound"]), os.unlink
    inbound_read_only(monkeypatch, dirs["inbound"])
    with caplog.at_level(logging.WARNING):
        result = stage_albums(scanned(dirs), str(dirs["staging"]), workers=2)
    assert (result.files_moved, result.inbound_kept, result.albums_failed) == (2, 3, 0)  # two tracks and the cover
    (warning,) = [r.getMessage() for r in caplog.records if "could not be deleted from inbound" in r.getMessage()]
    assert warning.startswith("3 staged file(s) could not be deleted from inbound (Read-only file system), e.g. ")
    assert str(dirs["inbound"]) in warning and "make inbound writable" in warning
    assert snapshot(dirs["inbound"]) == before  # every byte where it was, and in staging too
    assert set(before.values()) <= set(snapshot(dirs["staging"]).values())

    monkeypatch.setattr(os, "unlink", writable)  # made writable: the next run empties it
    again = stage_albums(scanned(dirs), str(dirs["staging"]), workers=2)
    assert (again.already_staged, again.inbound_kept) == (2, 0)
    assert not list(dirs["inbound"].rglob("*.mp3"))


def test_a_full_scan_db_filesystem_names_the_scan_db_and_leaves_no_part_of_it(tmp_path):
    """A small real filesystem (tmpfs in a private mount namespace) with room for some of a scan
    DB's files but not all: SQLite says only `disk I/O error` when its WAL index cannot grow."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here to mount a small filesystem in")
    (tmp_path / "in").mkdir()
    scans = tmp_path / "scans"
    scans.mkdir()
    code = ("from melodee_pipeline.cli import main; import sys; "
            f"sys.exit(main(['scan-inbound', '--path', {str(tmp_path / 'in')!r}, '--output', {str(scans)!r}]))")
    for kib in (96, 160, 192, 208):
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={kib}k tmpfs "$1" && "$2" -c "$3"; '
                               'code=$?; ls -A "$1"; exit $code', "sh", str(scans), sys.executable, code],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (kib, proc.stderr)
        assert proc.stderr.startswith(f"error: cannot create scan DB {scans}/scan_"), (kib, proc.stderr)
        assert "full" in proc.stderr and "MiB free)" in proc.stderr, (kib, proc.stderr)
        assert proc.stdout == "", (kib, proc.stdout)  # nothing left on it


def test_a_filesystem_out_of_inodes_says_so_not_megabytes_free(tmp_path):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here to mount a small filesystem in")
    code = ("import os, sys; from melodee_pipeline.diskspace import free_space\n"
            "n = 0\n"
            "while True:\n"
            "    try: open(os.path.join(sys.argv[1], str(n)), 'w').close(); n += 1\n"
            "    except OSError: break\n"
            "print(free_space(sys.argv[1]))")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=10m,nr_inodes=8 tmpfs "$1" && "$2" -c "$3" "$1"',
                           "sh", str(tmp_path), sys.executable, code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("no free inodes: no new file fits, though 10.0 MiB free"), proc.stdout + proc.stderr
