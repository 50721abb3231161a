"""File operations that never overwrite and never lose the source (docs/design.md, "Moves").

A move is two phases, so a whole album's destinations are durable before any source goes:
  place:  same filesystem, `os.link` (fails if the destination exists, where `rename` would
          silently replace it); across filesystems, copy to a temp file in the staging root's
          `.melodee-tmp/`, fsync, verify sha256, then link into place (again no overwrite);
  then, once per album, the album directory is fsync'd, and only then are the sources unlinked.
A crash or power loss in between leaves two names for the same bytes, never none.

Staging-side files are opened with O_NOFOLLOW and must be regular files: a symlink planted at a
destination is never "identical" and never a reason to unlink a source.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid

from melodee_pipeline import faults
from melodee_pipeline.errors import UserError
from melodee_pipeline.scan.tags import CHUNK
from melodee_pipeline.staging.durability import discard, fsync_dir, write_and_publish

TEMP_DIR = ".melodee-tmp"  # under the staging root; only this pipeline writes there
_CROSS_DEVICE = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class ChecksumMismatch(OSError):
    pass


def makedirs_durable(path: str, stop_at: str) -> None:
    """`os.makedirs`, with each new directory fsync'd into its parent (power loss keeps them)."""
    missing = []
    p = path
    while not os.path.isdir(p) and p != stop_at:
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(d))


def replace_durably(final: str, data: bytes, tmp_dir: str) -> None:
    """Temp file + fsync + rename + fsync of the directory (or, in a group commit, the barrier): a
    reader sees the old file or the new one, never half of one, and a power cut keeps the new one.
    The temp file lives in the staging temp dir, which every run clears first, so a crash never
    leaves debris beside `final`."""
    own_dir(tmp_dir)
    write_and_publish(data, os.path.join(tmp_dir, f"replace-{uuid.uuid4().hex}"), final)


def regular_file_sha256(path: str | bytes) -> str | None:
    """sha256 of the regular file at `path`, never through a symlink; None when there is no
    regular file there (absent, a symlink, a directory, a device)."""
    try:
        # O_NONBLOCK: a FIFO planted at the name must not hang the run (it is no regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        h = hashlib.sha256()
        while chunk := f.read(CHUNK):
            h.update(chunk)
        return h.hexdigest()


def place(src: bytes | str, dst: str, expected_sha256: str, tmp_dir: str) -> None:
    """Give the bytes of `src` the name `dst`; the source stays. FileExistsError if `dst` exists."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _CROSS_DEVICE:
            raise
        copy_verified(src, dst, expected_sha256, tmp_dir)


def copy_verified(src: bytes | str, dst: str, expected_sha256: str, tmp_dir: str) -> None:
    tmp = os.path.join(tmp_dir, f"copy-{uuid.uuid4().hex}")
    try:
        h = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())  # never deferred: the link below must not name bytes still in flight
        faults.point("copy_written")  # temp file complete, not linked yet
        with open(tmp, "rb") as f:  # re-read what the disk holds, not what we meant to write
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != expected_sha256:
            raise ChecksumMismatch(errno.EIO, f"checksum mismatch after copy ({h.hexdigest()[:12]} != "
                                              f"{expected_sha256[:12]}); source changed since the scan?")
        os.link(tmp, dst)
    finally:
        discard([tmp])


def unlink_if_same(src: bytes | str, expected_sha256: str) -> bool:
    """Remove the inbound copy only if it still holds the bytes already safe in staging."""
    if regular_file_sha256(src) != expected_sha256:
        return False
    os.unlink(src)
    return True


def temp_dir(staging_root: str) -> str:
    return os.path.join(staging_root, TEMP_DIR)


def own_dir(path: str) -> str:
    """A directory of the pipeline's own under the staging root (temp files, the journal), made if
    missing; a symlink or anything else there is refused, so nothing is written or deleted through it."""
    try:
        st = os.lstat(path)  # one call on the usual path: it exists and is a plain directory
    except FileNotFoundError:
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):  # lstat: a symlink is no directory
        raise UserError(f"refusing to use {path}: it is not a plain directory (a symlink?); remove it")
    return path


def clear_temp_dir(staging_root: str) -> int:
    """Start of a staging run (the caller holds the staging lock): what a crashed run left half-written goes."""
    path = own_dir(temp_dir(staging_root))
    names = os.listdir(path)
    for name in names:
        os.unlink(os.path.join(path, name))
    return len(names)


def remove_temp_dir(staging_root: str) -> None:
    try:
        os.rmdir(temp_dir(staging_root))
    except OSError:
        pass
