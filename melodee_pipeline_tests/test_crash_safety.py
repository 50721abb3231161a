"""Fault injection (issue #5): SIGKILL a real cycle at every crash point and at random moments,
rerun, and prove that nothing was lost, nothing duplicated, and the trees and rows converged."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from melodee_pipeline.bootstrap import init_db
from melodee_pipeline.scan.tags import sha256_file
from melodee_pipeline_tests.conftest import SUMMARIES, age, album
from melodee_pipeline_tests.invariants import converged, file_hashes, lost

VALID_FILES = 11


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "inbound"
    album(root, "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac", folder="LZ/CD1", disc=1)
    album(root, "Led Zeppelin", "IV", 1971, ["Stairway", "Misty"], ".mp3", folder="LZ/CD2", disc=2, seed=10)
    album(root, "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep", "Pigs", "Wind"], ".ogg", seed=20)
    album(root, "AC/DC", "Back in Black", 1980, ["Hells Bells", "Shoot to Thrill", "Back in Black"], ".wav", seed=30)
    (root / "junk.mp3").write_bytes(b"not audio at all" * 64)
    age(root)
    return root


def cli(args: list[str], env: dict, crash: str | None = None) -> subprocess.Popen:
    env = {**env, "MELODEE_CRASH_AT": crash} if crash else env
    return subprocess.Popen([sys.executable, "-m", "melodee_pipeline.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cycle(dirs: dict, env: dict, crash: str | None = None, kill_after: float | None = None, rate: int = 0) -> bool:
    """scan-inbound then process-scan, as a user would; True if a kill interrupted it."""
    deadline = None if kill_after is None else time.monotonic() + kill_after
    killed, scan_db = _finish(cli(["scan-inbound", "--path", str(dirs["inbound"]), "--output", str(dirs["scans"]),
                                   "--workers", "2", "--min-file-age", "0"], env, crash), deadline)
    if killed:
        return True
    killed, _ = _finish(cli(["process-scan", "--scan", scan_db.strip(), "--staging", str(dirs["staging"]),
                             "--workers", "2", "--rate-limit", str(rate)], env, crash), deadline)
    return killed


def _finish(proc: subprocess.Popen, deadline: float | None) -> tuple[bool, str]:
    """Wait for `proc`, SIGKILLing it at `deadline`; (killed, stdout). A failure other than the kill fails the test."""
    while deadline is not None and proc.poll() is None:
        if time.monotonic() >= deadline:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == -signal.SIGKILL:
        return True, out
    assert proc.returncode == 0, err
    return False, out


def crash_points(cross_fs: bool) -> list[str]:
    points = [f"scanned_file:{n}" for n in (1, 5, 12)]
    points += [f"after_journal:{n}" for n in (1, 2, 3)]
    points += [f"after_place:{n}" for n in range(1, VALID_FILES + 1)]
    points += [f"before_unlink_sources:{n}" for n in (1, 2, 3)]
    points += [f"after_unlink:{n}" for n in range(1, VALID_FILES + 1, 1 if not cross_fs else 3)]
    points += [f"before_sidecar:{n}" for n in (1, 3)]
    points += ["before_record:1"]
    if cross_fs:
        points += [f"copy_written:{n}" for n in range(1, VALID_FILES + 1, 2)]
    return points


def cross_fs_root() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat("/tmp").st_dev:
        return shm
    return None


def test_sigkill_at_every_crash_point_loses_nothing_and_converges(template, db_url, engine, tmp_path, request):
    init_db(engine)
    original = file_hashes(template)
    invalid = Counter({sha256_file(template / "junk.mp3"): 1})
    valid = Counter({h: n for h, n in original.items() if h not in invalid})
    assert sum(valid.values()) == VALID_FILES

    shm = cross_fs_root()
    scenarios = [("same-fs", p, None) for p in crash_points(False)]
    if shm is not None:
        scenarios += [("cross-fs", p, None) for p in crash_points(True)]
    rnd = random.Random(1234)
    scenarios += [("random", None, rnd.uniform(0.3, 2.5)) for _ in range(10)]

    tried = files_lost = dup_rows = 0
    failures = []
    for i, (layout, point, kill_after) in enumerate(scenarios):
        base = (shm / f"melodee-crash-{os.getpid()}") if layout == "cross-fs" else tmp_path
        dirs = {"inbound": base / f"in{i}", "staging": tmp_path / f"st{i}", "scans": tmp_path / f"scans{i}"}
        shutil.copytree(template, dirs["inbound"])
        dirs["staging"].mkdir()
        env = {**os.environ, "MELODEE_DATABASE_URL": db_url, "MELODEE_HOME": str(tmp_path / "home")}
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE staging_items"))
        try:
            killed = cycle(dirs, env, crash=point, kill_after=kill_after, rate=20 if kill_after else 0)
            assert killed or point is None, f"{point} was never reached"
            after_crash = lost(original, dirs["inbound"], dirs["staging"])
            cycle(dirs, env)  # the next run, undisturbed
            report = converged(valid, invalid, dirs["inbound"], dirs["staging"], engine)
        finally:
            if layout == "cross-fs":
                shutil.rmtree(dirs["inbound"], ignore_errors=True)
        tried += 1
        files_lost += after_crash + report.lost
        dup_rows += report.duplicate_rows
        if after_crash or not report.ok:
            failures.append(f"{layout} {point or f'kill after {kill_after:.2f}s'}: lost after crash {after_crash}, {report}")
    summary = f"crash points: {tried} tried, {files_lost} files lost, {dup_rows} duplicate rows"
    request.config.stash.setdefault(SUMMARIES, []).append(summary)
    print(summary)
    assert not failures, "\n".join(failures)
    assert tried >= 50


@pytest.mark.parametrize("point", ["after_place:3", "before_record:1"])
def test_sigkill_during_a_dagster_run_converges_on_the_next_run(point, template, env, libs, engine, db_url, tmp_path):
    shutil.rmtree(libs["inbound"])
    shutil.copytree(template, libs["inbound"])
    invalid = Counter({sha256_file(template / "junk.mp3"): 1})
    valid = Counter({h: n for h, n in file_hashes(template).items() if h not in invalid})
    run_env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": db_url}
    crashed = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env={**run_env, "MELODEE_CRASH_AT": point},
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL
    assert lost(file_hashes(template), libs["inbound"], libs["staging"]) == 0
    again = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=run_env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = converged(valid, invalid, libs["inbound"], libs["staging"], engine)
    assert report.ok, report
