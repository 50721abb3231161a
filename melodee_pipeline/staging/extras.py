"""Extras: the cover art, rip logs, cue sheets… beside an album's music (docs/design.md, "Extras").

A folder's extras travel with its music only when every media file of that folder belongs to one
album: a folder whose music goes to several albums, or holds a file the scan refused, keeps them
(the album's sidecar says so). An album whose discs sit in sibling folders (CD1, CD2), or in one
folder named as a disc, also gets the extras of the folder above them, if that folder holds no
music of its own and all the music right below it is this album's. Extras move through the album's own protocol steps (journaled
with sticky names before the first move, never overwriting, identical bytes deduplicated), after
the folder's music is in place. They are files without a sidecar track entry.

An album left without any image gets `cover.<ext>` from the front cover embedded in its first
track, recorded in the sidecar (`album.cover_from_tags`) so an undo knows it came from no inbound file.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import uuid
from collections import defaultdict

import mediafile

from melodee_pipeline.scan.tags import display_path
from melodee_pipeline.scan.walk import is_media
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.durability import write_and_publish
from melodee_pipeline.staging.paths import MAX_COMPONENT_BYTES, sanitize_component, truncate_utf8
from melodee_pipeline.staging.plan import Album
from melodee_pipeline.staging.validation import is_image

MIME_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp", "image/bmp": ".bmp"}
REFUSED = ""  # owner of a media file the scan refused: it stays in inbound
# A folder named as one disc of an album: `CD1`, `Disc 2`, `Record (disk_3)` (beets' markers); not
# `ABCD 1`, `Record (CD 1999)`, `[CD 24-96]` or `CD 320kbps`: a one- or two-digit number, then a separator.
DISC_FOLDER = re.compile(rb"(?:^|[\W_])(?:cd|dis[ck])[\W_]*\d{1,2}(?=$|[\s_)\]])", re.IGNORECASE)


class FolderExtras:
    """Which album, if any, each folder's extras go to; built once per staging run from the scan DB."""

    def __init__(self, conn: sqlite3.Connection):
        self.by_folder: dict[bytes, list[sqlite3.Row]] = defaultdict(list)
        for row in conn.execute("SELECT id, path_bytes, file_path, folder, file_size, file_hash FROM scanned_extras ORDER BY path_bytes"):
            self.by_folder[bytes(row["folder"])].append(row)
        self.owners: dict[bytes, set[str]] = defaultdict(set)  # folder -> whose is the music in it
        self.below: dict[bytes, set[str]] = defaultdict(set)  # folder -> whose is the music right below it
        if self.by_folder:
            for path, valid, group in conn.execute("SELECT path_bytes, is_valid, album_group_id FROM scanned_files"):
                folder = os.path.dirname(bytes(path))
                owner = group if valid and group else REFUSED
                if folder in self.by_folder:
                    self.owners[folder].add(owner)
                if os.path.dirname(folder) in self.by_folder:
                    self.below[os.path.dirname(folder)].add(owner)

    def assign(self, album: Album) -> None:
        """Give `album` the extras of its folders that hold its music alone; note the others."""
        folders = sorted({os.path.dirname(bytes(f["path_bytes"])) for f in album.files})
        for folder in folders:
            self._give(album, folder, self.owners.get(folder, set()), "it holds music that was not staged",
                       "its music went to several albums")
        # Its discs in sibling folders (CD1, CD2): the folder above them, without music of its own,
        # holds the album's cover and log. Above a single folder is the artist's, unless that one is
        # named as a disc (the others came in an earlier run, or come in a later one).
        parents = {os.path.dirname(f) for f in folders}
        if len(parents) == 1 and (len(folders) > 1 or DISC_FOLDER.search(os.path.basename(folders[0]))):
            (parent,) = parents
            if not self.owners.get(parent):
                self._give(album, parent, self.below.get(parent, set()), "a folder below it holds music that was not staged",
                           "the music below it went to several albums")

    def _give(self, album: Album, folder: bytes, owners: set[str], refused: str, shared: str) -> None:
        rows = self.by_folder.get(folder)
        if not rows:
            return
        shown = display_path(folder)
        if owners == {album.group_id}:
            album.extras.extend(r for r in rows if extra_name(r["path_bytes"]).casefold() != sc.SIDECAR_NAME)
        elif REFUSED in owners:
            album.notes.append(f"{len(rows)} other file(s) stay in {shown}: {refused}")
        else:
            album.notes.append(f"{len(rows)} other file(s) stay in {shown}: {shared}")


def extra_name(path: bytes) -> str:
    """The extra's own name, made safe for every client like a tag-derived one. An extra never
    comes out with a media name ("notes.mp3." loses its dot), which its sidecar would not list."""
    original = os.path.basename(bytes(path))
    name = sanitize_component(os.fsdecode(original))
    if is_media(os.fsencode(name)) and not is_media(original):
        name = truncate_utf8(name, MAX_COMPONENT_BYTES - 1) + "_"
    return name


def extract_cover(root: str, album_dir: str, doc: dict, scan_id: str, tmp_dir: str) -> str | None:
    """Write the first track's embedded front cover as `cover.<ext>` when the album directory
    holds no image; never over an existing name. Returns the name written."""
    if any(is_image(n) for n in os.listdir(album_dir)) or not doc["tracks"]:
        return None
    first = min(doc["tracks"], key=lambda t: (int(t.get("disc_number") or 1), int(t.get("track_number") or 0)))
    try:
        images = mediafile.MediaFile(os.path.join(root, first["file_path"])).images or []
    except Exception:  # unreadable tags are no reason to fail the album: it simply has no cover
        return None
    image = next((i for i in images if i.type == mediafile.ImageType.front), images[0] if images else None)
    ext = MIME_EXTENSIONS.get(getattr(image, "mime_type", None) or "")
    if image is None or not ext or not image.data:
        return None
    name = "cover" + ext
    try:  # a link never replaces a file
        write_and_publish(image.data, os.path.join(tmp_dir, f"cover-{uuid.uuid4().hex}"), os.path.join(album_dir, name),
                          link=True)
    except FileExistsError:
        return None
    doc["album"]["cover_from_tags"] = {"file": name, "checksum": hashlib.sha256(image.data).hexdigest(), "scan_id": scan_id}
    return name
