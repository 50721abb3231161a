"""The staging journal (docs/design.md, "The journal"): one small JSON file per album under
`<staging>/.melodee-journal/`, written durably before the album's first move.

An entry moves through two states:
  moving  the destinations are chosen and sticky; moves may be half done. The next run (under the
          staging lock) finishes it from the entry alone, whatever inbound holds by then.
  staged  the sidecar is final; its `staging_items` row is not committed yet. These entries are
          the record step's work list; each is removed once its row is committed.
An undo (unstage.py) uses two more:
  undoing the files going back to inbound and how each goes, chosen before the first one moves;
          the next run or undo finishes it from the entry alone.
  undone  the files are back and the sidecar rewritten (or gone); the album's row is not
          settled yet. Removed once the row is rewritten or deleted.
So a run reads the journal (the albums a crash or an outage left behind), never the whole
staging tree, and a crash at any point leaves an entry that says what to finish.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator

from melodee_pipeline.staging.moves import fsync_dir, own_dir, replace_durably, temp_dir

JOURNAL_DIR = ".melodee-journal"
MOVING, STAGED = "moving", "staged"
UNDOING, UNDONE = "undoing", "undone"  # an undo's two states (unstage.py)


@dataclass
class JournalFile:
    source: str  # os.fsdecode of the inbound path (surrogate-escaped bytes survive JSON)
    name: str  # file name inside the album directory
    sha256: str
    size: int
    track: dict | None  # the sidecar track entry; None for an extra (cover art, rip log…)
    # moving: what this run does with it (protocol MOVE/RENAME/ALREADY; "" in older entries);
    # undoing: how the file goes back (unstage.py)
    action: str = ""


@dataclass
class Entry:
    album_dir: str  # relative to the staging root
    state: str
    scan_id: str
    album: dict  # what a new sidecar needs: artist, code, album, year, genres, is_compilation
    files: list[JournalFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The album gained tracks: a new review, so a row the admin deleted comes back. An entry
    # without new tracks only refreshes a row that still exists.
    gained: bool = False
    inbound: str = ""  # undo only: the inbound root, where files go back to
    # The sidecar's stamp before this run (moving), or before the undone run (undoing); "" none,
    # None an entry of a version that did not record it.
    previous_scan_id: str | None = None


def journal_dir(staging_root: str) -> str:
    return os.path.join(staging_root, JOURNAL_DIR)


def _path(staging_root: str, album_dir: str) -> str:
    return os.path.join(journal_dir(staging_root), hashlib.sha1(album_dir.encode("utf-8", "surrogatepass")).hexdigest() + ".json")


def write(staging_root: str, entry: Entry) -> None:
    """Durable before it returns: temp file, fsync, rename, fsync of the directory."""
    directory = journal_dir(staging_root)
    created = not os.path.lexists(directory)
    own_dir(directory)  # a symlink planted there is refused, every time
    if created:
        fsync_dir(staging_root)
    # Shallow: track entries are plain dicts already (dataclasses.asdict deep-copies every one).
    doc = {**vars(entry), "files": [vars(f) for f in entry.files]}
    data = json.dumps(doc, ensure_ascii=True).encode()  # ASCII: lone surrogates round-trip
    replace_durably(_path(staging_root, entry.album_dir), data, temp_dir(staging_root))


def read(staging_root: str, album_dir: str) -> Entry | None:
    try:
        return _load(_path(staging_root, album_dir))
    except FileNotFoundError:
        return None


def _load(path: str) -> Entry:
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    try:
        doc["files"] = [JournalFile(**x) for x in doc.get("files", [])]
        return Entry(**doc)
    except (TypeError, AttributeError) as exc:  # not an entry this pipeline wrote
        raise ValueError(f"malformed journal entry: {exc}") from None


def entries(staging_root: str, state: str | None = None) -> tuple[list[Entry], list[str]]:
    """Entries (of one state, or all) and the problems of unreadable ones, which stay for a human."""
    found, problems = [], []
    for batch, batch_problems in batches(staging_root, state):
        found += batch
        problems += batch_problems
    return found, problems


def batches(staging_root: str, state: str | None = None, size: int = 500) -> Iterator[tuple[list[Entry], list[str]]]:
    """`entries`, read `size` entry files at a time: a run that staged 40,000 albums leaves as
    many, and holding them all at once made the record step's memory grow with the run."""
    directory = journal_dir(staging_root)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return
    for start in range(0, len(names), size):
        found, problems = [], []
        for name in names[start:start + size]:
            path = os.path.join(directory, name)
            try:
                entry = _load(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError) as exc:
                problems.append(f"unreadable journal entry {path}: {exc}")
                continue
            if state is None or entry.state == state:
                found.append(entry)
        yield found, problems


def remove(staging_root: str, album_dir: str) -> None:
    try:
        os.unlink(_path(staging_root, album_dir))
    except FileNotFoundError:
        pass


def remove_dir_if_empty(staging_root: str) -> None:
    try:
        os.rmdir(journal_dir(staging_root))
    except OSError:
        pass
