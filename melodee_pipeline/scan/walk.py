"""Walk the inbound tree: media files, and the other files beside them (cover art, rip logs, cue
sheets), symlinks never followed, busy folders skipped."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

MEDIA_EXTENSIONS = {
    b".mp3", b".flac", b".m4a", b".aac", b".ogg", b".opus", b".wma", b".wav",
    b".ape", b".wv", b".aiff", b".aif", b".mpc", b".dsf",
}


def is_media(name: bytes) -> bool:
    """For a file name (no `/`): as `os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS` (so
    `.mp3` alone is no extension), at half its cost: the walk asks once for every file in inbound."""
    dot = name.rfind(b".")
    return dot > 0 and name[dot:].lower() in MEDIA_EXTENSIONS and (name[0] != 0x2E or name[:dot].lstrip(b".") != b"")


@dataclass(frozen=True)
class Skip:
    path: bytes
    reason: str
    file_count: int


def walk_inbound(
    root: str, min_file_age_seconds: int, now: float, on_skip: Callable[[Skip], None],
    on_extra: Callable[[bytes, os.stat_result], None] | None = None,
) -> Iterator[tuple[bytes, os.stat_result]]:
    """Yield (path, stat) of media files, paths as bytes so any file name works, in a stable order.
    The stat is passed on: the scan needs it, and a second one per file would only cost time.

    A directory holding any file modified less than `min_file_age_seconds` ago is still being
    copied in; its files are skipped whole and reported through `on_skip`.

    `on_extra` gets the other regular files of each folder that holds media (hidden files aside:
    `.DS_Store` and the like are no part of an album), so they can travel with their album; and
    those of a folder without media of its own, not the root, once a folder right below it turns
    out to hold some: the folder above an album's disc folders (CD1, CD2) holds its cover.
    """
    top = os.fsencode(root)
    stack = [top]
    above: list[tuple[bytes, list]] = []  # (folder, its other files): only ancestors of the one walked
    while stack:
        directory = stack.pop()
        above = [a for a in above if directory.startswith(a[0] + b"/")]
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_skip(Skip(directory, f"cannot list directory: {exc.strerror}", 0))
            continue
        media, others, young = [], [], False
        subdirs = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    if is_media(entry.name):
                        on_skip(Skip(entry.path, "symlink (not followed)", 1))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if min_file_age_seconds and st.st_mtime > now - min_file_age_seconds:
                        young = True
                    if is_media(entry.name):
                        media.append((entry.path, st))
                    elif not entry.name.startswith(b"."):
                        others.append((entry.path, st))
            except OSError as exc:
                on_skip(Skip(entry.path, f"cannot stat: {exc.strerror}", 1))
        stack.extend(reversed(subdirs))
        if young:
            if media:
                on_skip(Skip(directory, f"modified less than {min_file_age_seconds}s ago (still being copied?)", len(media)))
            continue
        if on_extra is not None and media:
            parent = os.path.dirname(directory)
            for folder, theirs in above:
                if folder == parent:  # reported once, with the first folder below that holds media
                    for path, st in theirs:
                        on_extra(path, st)
                    theirs.clear()
            for path, st in others:
                on_extra(path, st)
        elif on_extra is not None and others and subdirs and directory != top:
            above.append((directory, others))
        yield from media
