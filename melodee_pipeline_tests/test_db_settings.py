"""Foundation: schema bootstrap, settings, libraries, CLI errors — on real Postgres."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from melodee_pipeline.bootstrap import init_db
from melodee_pipeline.cli import main
from melodee_pipeline.db.engine import stop_embedded
from melodee_pipeline.errors import LibraryError, SettingError
from melodee_pipeline.libraries import add_library, resolve_libraries
from melodee_pipeline.settings import SPECS, load_settings


def test_db_init_creates_tables_but_no_settings_and_is_idempotent(engine):
    first = init_db(engine)
    assert sorted(first["tables"]) == ["libraries", "settings", "staging_items"]
    assert first["settings"] == []  # an empty settings table is Melodee's to seed
    second = init_db(engine)
    assert second == {"tables": [], "settings": []}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM settings")).scalar() == 0
        assert set(sa.inspect(conn).get_table_names()) == {"libraries", "settings", "staging_items"}



def test_db_init_adds_no_keys_beside_rows_only_settings_set_wrote(engine):
    """Without Melodee's own rows, an unset key keeps following its default (`settings list`
    marks it so) however often `db init` runs."""
    from melodee_pipeline.settings import read_raw, set_setting

    init_db(engine)
    with engine.begin() as conn:
        set_setting(conn, "staging_scan.workers", "2")
    assert init_db(engine)["settings"] == []
    with engine.connect() as conn:
        assert read_raw(conn) == {"staging_scan.workers": "2"}

def test_works_on_existing_melodee_tables_with_extra_columns(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(sa.text("""
            CREATE TABLE settings (id serial primary key, key varchar(500) unique not null, value text,
                category int, comment text, created_at timestamptz, updated_at timestamptz,
                api_key uuid, is_locked bool default false);
            CREATE TABLE libraries (id serial primary key, name varchar(255) not null, path text not null,
                type varchar(50) not null check (type in ('inbound','staging','production')),
                is_locked bool default false, created_at timestamptz, track_count int default 0,
                album_count int default 0, duration bigint default 0, description text, sort_order int default 5);
            INSERT INTO settings(key, value, api_key) VALUES ('staging_scan.workers', '8', gen_random_uuid());
            INSERT INTO settings(key, value) VALUES ('some.melodee.setting', 'kept');
        """))
    done = init_db(engine)
    assert done["tables"] == ["staging_items"]
    assert "staging_scan.workers" not in done["settings"]
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("libraries")}
        assert {"description", "sort_order"} <= cols  # never altered
        assert load_settings(conn).workers == 8  # existing value kept
        assert conn.execute(sa.text("SELECT value FROM settings WHERE key='some.melodee.setting'")).scalar() == "kept"
    with engine.begin() as conn:
        lib = add_library(conn, "In", "inbound", str(tmp_path))
    assert lib.id == 1


BAD_SETTINGS = [
    ("staging_scan.workers", "abc"), ("staging_scan.workers", "0"), ("staging_scan.workers", "65"),
    ("staging_scan.workers", ""), ("staging_scan.enabled", "maybe"), ("staging_scan.enabled", "tRuE"), ("staging_scan.dry_run", "2"),
    ("staging_scan.schedule", "* * * * * *"), ("staging_scan.schedule", "nonsense"), ("staging_scan.schedule", "61 * * * *"),
    ("staging_scan.schedule", "0 0 31 2 *"), ("staging_scan.schedule", "0 0 30 2 *"),  # valid fields, never a date
    ("staging_scan.rate_limit", "-1"), ("staging_scan.rate_limit", "fast"),
    ("staging_scan.scan_db_data_path", "relative/dir"), ("staging_scan.min_file_age_seconds", "-5"),
    ("staging_scan.keep_scan_dbs", "0"),
]


@pytest.mark.parametrize("key,value", BAD_SETTINGS)
def test_settings_set_refuses_invalid_values(env, melodee_db, key, value, capsys):
    with melodee_db.connect() as conn:
        before = conn.execute(sa.text("SELECT key, value, updated_at FROM settings ORDER BY key")).all()
    assert main(["settings", "set", key, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert key in err and repr(value) in err
    with melodee_db.connect() as conn:
        assert conn.execute(sa.text("SELECT key, value, updated_at FROM settings ORDER BY key")).all() == before


def test_scan_db_path_inside_or_containing_a_library_is_refused(env, melodee_db, tmp_path, capsys):
    (tmp_path / "music" / "inbound").mkdir(parents=True)
    assert main(["libraries", "add", "--name", "In", "--type", "inbound", "--path", str(tmp_path / "music" / "inbound")]) == 0
    for bad in (tmp_path / "music" / "inbound" / "scans", tmp_path / "music"):
        capsys.readouterr()
        assert main(["settings", "set", "staging_scan.scan_db_data_path", str(bad)]) == 2
        assert "library path" in capsys.readouterr().err
    assert main(["settings", "set", "staging_scan.scan_db_data_path", str(tmp_path / "scans")]) == 0


def test_invalid_value_already_in_database_is_reported_not_replaced(melodee_db):
    with melodee_db.begin() as conn:
        assert conn.execute(sa.text("UPDATE settings SET value = 'lots' WHERE key = 'staging_scan.workers'")).rowcount == 1
    with melodee_db.connect() as conn, pytest.raises(SettingError, match=r"staging_scan.workers = 'lots'"):
        load_settings(conn)


def test_settings_list_get_set_roundtrip(env, melodee_db, capsys):
    assert main(["settings", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(SPECS)
    shown = dict(line.split(None, 1) for line in listed)
    assert shown["staging_scan.dry_run"] == "true"  # Melodee's seed, shown as stored
    assert shown["staging_scan.keep_scan_dbs"] == "20  (default)"  # no row: the default, said so
    assert main(["settings", "set", "staging_scan.enabled", "YES"]) == 0
    assert main(["settings", "set", "staging_scan.schedule", "*/5  * * * *"]) == 0
    capsys.readouterr()
    assert main(["settings", "get", "staging_scan.enabled"]) == 0
    assert capsys.readouterr().out.strip() == "YES"


def test_library_resolution_errors(melodee_db, tmp_path):
    engine = melodee_db
    with engine.connect() as conn, pytest.raises(LibraryError, match="^no inbound library configured$"):
        resolve_libraries(conn)
    (tmp_path / "in").mkdir()
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    with engine.begin() as conn:
        add_library(conn, "In", "inbound", str(tmp_path / "in"))
        with pytest.raises(LibraryError, match="^no staging library configured$"):
            resolve_libraries(conn)
        ids = [conn.execute(sa.text("INSERT INTO libraries(name, path, type) VALUES ('S', :p, 'staging') RETURNING id"),
                            {"p": str(tmp_path / p)}).scalar() for p in ("s1", "s2")]
    with engine.connect() as conn, pytest.raises(LibraryError) as exc:
        resolve_libraries(conn)
    assert str(exc.value) == f"2 staging libraries configured (ids {ids[0]}, {ids[1]}); exactly one is allowed"
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM libraries WHERE id = :i"), {"i": ids[1]})
        conn.execute(sa.text("UPDATE libraries SET path = '/nonexistent/staging' WHERE id = :i"), {"i": ids[0]})
    with engine.connect() as conn, pytest.raises(LibraryError, match="/nonexistent/staging does not exist"):
        resolve_libraries(conn)


def test_libraries_cli(env, melodee_db, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["libraries", "add", "--name", "In", "--type", "inbound", "--path", str(tmp_path / "in")]) == 0
    assert main(["libraries", "add", "--name", "In2", "--type", "inbound", "--path", str(tmp_path / "in")]) == 2
    assert "already configured" in capsys.readouterr().err
    assert main(["libraries", "add", "--name", "X", "--type", "staging", "--path", "relative"]) == 2
    assert main(["libraries", "add", "--name", "X", "--type", "staging", "--path", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    (tmp_path / "st").mkdir()
    assert main(["libraries", "add", "--name", "Staging area", "--type", "staging", "--path", str(tmp_path / "st")]) == 0
    capsys.readouterr()
    assert main(["libraries", "list"]) == 0
    header, *listed = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "type", "name", "path"] and [line.split()[1] for line in listed] == ["inbound", "staging"]
    assert header.index("path") == listed[0].index(str(tmp_path)) == listed[1].index(str(tmp_path))  # in line
    assert main(["libraries", "remove", "1"]) == 0
    assert main(["libraries", "remove", "1"]) == 2
    assert "no library with id 1" in capsys.readouterr().err


def test_unreachable_database_is_one_line_with_masked_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MELODEE_DATABASE_URL": "postgresql://melodee:hunter2@127.0.0.1:9/melodee",
           "MELODEE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "settings", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot connect to database postgresql+psycopg2://melodee:***@127.0.0.1:9/melodee")
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_embedded_default_survives_across_commands_without_tcp(tmp_path):
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "MELODEE_HOME": str(home)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    try:
        first = run("db", "init")
        assert first.returncode == 0, first.stderr
        assert run("settings", "set", "staging_scan.workers", "7").returncode == 0
        again = run("settings", "get", "staging_scan.workers")
        assert again.returncode == 0 and again.stdout.strip() == "7"
        opts = (home / "pgdata" / "postmaster.opts").read_text()
        assert '"-h" ""' in opts  # listen_addresses empty: Unix socket only
    finally:
        stop_embedded(home)  # the server the first command started outlives the commands, not the test
