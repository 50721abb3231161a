"""`melodee-pipeline demo`: a first run with sample albums of real audio, in a sandbox.

Everything the demo writes is its own: directories under `$MELODEE_HOME/demo` and the database
`melodee_demo` in the embedded server, whatever `MELODEE_DATABASE_URL` says. So it cannot touch a
configured inbound, staging or Melodee database, and `libraries add` works right after it."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from melodee_pipeline.errors import UserError
from melodee_pipeline.libraries import add_library
from melodee_pipeline.samples import Tags, make_track

DEMO_DIR = "demo"
DEMO_DATABASE = "melodee_demo"
DEMO_DAGSTER_DATABASE = "dagster_demo"  # the demo's run history and asset materialisations
MARKER = ".melodee-pipeline-demo"


@dataclass(frozen=True)
class Demo:
    database_url: str
    inbound: str
    staging: str
    scan_db_dir: str
    dagster_home: str


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


def prepare(home: Path) -> Demo:
    """A fresh demo under `home`/demo with its own database `melodee_demo` in the embedded server:
    inbound and staging libraries, a scan DB directory and the sample albums. Configured
    libraries, settings and the configured database are never read or written; a second demo
    starts over from scratch."""
    from melodee_pipeline.db.engine import embedded_url, get_engine
    from melodee_pipeline.bootstrap import init_db

    root = home / DEMO_DIR
    if root.exists():
        if not (root / MARKER).exists():
            raise UserError(f"{root} exists but was not written by `melodee-pipeline demo`; move it away to run the demo")
        shutil.rmtree(root)
    admin = sa.create_engine(embedded_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for database in (DEMO_DATABASE, DEMO_DAGSTER_DATABASE):  # its rows and its run history
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()
    url = embedded_url(DEMO_DATABASE)
    demo = Demo(url, str(root / "inbound"), str(root / "staging"), str(root / "scan-db"), str(root / "dagster"))
    for path in (demo.inbound, demo.staging, demo.scan_db_dir):
        os.makedirs(path)
    (root / MARKER).write_text("written by `melodee-pipeline demo`; removed by the next demo\n")
    engine = get_engine(url)
    init_db(engine)
    with engine.begin() as conn:
        add_library(conn, "Demo inbound", "inbound", demo.inbound)
        add_library(conn, "Demo staging", "staging", demo.staging)
    engine.dispose()
    write_samples(demo.inbound)
    return demo
