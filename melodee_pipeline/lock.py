"""One staging run at a time, for real: a Postgres advisory lock held for the whole run.

The holder tags its connection's application_name, so a refused run can say which run holds it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

from melodee_pipeline.errors import StagingLocked

LOCK_KEY = 0x4D454C4F  # "MELO"; fits in objid with classid 0
APP_PREFIX = "melodee-pipeline run "


@contextmanager
def staging_lock(engine: sa.Engine, owner: str) -> Iterator[None]:
    """Hold the staging lock as `owner` (a run id or a CLI label); raise StagingLocked at once if taken."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT set_config('application_name', :name, false)"), {"name": (APP_PREFIX + owner)[:63]})
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            raise StagingLocked(f"another staging run is in progress (run {holder(conn) or 'unknown'})")
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                conn.commit()
            except sa.exc.DBAPIError:
                pass  # the connection is gone (database down), and the session lock with it


def holder(conn: sa.Connection) -> str | None:
    name = conn.execute(
        sa.text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = :k "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"k": LOCK_KEY},
    ).scalar()
    return name[len(APP_PREFIX):] if name and name.startswith(APP_PREFIX) else name
