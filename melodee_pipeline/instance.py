"""The Dagster instance: storage that finds its Postgres by itself, and the DAGSTER_HOME that
`melodee-pipeline run|demo|dev` use.

`dagster.yaml` names `MelodeeDagsterStorage` as its storage, so every process that loads the
instance (a bare `dagster` command, the webserver, the daemon, a run worker) resolves the URL the
same way, at load time: `DAGSTER_PG_URL`; else a `dagster` database on the server of
`MELODEE_DATABASE_URL` (created when missing); else the `dagster` database of the embedded server
under `MELODEE_HOME`, started on demand.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from dagster import Field, StringSource
from dagster_postgres import DagsterPostgresStorage

from melodee_pipeline.db.engine import dagster_database_url, melodee_home

DAGSTER_YAML = Path(__file__).resolve().parent / "dagster.yaml"
# The first line of our dagster.yaml: a copy carrying it is ours to refresh.
MARKER = "# Dagster instance for melodee-pipeline"
LOCATION_NAME = "melodee_pipeline"
WORKSPACE_YAML = f"""# Written by melodee-pipeline dev: the code location the UI links name.
load_from:
  - python_module:
      module_name: melodee_pipeline.definitions
      location_name: {LOCATION_NAME}
"""


class MelodeeDagsterStorage(DagsterPostgresStorage):
    """Dagster's runs, events and schedules in Postgres; `postgres_url` optional (see module doc)."""

    @classmethod
    def config_type(cls):
        return {
            "postgres_url": Field(StringSource, is_required=False,
                                  description="Overrides DAGSTER_PG_URL and the derived default"),
            "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        url = config_value.get("postgres_url") or dagster_database_url()
        return cls(postgres_url=url, should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data)


@contextlib.contextmanager
def held_connections(instance) -> Iterator[None]:
    """Dagster's Postgres storages open a connection per read or write (NullPool: ~80 in a run
    that stages albums, ~2.5 ms each). For a run in this short-lived process two stay open instead,
    closed when the run is over; more at once are opened and closed as before, so a connection
    Dagster holds longer never makes another wait, and one Postgres dropped meanwhile is replaced
    when next taken (pre-ping). Storage other than dagster-postgres's (pinned: it keeps its engine
    in `_engine`) is left as it is."""
    import sqlalchemy as sa

    swapped = []
    for storage in {id(s): s for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)}.values():
        if getattr(storage, "_engine", None) is not None and isinstance(getattr(storage, "postgres_url", None), str):
            pooled = sa.create_engine(storage.postgres_url, isolation_level="AUTOCOMMIT", pool_size=2,
                                      max_overflow=-1, pool_pre_ping=True)
            swapped.append((storage, storage._engine, pooled))
            storage._engine = pooled
    try:
        yield
    finally:
        for storage, original, pooled in swapped:
            storage._engine = original
            pooled.dispose()


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or melodee_home() / "dagster").expanduser().resolve()


def prepare_dagster_home() -> Path:
    """DAGSTER_HOME (default `$MELODEE_HOME/dagster`) holding our dagster.yaml; the caller
    exports it. A copy of an older dagster.yaml of ours is refreshed; a
    dagster.yaml the user wrote is left alone. Resolves the storage URL once, so an unreachable
    or uncreatable database is one clear error here rather than a traceback inside Dagster."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    shipped = DAGSTER_YAML.read_text()
    if not target.exists() or (target.read_text().startswith(MARKER) and target.read_text() != shipped):
        tmp = home / ".dagster.yaml.tmp"
        tmp.write_text(shipped)
        os.replace(tmp, target)
    if target.read_text() == shipped:
        dagster_database_url()
    return home


def write_workspace(home: Path) -> Path:
    """A workspace.yaml in DAGSTER_HOME, so the code location is `melodee_pipeline` whether the
    package runs from a clone or from an installed wheel."""
    path = home / "workspace.yaml"
    if not path.exists() or path.read_text() != WORKSPACE_YAML:
        path.write_text(WORKSPACE_YAML)
    return path
