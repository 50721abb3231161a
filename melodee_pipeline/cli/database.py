"""The database the current command talks to, so an error message can name it (masked)."""

from __future__ import annotations

current = None  # the engine of the running command, once it asked for one


def engine():
    global current
    from melodee_pipeline.db.engine import get_engine

    current = get_engine()
    return current
