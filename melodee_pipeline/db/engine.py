"""Where the application database is and how to reach it.

`MELODEE_DATABASE_URL` wins; without it an embedded PostgreSQL (pgserver) is started, or reused,
under `MELODEE_HOME`. It listens on a Unix socket only and keeps running across commands.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from melodee_pipeline.errors import DatabaseUnavailable, UserError

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
    """Dagster's own storage: `DAGSTER_PG_URL`, else a separate database in the embedded server."""
    url = os.environ.get("DAGSTER_PG_URL")
    return psycopg2_url(url) if url else embedded_url(DAGSTER_DATABASE)


@lru_cache(maxsize=None)
def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


def get_engine(url: str | None = None) -> sa.Engine:
    """An engine for `url` (default: the configured database), checked with one round trip."""
    url = psycopg2_url(url) if url else database_url()
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        raise unavailable(engine, exc) from None
    return engine


def unavailable(engine: sa.Engine, exc: sa.exc.DBAPIError) -> DatabaseUnavailable:
    """One line naming the database (password masked) and what the driver said."""
    reason = str(exc.orig or exc).strip().splitlines()
    url = engine.url.render_as_string(hide_password=True)
    return DatabaseUnavailable(f"cannot connect to database {url}: {reason[0] if reason else type(exc).__name__}")
