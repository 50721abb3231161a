"""Read one media file: size, mtime, sha256 and normalised tags.

Runs inside worker processes: mediafile is pure Python, so tag parsing is bound by the GIL.
"""

from __future__ import annotations

import hashlib
import io
import os

import mediafile

CHUNK = 1 << 20
IN_MEMORY_BYTES = 4 << 20  # smaller files are read once for hash and tags; larger ones are streamed
ROW_COLUMNS = (
    "file_path", "path_bytes", "file_size", "file_hash", "modified_time", "artist", "album_artist",
    "album", "title", "track_number", "disc_number", "year", "genre", "duration", "bitrate",
    "sample_rate", "is_valid", "validation_error",
)
TEXT_COLUMNS = ("file_hash", "artist", "album_artist", "album", "title", "genre", "validation_error")
# Text is '' when absent (never NULL, as Go writes it); numbers are NULL when unknown.
EMPTY_ROW = {**dict.fromkeys(ROW_COLUMNS), **dict.fromkeys(TEXT_COLUMNS, ""), "is_valid": 0}


def sha256_file(path: bytes | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def display_path(path: bytes) -> str:
    """A text form of any file name; undecodable bytes become `\\xNN` so SQLite and JSON accept it."""
    return path.decode("utf-8", "backslashreplace")


def _text(value: object) -> str:
    if value is None:
        return ""
    # A lone surrogate (broken UTF-16 in a tag) cannot be stored as text; it becomes U+FFFD.
    return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace").strip()


def _int(value: object) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def read_media_file(path: bytes) -> dict:
    """One `scanned_files` row (without ids and grouping) for the file at `path`. Never raises."""
    row: dict = {**EMPTY_ROW, "file_path": display_path(path), "path_bytes": path}
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        row["validation_error"] = f"unreadable: {exc.strerror}"
        return row
    row["file_size"] = st.st_size
    row["modified_time"] = int(st.st_mtime)
    if st.st_size == 0:
        row["validation_error"] = "empty file"
        return row
    try:
        if st.st_size <= IN_MEMORY_BYTES:
            # One read serves both the hash and the tag parser.
            with open(path, "rb") as f:
                data = f.read()
            row["file_hash"] = hashlib.sha256(data).hexdigest()
            source = io.BytesIO(data)
            source.name = os.fsdecode(path)  # mutagen weighs the extension when guessing the format
        else:
            row["file_hash"] = sha256_file(path)
            source = os.fsdecode(path)
        mf = mediafile.MediaFile(source)
    except PermissionError as exc:
        row["validation_error"] = f"unreadable: {exc.strerror}"
        return row
    except OSError as exc:
        row["validation_error"] = f"unreadable: {exc.strerror or exc}"
        return row
    except Exception as exc:  # mediafile/mutagen raise many types for corrupt data
        row["validation_error"] = f"corrupt or not audio: {type(exc).__name__}: {exc}"[:500]
        return row
    length = mf.length or 0
    row.update(
        artist=_text(mf.artist),
        album_artist=_text(mf.albumartist),
        album=_text(mf.album),
        title=_text(mf.title),
        track_number=_int(mf.track),
        disc_number=_int(mf.disc),
        year=_int(mf.year),
        genre=_text(mf.genre),
        duration=int(round(length * 1000)),
        bitrate=int(round((mf.bitrate or 0) / 1000)),
        sample_rate=mf.samplerate or None,
    )
    problems = []
    if length <= 0:
        problems.append("no audio stream")
    if not (row["artist"] or row["album_artist"]):
        problems.append("missing artist")
    if not row["album"]:
        problems.append("missing album")
    if not row["title"]:
        problems.append("missing title")
    row["is_valid"] = 0 if problems else 1
    row["validation_error"] = "; ".join(problems)
    return row


def read_media_files(paths: list[bytes]) -> list[tuple]:
    """A batch per task: one inter-process round trip per batch, rows as tuples in ROW_COLUMNS
    order (smaller to pickle than dicts, and ready for executemany)."""
    return [tuple(map(read_media_file(p).get, ROW_COLUMNS)) for p in paths]
