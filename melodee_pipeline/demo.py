"""`melodee-pipeline demo`: a first run on the embedded default, with sample albums of real audio."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

from melodee_pipeline.libraries import add_library, list_libraries
from melodee_pipeline.samples import Tags, make_track

SAMPLE_ALBUMS = [
    ("Led Zeppelin", "Led Zeppelin IV (Remastered)", 1971, "Rock", ".flac", ["Black Dog", "Rock and Roll", "The Battle of Evermore"]),
    ("The Beatles", "Abbey Road", 1969, "Rock", ".mp3", ["Come Together", "Something", "Octopus's Garden"]),
    ("AC/DC", "Back in Black", 1980, "Hard Rock", ".ogg", ["Hells Bells", "Shoot to Thrill"]),
]


def write_samples(inbound: str) -> int:
    """Sample albums (one split over CD1/CD2) plus one untagged file that must stay in inbound."""
    count = 0
    for n, (artist, album, year, genre, ext, titles) in enumerate(SAMPLE_ALBUMS):
        folder = os.path.join(inbound, f"{artist.replace('/', '_')} - {album}")
        for i, title in enumerate(titles, 1):
            disc = 2 if n == 0 and i == len(titles) else 1
            sub = os.path.join(folder, f"CD{disc}") if n == 0 else folder
            make_track(os.path.join(sub, f"{i:02d} {title}{ext}"),
                       Tags(artist, album, title, artist, i, disc, year, genre), seed=n * 10 + i)
            count += 1
    make_track(os.path.join(inbound, "unsorted", "track without tags.wav"), Tags(), seed=99)
    count += 1
    # Pretend the copy finished an hour ago, so min_file_age_seconds does not hold them back.
    past = time.time() - 3600
    for root, _dirs, files in os.walk(inbound):
        for name in files:
            os.utime(os.path.join(root, name), (past, past))
    return count


def prepare(engine: sa.Engine, home: str) -> tuple[str, str]:
    """Inbound and staging libraries under `home` unless configured; sample files if inbound is empty."""
    with engine.begin() as conn:
        libs = {lib.type: lib.path for lib in list_libraries(conn)}
        for kind in ("inbound", "staging"):
            if kind not in libs:
                path = os.path.join(home, "library", kind)
                os.makedirs(path, exist_ok=True)
                add_library(conn, f"Demo {kind}", kind, path)
                libs[kind] = path
    inbound = libs["inbound"]
    if not any(files for _r, _d, files in os.walk(inbound)):
        print(f"writing sample albums into {inbound}")
        write_samples(inbound)
    return inbound, libs["staging"]
