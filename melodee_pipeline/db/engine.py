"""Where the application database is and how to reach it.

`MELODEE_DATABASE_URL` wins; without it an embedded PostgreSQL (pgserver) is started, or reused,
under `MELODEE_HOME`. It listens on a Unix socket only and keeps running across commands.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from melodee_pipeline.errors import DatabaseError, DatabaseUnavailable, UserError

DEFAULT_HOME = "~/.local/share/melodee-pipeline"
DAGSTER_DATABASE = "dagster"


def melodee_home() -> Path:
    return Path(os.environ.get("MELODEE_HOME") or DEFAULT_HOME).expanduser().resolve()


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 maps bare `postgresql://` to psycopg 3; this project (and Dagster) use psycopg2."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise UserError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() != "postgresql":
        raise UserError(f"unsupported database URL {mask(url)}: only PostgreSQL is supported")
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def mask(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


@lru_cache(maxsize=None)
def _embedded_server(pgdata: str):
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR on servers; pgserver copes without it.
        warnings.simplefilter("ignore")
        import pgserver

    Path(pgdata).parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server outlives this process, so later commands, the Dagster
        # daemon and the webserver all share it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from None


def embedded_url(database: str = "postgres") -> str:
    server = _embedded_server(str(melodee_home() / "pgdata"))
    if database != "postgres":
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "1 row" not in exists:
            server.psql(f'CREATE DATABASE "{database}";')
    return psycopg2_url(server.get_uri(database))


def database_url() -> str:
    url = os.environ.get("MELODEE_DATABASE_URL")
    return psycopg2_url(url) if url else embedded_url()


def dagster_database_url() -> str:
    """Dagster's own storage: `DAGSTER_PG_URL`; else a `dagster` database on the server of
    `MELODEE_DATABASE_URL` (created when missing); else one in the embedded server."""
    url = os.environ.get("DAGSTER_PG_URL")
    if url:
        return psycopg2_url(url)
    melodee = os.environ.get("MELODEE_DATABASE_URL")
    return _dagster_database(psycopg2_url(melodee) if melodee else None, str(melodee_home()))


@lru_cache(maxsize=None)
def _dagster_database(melodee_url: str | None, home: str) -> str:
    """Checked (and created when missing) once a process per server (`melodee_url`'s, or the
    embedded one under `home`): nothing drops it, and each check is a connection or a psql run
    (~20 ms, twice a run)."""
    if melodee_url:
        return ensure_database(melodee_url, DAGSTER_DATABASE)
    return embedded_url(DAGSTER_DATABASE)


@lru_cache(maxsize=None)
def _engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    sa.event.listen(engine, "connect", _utc_session)
    return engine


def _utc_session(dbapi_connection, _record) -> None:
    """Melodee's timestamps are `timestamp without time zone` in UTC: a `DEFAULT CURRENT_TIMESTAMP`
    must be taken in UTC too, whatever the server's or the role's time zone."""
    with dbapi_connection.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def get_engine(url: str | None = None) -> sa.Engine:
    """An engine for `url` (default: the configured database), checked with one round trip."""
    url = psycopg2_url(url) if url else database_url()
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None
    return engine


# A server that answers a connection attempt with one of these is up but not accepting connections.
_NOT_ACCEPTING = re.compile(r"the database system is (starting up|shutting down|in recovery mode|not yet accepting)")
# SQLSTATE classes of connection failures: 08 (connection exception), 57P01-57P03 (server shutting
# down or not yet up).
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def is_unreachable(exc: sa.exc.DBAPIError) -> bool:
    """True when the server could not be reached or the connection was lost; False when the server
    answered with an error (a missing table, an unknown database, a refused login, ...)."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "pgcode", None)
    if code:
        return code.startswith(_CONNECTION_SQLSTATES)
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    # libpq reports connection failures without a SQLSTATE; a server that was reached and said no
    # ("FATAL:  database "x" does not exist", "password authentication failed") shows its FATAL line.
    message = str(orig or exc)
    return "FATAL:" not in message or bool(_NOT_ACCEPTING.search(message))


def database_error(engine: sa.Engine | None, exc: sa.exc.DBAPIError) -> DatabaseUnavailable | DatabaseError:
    """One line for the user, by what happened: `cannot connect to database <url, password masked>:
    <reason>` only when the server cannot be reached, else `database error: <what the server said>`;
    a missing table points at `db init`."""
    reason = str(exc.orig or exc).strip().splitlines()
    first = reason[0].strip() if reason else type(exc).__name__
    url = engine.url.render_as_string(hide_password=True) if engine is not None else None
    if is_unreachable(exc):
        return DatabaseUnavailable(f"cannot connect to database{' ' + url if url else ''}: {first}")
    where = f" in database {url}" if url else ""
    if getattr(exc.orig, "pgcode", None) == "42P01":  # undefined_table
        table = re.search(r'relation "([^"]+)"', first)
        return DatabaseError(f"{'table ' + table.group(1) if table else 'a table'} does not exist{where}: "
                             "run `melodee-pipeline db init` first")
    return DatabaseError(f"database error{where}: {first}")


@contextmanager
def reported(engine: sa.Engine) -> Iterator[None]:
    """Turn a driver error inside the block into the one-line `UserError` of `database_error`."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None


def ensure_database(url: str, database: str) -> str:
    """The URL of `database` on the server of `url`, creating the database when it is missing."""
    target = make_url(url).set(database=database)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
            if not exists:
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
                except sa.exc.DBAPIError as exc:
                    again = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
                    if not again:  # not a concurrent creation: no privilege
                        reason = str(exc.orig or exc).strip().splitlines()
                        raise UserError(
                            f'database "{database}" for Dagster\'s storage does not exist on '
                            f"{target.render_as_string(hide_password=True)} and cannot be created "
                            f"({reason[0] if reason else type(exc).__name__}): create it "
                            f'(CREATE DATABASE "{database}" OWNER "{target.username}") or set DAGSTER_PG_URL'
                        ) from None
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None
    finally:
        engine.dispose()
    return target.render_as_string(hide_password=False)


def embedded_pid(home: Path | None = None) -> int | None:
    """The pid of the embedded server running on `home`/pgdata (default MELODEE_HOME), or None."""
    pgdata = (home or melodee_home()) / "pgdata"
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _is_postmaster(pid, pgdata) else None


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and str(pgdata) in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def stop_embedded(home: Path | None = None, timeout: float = 60) -> int | None:
    """Stop the embedded server under `home` (default MELODEE_HOME); the pid stopped, or None when
    none was running. A fast shutdown (SIGINT to the postmaster, what `pg_ctl -m fast stop` sends):
    sessions are ended, data is safe. Signalled directly because pg_ctl refuses to run as root,
    and as the `pgserver` user it may not reach the data directory (e.g. under a 0700 parent)."""
    import signal
    import time

    pgdata = ((home or melodee_home()) / "pgdata").resolve()
    pid = embedded_pid(home)
    if pid is None:
        return None
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot stop the embedded PostgreSQL in {pgdata} (pid {pid}): {exc}") from None
        deadline = time.monotonic() + wait
        while _is_postmaster(pid, pgdata) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _is_postmaster(pid, pgdata):
            break
    else:
        raise DatabaseUnavailable(f"the embedded PostgreSQL in {pgdata} (pid {pid}) did not stop")
    _forget_embedded(pgdata)
    return pid


def _forget_embedded(pgdata: Path) -> None:
    """Drop this process's handle on a server just stopped, so a later command in the same
    process starts it again instead of reusing a dead handle."""
    import atexit
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs on an unset XDG_RUNTIME_DIR, as above
        from pgserver.postgres_server import PostgresServer

    _embedded_server.cache_clear()
    handle = PostgresServer._instances.pop(pgdata.resolve(), None)
    if handle is not None:
        atexit.unregister(handle._cleanup)
        handle.global_process_id_list.get_and_remove(os.getpid())
