"""Processes a test session leaves behind: its own descendants, and detached ones (an embedded
Postgres under a test's MELODEE_HOME, a Dagster daemon) found by the session's temp dir in their
command line, working directory or environment. Linux /proc only; elsewhere nothing is found."""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC = Path("/proc")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _ppid(pid: int) -> int | None:
    stat = _read(PROC / str(pid) / "stat")
    try:
        return int(stat.rsplit(b")", 1)[1].split()[1])  # the name in (...) may hold spaces
    except (IndexError, ValueError):
        return None


def _names(pid: int, marker: bytes) -> bool:
    proc = PROC / str(pid)
    try:
        cwd = os.fsencode(os.readlink(proc / "cwd"))
    except OSError:
        cwd = b""
    return any(marker in blob for blob in (_read(proc / "cmdline"), _read(proc / "environ"), cwd))


def session_processes(temp_dir: Path) -> set[int]:
    """Pids of this process's descendants and of every process naming `temp_dir`, with theirs."""
    if not PROC.is_dir():
        return set()
    parent = {pid: _ppid(pid) for pid in (int(p.name) for p in PROC.iterdir() if p.name.isdigit())}
    marker = os.fsencode(os.path.join(temp_dir, ""))  # with the separator: pytest-5 is no prefix of pytest-50
    me = os.getpid()
    found = {pid for pid in parent if pid != me and _names(pid, marker)}
    roots = found | {me}
    changed = True
    while changed:  # add descendants until nothing new
        more = {pid for pid, pp in parent.items() if pp in roots and pid not in roots}
        roots |= more
        changed = bool(more)
    return roots - {me}


def describe(pid: int) -> str:
    cmdline = _read(PROC / str(pid) / "cmdline").replace(b"\0", b" ").strip()
    return f"pid {pid}: {os.fsdecode(cmdline)[:200]}"


def left_behind(temp_dir: Path, before: set[int], grace: float = 10.0) -> list[str]:
    """Processes of the session still alive after `grace` seconds (a stopped server takes a moment
    to exit), except those already running in `before`."""
    deadline = time.monotonic() + grace
    while True:
        alive = sorted(p for p in session_processes(temp_dir) - before if (PROC / str(p)).exists() and not _zombie(p))
        if not alive or time.monotonic() >= deadline:
            return [describe(p) for p in alive]
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    stat = _read(PROC / str(pid) / "stat")
    return stat.rsplit(b")", 1)[-1].split()[:1] == [b"Z"]
