"""Test-only fault hooks, driven by environment variables; no-ops otherwise.

`MELODEE_CRASH_AT=<name>[:<n>]` SIGKILLs the process at the n-th hit of point <name>.
`MELODEE_PAUSE_AT=<name>` creates `$MELODEE_PAUSE_FILE` at <name> and waits until it is deleted
(the test then breaks something, e.g. stops Postgres, and lets the run go on).
The fault-injection suite uses them to prove every crash point is safe.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_CRASH = os.environ.get("MELODEE_CRASH_AT", "")
_NAME, _, _NTH = _CRASH.partition(":")
_PAUSE = os.environ.get("MELODEE_PAUSE_AT", "")
_hits = 0
_lock = threading.Lock()


def point(name: str) -> None:
    global _hits
    if _PAUSE and name == _PAUSE:
        marker = os.environ["MELODEE_PAUSE_FILE"]
        open(marker, "w").close()
        while os.path.exists(marker):
            time.sleep(0.05)
    if not _CRASH or name != _NAME:
        return
    with _lock:
        _hits += 1
        hit = _hits
    if hit >= int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
