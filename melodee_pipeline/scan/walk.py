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


@dataclass
class _Above:
    """A folder without media of its own, not the root: the folder above an album's disc folders
    (CD1, CD2) holds its cover. Its other files go to `on_extra` once its subtree is walked, if a
    folder right below it holds media and no folder below it is still being copied or unlistable."""
    folder: bytes
    others: list
    media_below: bool = False
    held: bool = False  # a folder below is still being copied, or could not be listed


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
    those of the folders above such folders (`_Above`).
    """
    top = os.fsencode(root)
    stack = [top]
    above: list[_Above] = []  # only ancestors of the folder being walked, outermost first

    def walked(a: _Above) -> None:
        if on_extra is not None and a.media_below and not a.held:
            for path, st in a.others:
                on_extra(path, st)

    while stack:
        directory = stack.pop()
        while above and not directory.startswith(above[-1].folder + b"/"):
            walked(above.pop())
        parent = above[-1] if above and above[-1].folder == os.path.dirname(directory) else None
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_skip(Skip(directory, f"cannot list directory: {exc.strerror}", 0))
            for a in above:  # what it holds is unknown: it may be a disc of their album
                a.held = True
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
                    if is_media(entry.name) and not entry.name.startswith(b"._"):  # `._*`: macOS metadata, never audio
                        media.append((entry.path, st))
                    elif not entry.name.startswith(b"."):
                        others.append((entry.path, st))
            except OSError as exc:
                on_skip(Skip(entry.path, f"cannot stat: {exc.strerror}", 1))
        stack.extend(reversed(subdirs))
        if young:
            if media:
                on_skip(Skip(directory, f"modified less than {min_file_age_seconds}s ago (still being copied?)", len(media)))
            for a in above:  # music may be arriving (`01.flac.part`, rsync's `.01.flac.XyZ12`): wait for it
                a.held = True
            continue
        if media:
            if parent:
                parent.media_below = True
            if on_extra is not None:
                for path, st in others:
                    on_extra(path, st)
        elif others and subdirs and directory != top:
            above.append(_Above(directory, others))
        yield from media
    while above:
        walked(above.pop())
