"""Shared fixtures: a real PostgreSQL for every test and trees of real, tagged audio files.

Postgres is `MELODEE_TEST_DATABASE_URL` when set, else an embedded pgserver in a temp dir; every
test gets a fresh database in it, so tests never see each other's rows. Tests that write rows run
on Melodee's own table definitions and seeds (`melodee_schema.sql`, fixture `melodee_db`), not on
what `db init` creates: that is what a real installation looks like.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from melodee_pipeline.bootstrap import init_db
from melodee_pipeline.db.engine import psycopg2_url
from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline_tests.leftovers import left_behind, session_processes

MELODEE_SCHEMA_SQL = Path(__file__).with_name("melodee_schema.sql")


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory) -> str:
    url = os.environ.get("MELODEE_TEST_DATABASE_URL")
    if url:
        yield psycopg2_url(url)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(str(tmp_path_factory.mktemp("pg") / "data"), cleanup_mode="stop")
    url = psycopg2_url(server.get_uri())
    # A throwaway server: no fsync makes each test's CREATE/DROP DATABASE and commits several times
    # faster. A killed client (the crash suite) never depended on it; only a machine crash would.
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(sa.text(f"ALTER SYSTEM SET {setting} = off"))
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    admin.dispose()
    yield url
    server.cleanup()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url`, dropped afterwards; yields its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(pg_server_url) -> str:
    """A new, empty database for this test."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture
def engine(db_url) -> sa.Engine:
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


def load_melodee_schema(engine: sa.Engine) -> None:
    """Melodee's tables (users, settings, libraries, staging_items, albums, tracks) and its seeds:
    an admin user and, the settings table being empty, Melodee's default settings."""
    with engine.begin() as conn:
        conn.exec_driver_sql(MELODEE_SCHEMA_SQL.read_text())


@pytest.fixture
def melodee_db(engine) -> sa.Engine:
    """This test's database as a fresh Melodee leaves it; returns the `engine` fixture."""
    load_melodee_schema(engine)
    return engine


@pytest.fixture
def env(db_url, tmp_path, monkeypatch) -> dict:
    """Process environment pointing every command at this test's database and a temp home."""
    monkeypatch.setenv("MELODEE_DATABASE_URL", db_url)
    monkeypatch.setenv("MELODEE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return {"MELODEE_DATABASE_URL": db_url, "MELODEE_HOME": str(tmp_path / "home")}


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    """Empty inbound, staging and scan DB directories, for tests that need no database."""
    d = {k: tmp_path / k for k in ("inbound", "staging", "scans")}
    for p in d.values():
        p.mkdir()
    return d


@pytest.fixture
def libs(melodee_db, tmp_path) -> dict[str, Path]:
    """A Melodee database after `db init`, with inbound and staging libraries and a scan DB dir
    outside both; returns their paths ("inbound", "staging", "scandbs").

    Every `staging_scan.*` key has a row (Melodee seeds six, `db init` adds the rest), so tests may
    UPDATE any of them. Melodee seeds `dry_run=true`: it is set false here so runs are real.
    """
    from melodee_pipeline.libraries import add_library
    from melodee_pipeline.settings import set_setting

    engine = melodee_db
    init_db(engine)
    paths = {k: tmp_path / k for k in ("inbound", "staging", "scandbs")}
    for p in paths.values():
        p.mkdir()
    with engine.begin() as conn:
        add_library(conn, "Inbound", "inbound", str(paths["inbound"]))
        add_library(conn, "Staging", "staging", str(paths["staging"]))
        set_setting(conn, "staging_scan.scan_db_data_path", str(paths["scandbs"]))
        set_setting(conn, "staging_scan.min_file_age_seconds", "0")
        set_setting(conn, "staging_scan.workers", "2")
        set_setting(conn, "staging_scan.dry_run", "false")
    return paths


def age(root: Path, seconds: float = 3600) -> None:
    """Backdate every file under root, as if the copy into inbound finished long ago."""
    past = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (past, past), follow_symlinks=False)


def album(root: Path, artist: str, name: str, year: int, titles: list[str], ext: str = ".mp3",
          folder: str | None = None, disc: int | None = None, seed: int = 0, albumartist: str | None = None,
          first_track: int = 1) -> list[Path]:
    """Write one album of real tagged audio under root/folder; returns the file paths."""
    base = root / (folder or f"{artist} - {name}".replace("/", "_"))
    out = []
    for i, title in enumerate(titles, first_track):
        path = base / f"{i:02d} {title.replace('/', '_')}{ext}"
        make_track(str(path), Tags(artist, name, title, albumartist, i, disc, year, "Rock"), seed=seed + i)
        out.append(path)
    return out


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 -> relative path of every file: proves bytes neither vanish nor change."""
    from melodee_pipeline.scan.tags import sha256_file

    files = {}
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                if not os.path.islink(p):
                    files[os.path.relpath(p, root.parent)] = sha256_file(p)
    return files


def tree(root: Path) -> dict[str, int]:
    """relative path -> size of every entry, for "nothing changed" assertions."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p).st_size if n in names else -1
    return out


def run_together(commands: list[list[str]], timeout: float = 180) -> list[str]:
    """Run independent commands at once (e.g. headless Chromium loading several pages); their stdouts."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for c in commands]
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


_opened: list[str] | None = None  # set while opened_during() records opens
_events: list[tuple] | None = None  # set while events_during() records file operations
FILE_EVENTS = {"os.link", "os.rename", "os.remove", "melodee.syncfs", "melodee.fsync"}


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))
    if _events is not None and event in FILE_EVENTS:
        _events.append((event, *(os.fsdecode(a) if isinstance(a, (str, bytes)) else a for a in args[:2])))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only inside opened_during()


def opened_during(fn) -> tuple[object, list[str]]:
    """Run fn; return its result and every path this process opened meanwhile (builtin `open` and
    `os.open`). Work in other processes is not seen: run it with workers=1."""
    global _opened
    _opened = []
    try:
        return fn(), list(_opened)
    finally:
        _opened = None


def events_during(fn) -> tuple[object, list[tuple]]:
    """Run fn; return its result and, in order, the links, renames (os.replace too), unlinks,
    syncfs and fsync calls this process made meanwhile: (event, path[, second path])."""
    global _events
    _events = []
    try:
        return fn(), list(_events)
    finally:
        _events = None


SUMMARIES = pytest.StashKey[list]()
SESSION_PROCESSES = pytest.StashKey[tuple]()
LEFT_BEHIND = pytest.StashKey[list]()


@pytest.fixture(scope="session", autouse=True)
def processes_before_the_session(tmp_path_factory, request):
    """Set up before any other fixture: what runs already is not the session's doing."""
    base = tmp_path_factory.getbasetemp()
    request.config.stash[SESSION_PROCESSES] = (base, session_processes(base))


def pytest_sessionfinish(session, exitstatus):
    """Every server, CLI and worker a test started is gone once the fixtures are torn down;
    a leftover fails the session."""
    if SESSION_PROCESSES not in session.config.stash:
        return
    base, before = session.config.stash[SESSION_PROCESSES]
    leftovers = left_behind(base, before)
    if leftovers:
        session.config.stash[LEFT_BEHIND] = leftovers
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for line in config.stash.get(SUMMARIES, []):
        terminalreporter.write_line(line)
    leftovers = config.stash.get(LEFT_BEHIND, [])
    if leftovers:
        terminalreporter.write_line(f"FAILED: {len(leftovers)} process(es) the tests started are still running:", red=True)
        for line in leftovers:
            terminalreporter.write_line(f"  {line}", red=True)


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs: another filesystem than inbound, so staging copies and needs space."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def full_disk_setup(libs, count: int, seconds: float = 5) -> None:
    """`count` one-track albums of ~0.45 MB WAV each: a few fit in 3 MiB, not all."""
    for i in range(count):
        make_track(str(libs["inbound"] / f"Artist {i} - Album {i}" / "01 One.wav"),
                   Tags(f"Artist {i}", f"Album {i}", "One", None, 1, None, 2000 + i), seed=i, seconds=seconds)
    age(libs["inbound"])


@pytest.fixture(params=["threads", "processes"])
def staging_mode(request, monkeypatch):
    """A test twice: albums staged on threads of the run's process (a small run), and in worker
    processes (a big one; forced here from the first album)."""
    if request.param == "processes":
        from melodee_pipeline.staging import stage

        monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    return request.param


def inbound_read_only(monkeypatch, inbound: Path) -> None:
    """Deleting under `inbound` fails as on a read-only mount (root ignores permission bits)."""
    import errno

    root, real_unlink = os.fsencode(inbound), os.unlink

    def unlink(path, *args, **kwargs):
        if os.fsencode(path).startswith(root + b"/"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
