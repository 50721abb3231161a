"""Making a protocol step durable before the next begins (docs/design.md, "Group commit").

Alone, an album pays for its ordering with about ten fsyncs: the journal entry before the first
move, every new directory and name before a source goes, each temp file's bytes before its
rename. A batch of albums pays with a few `syncfs` calls instead: the stager runs one step for
every album of the batch inside `GroupCommit.deferring`, where fsyncs are skipped and a temp file
is published (renamed or linked to its final name) only at the next `barrier`, after its bytes
are on disk. So a name never points at bytes that are not durable, and each step is durable
before the next starts, for the whole batch at once (as a database's group commit does).

Only where `syncfs` is known to flush the filesystem (local disk filesystems, overlay) and to
report a failed writeback (Linux 5.8 on) is there deferring; elsewhere (not Linux, older kernels;
FUSE, NFS and SMB mounts, whose servers never see a `syncfs`) every call is durable on its own, as
one album at a time always was.
"""

from __future__ import annotations

import ctypes
import os
import re
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
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo escapes space, tab, newline, backslash
# Filesystems whose `syncfs` writes back everything: data, inodes, directories, the journal.
SYNCFS_FLUSHES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "jfs", "nilfs2", "overlay",
                  "tmpfs", "ramfs"}
SYNCFS_REPORTS_ERRORS = (5, 8)  # older kernels' syncfs returns 0 even when writeback failed


def kernel_version(release: str) -> tuple[int, int]:
    """`os.uname().release` ("6.1.0-18-amd64") as (6, 1); (0, 0) when it is not a Linux release."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path`, "" if unknown."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mountinfo = f.read()
    except OSError:
        return ""
    dev = os.stat(path).st_dev
    return mount_type(mountinfo, f"{os.major(dev)}:{os.minor(dev)}", os.path.realpath(path))


def mount_type(mountinfo: str, device: str, real_path: str) -> str:
    """From `/proc/self/mountinfo`: the type of the mount with `device` ("major:minor"), else of
    the longest mount point above `real_path` (a btrfs subvolume has a device of its own)."""
    by_device, by_prefix, longest = "", "", -1
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts, kind = fields.split(), rest.split(" ", 1)[0]
        if len(parts) < 5 or not kind:
            continue
        mount_point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), parts[4])  # "\040" is a space
        if parts[2] == device:
            by_device = kind
        inside = real_path == mount_point or real_path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > longest:
            by_prefix, longest = kind, len(mount_point)
    return by_device or by_prefix


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


def write_and_publish(data: bytes, tmp: str, final: str, *, link: bool = False) -> None:
    """Write `data` to the new temp file `tmp`, fsync it (or defer), then `publish` it as
    `final`; whatever fails, `tmp` does not stay behind."""
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            fsync_file(f.fileno())
        publish(tmp, final, link=link)
    except BaseException:
        discard([tmp])
        raise


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


def discard(tmps) -> None:
    """Temp files that will never be published (the run's temp dir would keep them as debris)."""
    for tmp in tmps:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


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
    def available(root: str) -> bool:
        return (_SYNCFS is not None and kernel_version(os.uname().release) >= SYNCFS_REPORTS_ERRORS
                and filesystem_type(root) in SYNCFS_FLUSHES)

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
        with self._lock:
            queued, self._queued = self._queued, []
        try:
            syncfs(self.root)  # the temp files' bytes, new directories and names, journal entries
        except OSError:
            discard(tmp for _, tmp, _, _ in queued)
            raise
        failed: dict[str, OSError] = {}
        for owner, tmp, final, link in queued:
            if owner in failed:
                discard([tmp])  # never published over a publish of its album that failed
                continue
            faults.point("publish")
            try:
                _apply(tmp, final, link)
            except OSError as exc:  # FileExistsError too: a cover's name taken meanwhile is not ours
                failed[owner] = exc
                discard([tmp])
        unflushed = None
        if queued:
            try:
                syncfs(self.root)  # the names just published
            except OSError as exc:
                unflushed = exc
        return failed, unflushed
