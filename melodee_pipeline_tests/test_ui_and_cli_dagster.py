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

import psutil
import pytest
import sqlalchemy as sa

from melodee_pipeline_tests.conftest import age, album, run_together
from melodee_pipeline_tests.test_cli_commands import await_location, graphql, stop_group

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
    config = readme_run_yaml()  # as printed: the scan DB goes where the setting says
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
    assert list(libs["scandbs"].glob("scan_*.db"))  # the setting's directory
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


# `melodee-pipeline dev` on the test's database: re-execution of a CLI run, the asset catalog -----

@pytest.fixture
def dev(dagster_env, tmp_path, monkeypatch):
    """`melodee-pipeline dev` (UI + daemon) in its own process group, on the test's database and
    DAGSTER_HOME; this process uses the same instance. Yields the port; stops the group after."""
    monkeypatch.setenv("DAGSTER_HOME", dagster_env["DAGSTER_HOME"])
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_env["DAGSTER_PG_URL"])
    port = free_port()
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "melodee-pipeline"), "dev", "--port", str(port)],
                            env=dagster_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await_location(port, proc, tmp_path / "dev.log", "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
        yield port
    finally:
        stop_group(proc)
        log.close()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


REEXECUTE = """mutation ($params: ReexecutionParams) {
  launchPipelineReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
RUN = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status parentRunId stepKeysToExecute } } }"


def wait_for_run(port: int, run_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = graphql(port, RUN, {"id": run_id})["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")


def test_cli_run_is_re_executed_from_its_failed_op_the_way_the_ui_does(dev, libs, engine):
    from melodee_pipeline.cli import run_job

    album(libs["inbound"], "Band", "Record", 2001, ["Song", "Other"], ".flac")
    age(libs["inbound"])
    with engine.begin() as conn:  # the table goes away between staging and recording
        conn.execute(sa.text("ALTER TABLE staging_items RENAME TO staging_items_away"))
    ok, _summary, reason = run_job()
    assert not ok and reason.startswith("record_staging_items: table staging_items does not exist in database")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE staging_items_away RENAME TO staging_items"))
        parent = conn.execute(sa.text("SELECT run_id FROM runs ORDER BY id DESC LIMIT 1")).scalar()

    # The UI's "Re-execute from failure" button sends exactly this mutation.
    launched = graphql(dev, REEXECUTE, {"params": {"parentRunId": parent, "strategy": "FROM_FAILURE"}})
    result = launched["launchPipelineReexecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    child = wait_for_run(dev, result["run"]["runId"])
    assert child["status"] == "SUCCESS" and child["parentRunId"] == parent
    assert child["stepKeysToExecute"] == ["record_staging_items"]  # its input read from the CLI run's outputs
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT track_count FROM staging_items")).scalars().all() == [2]

    # And the whole run again (the button's other choice): nothing left to do, still a success.
    again = graphql(dev, REEXECUTE, {"params": {"parentRunId": parent, "strategy": "ALL_STEPS"}})["launchPipelineReexecution"]
    assert again["__typename"] == "LaunchRunSuccess", again
    assert wait_for_run(dev, again["run"]["runId"])["status"] == "SUCCESS"


def chromium_dom(url: str, tmp_path: Path, shot: Path | None = None) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); cannot load the UI")
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=20000", "--window-size=1400,900"]
    if shot is not None:
        subprocess.run(args + [f"--screenshot={shot}", url], capture_output=True, timeout=180)
    return subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


def test_asset_catalog_shows_the_assets_their_check_and_a_cli_runs_materialisation(dev, libs, tmp_path):
    from melodee_pipeline.cli import run_job

    album(libs["inbound"], "Band", "Record", 2001, ["Song"], ".flac")
    age(libs["inbound"])
    ok, summary, run_id = run_job()
    assert ok and summary["inserted"] == 1
    base = f"http://127.0.0.1:{dev}"
    catalog = chromium_dom(f"{base}/assets", tmp_path, tmp_path / "assets.png")
    for name in ("inbound_library", "staging_library", "staging_items"):
        assert name in catalog, name
    checks = chromium_dom(f"{base}/assets/staging_items?view=checks", tmp_path)
    assert "staging_converged" in checks and "every album directory the run moved files into" in checks
    assert "Succeeded" in checks or "Passed" in checks  # the CLI run's evaluation
    job = chromium_dom(f"{base}/locations/melodee_pipeline/jobs/staging_scan_job", tmp_path)
    assert "staging_scan_job" in job and "record_staging_items" in job
    assert "Join the Dagster community" not in catalog + checks + job
    # The catalog's data, as the UI queries it: the run is the latest materialization of staging_items.
    data = graphql(dev, '{ assetOrError(assetKey: {path: ["staging_items"]}) { ... on Asset { assetMaterializations(limit: 1)'
                        ' { runId } definition { kinds groupName description } } } }')["assetOrError"]
    assert data["assetMaterializations"] == [{"runId": run_id}]
    assert data["definition"]["kinds"] == ["postgres"] and data["definition"]["groupName"] == "melodee"
    if os.environ.get("MELODEE_UI_SCREENSHOT"):
        shutil.copyfile(tmp_path / "assets.png", os.environ["MELODEE_UI_SCREENSHOT"])
