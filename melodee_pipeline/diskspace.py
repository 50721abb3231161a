"""What a full filesystem has left, for the messages of a run it stops (staging, scan DBs)."""

from __future__ import annotations

import os


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def free_space(path: str) -> str:
    """`12.3 MiB free`; a filesystem out of inodes says so, since its bytes free then mislead
    (ENOSPC with megabytes to spare)."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"free space unknown ({exc.strerror})"
    free = mib(st.f_bavail * st.f_frsize) + " free"
    if st.f_files and not st.f_favail:
        return f"no free inodes: no new file fits, though {free}"
    return free
