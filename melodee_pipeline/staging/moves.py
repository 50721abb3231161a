"""Moves that never overwrite and never lose the source (SPEC §7).

Same filesystem: `os.link` then unlink the source. `link` fails if the destination exists, where
`rename` would silently replace it. A crash between the two leaves two names for one inode: the
next run sees identical bytes at the destination and only removes the inbound name.

Across filesystems: copy to a hidden temp file beside the destination, fsync, verify sha256
against the scan, link into place (again no overwrite), then unlink temp and source. A crash
leaves at worst a temp file, which the next run in that album directory deletes; the source is
removed last, so it is never gone before the copy is durable.
"""

from __future__ import annotations

import errno
import os
import uuid

from melodee_pipeline.scan.tags import CHUNK, sha256_file

TEMP_PREFIX = ".melodee-tmp-"
_CROSS_DEVICE = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


class ChecksumMismatch(OSError):
    pass


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_no_overwrite(src: bytes | str, dst: str, expected_sha256: str) -> None:
    """Move `src` to `dst`. Raises FileExistsError if `dst` exists; the source stays on any failure."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _CROSS_DEVICE:
            raise
        copy_verified(src, dst, expected_sha256)
    os.unlink(src)


def copy_verified(src: bytes | str, dst: str, expected_sha256: str) -> None:
    directory = os.path.dirname(dst)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        actual = sha256_file(tmp)
        if actual != expected_sha256:
            raise ChecksumMismatch(errno.EIO, f"checksum mismatch after copy ({actual[:12]} != {expected_sha256[:12]}); source changed since the scan?")
        os.link(tmp, dst)
        fsync_dir(directory)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def remove_stale_temps(directory: str) -> int:
    """Temp files left by a crashed copy; only ever ours (hidden, fixed prefix)."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(TEMP_PREFIX):
            os.unlink(os.path.join(directory, name))
            removed += 1
    return removed


def sha256_if_exists(path: str) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None

