"""The staging layout (docs/design.md, "Staging layout"): directory codes, sanitised names, containment.

Every component built from tags goes through `sanitize_component`, which cannot return a name
containing a separator, NUL, `.` or `..`, and which pathvalidate's "universal" rules make valid on
Windows/SMB and macOS clients too (no `CON`/`NUL`/`COM1`, no trailing dot or space, at most 255
bytes). `ensure_inside` then checks the resolved path, so a directory symlink planted in the
staging tree cannot redirect a write either.
"""

from __future__ import annotations

import os
import re
import unicodedata

from pathvalidate import FileNameValidator, sanitize_filename

from melodee_pipeline.errors import UserError

MAX_COMPONENT_BYTES = 255
_REPLACE = str.maketrans({"/": "-", "\\": "-", ":": "-"})
_REMOVE = set('*?"<>|')
# Bidirectional controls would make a name display as something it is not.
_BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")


def _dropped(ch: str) -> bool:
    return ch in _REMOVE or ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs")  # controls, lone surrogates


# Names pathvalidate would return unchanged: a safe ASCII alphabet, no leading or trailing space
# or dot, not a reserved name. Most tags give one, and pathvalidate costs ~60 us a call.
_PLAIN = re.compile(r"[A-Za-z0-9_\-(),'&!+#@$%=~;\[\]{}]([A-Za-z0-9 _\-(),'&!+#@$%=~;\[\]{}.]*[A-Za-z0-9_\-(),'&!+#@$%=~;\[\]{}])?")
_RESERVED = {k.upper() for k in FileNameValidator(platform="universal").reserved_keywords}


def _is_plain(name: str) -> bool:
    return (_PLAIN.fullmatch(name) is not None and name.upper() not in _RESERVED
            and name.split(".", 1)[0].upper() not in _RESERVED)


def truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def sanitize_component(text: str, ext: str = "") -> str:
    """One safe path component from a tag value, at most 255 bytes of UTF-8 including `ext`."""
    name = "".join(ch for ch in str(text).translate(_REPLACE) if not _dropped(ch))
    name = truncate_utf8(name.strip(" ."), MAX_COMPONENT_BYTES - len(ext.encode("utf-8")))
    # Reserved device names (short: CON, COM1...) get a "_" suffix; trailing dots and spaces go,
    # so Windows and SMB clients can open every name.
    if not _is_plain(name):
        name = sanitize_filename(name, platform="universal", max_len=MAX_COMPONENT_BYTES - len(ext.encode("utf-8")))
    if name in ("", ".", ".."):
        name = "_"
    return name + ext


def directory_code(artist: str) -> str:
    """`Led Zeppelin` -> LZ, `The Beatles` -> BEA, `AC/DC` -> ACD, empty -> UNK."""
    name = artist.strip()
    if name[:4].lower() == "the ":
        name = name[4:]
    words = name.split()
    alnum = [re.sub(r"[^A-Za-z0-9]", "", w) for w in words]
    if len(words) > 1:
        code = "".join(w[0] for w in alnum if w)
    else:
        code = alnum[0][:3] if alnum else ""
    return code.upper() or "UNK"


def album_dir_parts(artist: str, year: int, album: str) -> tuple[str, str, str]:
    return directory_code(artist), sanitize_component(artist), sanitize_component(f"{year:04d} - {album}")


def track_file_name(title: str, track: int | None, disc: int | None, ext: str) -> str:
    number = f"{track or 0:02d}"
    if disc and disc > 1:
        number = f"{disc}-{number}"
    return sanitize_component(f"{number} - {title}", safe_extension(ext))


def safe_extension(ext: str) -> str:
    ext = ext.lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ""


def with_suffix_number(name: str, n: int) -> str:
    """`name.ext` -> `name (n).ext` (kept within 255 bytes); `n` >= 2."""
    stem, ext = os.path.splitext(name)
    suffix = f" ({n})"
    return truncate_utf8(stem, MAX_COMPONENT_BYTES - len((suffix + ext).encode())) + suffix + ext


def resolved(path: str) -> str:
    """`os.path.realpath(path)`. An existing path is resolved by the kernel: opened (O_PATH), its
    name read back from /proc, three calls where realpath makes one lstat a component and its
    string work (~25 µs for an album directory; staging asks four times an album). Anything else
    (a path not made yet, no /proc) goes to realpath."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, AttributeError):  # AttributeError: no O_PATH (not Linux)
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    # Not a path (a pseudo-name such as "anon_inode:[…]"): realpath decides.
    return real if real.startswith("/") else os.path.realpath(path)


def ensure_inside(root: str, path: str) -> None:
    real_root, real = resolved(root), resolved(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise UserError(f"refusing to write {path}: it resolves to {real}, outside the staging root {root}")


def name_key(name: str) -> str:
    """Names that SMB shares, macOS and case-insensitive filesystems treat as one (letter case,
    Unicode normalisation) share a key; two files of one album never get names with one key."""
    return unicodedata.normalize("NFC", name).casefold()
