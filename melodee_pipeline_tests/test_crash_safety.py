"""Fault injection (issue #5 and the convergence issue): SIGKILL a real cycle at every crash point
and at random moments, change inbound or not, rerun, and prove that nothing was lost, nothing
duplicated, each album sits in one directory, and the trees and rows converged.

The interrupted run is a real CLI process; the next run calls what `scan-inbound` and
`process-scan` call, in this process (an interpreter start per run was most of the suite's time).
Scenarios run `WORKERS` at a time, each on a database of its own."""

from __future__ import annotations

import logging
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa

from melodee_pipeline import cycle
from melodee_pipeline.bootstrap import init_db
from melodee_pipeline.lock import holder, staging_lock
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.scan.tags import sha256_file
from melodee_pipeline_tests.conftest import SUMMARIES, age, album, fresh_database, snapshot
from melodee_pipeline_tests.invariants import converged, file_hashes, lost

WORKERS = 4
LOG = logging.getLogger("melodee_pipeline_tests.crash")
LOG.addHandler(logging.NullHandler())  # a hundred reruns' warnings would bury a failure's report
LOG.propagate = False
JUNK = "junk.mp3"


def _write_main(root: Path) -> None:
    album(root, "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac", folder="LZ/CD1", disc=1)
    album(root, "Led Zeppelin", "IV", 1971, ["Stairway", "Misty"], ".mp3", folder="LZ/CD2", disc=2, seed=10)
    album(root, "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep", "Pigs", "Wind"], ".ogg", seed=20)
    album(root, "AC/DC", "Back in Black", 1980, ["Hells Bells", "Shoot to Thrill", "Back in Black"], ".wav", seed=30)
    (root / JUNK).write_bytes(b"not audio at all" * 64)


def _write_years(root: Path) -> None:
    """One album whose tracks disagree on the year: the vote depends on what inbound still holds."""
    for n, (year, title) in enumerate([(1979, "In the Flesh"), (2011, "Mother"), (1979, "Hey You")], 1):
        album(root, "Pink Floyd", "The Wall", year, [title], ".mp3", folder="Wall", first_track=n, seed=40)


def _write_cases(root: Path) -> None:
    """One album whose tracks spell artist and album in different letter case."""
    spellings = [("Pink Floyd", "The Wall", "In the Flesh"), ("pink floyd", "the wall", "Mother"),
                 ("Pink Floyd", "The Wall", "Hey You")]
    for n, (artist, name, title) in enumerate(spellings, 1):
        album(root, artist, name, 1979, [title], ".flac", folder="wall", first_track=n, seed=50)


def _write_single(root: Path) -> None:
    album(root, "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep", "Pigs", "Wind"], ".ogg", folder="Animals", seed=20)


def _add_track(inbound: Path) -> None:
    """A track of `_write_single`'s album that arrives after the crash: same tags, same year."""
    album(inbound, "Pink Floyd", "Animals", 1977, ["Pigs Reprise"], ".ogg", folder="Animals", first_track=5, seed=20)


TEMPLATES = {"main": _write_main, "years": _write_years, "cases": _write_cases, "single": _write_single}


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, write in TEMPLATES.items():
        root = tmp_path_factory.mktemp(f"template-{name}") / "inbound"
        root.mkdir()
        write(root)
        age(root)
        out[name] = root
    return out


@dataclass(frozen=True)
class Scenario:
    template: str
    point: str | None  # MELODEE_CRASH_AT; None with kill_after: a kill at a random moment
    kill_after: float | None = None
    cross_fs: bool = False
    change: str | None = None  # "remove" / "add": inbound changes between the crash and the rerun

    def __str__(self) -> str:
        moment = self.point or f"kill after {self.kill_after:.2f}s"
        return " ".join(x for x in (self.template, "cross-fs" if self.cross_fs else "same-fs", moment, self.change) if x)


@dataclass
class Dirs:
    inbound: Path
    staging: Path
    scans: Path
    env: dict  # the commands' environment: this scenario's database and MELODEE_HOME


def cross_fs_root() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat("/tmp").st_dev:
        return shm
    return None


# Running the commands ------------------------------------------------------------------------

def cli(args: list[str], env: dict, crash: str | None = None) -> subprocess.Popen:
    env = {**env, "MELODEE_CRASH_AT": crash} if crash else env
    return subprocess.Popen([sys.executable, "-m", "melodee_pipeline.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, deadline: float | None = None) -> tuple[bool, str]:
    """Wait for `proc`, SIGKILLing it at `deadline`; (killed, stdout). A failure other than the kill fails."""
    try:
        proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == -signal.SIGKILL:
        return True, out
    assert proc.returncode == 0, err
    return False, out


def scan_args(d: Dirs) -> list[str]:
    return ["scan-inbound", "--path", str(d.inbound), "--output", str(d.scans), "--workers", "2", "--min-file-age", "0"]


def process_args(d: Dirs, scan_db: str, rate: int = 0) -> list[str]:
    return ["process-scan", "--scan", scan_db, "--staging", str(d.staging), "--workers", "2", "--rate-limit", str(rate)]


def scan_here(d: Dirs) -> str:
    """What `scan-inbound` does, in this process; the scan DB's path."""
    return scan_inbound(str(d.inbound), str(d.scans), workers=1, min_file_age_seconds=0, keep_scan_dbs=None,
                        logger=LOG).scan_db


def crash(s: Scenario, d: Dirs) -> bool:
    """The interrupted cycle; True if a kill ended it."""
    if s.kill_after is not None:  # both commands as a user runs them, killed at a random moment
        deadline = time.monotonic() + s.kill_after
        killed, scan_db = finish(cli(scan_args(d), d.env), deadline)
        return killed or finish(cli(process_args(d, scan_db.strip(), rate=20), d.env), deadline)[0]
    if s.point.startswith("scanned_file"):
        return finish(cli(scan_args(d), d.env, s.point))[0]
    return finish(cli(process_args(d, scan_here(d)), d.env, s.point))[0]


def wait_for_the_lock(engine: sa.Engine, timeout: float = 30) -> None:
    """A killed run's Postgres session ends, and its staging lock goes, a moment after the kill."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while (held_by := holder(conn)) is not None:
            assert time.monotonic() < deadline, f"the staging lock is still held by {held_by}"
            time.sleep(0.02)


def rerun(d: Dirs, engine: sa.Engine) -> cycle.StageResult:
    """The next, undisturbed cycle: `scan-inbound` then `process-scan`, in this process."""
    wait_for_the_lock(engine)
    run = cycle.run_from_scan_db(scan_here(d), str(d.staging), workers=2, rate_limit=0, dry_run=False)
    with staging_lock(engine, "rerun"):
        return cycle.stage_scan(run, engine, LOG)[1]


# Running many scenarios at once --------------------------------------------------------------

@contextmanager
def database_pool(server_url: str, size: int) -> Iterator[queue.Queue]:
    """`size` initialised databases, one per concurrent scenario; each (url, engine) is taken and put back."""
    pool: queue.Queue = queue.Queue()
    with ExitStack() as stack:
        for _ in range(size):
            url = stack.enter_context(fresh_database(server_url))
            engine = sa.create_engine(url)
            stack.callback(engine.dispose)
            init_db(engine)
            pool.put((url, engine))
        yield pool


def run_all(scenarios: list, body: Callable, server_url: str, base: Path) -> list:
    """`body(scenario, dirs, engine)` for every scenario, WORKERS at a time, each in fresh
    directories and a database with no rows; a scenario's exception is its result."""
    shm = cross_fs_root()

    def one(i_s):
        i, s = i_s
        url, engine = pool.get()
        root = base / f"s{i:03d}"
        inbound_root = (shm / f"melodee-crash-{os.getpid()}-{i:03d}") if getattr(s, "cross_fs", False) else root
        d = Dirs(inbound_root / "inbound", root / "staging", root / "scans",
                 {**os.environ, "MELODEE_DATABASE_URL": url, "MELODEE_HOME": str(root / "home")})
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("TRUNCATE staging_items"))
            d.staging.mkdir(parents=True)
            return body(s, d, engine)
        except Exception:
            return f"{s}: {traceback.format_exc(limit=-3)}"
        finally:
            pool.put((url, engine))
            if inbound_root != root:
                shutil.rmtree(inbound_root, ignore_errors=True)

    with database_pool(server_url, WORKERS) as pool, ThreadPoolExecutor(WORKERS) as ex:
        return list(ex.map(one, enumerate(scenarios)))


# The sweep -----------------------------------------------------------------------------------

def valid_and_invalid(root: Path) -> tuple[Counter, Counter]:
    hashes = file_hashes(root)
    invalid = Counter({sha256_file(root / JUNK): 1}) if (root / JUNK).exists() else Counter()
    return Counter({h: n for h, n in hashes.items() if h not in invalid}), invalid


def change_inbound(change: str | None, d: Dirs, valid: Counter) -> None:
    """Between the crash and the rerun. "remove": one inbound file of the album goes (its bytes
    count as lost only if they were nowhere in staging yet); "add": a new track of it arrives."""
    if change == "add":
        _add_track(d.inbound)
        valid.update(file_hashes(d.inbound) - valid)
    elif change == "remove":
        staged = file_hashes(d.staging)
        # Inbound holds only the album (`_write_single`); a file not moved yet goes first.
        left = sorted((p for p in d.inbound.rglob("*") if p.is_file()), key=lambda p: (sha256_file(p) in staged, p.name))
        assert left, "nothing of the album left in inbound to remove"
        h = sha256_file(left[0])
        left[0].unlink()
        if h not in staged:
            valid -= Counter({h: 1})


def sweep(templates: dict[str, Path]) -> Callable:
    def body(s: Scenario, d: Dirs, engine) -> tuple[int, object]:
        shutil.copytree(templates[s.template], d.inbound)
        valid, invalid = valid_and_invalid(d.inbound)
        assert crash(s, d) or s.point is None, f"{s.point} was never reached"
        after_crash = lost(valid + invalid, d.inbound, d.staging)
        change_inbound(s.change, d, valid)
        rerun(d, engine)
        return after_crash, converged(valid, invalid, d.inbound, d.staging, engine)
    return body


def crash_points(cross_fs: bool, files: int) -> list[str]:
    points = [f"scanned_file:{n}" for n in (1, 5, 12)]
    points += [f"after_journal:{n}" for n in (1, 2, 3)]
    points += [f"after_place:{n}" for n in range(1, files + 1)]
    points += [f"before_unlink_sources:{n}" for n in (1, 2, 3)]
    points += [f"after_unlink:{n}" for n in range(1, files + 1, 1 if not cross_fs else 3)]
    points += [f"before_sidecar:{n}" for n in (1, 3)]
    points += [f"publish:{n}" for n in (1, 2, 4, 6, 7)]  # a group commit's barrier: journal entries, sidecars
    points += ["before_record:1"]
    if cross_fs:
        points += [f"copy_written:{n}" for n in range(1, files + 1, 2)]
    return points


def scenarios(cross_fs: bool) -> list[Scenario]:
    rnd = random.Random(1234)
    out = [Scenario("main", None, kill_after=rnd.uniform(0.3, 2.5)) for _ in range(10)]  # first: they mostly wait
    out += [Scenario("main", p) for p in crash_points(False, 11)]
    # Albums whose tracks disagree on year or letter case, at every point within them.
    within = ["after_journal:1"] + [f"{p}:{n}" for p in ("after_place", "after_unlink") for n in (1, 2, 3)]
    out += [Scenario(t, p) for t in ("years", "cases") for p in within]
    # Inbound changes between the crash and the rerun.
    # (Once every source is unlinked, from before_sidecar on, nothing of the album is left to remove.)
    moving = ["after_journal:1", "after_place:2", "before_unlink_sources:1", "after_unlink:2"]
    out += [Scenario("single", p, change="remove") for p in moving]
    out += [Scenario("single", p, change="add") for p in moving + ["before_sidecar:1", "before_record:1"]]
    if cross_fs:
        out += [Scenario("main", p, cross_fs=True) for p in crash_points(True, 11)]
        out += [Scenario(t, f"copy_written:{n}", cross_fs=True) for t in ("years", "cases") for n in (1, 2, 3)]
        out += [Scenario("single", "copy_written:2", cross_fs=True, change=c) for c in ("remove", "add")]
    return out


def test_sigkill_at_every_crash_point_loses_nothing_and_converges(templates, pg_server_url, tmp_path, request):
    main_valid, _ = valid_and_invalid(templates["main"])
    assert sum(main_valid.values()) == 11
    todo = scenarios(cross_fs_root() is not None)
    results = run_all(todo, sweep(templates), pg_server_url, tmp_path)

    failures, files_lost, dup_rows = [], 0, 0
    for s, result in zip(todo, results):
        if isinstance(result, str):
            failures.append(result)
            continue
        after_crash, report = result
        files_lost += after_crash + report.lost
        dup_rows += report.duplicate_rows
        if after_crash or not report.ok:
            failures.append(f"{s}: lost after crash {after_crash}, {report}")
    summary = f"crash points: {len(todo)} tried, {files_lost} files lost, {dup_rows} duplicate rows"
    request.config.stash.setdefault(SUMMARIES, []).append(summary)
    print(summary)
    assert not failures, "\n".join(failures)
    assert len(todo) >= 60


# The same, old scan DB again -----------------------------------------------------------------

def state(d: Dirs, engine) -> tuple:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM staging_items ORDER BY staging_path")).all()
    return snapshot(d.staging), snapshot(d.inbound), [tuple(r) for r in rows]


def process_scan_again(d: Dirs, engine, scan_db: str) -> str:
    """`process-scan` on an old scan DB: a success in which no album and no file failed; its output."""
    wait_for_the_lock(engine)
    out = finish(cli(process_args(d, scan_db), d.env))[1]
    assert re.search(r"^albums \d+, staged \d+, failed 0(, with warnings for the reviewer \d+)?; files moved \d+, .*, failed 0(;|$)", out, re.M), out
    return out


def old_scan_db(templates: dict[str, Path]) -> Callable:
    def body(point: str | None, d: Dirs, engine) -> str | None:
        shutil.copytree(templates["main"], d.inbound)
        valid, invalid = valid_and_invalid(d.inbound)
        scan_db = scan_here(d)
        killed = finish(cli(process_args(d, scan_db), d.env, point))[0]
        assert killed == (point is not None)
        first = state(d, engine)
        process_scan_again(d, engine, scan_db)  # after a crash: this run finishes the album
        report = converged(valid, invalid, d.inbound, d.staging, engine)
        assert report.ok, report
        settled = state(d, engine)
        if point is None:
            assert settled == first, "a rerun on the old scan DB changed a staged tree that was right"
        out = process_scan_again(d, engine, scan_db)
        # Every source is gone and its bytes sit at the planned destination: already staged.
        assert f"files moved 0, duplicates (already staged) {sum(valid.values())}, " in out, out
        assert state(d, engine) == settled, "a second rerun on the old scan DB changed what the first one left"
    return body


def test_process_scan_again_on_the_old_scan_db_changes_nothing_that_is_right(templates, pg_server_url, tmp_path):
    points = [None, "after_journal:2", "after_place:3", "after_unlink:5", "before_sidecar:1", "before_record:1"]
    failures = [r for r in run_all(points, old_scan_db(templates), pg_server_url, tmp_path) if r]
    assert not failures, "\n".join(failures)


# Dagster --------------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["after_place:3", "before_record:1"])
def test_sigkill_during_a_dagster_run_converges_on_the_next_run(point, templates, env, libs, engine, db_url, tmp_path):
    shutil.rmtree(libs["inbound"])
    shutil.copytree(templates["main"], libs["inbound"])
    valid, invalid = valid_and_invalid(templates["main"])
    run_env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": db_url}
    crashed = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env={**run_env, "MELODEE_CRASH_AT": point},
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL
    assert lost(valid + invalid, libs["inbound"], libs["staging"]) == 0
    again = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=run_env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = converged(valid, invalid, libs["inbound"], libs["staging"], engine)
    assert report.ok, report
