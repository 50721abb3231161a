"""Property tests (hypothesis) for the path sanitiser and album directory assignment."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from melodee_pipeline.grouping import album_group_hash, album_group_id
from melodee_pipeline.scan.walk import MEDIA_EXTENSIONS, is_media
from melodee_pipeline.staging.paths import sanitize_component, track_file_name
from melodee_pipeline.staging.plan import DirectoryClaims, build_album

# Tag values as hostile as text gets: separators, dots, NUL, controls, bidi marks, long runs.
nasty = st.text(alphabet=st.sampled_from(list("/\\:*?\"<>|.. \x00\x01\x1f\u202e\u200fAaé日🎵-_()[]")) | st.characters(),
                max_size=300)
years = st.integers(min_value=0, max_value=9999)


def valid_component(name: str) -> bool:
    return (0 < len(name.encode("utf-8")) <= 255 and "/" not in name and "\x00" not in name
            and name not in (".", ".."))


def make_album(artist: str, album: str, year: int, title: str = "t"):
    gid = album_group_id(album_group_hash(artist, None, album), year)
    row = {"album_artist": None, "artist": artist, "album": album, "genre": None, "title": title}
    return build_album(gid, [row])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(artist=nasty, album=nasty, title=nasty, year=years, track=st.integers(0, 999), disc=st.integers(0, 99),
       ext=st.sampled_from([".mp3", ".FLAC", ".ogg", ".x/../y", ""]))
def test_staged_path_is_inside_root_and_a_valid_linux_name(artist, album, title, year, track, disc, ext):
    a = make_album(artist or "x", album or "y", year)
    name = track_file_name(title, track, disc, ext)
    parts = [*a.rel_dir.split(os.sep), name]
    assert len(parts) == 4 and all(valid_component(p) for p in parts), parts
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path))
        open(path, "wb").close()  # Linux accepts every component
        assert os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(nasty.filter(str.strip), nasty.filter(str.strip), st.sampled_from([1999, 2000])),
                min_size=2, max_size=12))
def test_different_albums_never_share_a_directory(albums):
    with tempfile.TemporaryDirectory() as root:
        claims = DirectoryClaims(root)
        owner: dict[str, str] = {}
        for artist, name, year in albums:
            a = make_album(artist, name, year)
            claims.assign(a)
            assert owner.setdefault(a.rel_dir, a.group_id) == a.group_id, (a.rel_dir, owner[a.rel_dir], a.group_id)
            assert all(valid_component(p) for p in a.rel_dir.split(os.sep))


def test_sanitiser_examples():
    assert sanitize_component("../../x") == "-..-x"
    assert sanitize_component("/abs") == "-abs"
    assert sanitize_component("a" * 300).encode() == b"a" * 255


# Plain names skip pathvalidate (it costs ~60 us a call): the shortcut must give what it would.
plainish = st.lists(st.sampled_from(list("aZ09 ._-()',&!+#@$%=~;[]{}é/*")) | st.sampled_from(
    ["CON", "con", "Nul", "COM1", "lpt9", "CLOCK$", "AUX", ".txt", ".mp3"]), max_size=20).map("".join)


@settings(max_examples=500, deadline=None)
@given(plainish, st.sampled_from(["", ".mp3"]))
def test_the_plain_name_shortcut_agrees_with_pathvalidate(text, ext):
    from unittest import mock

    from pathvalidate import sanitize_filename

    from melodee_pipeline.staging import paths

    with mock.patch.object(paths, "_is_plain", lambda name: False):  # every name through pathvalidate
        reference = sanitize_component(text, ext)
    assert sanitize_component(text, ext) == reference
    if paths._is_plain(text):
        assert sanitize_filename(text, platform="universal") == text


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=4) | st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.", b"..a"]),
       st.sampled_from(sorted(MEDIA_EXTENSIONS) + [b".txt", b"", b".", b".mp", b"mp3"]), st.booleans())
def test_is_media_is_splitext_by_extension(stem, ext, upper):
    """The walk's fast test decides as `os.path.splitext` would: `.mp3` alone has no extension."""
    name = stem.replace(b"/", b"_") + (ext.upper() if upper else ext)
    assert is_media(name) == (os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS), name
