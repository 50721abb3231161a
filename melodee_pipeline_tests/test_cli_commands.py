"""The command line and the bare `dagster` CLI from the outside: console script and `dagster` in
subprocesses with a clean environment, `cli.main` in-process. Tests that start the embedded
PostgreSQL of a temp MELODEE_HOME stop it in teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from melodee_pipeline.cli import build_parser, main
from melodee_pipeline.db.engine import embedded_pid, ensure_database, stop_embedded
from melodee_pipeline.settings import SPECS
from melodee_pipeline_tests.conftest import album, run_together, tree

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = str(BIN / "melodee-pipeline")


@pytest.fixture
def home(tmp_path):
    """A temp MELODEE_HOME whose embedded server, if anything starts one, is stopped afterwards."""
    path = tmp_path / "mhome"
    path.mkdir()
    yield path
    stop_embedded(path)
    assert embedded_pid(path) is None


def clean_env(home: Path, **extra: str) -> dict:
    """What a fresh shell has: no venv on PATH, no DAGSTER_* or MELODEE_DATABASE_URL."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
            "MELODEE_HOME": str(home), **extra}


def cli(args: list[str], env: dict, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# 1. dagster.yaml works for a bare `dagster` command in a fresh clone -------------------------

def test_bare_dagster_validate_in_repo_root_uses_the_embedded_server(home):
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=REPO, env=clean_env(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation successful for code location melodee_pipeline" in proc.stdout + proc.stderr
    assert embedded_pid(home) is not None  # storage resolved to the server under MELODEE_HOME
    assert not list(REPO.glob(".tmp_dagster_home_*"))


def test_dagster_storage_goes_to_a_dagster_database_on_the_melodee_server(db_url, home):
    url = ensure_database(db_url, f"dagster_{uuid.uuid4().hex[:8]}")
    name = sa.engine.make_url(url).database
    try:
        assert sa.engine.make_url(url).set(database="x") == sa.engine.make_url(db_url).set(database="x")
        assert ensure_database(db_url, name) == url  # idempotent
        # The dagster CLI with MELODEE_DATABASE_URL: no embedded server is started.
        proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO,
                              env=clean_env(home, MELODEE_DATABASE_URL=db_url), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert embedded_pid(home) is None and not (home / "pgdata").exists()
        with sa.create_engine(sa.engine.make_url(db_url).set(database="dagster")).connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_dagster_database_that_cannot_be_created_is_one_clear_error(db_url):
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}' NOCREATEDB"))
    try:
        limited = sa.engine.make_url(db_url).set(username=role, password=f"pw-{role}").render_as_string(hide_password=False)
        with pytest.raises(Exception) as err:
            ensure_database(limited, f"dagster_{role}")
        message = str(err.value)
        assert f'database "dagster_{role}" for Dagster' in message and "create it" in message
        assert f"pw-{role}" not in message
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


# 2 + 3. `melodee-pipeline dev` without an activated venv; no community modal -----------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"})
    try:
        raw = urllib.request.urlopen(req, timeout=30).read()
    except urllib.error.HTTPError as exc:  # GraphQL errors come with status 500 and a JSON body
        raw = exc.read()
    answer = json.loads(raw)
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def await_location(port: int, proc: subprocess.Popen, log: Path, query: str, timeout: float = 240) -> dict:
    """Poll the UI's GraphQL until `query` lists the code location's repository; its answer."""
    deadline = time.time() + timeout
    while True:
        try:
            data = graphql(port, query)
            if data["repositoriesOrError"]["nodes"]:
                return data
        except (OSError, KeyError, TypeError, ValueError):
            pass
        if time.time() > deadline or proc.poll() is not None:
            pytest.fail("dagster dev did not serve the code location:\n" + log.read_text()[-3000:])
        time.sleep(2)


def stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C for `dagster dev` (it stops its webserver and daemon), then make sure."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.time() + 30
    while time.time() < deadline:
        left = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == proc.pid]
        if not left:
            return
        time.sleep(0.2)
    for p in left:
        p.kill()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_dev_by_absolute_path_serves_the_job_and_sensor_without_community_modal(home, tmp_path):
    port = free_port()
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen([SCRIPT, "dev", "--port", str(port)], env=clean_env(home), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        data = await_location(port, proc, tmp_path / "dev.log", "{ shouldShowNux repositoriesOrError { ... on "
                              "RepositoryConnection { nodes { location { name } pipelines { name } sensors { name } } } } }")
        nodes = data["repositoriesOrError"]["nodes"]
        assert [n["location"]["name"] for n in nodes] == ["melodee_pipeline"]
        # __ASSET_JOB: Dagster's hidden job that executes the asset check on its own.
        assert {"__ASSET_JOB", "staging_scan_job", "undo_staging_job"} <= {j["name"] for j in nodes[0]["pipelines"]}
        assert [s["name"] for s in nodes[0]["sensors"]] == ["staging_scan_sensor"]
        assert data["shouldShowNux"] is False  # nux: enabled: false
        url = f"http://127.0.0.1:{port}/locations/melodee_pipeline/jobs/staging_scan_job"  # the README's links
        sensor_url = f"http://127.0.0.1:{port}/locations/melodee_pipeline/sensors/staging_scan_sensor"
        assert urllib.request.urlopen(url, timeout=10).status == 200
        assert urllib.request.urlopen(sensor_url, timeout=10).status == 200
        assert (home / "dagster" / "workspace.yaml").exists() and (home / "dagster" / "dagster.yaml").exists()

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:
            args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--virtual-time-budget=20000", "--window-size=1400,900"]
            shot = tmp_path / "dev.png"
            dom, sensor_dom, _ = run_together([
                args + [f"--user-data-dir={tmp_path / 'chrome1'}", "--dump-dom", url],
                args + [f"--user-data-dir={tmp_path / 'chrome2'}", "--dump-dom", sensor_url],
                args + [f"--user-data-dir={tmp_path / 'chrome3'}", f"--screenshot={shot}", url]])
            assert "staging_scan_job" in dom and "staging_scan_sensor" in dom
            assert "Join the Dagster community" not in dom
            assert "staging_scan_sensor" in sensor_dom and "Next tick" in sensor_dom
            assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        stop_group(proc)
        log.close()


# 5 + 6. a demo that cannot hurt --------------------------------------------------------------

def test_demo_leaves_configured_libraries_and_database_alone(env, libs, engine, home, monkeypatch, capsys):
    monkeypatch.setenv("MELODEE_HOME", str(home))
    album(libs["inbound"], "Real", "Album", 2001, ["Song"], ".flac")  # the admin's own music
    before = {k: tree(p) for k, p in libs.items()}
    with engine.connect() as conn:
        libraries = conn.execute(sa.text("SELECT id, name, path, type FROM libraries ORDER BY id")).all()
        settings = conn.execute(sa.text("SELECT key, value FROM settings ORDER BY key")).all()

    for _ in range(2):  # a second demo works too
        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        assert '"albums_success": 3' in out and str(home / "demo" / "staging") in out

    assert {k: tree(p) for k, p in libs.items()} == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, name, path, type FROM libraries ORDER BY id")).all() == libraries
        assert conn.execute(sa.text("SELECT key, value FROM settings ORDER BY key")).all() == settings
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 0
    assert os.environ["MELODEE_DATABASE_URL"] == env["MELODEE_DATABASE_URL"]  # restored after the demo
    assert "DAGSTER_PG_URL" not in os.environ


def test_readme_first_steps_after_demo_on_a_fresh_machine(home, tmp_path):
    e = clean_env(home)
    first = cli(["demo"], e)
    assert first.returncode == 0, first.stderr[-3000:]
    assert '"albums_success": 3' in first.stdout
    second = cli(["demo"], e)
    assert second.returncode == 0, second.stderr[-3000:]
    assert '"albums_success": 3' in second.stdout  # started over
    # README "Everyday use", on the embedded default the demo left untouched.
    assert cli(["db", "init"], e).returncode == 0
    for kind in ("inbound", "staging"):
        (tmp_path / kind).mkdir()
        proc = cli(["libraries", "add", "--name", kind.title(), "--type", kind, "--path", str(tmp_path / kind)], e)
        assert proc.returncode == 0, proc.stderr
    listed = cli(["libraries", "list"], e).stdout
    assert "Demo" not in listed and listed.splitlines()[0].split() == ["id", "type", "name", "path"] and listed.count("\n") == 3
    assert cli(["staging", "list"], e).stdout.strip() == "no staging items"
    # The real run history and asset catalog hold the real run only: a demo's materialisation of
    # staging_items would be the "latest" one the UI's asset check evaluates against real rows.
    assert cli(["settings", "set", "staging_scan.min_file_age_seconds", "0"], e).returncode == 0
    assert cli(["run"], e).returncode == 0
    def storage(database: str) -> sa.Engine:
        return sa.create_engine(f"postgresql+psycopg2://postgres@/{database}?host={home / 'pgdata'}", poolclass=sa.pool.NullPool)

    with storage("dagster_demo").connect() as conn:  # the demo's own, started over by each demo
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
    with storage("dagster").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        events = conn.execute(sa.text("SELECT event FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")).scalars().all()
    assert events and not any(str(home / "demo") in event for event in events)


# 7. every user error is one line, URLs masked --------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://melodee:s3cr3tpw@db:notaport/melodee",   # make_url raises ValueError
    "melodee:s3cr3tpw@db/melodee",                          # no scheme: ArgumentError
    "postgresql://melodee:s3cr3tpw@127.0.0.1:1/melodee",    # unreachable
])
def test_bad_database_url_is_one_masked_line(url, home):
    proc = cli(["settings", "list"], clean_env(home, MELODEE_DATABASE_URL=url), timeout=60)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "s3cr3tpw" not in proc.stderr + proc.stdout and url not in line


def test_user_errors_are_one_line_without_traceback(env, home):
    e = {**clean_env(home), "MELODEE_DATABASE_URL": env["MELODEE_DATABASE_URL"]}
    proc = cli(["settings", "list"], e)  # before db init
    assert proc.returncode == 2
    assert "run `melodee-pipeline db init` first" in one_error_line(proc)
    # `run` (a Dagster run, which fails: exit 1) says the same, not the server's "relation ... does not exist"
    proc = cli(["run"], e)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and errors == [
        "error: run failed: scan_inbound: table libraries does not exist in database "
        f"{sa.engine.make_url(env['MELODEE_DATABASE_URL']).render_as_string(hide_password=True)}: "
        "run `melodee-pipeline db init` first"], proc.stderr
    for args in (["run", "--workers", "99"], ["bogus"], ["staging", "list", "--status", "done"], ["settings", "get"]):
        proc = cli(args, e)
        assert proc.returncode == 2, (args, proc.stderr)
        one_error_line(proc)
    assert cli(["db", "init"], e).returncode == 0
    proc = cli(["settings", "get", "staging_scan.nope"], e)
    assert proc.returncode == 2 and one_error_line(proc).startswith("error: invalid setting staging_scan.nope: unknown setting; known keys: ")


def test_run_with_a_bad_stored_setting_prints_the_reason_once(env, libs, engine, home):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = 'lots' WHERE key = 'staging_scan.workers'"))
    proc = cli(["run"], {**clean_env(home), "MELODEE_DATABASE_URL": env["MELODEE_DATABASE_URL"]})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Stack Trace" not in proc.stderr
    assert "STEP_FAILURE" in proc.stderr  # Dagster's console output stays
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: run failed: scan_inbound: invalid setting staging_scan.workers = 'lots': must be an integer"]
    assert proc.stderr.count("must be an integer") == 1
    # The traceback stays in the run's event log, in Dagster's storage on the same server.
    dagster_db = sa.engine.make_url(env["MELODEE_DATABASE_URL"]).set(database="dagster")
    with sa.create_engine(dagster_db).connect() as conn:
        logged = conn.execute(sa.text("SELECT event FROM event_logs WHERE dagster_event_type = 'STEP_FAILURE' "
                                      "ORDER BY id DESC LIMIT 1")).scalar()
    assert "must be an integer" in logged and "orchestration/ops.py" in logged
    assert not (home / "pgdata").exists()  # MELODEE_DATABASE_URL set: no embedded server


# 8. db stop ------------------------------------------------------------------------------------

def gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_db_stop_stops_the_embedded_server(home):
    e = clean_env(home)
    proc = cli(["db", "stop"], e)
    assert proc.returncode == 0 and proc.stdout.startswith("no embedded PostgreSQL is running")
    assert cli(["db", "init"], e).returncode == 0
    pid = embedded_pid(home)
    assert pid is not None
    proc = cli(["db", "stop"], e)
    assert proc.returncode == 0 and f"(pid {pid})" in proc.stdout
    assert embedded_pid(home) is None and gone(pid)
    assert cli(["settings", "get", "staging_scan.workers"], e).stdout.strip() == "4"  # starts again on demand
    assert cli(["db", "stop"], e).stdout.startswith("stopped")


# 9. staging list -------------------------------------------------------------------------------

def test_staging_list_newest_first_truncated_and_filtered(env, engine, capsys):
    assert main(["db", "init"]) == 0
    assert main(["staging", "list"]) == 0
    assert capsys.readouterr().out.strip().endswith("no staging items")
    rows = [("Old Artist", "Old Album", 2, "approved", "2020-01-01"),
            ("A" * 80, "B\u202e" + "C" * 80, 11, "pending_review", "2024-06-01"),
            ("坂本龍一", unicodedata.normalize("NFD", "Homogénic"), 5, "rejected", "2022-01-01")]
    with engine.begin() as conn:
        for i, (artist, name, tracks, status, at) in enumerate(rows):
            conn.execute(sa.text(
                "INSERT INTO staging_items (scan_id, staging_path, metadata_file, artist_name, album_name, track_count,"
                " processed_at, status, checksum, notes) VALUES ('s', :p, :m, :a, :n, :t, :at, :st, 'x', '')"),
                {"p": f"/staging/{i}", "m": f"/staging/{i}/album.melodee.json", "a": artist, "n": name, "t": tracks,
                 "at": at, "st": status})
    assert main(["staging", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ARTIST", "ALBUM", "TRACKS", "STATUS"]
    gone = "  (gone; see reconcile)"  # awaiting review, and no such directory
    assert [line.removesuffix(gone).split()[-1] for line in lines[1:]] == ["/staging/1", "/staging/2", "/staging/0"]  # newest first
    assert [line.endswith(gone) for line in lines[1:]] == [True, False, False]
    assert all(len(line) < 120 for line in lines)
    assert "A" * 23 + "…" in lines[1] and "\u202e" not in lines[1] and "pending_review" in lines[1]
    # Columns line up on screen: four wide characters take eight columns; a decomposed é, one.
    homogenic = unicodedata.normalize("NFD", "Homogénic")  # shown as stored: a path pasted from it must work
    assert lines[2].startswith("坂本龍一" + " " * 16 + "  " + homogenic + " " * 23 + "  " + " " * 5 + "5  rejected")
    assert lines[0].index("STATUS") == lines[3].index("approved") == 24 + 2 + 32 + 2 + 6 + 2
    assert main(["staging", "list", "--status", "approved"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "Old Artist" in out[1]


# 11. help texts --------------------------------------------------------------------------------

def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subparsers(sub, prefix + (name,))


def test_every_option_is_explained_with_its_default(capsys):
    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and ("default" in action.help or "required" in action.help), (path, action.dest)
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: melodee-pipeline " + " ".join(path)), path
    for action in ("set", "get"):
        with pytest.raises(SystemExit):
            main(["settings", action, "--help"])
        text = capsys.readouterr().out
        for key, spec in SPECS.items():
            line = next(line for line in text.splitlines() if line.strip().startswith(key + " "))
            assert repr(spec.default) in line and spec.comment in line


def test_a_run_holds_a_few_dagster_connections_and_closes_them_after(env, libs, engine, monkeypatch, capsys):
    """Dagster's Postgres storage would open a connection per event read or written (~80 a run
    that stages an album); `run` pools them for the run (instance.held_connections) and leaves
    none open once it returns."""
    import psycopg2

    assert main(["run"]) == 0  # the install's first run: it also creates Dagster's tables
    album(libs["inbound"], "Artist", "Album", 2000, ["One", "Two"])
    capsys.readouterr()
    connects = []
    real = psycopg2.connect
    monkeypatch.setattr(psycopg2, "connect", lambda *a, **k: connects.append(1) or real(*a, **k))
    assert main(["run"]) == 0
    assert json.loads(capsys.readouterr().out)["files_moved"] == 2
    assert 0 < len(connects) <= 15, len(connects)
    # A closed connection's server process exits a moment later: one still open would stay.
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = 'dagster'")).scalar()
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == 0


def test_the_console_script_does_not_collect_garbage_while_it_imports(env, libs, home):
    """Collecting while the imports grow the heap cost ~0.45 s of every run (cli._imports_done):
    `entry` pauses the collector through them, freezes what they built, and collects again for
    the work, so a run's albums still stage and the collector is on at the end."""
    album(libs["inbound"], "Artist", "Album", 2000, ["One", "Two"])
    probe = ("import gc, json, sys, time\n"
             "seen = []\n"
             "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(info['generation']))\n"
             "from melodee_pipeline.cli import entry\n"
             "sys.argv = ['melodee-pipeline', 'run']\n"
             "code = entry()\n"
             "print(json.dumps(dict(code=code, full=seen.count(2), young=len(seen), enabled=gc.isenabled(), "
             "frozen=gc.get_freeze_count())), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], env={**clean_env(home), **env}, capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0 and json.loads(proc.stdout)["files_moved"] == 2, proc.stderr[-3000:]
    assert report["full"] == 0, report  # 3 full collections over the growing heap before
    assert report["enabled"] and report["young"] > 0  # the run itself collects as usual
    assert report["frozen"] > 100_000, report  # dagster, sqlalchemy and the job are frozen


def test_a_run_at_a_terminal_leaves_its_output_there_unless_dagster_yaml_says_otherwise(env, libs, capsys):
    """Copying stdout/stderr into files for the UI starts `tail` and a Python watcher per stream
    (~0.25 s a run): `run` leaves them on the terminal (run_once.instance_at_a_terminal), its
    event log as complete as ever. A dagster.yaml of the user's that configures `compute_logs` wins."""
    from melodee_pipeline.instance import MARKER

    album(libs["inbound"], "Artist", "Album", 2000, ["One"])
    assert main(["run"]) == 0
    first = json.loads(capsys.readouterr().out)
    home = Path(env["MELODEE_HOME"]) / "dagster"
    assert (home / "storage").is_dir() and not list(home.glob("storage/*/compute_logs"))
    mine = home.parent / "my-logs"
    (home / "dagster.yaml").write_text((home / "dagster.yaml").read_text().replace(MARKER, "# my instance") +
                                       "compute_logs:\n  module: dagster._core.storage.local_compute_log_manager\n"
                                       f"  class: LocalComputeLogManager\n  config:\n    base_dir: {mine}\n")
    album(libs["inbound"], "Artist", "Second", 2001, ["One"])
    assert main(["run"]) == 0
    assert json.loads(capsys.readouterr().out)["files_moved"] == first["files_moved"] == 1
    assert [p.suffix for p in sorted(mine.glob("*/compute_logs/*"))] == [".complete", ".err", ".out"]


def test_held_dagster_connections_survive_postgres_dropping_them(env, libs, engine, monkeypatch):
    """A connection the pool holds that Postgres dropped meanwhile (a restart, an idle timeout)
    is replaced when next taken, not handed to Dagster dead."""
    import dagster as dg

    from melodee_pipeline.instance import held_connections, prepare_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(prepare_dagster_home()))
    with dg.DagsterInstance.get() as instance, held_connections(instance):
        runs = len(instance.get_runs())
        with engine.connect() as conn:
            dropped = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                           "WHERE datname = 'dagster' AND pid <> pg_backend_pid()")).scalar()
        assert dropped >= 1  # the pooled connection was there, and is gone now
        assert len(instance.get_runs()) == runs


def test_a_reader_that_stops_reading_ends_nothing_early_and_prints_no_error(env, melodee_db, home):
    """`melodee-pipeline ... | head -1`: the pipe closes before the command writes."""
    e = {**clean_env(home), "MELODEE_DATABASE_URL": env["MELODEE_DATABASE_URL"]}
    for args in (["settings", "set", "staging_scan.workers", "3"], ["settings", "list"]):
        proc = subprocess.Popen([SCRIPT, *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before the first line
        assert (proc.wait(timeout=120), proc.stderr.read()) == (0, ""), args
    with melodee_db.connect() as conn:  # the work was done all the same
        assert conn.execute(sa.text("SELECT value FROM settings WHERE key = 'staging_scan.workers'")).scalar() == "3"
