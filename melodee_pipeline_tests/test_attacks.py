"""Attacks on the guarantees from outside the pipeline: a staging tree or inbound that someone else
changes (symlinks, FIFOs, swapped files, a hand-edited journal, a malformed sidecar). Each may fail
its own file or album, never lose or misfile bytes, never write outside staging, never stop later runs."""

from __future__ import annotations

import json
import os
import sqlite3
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melodee_pipeline.cli import main
from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline_tests.conftest import album
from melodee_pipeline_tests.invariants import file_hashes

pytestmark = pytest.mark.usefixtures("staging_mode")  # every test on threads and in worker processes

SIDECAR = "album.melodee.json"


@pytest.fixture
def no_db(dirs, monkeypatch):
    monkeypatch.delenv("MELODEE_DATABASE_URL", raising=False)
    monkeypatch.setenv("MELODEE_HOME", str(dirs["scans"].parent / "nohome"))
    return dirs


def cycle(inbound: Path, staging: Path, scans: Path, capsys) -> tuple[int, str, str]:
    assert main(["scan-inbound", "--path", str(inbound), "--output", str(scans), "--min-file-age", "0", "--workers", "1"]) == 0
    scan_db = capsys.readouterr().out.strip()
    rc = main(["process-scan", "--scan", scan_db, "--staging", str(staging), "--workers", "1"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_staging_inside_inbound_is_refused_before_anything_moves(no_db, capsys):
    inbound = no_db["inbound"]
    album(inbound, "Artist", "Album", 2001, ["One", "Two"], ".mp3")
    before = file_hashes(inbound)
    (inbound / "staging").mkdir()
    rc, _, err = cycle(inbound, inbound / "staging", no_db["scans"], capsys)
    assert rc == 2 and "must not contain each other" in err
    assert file_hashes(inbound) == before


def test_a_symlinked_temp_dir_is_refused_and_nothing_is_deleted_through_it(no_db, tmp_path, capsys):
    album(no_db["inbound"], "Artist", "Album", 2001, ["One"], ".mp3")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    os.symlink(outside, no_db["staging"] / ".melodee-tmp")
    rc, _, err = cycle(no_db["inbound"], no_db["staging"], no_db["scans"], capsys)
    assert rc == 2 and "is not a plain directory" in err
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_malformed_sidecar_fails_nothing_else(no_db, capsys):
    album(no_db["inbound"], "Artist", "Album", 2001, ["One"], ".mp3")
    album(no_db["inbound"], "Other", "Disc", 2002, ["Two"], ".mp3", seed=5)
    bad = no_db["staging"] / "ART" / "Artist" / "2001 - Album"
    bad.mkdir(parents=True)
    (bad / SIDECAR).write_text('{"artist": {"name": "Artist"}, "album": {"name": "Album", "year": 2001}, "tracks": "zz"}')
    before = file_hashes(no_db["inbound"])
    rc, out, _ = cycle(no_db["inbound"], no_db["staging"], no_db["scans"], capsys)
    assert rc == 0 and "failed 0" in out
    assert (no_db["staging"] / "ART" / "Artist" / "2001 - Album (2)" / "01 - One.mp3").exists()  # beside, not in it
    assert file_hashes(no_db["staging"]) == before


def test_an_interrupted_album_that_cannot_be_finished_does_not_stop_later_runs(no_db, tmp_path, capsys, caplog):
    album(no_db["inbound"], "Artist", "Album", 2001, ["One"], ".mp3")
    outside = tmp_path / "outside"
    outside.mkdir()
    entry_dir = no_db["staging"] / ".melodee-journal"
    entry_dir.mkdir()
    os.symlink(outside, no_db["staging"] / "EVL")  # the entry's album dir resolves outside staging
    (entry_dir / ("0" * 40 + ".json")).write_text(json.dumps({
        "album_dir": "EVL/Evil/2000 - Evil", "state": "moving", "scan_id": "scan_x", "album": {},
        "files": [{"source": str(outside / "victim.mp3"), "name": "../../../escaped.mp3", "sha256": "0" * 64,
                   "size": 1, "track": {}}]}))
    (outside / "victim.mp3").write_bytes(b"not yours")
    before = file_hashes(no_db["inbound"])
    rc, _, _ = cycle(no_db["inbound"], no_db["staging"], no_db["scans"], capsys)
    assert rc == 0 and "could not finish the interrupted album EVL/Evil/2000 - Evil" in caplog.text
    assert file_hashes(no_db["staging"]) == before  # the other album was staged
    assert sorted(os.listdir(outside)) == ["victim.mp3"] and (outside / "victim.mp3").read_bytes() == b"not yours"


def test_a_source_changed_or_swapped_after_the_scan_is_left_in_inbound(no_db, tmp_path, capsys):
    one, two = album(no_db["inbound"], "Artist", "Album", 2001, ["One", "Two"], ".mp3")
    assert main(["scan-inbound", "--path", str(no_db["inbound"]), "--output", str(no_db["scans"]), "--min-file-age", "0"]) == 0
    scan_db = capsys.readouterr().out.strip()
    make_track(str(one), Tags("Someone", "Else", "Entirely", None, 7, None, 1980), seed=99)  # replaced meanwhile
    secret = tmp_path / "secret.txt"
    secret.write_text("not music")
    two.unlink()
    os.symlink(secret, two)  # swapped for a symlink
    assert main(["process-scan", "--scan", scan_db, "--staging", str(no_db["staging"])]) == 1  # its only album failed
    errors = sorted(r[0] for r in sqlite3.connect(scan_db).execute("SELECT error FROM staged_files"))
    assert errors == ["changed since the scan; left in inbound (the next run reads it again)",
                      "no longer a regular file (a symlink?); left in inbound"]
    assert one.exists() and os.path.islink(two)  # both stay in inbound
    staged = [p for p in no_db["staging"].rglob("*") if p.is_file() or p.is_symlink()]
    assert not [p for p in staged if p.suffix == ".mp3"] and not [p for p in staged if p.is_symlink()]


def test_a_fifo_or_directory_at_a_destination_gets_the_next_name_and_never_hangs(no_db, tmp_path):
    album(no_db["inbound"], "Artist", "Album", 2001, ["One", "Two"], ".mp3")
    target = no_db["staging"] / "ART" / "Artist" / "2001 - Album"
    target.mkdir(parents=True)
    os.mkfifo(target / "01 - One.mp3")
    (target / "02 - Two.mp3").mkdir()
    env = {**os.environ, "MELODEE_HOME": str(tmp_path / "nohome")}
    env.pop("MELODEE_DATABASE_URL", None)
    base = [sys.executable, "-m", "melodee_pipeline.cli"]
    scan = subprocess.run([*base, "scan-inbound", "--path", str(no_db["inbound"]), "--output", str(no_db["scans"]),
                           "--min-file-age", "0"], env=env, capture_output=True, text=True, timeout=60, check=True)
    run = subprocess.run([*base, "process-scan", "--scan", scan.stdout.strip(), "--staging", str(no_db["staging"])],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(target)) == ["01 - One (2).mp3", "01 - One.mp3", "02 - Two (2).mp3", "02 - Two.mp3", SIDECAR]
    doc = json.loads((target / SIDECAR).read_text())
    assert [os.path.basename(t["file_path"]) for t in doc["tracks"]] == ["01 - One (2).mp3", "02 - Two (2).mp3"]


def test_names_that_differ_only_in_unicode_normalisation_are_one_name(no_db, capsys):
    nfc, nfd = "Caf\u00e9", "Cafe\u0301"
    make_track(str(no_db["inbound"] / "a" / "1.mp3"), Tags("Band", "Record", nfc, None, 1, None, 2001), seed=1)
    make_track(str(no_db["inbound"] / "a" / "2.mp3"), Tags("Band", "Record", nfd, None, 1, None, 2001), seed=2)
    rc, _, _ = cycle(no_db["inbound"], no_db["staging"], no_db["scans"], capsys)
    assert rc == 0
    names = sorted(os.listdir(no_db["staging"] / "BAN" / "Band" / "2001 - Record"))
    assert len(names) == 3 and any(n.endswith(" (2).mp3") for n in names)


def test_a_source_rewritten_while_it_is_staged_keeps_its_inbound_name(tmp_path):
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev):
        pytest.skip("needs a second filesystem (/dev/shm)")
    inbound, scans = tmp_path / "in", tmp_path / "scans"
    staging = shm / f"melodee-attack-{os.getpid()}"
    staging.mkdir()
    try:
        (track,) = album(inbound, "Artist", "Album", 2001, ["One"], ".mp3")
        original = track.read_bytes()
        env = {**os.environ, "MELODEE_HOME": str(tmp_path / "nohome")}
        env.pop("MELODEE_DATABASE_URL", None)
        base = [sys.executable, "-m", "melodee_pipeline.cli"]
        scan = subprocess.run([*base, "scan-inbound", "--path", str(inbound), "--output", str(scans), "--min-file-age", "0"],
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        marker = tmp_path / "paused"
        proc = subprocess.Popen([*base, "process-scan", "--scan", scan.stdout.strip(), "--staging", str(staging)],
                                env={**env, "MELODEE_PAUSE_AT": "before_unlink_sources", "MELODEE_PAUSE_FILE": str(marker)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()
        track.write_bytes(original + b"rewritten meanwhile")  # someone edits the file after it was copied
        marker.unlink()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        staged = staging / "ART" / "Artist" / "2001 - Album" / "01 - One.mp3"
        assert staged.read_bytes() == original  # the copy verified against the scan
        assert track.read_bytes() == original + b"rewritten meanwhile"  # the new bytes keep their inbound name
        doc = json.loads((staged.parent / SIDECAR).read_text())
        assert any("changed while it was staged" in w for w in doc["validation"]["warnings"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def test_resolved_is_realpath(tmp_path):
    """`ensure_inside` resolves through the kernel: the same answer as os.path.realpath, for
    symlinks inside and out, `..`, trailing slashes, a symlink loop and paths not made yet."""
    from melodee_pipeline.staging.paths import ensure_inside, resolved
    from melodee_pipeline.errors import UserError

    root = tmp_path / "staging"
    (root / "A" / "Artist").mkdir(parents=True)
    (root / "inside").symlink_to(root / "A")
    (root / "A" / "Artist" / "out").symlink_to(tmp_path)
    (root / "loop").symlink_to(root / "loop")
    cases = [root, root / "A" / "Artist", root / "inside" / "Artist", f"{root}/A/Artist/../Artist/",
             root / "A" / "Artist" / "out", root / "A" / "new" / "album", root / "loop", f"{root}/A/./Artist//"]
    for path in map(str, cases):
        assert resolved(path) == os.path.realpath(path), path
    ensure_inside(str(root), str(root / "inside" / "Artist"))
    with pytest.raises(UserError, match="outside the staging root"):
        ensure_inside(str(root), str(root / "A" / "Artist" / "out" / "x"))
