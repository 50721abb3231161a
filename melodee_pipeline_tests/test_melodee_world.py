"""The staging cycle end to end on Melodee's own tables and seeds, with an inbound that mixes normal
albums with poison pills and a directory Melodee's Go processor wrote, and the admin's decisions."""

from __future__ import annotations

import json
import os

import dagster as dg
import mutagen
import sqlalchemy as sa
from mutagen.id3 import ID3, TRCK

from melodee_pipeline.definitions import defs
from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline.staging.sidecar import checksum
from melodee_pipeline_tests.conftest import age, album, snapshot

SIDECAR = "album.melodee.json"
CJK = "東京事変" * 750  # 3000 characters, 9000 bytes of UTF-8


def run():
    instance = dg.DagsterInstance.ephemeral()
    result = defs.get_job_def("staging_scan_job").execute_in_process(instance=instance, raise_on_error=False)
    result.log_messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def rows(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT staging_path, artist_name, album_name, track_count, status, notes, scan_id "
                                     "FROM staging_items")).all()
    return {r[0]: tuple(r[1:]) for r in found}


def go_written_album(staging, engine) -> str:
    """An album directory and row exactly as Melodee's Go processor leaves them."""
    rel = "DP/Deep Purple/1972 - Machine Head"
    album_dir = staging / rel
    make_track(str(album_dir / "01 - Highway Star.mp3"), Tags("Deep Purple", "Machine Head", "Highway Star", None, 1, None, 1972), seed=70)
    doc = {
        "version": "1.0", "processed_at": "2026-11-01T10:00:00Z", "scan_id": "scan_20261101_100000",
        "artist": {"name": "Deep Purple", "name_normalized": "deep purple", "directory_code": "DP"},
        "album": {"name": "Machine Head", "name_normalized": "machine head", "album_type": "Album", "genres": ["Rock"],
                  "is_compilation": False, "image_count": 0, "year": 1972},
        "tracks": [{"track_number": 1, "disc_number": 1, "name": "Highway Star", "duration": 500,
                    "file_path": f"{rel}/01 - Highway Star.mp3", "file_size": os.path.getsize(album_dir / "01 - Highway Star.mp3"),
                    "bitrate": 128, "sample_rate": 44100, "checksum": "", "original_path": "/old/inbound/highway.mp3"}],
        "status": "pending_review", "validation": {"is_valid": True, "errors": [], "warnings": []},
    }
    data = json.dumps(doc, indent=2).encode()
    (album_dir / SIDECAR).write_bytes(data)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO staging_items (scan_id, staging_path, metadata_file, artist_name, album_name, track_count, "
            "total_size, processed_at, status, notes, checksum) VALUES ('scan_20261101_100000', :p, :m, 'Deep Purple', "
            "'Machine Head', 1, 1, now(), 'pending_review', '', :c)"),
            {"p": str(album_dir), "m": str(album_dir / SIDECAR), "c": checksum(data)})
    return str(album_dir)


def poison_inbound(inbound) -> None:
    album(inbound, "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(inbound, "Pink Floyd", "Animals", 1977, ["Dogs"], ".ogg", seed=10)
    for ext, seed in ((".flac", 20), (".m4a", 21)):  # NUL inside Vorbis and MP4 tags
        path = inbound / "evil" / f"track{ext}"
        make_track(str(path), Tags("x", "Poison", f"Bad {ext}", None, 1 if ext == ".flac" else 2, None, 2001), seed=seed)
        f = mutagen.File(path)
        f["artist" if ext == ".flac" else "\xa9ART"] = ["Evil\x00Artist"]
        f.save()
    huge = inbound / "huge" / "01 Big.mp3"  # a 20-digit track number
    make_track(str(huge), Tags("Numbers", "Overflow", "Big", None, None, None, 1999), seed=30)
    tags = ID3(huge)
    tags.add(TRCK(encoding=3, text="12345678901234567890"))
    tags.save()
    make_track(str(inbound / "cjk" / "01 Long.mp3"), Tags(CJK, "Long Name", "Long", None, 1, None, 2005), seed=40)
    make_track(str(inbound / "cyr" / "01 Long.flac"), Tags("Д" * 3000, "Ж" * 3000, "Long", None, 1, None, 2006), seed=41)
    make_track(str(inbound / "Machine Head new" / "02 Maybe.mp3"),
               Tags("Deep Purple", "Machine Head", "Maybe I'm a Leo", None, 2, None, 1972), seed=71)
    (inbound / "notes.mp3").write_bytes(b"not audio" * 100)


def test_poison_pills_and_a_go_written_album_on_melodees_schema(env, libs, engine):
    go_dir = go_written_album(libs["staging"], engine)
    poison_inbound(libs["inbound"])
    age(libs["inbound"])

    first = run()
    assert first.success, first.log_messages
    staged = rows(engine)
    by_artist = {v[0]: (k, v) for k, v in staged.items()}
    assert {"Led Zeppelin", "Pink Floyd", "EvilArtist", "Numbers", "Deep Purple"} <= set(by_artist)
    # The Go-written directory was recognised and merged into: one album, one row, two tracks.
    assert staged[go_dir][2] == 2 and len([k for k in staged if "Machine Head" in k]) == 1
    doc = json.loads((libs["staging"] / go_dir / SIDECAR).read_text())
    assert [t["name"] for t in doc["tracks"]] == ["Highway Star", "Maybe I'm a Leo"]
    # NUL removed everywhere; both poisoned files are one album.
    evil_dir, evil = by_artist["EvilArtist"]
    assert evil[2] == 2 and "\x00" not in json.dumps(json.loads((libs["staging"] / evil_dir / SIDECAR).read_text()))
    # A 20-digit track number is treated as missing, with the reason in the sidecar.
    numbers = json.loads((libs["staging"] / by_artist["Numbers"][0] / SIDECAR).read_text())
    assert numbers["tracks"][0]["track_number"] == 0
    assert any("12345678901234567890" in w for w in numbers["validation"]["warnings"]), numbers["validation"]
    # Names too long for Melodee's artist/album index: shortened in the row, whole in the sidecar.
    long_rows = [(k, v) for k, v in staged.items() if v[0].startswith(("東京事変", "Д"))]
    assert len(long_rows) == 2
    for path, (artist, album_name, *_rest) in long_rows:
        assert len(artist.encode()) + len(album_name.encode()) <= 2704
        doc = json.loads((libs["staging"] / path / SIDECAR).read_text())
        assert doc["artist"]["name"] in (CJK, "Д" * 3000) and artist == doc["artist"]["name"][:len(artist)]
    # Go's names and values.
    for path, (_a, _b, _n, status, notes, scan_id) in staged.items():
        if path != go_dir:
            assert (status, notes) == ("pending_review", "") and scan_id.startswith("scan_")
    lz = json.loads((libs["staging"] / by_artist["Led Zeppelin"][0] / SIDECAR).read_text())
    assert lz["artist"]["name_normalized"] == "led zeppelin" and lz["album"]["name_normalized"] == "iv"
    assert lz["album"]["album_type"] == "Album" and lz["scan_id"] == staged[by_artist["Led Zeppelin"][0]][5]
    # The file that is not audio stays in inbound, with its reason.
    assert (libs["inbound"] / "notes.mp3").exists()

    # A second run changes nothing.
    trees = snapshot(libs["inbound"], libs["staging"])
    second = run()
    assert second.success and rows(engine) == staged and snapshot(libs["inbound"], libs["staging"]) == trees


def test_an_album_the_admin_rejected_and_deleted_stays_deleted_until_it_gains_tracks(env, libs, engine):
    one = album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".mp3")[0].read_bytes()
    album(libs["inbound"], "Other", "Disc", 2002, ["Three"], ".mp3", seed=5)
    age(libs["inbound"])
    assert run().success
    record_dir = str(libs["staging"] / "BAN" / "Band" / "2001 - Record")
    with engine.begin() as conn:  # Melodee's review flow: reject (reviewed_by the seeded admin), then delete
        conn.execute(sa.text("UPDATE staging_items SET status = 'rejected', reviewed_by = 1, reviewed_at = now() "
                             "WHERE staging_path = :p"), {"p": record_dir})
        conn.execute(sa.text("DELETE FROM staging_items WHERE staging_path = :p"), {"p": record_dir})
    # Runs with nothing new, and a run that touches another album, leave it deleted.
    album(libs["inbound"], "Other", "Disc", 2002, ["Four"], ".mp3", seed=6, first_track=2)
    age(libs["inbound"])
    for _ in range(2):
        assert run().success
        assert record_dir not in rows(engine) and (libs["staging"] / record_dir / SIDECAR).exists()
    # The same file dropped in again is already staged: no new track, no new review.
    (libs["inbound"] / "again").mkdir()
    (libs["inbound"] / "again" / "01 One.mp3").write_bytes(one)
    age(libs["inbound"])
    assert run().success and record_dir not in rows(engine)
    # A new track of it arrives: a new review.
    album(libs["inbound"], "Band", "Record", 2001, ["Three"], ".mp3", seed=9, first_track=3)
    age(libs["inbound"])
    assert run().success
    assert rows(engine)[record_dir][2:4] == (3, "pending_review")
