"""Dagster resources: the application database and the run-long staging lock."""


import contextlib
from typing import Generator, Optional

import dagster as dg
import sqlalchemy as sa

from melodee_pipeline.db.engine import get_engine
from melodee_pipeline.lock import staging_lock


class MelodeeDatabase(dg.ConfigurableResource):
    """Melodee's Postgres. `url` unset: `MELODEE_DATABASE_URL`, else the embedded server."""

    url: Optional[str] = None

    def engine(self) -> sa.Engine:
        return get_engine(self.url)


class StagingRunLock(dg.ConfigurableResource):
    """Holds the Postgres advisory lock from the first op to the last (in-process executor:
    resources live for the whole run), so a second run from anywhere ends at once."""

    database: MelodeeDatabase

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Generator["StagingRunLock", None, None]:
        with staging_lock(self.database.engine(), context.run_id or "unknown"):
            yield self
