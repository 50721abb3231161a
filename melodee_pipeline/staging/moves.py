"""Moves that never overwrite and never lose the source (SPEC §7).

Same filesystem: `os.link` then unlink the source. `link` fails if the destination exists, where
`rename` would silently replace it. A crash between the two leaves two names for one inode: the
next run sees identical bytes at the destination and only removes the inbound name.

Across filesystems: copy to a temp file in the staging root's `.melodee-tmp/` (same filesystem as
the destination), fsync, verify sha256 against the scan, link into place (again no overwrite),
then unlink temp and source. A crash leaves at worst a temp file there, which the next staging
run deletes first; the source is removed last, so it is never gone before the copy is durable.
"""

from __future__ import annotations

import errno
import os
import uuid

from melodee_pipeline import faults

from melodee_pipeline.scan.tags import CHUNK, sha256_file

TEMP_DIR = ".melodee-tmp"  # under the staging root; only this pipeline writes there
_CROSS_DEVICE = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


class ChecksumMismatch(OSError):
    pass


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_no_overwrite(src: bytes | str, dst: str, expected_sha256: str, tmp_dir: str) -> None:
    """Move `src` to `dst`. Raises FileExistsError if `dst` exists; the source stays on any failure."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _CROSS_DEVICE:
            raise
        copy_verified(src, dst, expected_sha256, tmp_dir)
    faults.point("before_unlink_source")  # destination complete, source still there
    os.unlink(src)


def copy_verified(src: bytes | str, dst: str, expected_sha256: str, tmp_dir: str) -> None:
    tmp = os.path.join(tmp_dir, f"copy-{uuid.uuid4().hex}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        faults.point("copy_written")  # temp file complete, not linked yet
        actual = sha256_file(tmp)
        if actual != expected_sha256:
            raise ChecksumMismatch(errno.EIO, f"checksum mismatch after copy ({actual[:12]} != {expected_sha256[:12]}); source changed since the scan?")
        os.link(tmp, dst)
        fsync_dir(os.path.dirname(dst))
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def temp_dir(staging_root: str) -> str:
    return os.path.join(staging_root, TEMP_DIR)


def clear_temp_dir(staging_root: str) -> int:
    """Start of a staging run (under the lock): whatever a crashed run left half-written goes."""
    path = temp_dir(staging_root)
    os.makedirs(path, exist_ok=True)
    names = os.listdir(path)
    for name in names:
        os.unlink(os.path.join(path, name))
    return len(names)


def remove_temp_dir(staging_root: str) -> None:
    try:
        os.rmdir(temp_dir(staging_root))
    except OSError:
        pass


def sha256_if_exists(path: str) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None

