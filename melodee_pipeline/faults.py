"""Test-only fault hooks, driven by environment variables; no-ops otherwise.

`MELODEE_CRASH_AT=<name>[:<n>]` SIGKILLs the process at the n-th hit of point <name>.
`MELODEE_PAUSE_AT=<name>[:<n>]` creates `$MELODEE_PAUSE_FILE` at the n-th hit of <name> (every
hit without <n>) and waits until it is deleted (the test then breaks something, e.g. stops
Postgres, or starts a second run, and lets the run go on).
`MELODEE_RETRY_DELAY=<seconds>` shortens the wait between retries of an op, so a test of an
outage does not sit through the real delay.
The fault-injection suite uses them to prove every crash point is safe.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

_CRASH_NAME, _, _CRASH_NTH = os.environ.get("MELODEE_CRASH_AT", "").partition(":")
_PAUSE_NAME, _, _PAUSE_NTH = os.environ.get("MELODEE_PAUSE_AT", "").partition(":")
_hits: Counter = Counter()
_lock = threading.Lock()


def _hit(name: str) -> int:
    with _lock:
        _hits[name] += 1
        return _hits[name]


def point(name: str) -> None:
    if name not in (_CRASH_NAME, _PAUSE_NAME):
        return
    hit = _hit(name)
    if name == _PAUSE_NAME and (not _PAUSE_NTH or hit == int(_PAUSE_NTH)):
        marker = os.environ["MELODEE_PAUSE_FILE"]
        open(marker, "w").close()
        while os.path.exists(marker):
            time.sleep(0.05)
    if name == _CRASH_NAME and hit >= int(_CRASH_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def retry_delay(seconds: float) -> float:
    """`seconds`, unless a test set `MELODEE_RETRY_DELAY`."""
    return float(os.environ.get("MELODEE_RETRY_DELAY") or seconds)
