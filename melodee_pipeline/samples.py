"""Real, tagged audio files for the demo, the tests and the benchmarks (soundfile + mediafile)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import mediafile
import numpy as np
import soundfile as sf

# extension -> (soundfile format, subtype, sample rate)
FORMATS = {
    ".mp3": ("MP3", "MPEG_LAYER_III", 44100),
    ".flac": ("FLAC", "PCM_16", 44100),
    ".ogg": ("OGG", "VORBIS", 44100),
    ".opus": ("OGG", "OPUS", 48000),
    ".wav": ("WAV", "PCM_16", 44100),
}


@dataclass
class Tags:
    artist: str | None = None
    album: str | None = None
    title: str | None = None
    albumartist: str | None = None
    track: int | None = None
    disc: int | None = None
    year: int | None = None
    genre: str | None = None


def write_audio(path: str, seconds: float = 0.5, seed: int = 0, pad_to: int = 0) -> None:
    """A short tone (frequency varies by seed, so files differ byte-wise)."""
    fmt, subtype, rate = FORMATS[os.path.splitext(path)[1].lower()]
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.2 * np.sin(2 * np.pi * (220 + 7 * (seed % 97)) * t)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sf.write(path, tone, rate, format=fmt, subtype=subtype)
    if pad_to:
        # Grow the file to a realistic size with a tag frame mediafile keeps (benchmarks only).
        mf = mediafile.MediaFile(path)
        current = os.path.getsize(path)
        if pad_to > current:
            mf.comments = "x" * (pad_to - current)
            mf.save()


def tag(path: str, tags: Tags) -> None:
    mf = mediafile.MediaFile(path)
    for field, value in vars(tags).items():
        if value is not None:
            setattr(mf, field, value)
    mf.save()


def make_track(path: str, tags: Tags, seed: int = 0, seconds: float = 0.5, pad_to: int = 0) -> str:
    write_audio(path, seconds, seed, pad_to)
    tag(path, tags)
    return path
