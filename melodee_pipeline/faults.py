"""Test-only crash points: `MELODEE_CRASH_AT=<name>[:<n>]` SIGKILLs the process at the n-th hit of <name>.

Used by the fault-injection suite to prove every crash point is safe; a no-op otherwise.
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = os.environ.get("MELODEE_CRASH_AT", "")
_NAME, _, _NTH = _SPEC.partition(":")
_hits = 0
_lock = threading.Lock()


def point(name: str) -> None:
    global _hits
    if not _SPEC or name != _NAME:
        return
    with _lock:
        _hits += 1
        hit = _hits
    if hit >= int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
