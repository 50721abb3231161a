"""One staging run at a time, for real: a Postgres advisory lock held for the whole run.

The holder tags its connection's application_name, so a refused run can say which run holds it.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

from melodee_pipeline.errors import StagingLocked, UserError

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


@contextmanager
def staging_dir_lock(staging_root: str) -> Iterator[None]:
    """Without a database (`process-scan` alone) two runs on one staging tree still exclude each
    other: an exclusive flock on the staging directory itself, released when the process ends."""
    try:
        fd = os.open(staging_root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        raise UserError(f"staging path {staging_root} does not exist or is not a directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StagingLocked(f"another staging run is in progress on {staging_root}") from None
        yield
    finally:
        os.close(fd)
