"""Progress lines by the clock, not by count: in Dagster each line is an event written to Postgres,
so a 10k-file run logs none or two (it used to log 20, ~15 ms each) and a 400k-file run one every
few seconds, not 400."""

from __future__ import annotations

import time

EVERY_SECONDS = 5.0


class Progress:
    def __init__(self, every: float | None = None):
        self.every = EVERY_SECONDS if every is None else every
        self._next = time.monotonic() + self.every

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every
        return True
