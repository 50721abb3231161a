"""Group commit (docs/design.md, "Group commit"): albums are staged a batch at a time, each step
made durable for the whole batch by one barrier. These tests read the order of the real file
operations (audit events) and check the protocol's promise: the journal entry is durable before
the album's first link, every link before the first source goes, a sidecar's bytes before its
name, and the sidecar before the `staged` entry that says it is final."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from melodee_pipeline.grouping import group_albums
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging import journal
from melodee_pipeline.staging.durability import GroupCommit
from melodee_pipeline.staging.sidecar import SIDECAR_NAME
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline_tests.conftest import album, events_during

ALBUMS = [("Alpha", "First", 1991), ("Beta", "Second", 1992), ("Gamma", "Third", 1993)]
# Where the tests' temp dirs live must be a filesystem whose syncfs flushes (ext4, xfs, overlay...).
group_commit = pytest.mark.skipif(not GroupCommit.available(tempfile.gettempdir()),
                                  reason="no group commit on this filesystem: every call is durable on its own")


def stage(dirs) -> tuple[object, list[tuple]]:
    for artist, name, year in ALBUMS:
        album(dirs["inbound"], artist, name, year, ["One", "Two", "Three"])
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    return events_during(lambda: stage_albums(scan.scan_db, str(dirs["staging"]), workers=2))


def album_dirs(staging) -> list[str]:
    return sorted(os.path.dirname(os.path.join(d, SIDECAR_NAME)) for d, _, names in os.walk(staging)
                  if SIDECAR_NAME in names)


def positions(events, kind: str, match) -> list[int]:
    return [i for i, e in enumerate(events) if e[0] == kind and match(e)]


@group_commit
def test_every_step_of_a_batch_is_durable_before_the_next_begins(dirs):
    result, events = stage(dirs)
    assert result.files_moved == 9 and result.albums_success == 3
    staging, inbound = str(dirs["staging"]), str(dirs["inbound"])
    syncs = positions(events, "melodee.syncfs", lambda e: True)
    assert not positions(events, "melodee.fsync", lambda e: True), "a group commit fsyncs nothing on its own"
    assert 3 <= len(syncs) <= 6, syncs  # one batch: a barrier per step, not ten fsyncs an album

    def synced_between(a: int, b: int) -> bool:
        return a < b and any(a < s < b for s in syncs)

    dirs_staged = album_dirs(staging)
    assert len(dirs_staged) == 3
    for album_dir in dirs_staged:
        rel = os.path.relpath(album_dir, staging)
        entry = journal._path(staging, rel)
        published = positions(events, "os.rename", lambda e: e[2] == entry)
        links = positions(events, "os.link", lambda e: os.path.dirname(e[2]) == album_dir)
        sources = {e[1] for e in events if e[0] == "os.link" and os.path.dirname(e[2]) == album_dir}
        unlinks = positions(events, "os.remove", lambda e: e[1] in sources and e[1].startswith(inbound))
        sidecar = positions(events, "os.rename", lambda e: e[2] == os.path.join(album_dir, SIDECAR_NAME))
        assert len(links) == 3 and len(unlinks) == 3 and len(sidecar) == 1 and len(published) == 2, rel
        moving, staged = published
        assert synced_between(moving, min(links)), f"{rel}: linked before its journal entry was durable"
        assert synced_between(max(links), min(unlinks)), f"{rel}: a source went before every link was durable"
        assert synced_between(max(unlinks), sidecar[0]), f"{rel}: sidecar named before its bytes were durable"
        assert sidecar[0] < staged and any(s > staged for s in syncs), f"{rel}: `staged` before its sidecar"


def test_without_syncfs_every_album_is_durable_on_its_own(dirs, monkeypatch):
    monkeypatch.setattr(GroupCommit, "available", staticmethod(lambda root: False))  # as on a system without syncfs
    result, events = stage(dirs)
    assert result.files_moved == 9 and result.albums_success == 3
    assert not positions(events, "melodee.syncfs", lambda e: True)
    for album_dir in album_dirs(str(dirs["staging"])):
        links = positions(events, "os.link", lambda e: os.path.dirname(e[2]) == album_dir)
        sources = {e[1] for e in events if e[0] == "os.link" and os.path.dirname(e[2]) == album_dir}
        unlinks = positions(events, "os.remove", lambda e: e[1] in sources)
        fsynced = positions(events, "melodee.fsync", lambda e: e[1] == album_dir)
        assert any(max(links) < f < min(unlinks) for f in fsynced), album_dir


@group_commit
@pytest.mark.parametrize("albums", [1, 40])
def test_a_failed_publish_fails_its_album_alone_and_the_next_run_finishes_it(dirs, albums):
    """A sidecar that cannot be named (a directory took its name after the files arrived): that
    album fails with the reason and keeps its `moving` entry; the others are staged. Once the
    name is free again, the next run finishes the album from its entry."""
    import shutil

    from melodee_pipeline.staging import stager

    for i in range(albums):
        album(dirs["inbound"], f"Artist {i}", "Record", 2000, ["One"])
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    staging = str(dirs["staging"])
    victim = os.path.join(staging, "A0", "Artist 0", "2000 - Record")
    blocker = os.path.join(victim, SIDECAR_NAME)
    finish = stager.AlbumStager._finish

    def finish_then_block(self, w):
        finish(self, w)  # the sidecar waits for the barrier to be named
        if os.path.join(staging, w.out.album_dir) == victim:
            os.makedirs(os.path.join(blocker, "not empty"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stager.AlbumStager, "_finish", finish_then_block)
        result = stage_albums(scan.scan_db, staging, workers=1)
    assert result.albums_failed == 1 and result.albums_success == albums - 1
    assert result.pending_rows == albums - 1
    assert journal.read(staging, os.path.relpath(victim, staging)).state == journal.MOVING
    assert os.listdir(dirs["inbound"]) == []  # its track is staged, only its sidecar is missing
    shutil.rmtree(blocker)
    again = stage_albums(scan.scan_db, staging, workers=1)  # recovery finishes it first
    assert again.recovered == 1
    assert sorted(os.listdir(victim)) == ["01 - One.mp3", SIDECAR_NAME]
    assert journal.read(staging, os.path.relpath(victim, staging)).state == journal.STAGED


def test_one_artist_spelled_in_two_letter_cases_shares_one_directory_within_a_batch(dirs):
    """A batch's directories are chosen before any of them exists: the spelling handed out first
    is the artist's for the rest of the run."""
    album(dirs["inbound"], "ABBA", "Arrival", 1976, ["One"])
    album(dirs["inbound"], "Abba", "Waterloo", 1974, ["Two"])
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    stage_albums(scan.scan_db, str(dirs["staging"]), workers=1)
    assert len(os.listdir(dirs["staging"] / "ABB")) == 1
    (artist,) = os.listdir(dirs["staging"] / "ABB")
    assert sorted(os.listdir(dirs["staging"] / "ABB" / artist)) == ["1974 - Waterloo", "1976 - Arrival"]


def failing_syncfs(monkeypatch, nth: int) -> None:
    """The nth syncfs reports a writeback error (EIO), as a failing disk does."""
    import errno

    from melodee_pipeline.staging import durability

    real, calls = durability.syncfs, []

    def syncfs(path):
        calls.append(path)
        if len(calls) == nth:
            raise OSError(errno.EIO, "Input/output error", path)
        real(path)

    monkeypatch.setattr(durability, "syncfs", syncfs)


@group_commit
def test_a_flush_that_fails_before_the_sources_go_keeps_every_source(dirs, monkeypatch):
    """Barriers of one batch: journal (syncs 1, 2), place (3), finish (4, 5). The place barrier
    fails: no source goes, every album fails with the reason, and the next run finishes them."""
    failing_syncfs(monkeypatch, 3)
    result, events = stage(dirs)
    assert result.albums_failed == 3 and result.pending_rows == 0
    assert not positions(events, "os.remove", lambda e: e[1].startswith(str(dirs["inbound"])))
    assert len([p for p in dirs["inbound"].rglob("*.mp3")]) == 9
    monkeypatch.undo()
    again = stage_albums(str(next(dirs["scans"].glob("scan_*.db"))), str(dirs["staging"]), workers=1)
    assert again.recovered == 9 and not list(dirs["inbound"].rglob("*.mp3"))  # files finished from the journal
    assert len(album_dirs(str(dirs["staging"]))) == 3


@group_commit
def test_a_flush_that_fails_after_publishing_keeps_the_rows_pending(dirs, monkeypatch):
    """The last flush of the finish barrier fails: the albums are reported failed, with the
    reason, but their sidecars and `staged` entries are there, so their rows are still recorded."""
    failing_syncfs(monkeypatch, 5)
    result, _ = stage(dirs)
    assert result.albums_failed == 3 and result.pending_rows == 3
    found, _ = journal.entries(str(dirs["staging"]))
    assert sorted(e.state for e in found) == [journal.STAGED] * 3


def test_a_full_disk_while_finishing_keeps_the_album_for_the_next_run(dirs, monkeypatch):
    """ENOSPC writing one album's `staged` entry: its sources are gone already, so nothing is
    rolled back; its `moving` entry stays, the run fails as full, and the next run finishes it."""
    import errno

    from melodee_pipeline.errors import StagingFull

    for i in range(3):
        album(dirs["inbound"], f"Artist {i}", "Record", 2000, ["One", "Two"])
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    staging, victim = str(dirs["staging"]), os.path.join("A1", "Artist 1", "2000 - Record")
    real = journal.replace_durably

    def full(final, data, tmp):
        if final == journal._path(staging, victim) and b'"staged"' in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(final, data, tmp)

    monkeypatch.setattr(journal, "replace_durably", full)
    with pytest.raises(StagingFull):
        stage_albums(scan.scan_db, staging, workers=1)
    assert journal.read(staging, victim).state == journal.MOVING
    monkeypatch.undo()
    again = stage_albums(scan.scan_db, staging, workers=1)
    assert again.recovered == 2 and journal.read(staging, victim).state == journal.STAGED  # its two files


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:45 / /mnt/music\\040box rw - fuse.sshfs nas:/music rw,user_id=0
41 27 0:46 / /srv/pool rw - fuse.mergerfs a:b rw
42 27 0:47 / /srv/nfs rw - nfs4 nas:/x rw
43 27 0:48 / /mnt/müsik rw - fuse.rclone remote: rw
"""


@pytest.mark.parametrize("device, path, kind, grouped", [
    ("254:0", "/srv/pool/staging", "ext4", True),  # the device decides
    ("0:99", "/", "ext4", True),
    ("0:99", "/srv/pool/staging", "fuse.mergerfs", False),  # else the longest mount point above
    ("0:99", "/mnt/music box/staging", "fuse.sshfs", False),
    ("0:47", "/elsewhere", "nfs4", False),
    ("0:99", "/mnt/müsik/staging", "fuse.rclone", False),  # mountinfo writes UTF-8 names as they are
])
def test_group_commit_only_where_syncfs_reaches_the_disk(device, path, kind, grouped):
    """A FUSE server never sees a syncfs, nor does an NFS or SMB server: there every call is
    fsync'd on its own."""
    from melodee_pipeline.staging.durability import SYNCFS_FLUSHES, mount_type

    assert mount_type(MOUNTINFO, device, path) == kind
    assert (kind in SYNCFS_FLUSHES) == grouped


def test_the_filesystem_of_a_real_directory_is_found(tmp_path):
    from melodee_pipeline.staging.durability import filesystem_type

    assert filesystem_type(str(tmp_path)) not in ("", "proc")


@group_commit
def test_a_cover_name_taken_before_the_barrier_is_never_claimed(dirs):
    """Someone puts a cover.png into the album directory between the step that extracted the
    embedded cover and the barrier that names it: the album fails this run (its sidecar, which
    would claim the cover, is not published), and the next run finishes it without the claim."""
    from melodee_pipeline.samples import embed_cover, png_bytes
    from melodee_pipeline.staging import stager

    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One"])
    embed_cover(str(tracks[0]), png_bytes(1))
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    staging, target = str(dirs["staging"]), dirs["staging"] / "BAN" / "Band" / "2001 - Record"
    finish = stager.AlbumStager._finish

    def finish_then_plant(self, w):
        finish(self, w)
        (target / "cover.png").write_bytes(png_bytes(2))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stager.AlbumStager, "_finish", finish_then_plant)
        result = stage_albums(scan.scan_db, staging, workers=1)
    assert result.albums_failed == 1 and "File exists" in sqlite_error(scan.scan_db)
    assert (target / "cover.png").read_bytes() == png_bytes(2) and not (target / SIDECAR_NAME).exists()
    stage_albums(scan.scan_db, staging, workers=1)
    doc = json.loads((target / SIDECAR_NAME).read_text())
    assert "cover_from_tags" not in doc["album"] and doc["album"]["image_count"] == 1
    assert (target / "cover.png").read_bytes() == png_bytes(2)


def sqlite_error(scan_db: str) -> str:
    import sqlite3

    return sqlite3.connect(scan_db).execute("SELECT error FROM albums").fetchone()[0]


@group_commit
@pytest.mark.parametrize("nth", [1, 4])  # the journal barrier's flush, the finish barrier's
def test_a_failed_barrier_leaves_no_temp_files(dirs, monkeypatch, nth):
    """Temp files that will never be published are removed, so the run's convergence check finds
    no debris (the next run would clear them, but this run's report would name them)."""
    from melodee_pipeline.convergence import temp_debris

    failing_syncfs(monkeypatch, nth)
    result, _ = stage(dirs)
    assert result.albums_failed == 3
    assert temp_debris(str(dirs["staging"])) == []


def test_a_mount_point_whose_name_is_not_utf8_is_read_too():
    """mountinfo is read with surrogateescape: a Latin-1 USB label must not break every run."""
    from melodee_pipeline.staging.durability import mount_type

    info = "27 1 254:0 / / rw - ext4 /dev/vda rw\n40 27 8:17 / /media/Caf\udce9 rw - vfat /dev/sdb1 rw\n"
    assert mount_type(info, "254:0", "/srv/staging") == "ext4"
    assert mount_type(info, "0:99", "/media/Caf\udce9/staging") == "vfat"


@pytest.mark.parametrize("release, version", [("6.1.0-18-amd64", (6, 1)), ("5.8.0", (5, 8)),
                                              ("4.18.0-513.el8.x86_64", (4, 18)), ("Darwin", (0, 0))])
def test_group_commit_needs_a_kernel_whose_syncfs_reports_errors(release, version):
    """Before Linux 5.8 a syncfs returned 0 even when writeback failed: no group commit there."""
    from melodee_pipeline.staging.durability import SYNCFS_REPORTS_ERRORS, kernel_version

    assert kernel_version(release) == version
    assert (version >= SYNCFS_REPORTS_ERRORS) == (release in ("6.1.0-18-amd64", "5.8.0"))
