"""`open_media` must read every file exactly as `mediafile.MediaFile` does: the same format, the
same tags, the same error. Its choice of format is checked against mutagen's own, on real audio,
on files named for another format, and on hostile bytes."""

from __future__ import annotations

import inspect
import io
import re

import mediafile
import mutagen._file
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from mutagen.id3 import ID3, TDRC, TRCK

from melodee_pipeline.samples import Tags, embed_cover, make_track, png_bytes
from melodee_pipeline.scan.mediaopen import KINDS, open_media
from melodee_pipeline.scan.tags import _read_tags

FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".wav", ".m4a")


def outcome(opener, data: bytes, name: str):
    """What a scan learns from a file: its format and every column, or the error it raises."""
    source = io.BytesIO(data)
    source.name = name
    try:
        mf = opener(source)
        row: dict = {}
        length = _read_tags(mf, row)
        return type(mf.mgfile).__name__, mf.type, length, row
    except Exception as exc:  # the same exception, with the same message
        return type(exc).__name__, str(exc)


def same(data: bytes, name: str):
    expected = outcome(mediafile.MediaFile, data, name)
    assert outcome(open_media, data, name) == expected
    return expected


def test_kinds_are_mutagens_default_formats_in_its_order():
    source = inspect.getsource(mutagen._file.File)
    listed = re.search(r"options = \[([^\]]*)\]", source).group(1)
    assert [k.__name__ for k in KINDS] == re.findall(r"\w+", listed)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Real files of each format: tagged, untagged, with a cover, with hostile tag values."""
    d = tmp_path_factory.mktemp("audio")
    files = {}
    for i, ext in enumerate(FORMATS):
        for variant, tags in [("tagged", Tags("Artist", "Album", "Title", "AA", 3, 1, 1999, "Jazz")),
                              ("hostile", Tags("\x00Ar\x1ft\u202e", "日本語" * 50, "T/../..", None, 65535, 0, 0)),
                              ("untagged", Tags())]:
            path = d / f"{variant}{ext}"
            make_track(str(path), tags, seed=i)
            files[path.name] = path.read_bytes()
        cover = d / f"cover{ext}"
        make_track(str(cover), Tags("A", "B", "C"), seed=i)
        embed_cover(str(cover), png_bytes(i))
        files[cover.name] = cover.read_bytes()
    mp3 = d / "v23.mp3"
    make_track(str(mp3), Tags("A", "B", "C"), seed=9)
    tags = ID3(str(mp3))
    tags.add(TRCK(encoding=3, text="7/12"))
    tags.add(TDRC(encoding=3, text="2001-05-02"))
    tags.save(str(mp3), v2_version=3)
    files[mp3.name] = mp3.read_bytes()
    return files


def test_real_audio_reads_the_same(audio):
    kinds = {name: same(data, "/in/" + name)[:2] for name, data in audio.items()}
    assert kinds["tagged.flac"] == ("FLAC", "flac") and kinds["tagged.opus"] == ("OggOpus", "opus")
    assert kinds["tagged.m4a"][0] == "MP4"  # handed to MediaFile itself


def test_files_named_for_another_format_read_the_same(audio):
    """A FLAC named .mp3, an Ogg named .flac, ID3 in front of FLAC: ties and near-ties in the
    scores, decided as mutagen decides them."""
    for name, data in audio.items():
        for ext in (*FORMATS, ".wma", ".ape", ".txt", ""):
            same(data, "/in/renamed" + ext)
    flac = audio["tagged.flac"]
    id3 = audio["untagged.mp3"][:10]  # an ID3 header without frames
    for ext in FORMATS:
        same(id3 + flac, "/in/id3-flac" + ext)


MAGIC = [b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x00", b"fLaC", b"OggS", b"RIFF\x00\x00\x00\x00WAVE",
         b"FORM", b"MAC ", b"wvpk", b"MPCK", b"OFR", b"tBaK", b"DSD ", b"FRM8", b"MThd", b"\x0b\x77", b"TTA", b""]
FILLER = [b"", b"OpusHead", b"\x01vorbis", b"fLaC", b"FLAC", b"ftyp", b"mp4", b"ADIF", b"\x80theora", b"Speex   "]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGIC), fillers=st.lists(st.sampled_from(FILLER), max_size=3),
       tail=st.binary(max_size=300), ape=st.booleans(),
       ext=st.sampled_from([*FORMATS, ".wma", ".ape", ".wv", ".mpc", ".aiff", ".dsf", ".tta", ".aac", ".txt", ""]))
def test_hostile_bytes_fail_or_read_the_same(magic, fillers, tail, ape, ext):
    data = magic + b"".join(fillers) + tail + (b"APETAGEX" + b"\x00" * 24 if ape else b"")
    same(data, "/in/x" + ext)
