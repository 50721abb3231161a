"""The one spelling of a directory path, for storing and comparing library paths.

`/music//staging/`, `/music/./staging` and `/music/staging` name one directory, so they must be one
library. The form is what Go's `filepath.Clean` gives (Melodee is written in Go): repeated and
trailing slashes dropped, `.` removed, `..` resolved lexically. POSIX lets `os.path.normpath` keep
a leading `//`; Clean does not, and neither does this.
"""

from __future__ import annotations

import os


def normalize_path(path: str) -> str:
    cleaned = os.path.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned
