"""The Dagster instance the CLI's `run`, `demo` and `dev` use: DAGSTER_HOME under MELODEE_HOME,
runs and events stored in Postgres (the embedded server's `dagster` database unless DAGSTER_PG_URL)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from melodee_pipeline.db.engine import dagster_database_url, melodee_home

DAGSTER_YAML = Path(__file__).resolve().parent / "dagster.yaml"


def prepare_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or melodee_home() / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["DAGSTER_PG_URL"] = dagster_database_url()
    return home
