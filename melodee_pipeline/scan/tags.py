"""Read one media file: size, mtime, sha256 and normalised tags.

Runs inside worker processes: mediafile is pure Python, so tag parsing is bound by the GIL.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import sys
import unicodedata
from typing import NamedTuple

import mediafile
import mutagen

from melodee_pipeline.scan.mediaopen import open_media

CHUNK = 1 << 20
IN_MEMORY_BYTES = 4 << 20  # smaller files are read once for hash and tags; larger ones are streamed
TAG_MAX = 9999  # track, disc and year beyond this are nonsense (or an attack), treated as missing
AUDIO_MAX = 2**31 - 1  # duration, bitrate, sample rate: what a Go int32 / PostgreSQL integer holds
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters, NUL included
ROW_COLUMNS = (
    "file_path", "path_bytes", "file_size", "file_hash", "modified_time", "artist", "album_artist",
    "album", "title", "track_number", "disc_number", "year", "genre", "duration", "bitrate",
    "sample_rate", "is_valid", "validation_error", "warnings", "mtime_ns", "inode", "ctime_ns", "track_total",
    "has_cover",
)
TEXT_COLUMNS = ("file_hash", "artist", "album_artist", "album", "title", "genre", "validation_error", "warnings")
# Text is '' when absent (never NULL, as Go writes it); numbers are NULL when unknown.
EMPTY_ROW = {**dict.fromkeys(ROW_COLUMNS), **dict.fromkeys(TEXT_COLUMNS, ""), "is_valid": 0}
# The reason of a file our own code failed on: it is refused this scan, and read again by the next.
INTERNAL_ERROR = "internal error reading tags (a bug, please report it)"
UNREADABLE = "unreadable"  # the file could not be read (permissions, I/O): no verdict on its content
# Who reads tags: a refusal remembered by another reader (a mutagen upgrade fixing a parser bug,
# a change here that bumps READER_VERSION) is read again once.
READER_VERSION = 1
READER = f"mutagen {mutagen.version_string}; melodee-pipeline reader {READER_VERSION}"


def sha256_file(path: bytes | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def display_path(path: bytes) -> str:
    """A text form of any file name; undecodable bytes become `\\xNN` so SQLite and JSON accept it."""
    return path.decode("utf-8", "backslashreplace")


def storable(text: str) -> str:
    """Text SQLite and PostgreSQL accept. An error message can hold a file name that is not UTF-8
    (Python carries its bytes as lone surrogates): they become `\\xNN`, as in `display_path`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean_text(value: object, name: str, warnings: list[str]) -> str:
    """Tag text as stored. NUL and the other control characters are removed: PostgreSQL text cannot
    hold NUL, and none of them belongs in a name or a directory. A lone surrogate (broken UTF-16 in
    a tag) cannot be stored as text either; it becomes U+FFFD. Text is NFC: macOS tools write
    decomposed accents (`e` + U+0301), and the same name spelt both ways must be one album, one
    directory code and one artist for Melodee."""
    if value is None:
        return ""
    text = str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    cleaned = _CONTROL.sub("", text)
    if cleaned != text:
        warnings.append(f"control characters removed from {name}")
    return unicodedata.normalize("NFC", cleaned.strip())


def clean_number(value: object, name: str, limit: int, warnings: list[str]) -> int | None:
    """A whole number in 0..limit, else missing with a warning: a 20-digit track number fits
    neither SQLite nor PostgreSQL, and must not fail the file, let alone the scan."""
    if value is None:
        return None
    try:
        n = round(value) if isinstance(value, float) else int(value)
    except (TypeError, ValueError, OverflowError):
        warnings.append(f"{name} {str(value)[:40]!r} is not a number, ignored")
        return None
    if 0 <= n <= limit:
        return n
    shown = str(n) if len(str(n)) <= 40 else str(n)[:40] + "..."
    warnings.append(f"{name} {shown} out of range 0-{limit}, ignored")
    return None


def _field(mf: mediafile.MediaFile, name: str, warnings: list[str]) -> object:
    """One mediafile field; a tag mediafile cannot parse (e.g. a 5000-digit number) counts as missing."""
    try:
        return getattr(mf, name)
    except Exception as exc:
        warnings.append(f"{name} tag unreadable ({type(exc).__name__}), ignored")
        return None


def _read_tags(mf: mediafile.MediaFile, row: dict) -> float:
    """Fill the tag and audio columns of `row`; returns the length in seconds."""
    warnings: list[str] = []

    def get(name: str) -> object:
        return _field(mf, name, warnings)

    def text(name: str, shown: str) -> str:
        return clean_text(get(name), shown, warnings)

    length = get("length") or 0
    row.update(
        artist=text("artist", "artist"),
        album_artist=text("albumartist", "album artist"),
        album=text("album", "album"),
        title=text("title", "title"),
        track_number=clean_number(get("track"), "track", TAG_MAX, warnings) or None,
        disc_number=clean_number(get("disc"), "disc", TAG_MAX, warnings) or None,
        year=clean_number(get("year"), "year", TAG_MAX, warnings) or None,
        genre=text("genre", "genre"),
        duration=clean_number(length * 1000, "duration (ms)", AUDIO_MAX, warnings),
        bitrate=clean_number((get("bitrate") or 0) / 1000, "bitrate (kbps)", AUDIO_MAX, warnings),
        sample_rate=clean_number(get("samplerate"), "sample rate", AUDIO_MAX, warnings) or None,
        track_total=clean_number(get("tracktotal"), "total tracks", TAG_MAX, warnings) or None,
        # Staging writes out an embedded cover; knowing none is there spares it re-reading the file.
        has_cover=int(bool(get("images"))),
        warnings="; ".join(warnings),
    )
    return length


class Identity(NamedTuple):
    """What a scan keeps of a file's stat: its identity for remembered refusals, and its size. Sent
    to a worker with every file, an `os.stat_result` cost ~4 µs to pickle and unpickle, this ~1 µs."""
    st_size: int
    st_mtime_ns: int
    st_ino: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def file_row(path: bytes, st: os.stat_result | Identity) -> dict:
    """The row of a file not read (yet): its name and what its stat says."""
    return {
        **EMPTY_ROW, "file_path": display_path(path), "path_bytes": path, "file_size": st.st_size,
        "modified_time": st.st_mtime_ns // 1_000_000_000, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
        "ctime_ns": st.st_ctime_ns,
    }


def as_tuple(row: dict) -> tuple:
    """A row in ROW_COLUMNS order: smaller to pickle than a dict, and ready for executemany."""
    return tuple(map(row.get, ROW_COLUMNS))


def read_media_file(path: bytes, st: os.stat_result | Identity | None = None) -> dict:
    """One `scanned_files` row (without ids and grouping) for the file at `path`, whose stat the
    walk already took. Never raises: whatever is wrong with a file is that file's
    `validation_error`, never the scan's."""
    if st is None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            return {**EMPTY_ROW, "file_path": display_path(path), "path_bytes": path,
                    "validation_error": f"{UNREADABLE}: {exc.strerror}"}
    row = file_row(path, st)
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
            opened = open_media(source)
        else:
            row["file_hash"] = sha256_file(path)
            opened = mediafile.MediaFile(os.fsdecode(path))
        length = _read_tags(opened, row)
    except Exception as exc:  # mediafile/mutagen raise many types for corrupt data
        if (failed := _io_error(exc)) is not None:
            row["validation_error"] = storable(f"{UNREADABLE}: {failed.strerror or failed or type(failed).__name__}")
            return row
        verdict = "corrupt or not audio" if _from_parser(exc) else INTERNAL_ERROR
        detail = _without_name(str(exc), os.fsdecode(path))
        row["validation_error"] = storable(_CONTROL.sub("", f"{verdict}: {type(exc).__name__}: {detail}"))[:500]
        return row
    problems = []
    if not length > 0:  # NaN included
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


def _without_name(message: str, name: str) -> str:
    """mutagen's message without the file's name, which the reason is always shown beside (and
    stored beside, for every leftover of every scan): `/in/x.mp3: can't sync to MPEG frame`."""
    if message.startswith(name + ": "):
        message = message[len(name) + 2:]
    return message.replace(repr(name), "the file")


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it was raised from or while handling, down to the first cause (mediafile
    re-raises what mutagen raised, and what mutagen called raised, as its own errors)."""
    chain = [exc]
    while len(chain) < 20 and (cause := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(cause)
    return chain


def _io_error(exc: BaseException) -> OSError | None:
    """The I/O error behind `exc`, if any: mutagen wraps a failing open or read (a NAS hiccup) in
    its own error, which must not pass for a verdict on the file's bytes, nor be remembered. Only
    an error the system raised counts: mutagen's own "not enough data" is an `IOError` without an
    errno (a truncated file: corrupt), and a seek before the start of a short file is EINVAL."""
    return next((e for e in _causes(exc) if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL)), None)


def _from_parser(exc: BaseException) -> bool:
    """Whether the exception came out of the tag parser (bad data), not out of our own code (a
    bug, which must not pass for a corrupt file, nor be remembered as one): where its first cause
    was raised, the innermost frame outside the standard library (`base64` raising for mutagen
    is mutagen's; our code raising inside mediafile's wrapper is ours)."""
    frames = []
    tb = _causes(exc)[-1].__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", "").split(".", 1)[0])
        tb = tb.tb_next
    for module in reversed(frames):
        if module in ("mutagen", "mediafile"):
            return True
        if module not in sys.stdlib_module_names:
            return False
    return False


def read_media_files(files: list[tuple[bytes, Identity]]) -> list[tuple]:
    """A batch of (path, stat) per task: one inter-process round trip per batch."""
    return [as_tuple(read_media_file(path, st)) for path, st in files]
