"""Making a protocol step durable before the next begins (docs/design.md, "Group commit").

Alone, an album pays for its ordering with about ten fsyncs: the journal entry before the first
move, every new directory and name before a source goes, each temp file's bytes before its
rename. A batch of albums pays with a few `syncfs` calls instead: the stager runs one step for
every album of the batch inside `GroupCommit.deferring`, where fsyncs are skipped and a temp file
is published (renamed or linked to its final name) only at the next `barrier`, after its bytes
are on disk. So a name never points at bytes that are not durable, and each step is durable
before the next starts, for the whole batch at once (as a database's group commit does).

Without `syncfs` (not Linux), there is no deferring: every call is durable on its own.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from melodee_pipeline import faults


def _load_syncfs():
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _load_syncfs()
_local = threading.local()


def syncfs(path: str) -> None:
    """Everything written to the filesystem holding `path` is on disk when this returns."""
    sys.audit("melodee.syncfs", path)  # tests check the order of syncs, links and unlinks
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _deferred() -> "GroupCommit | None":
    return getattr(_local, "commit", None)


def fsync_file(fd: int) -> None:
    if _deferred() is None:
        sys.audit("melodee.fsync", fd)
        os.fsync(fd)


def fsync_dir(path: str | bytes) -> None:
    if _deferred() is not None:
        return
    sys.audit("melodee.fsync", path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, final: str, *, link: bool = False) -> None:
    """Give the temp file `tmp` (written, then `fsync_file`d) its name `final`: `os.replace`, or
    `os.link` (which never replaces a file: FileExistsError) and removing `tmp`. Deferred: the
    barrier does it, once the bytes are on disk."""
    commit = _deferred()
    if commit is not None:
        commit.queue(tmp, final, link)
        return
    _apply(tmp, final, link)
    fsync_dir(os.path.dirname(final))


def _apply(tmp: str, final: str, link: bool) -> None:
    if link:
        try:
            os.link(tmp, final)
        finally:
            os.unlink(tmp)
    else:
        os.replace(tmp, final)


class GroupCommit:
    """One batch's deferred durability. `deferring(owner)` marks the calling thread's work as
    `owner`'s (an album directory); `barrier()` makes everything durable and reports, per owner,
    the first publish that failed (that owner's later publishes are skipped: a staged journal
    entry is never published over a sidecar that was not)."""

    def __init__(self, root: str):
        self.root = root
        self._lock = threading.Lock()
        self._queued: list[tuple[str, str, str, bool]] = []

    @staticmethod
    def available() -> bool:
        return _SYNCFS is not None

    @contextmanager
    def deferring(self, owner: str) -> Iterator[None]:
        _local.commit, _local.owner = self, owner
        try:
            yield
        finally:
            _local.commit = _local.owner = None

    def queue(self, tmp: str, final: str, link: bool) -> None:
        with self._lock:
            self._queued.append((_local.owner, tmp, final, link))

    def barrier(self) -> tuple[dict[str, OSError], OSError | None]:
        """Raises OSError when the flush before publishing fails (nothing is published). Returns
        the failed publishes, per owner, and the error of the flush after publishing, if it
        failed (the names are there; whether they are on disk is unknown)."""
        syncfs(self.root)  # the temp files' bytes, new directories and names, journal entries
        with self._lock:
            queued, self._queued = self._queued, []
        failed: dict[str, OSError] = {}
        for owner, tmp, final, link in queued:
            if owner in failed:
                continue
            faults.point("publish")
            try:
                _apply(tmp, final, link)
            except FileExistsError:
                pass  # a link never replaces: the name is someone else's, the temp file is gone
            except OSError as exc:
                failed[owner] = exc
        unflushed = None
        if queued:
            try:
                syncfs(self.root)  # the names just published
            except OSError as exc:
                unflushed = exc
        return failed, unflushed
