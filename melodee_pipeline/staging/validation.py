"""Album checks for the reviewer (docs/design.md, "Validation"), after C# Melodee's album validator.

They warn, never refuse: an album with a gap in its track numbers is still staged, and the
reviewer reads why it may need attention in the sidecar's `validation.warnings`. Every check is
computed from the whole album as it stands (the sidecar's tracks and the images in its
directory), so each run replaces the previous run's checks instead of piling up stale ones.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from datetime import datetime, timezone

PREFIX = "album check: "  # tells these warnings from the per-file ones a run adds
YEAR_MIN = 1860
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}
SHOWN = 10  # numbers listed in one warning; the rest are counted


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_album_warning(warning: str) -> bool:
    return warning.startswith(PREFIX)


# Why a file was staged under another name (`renamed_note`).
RENAME_REASONS = ("a symlink or other non-regular file", "a different file")


def renamed_note(source: str, name: str, why: str) -> str:
    """`<inbound path> staged as <name>: <why> already had its name`."""
    return f"{source} staged as {name}: {why} already had its name"


def note_stands(warning: str, names: list[str]) -> bool:
    """False for a `renamed_note` whose file is no longer among `names` (the album directory's):
    matched from the end, so an inbound path that itself holds " staged as " cannot mislead."""
    endings = [f": {why} already had its name" for why in RENAME_REASONS]
    if not any(warning.endswith(e) for e in endings):
        return True
    return any(warning.endswith(f" staged as {n}{e}") for n in names for e in endings)


def album_warnings(tracks: list[dict], album: dict, images: int, this_year: int | None = None) -> list[str]:
    """What a reviewer should look at in one album; [] for a clean one. `tracks` are sidecar
    track entries, `album` the sidecar's album object, `images` the image files beside them."""
    found = _numbering(tracks) + _album_artists(tracks, album)
    if not images:
        found.append("no cover image")
    silent = [_name(t) for t in tracks if not t.get("duration")]
    if silent:
        found.append(f"{len(silent)} track(s) without a duration: {_listed(silent)}")
    found += _year(album.get("year"), this_year or datetime.now(timezone.utc).year)
    found += _same_bytes(tracks)
    return [PREFIX + w for w in found]


def _numbering(tracks: list[dict]) -> list[str]:
    """Per disc: numbers start at 1, are contiguous and unique; the count matches the total-tracks tag."""
    discs: dict[int, list[dict]] = defaultdict(list)
    for t in tracks:
        discs[_int(t.get("disc_number")) or 1].append(t)
    found = []
    for disc, entries in sorted(discs.items()):
        on = f"disc {disc}: " if len(discs) > 1 else ""
        numbers = [_int(t.get("track_number")) for t in entries]
        numbered = [n for n in numbers if n > 0]
        totals = [_int(t.get("track_total")) for t in entries if _int(t.get("track_total")) > 0]
        total = Counter(totals).most_common(1)[0][0] if totals else 0
        last = max(numbered + [total], default=0)
        missing = sorted(set(range(1, last + 1)) - set(numbered))
        if missing:
            found.append(f"{on}missing track{'s' if len(missing) > 1 else ''} {_listed(missing)} of {last}")
        repeated = sorted(n for n, count in Counter(numbered).items() if count > 1)
        if repeated:
            found.append(f"{on}track number{'s' if len(repeated) > 1 else ''} {_listed(repeated)} used more than once")
        if len(numbered) < len(numbers):
            found.append(f"{on}{len(numbers) - len(numbered)} track(s) without a track number")
        if total and len(entries) != total and len(entries) + len(missing) != total:  # gaps already said it
            found.append(f"{on}{len(entries)} track(s), but the total-tracks tag says {total}")
    return found


def _album_artists(tracks: list[dict], album: dict) -> list[str]:
    names = sorted({str(t["album_artist"]) for t in tracks if t.get("album_artist")})
    if len(names) > 1 and not album.get("is_compilation"):
        return [f"{len(names)} album artists in one album that is not a compilation: {', '.join(map(repr, names))}"]
    return []


def _year(year: object, this_year: int) -> list[str]:
    y = _int(year)
    if not y:
        return ["no year"]
    if not YEAR_MIN <= y <= this_year + 1:
        return [f"year {y} is outside {YEAR_MIN}..{this_year + 1}"]
    return []


def _same_bytes(tracks: list[dict]) -> list[str]:
    by_checksum: dict[str, list[str]] = defaultdict(list)
    for t in tracks:
        if t.get("checksum"):
            by_checksum[t["checksum"]].append(_name(t))
    return [f"{' and '.join(names)} hold the same bytes" for names in by_checksum.values() if len(names) > 1]


def _name(track: dict) -> str:
    return os.path.basename(str(track.get("file_path") or track.get("name") or "?"))


def _int(value: object) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _listed(items: list) -> str:
    shown = ", ".join(map(str, items[:SHOWN]))
    return shown if len(items) <= SHOWN else f"{shown}… ({len(items)} in all)"
