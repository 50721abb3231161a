"""The Dagster UI shows the job (headless Chromium) and the `dagster` CLI runs it with the README's YAML."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from melodee_pipeline_tests.conftest import age, album, run_together

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dagster_env(env, libs, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": env["MELODEE_DATABASE_URL"]}


def readme_run_yaml() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    return "\n".join(line[2:] if line.startswith("  ") else line for line in block.splitlines())


def test_dagster_job_execute_accepts_the_readme_yaml(dagster_env, libs, engine, tmp_path):
    album(libs["inbound"], "Band", "Record", 2001, ["Song"], ".flac")
    age(libs["inbound"])
    config = readme_run_yaml().replace("/var/melodee/scan-db", str(libs["scandbs"]))
    assert "dry_run: true" in config
    (tmp_path / "run.yaml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "melodee_pipeline.definitions",
         "-j", "staging_scan_job", "-c", str(tmp_path / "run.yaml")],
        env=dagster_env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    assert (libs["inbound"] / "Band - Record" / "01 Song.flac").exists()  # the YAML says dry run
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")).scalar() == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_shows_the_job_in_headless_chromium(dagster_env, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); cannot load the UI")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        env=dagster_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "webserver.log", "w"),
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("webserver did not start:\n" + (tmp_path / "webserver.log").read_text()[-3000:])
                time.sleep(0.3)
        url = f"http://127.0.0.1:{port}/locations/melodee_pipeline/jobs/staging_scan_job"
        shot = tmp_path / "job.png"
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=20000",
                "--window-size=1400,900"]
        dom, _ = run_together([args + [f"--user-data-dir={tmp_path / 'chrome1'}", "--dump-dom", url],
                               args + [f"--user-data-dir={tmp_path / 'chrome2'}", f"--screenshot={shot}", url]])
        assert "staging_scan_job" in dom
        for op in ("scan_inbound", "group_albums", "stage_albums", "record_staging_items"):
            assert op in dom, op
        assert shot.exists() and shot.stat().st_size > 10_000
        if os.environ.get("MELODEE_UI_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["MELODEE_UI_SCREENSHOT"])
    finally:
        server.terminate()
        server.wait(timeout=30)
