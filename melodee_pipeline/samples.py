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


def write_audio(path: str, seconds: float = 0.5, seed: int = 0, noise: bool = False) -> None:
    """A short tone (frequency varies by seed, so files differ byte-wise), or white noise, which
    no codec compresses much: a realistic file size for its duration."""
    if path.lower().endswith(".m4a"):
        return _write_m4a(path, seconds, seed)
    fmt, subtype, rate = FORMATS[os.path.splitext(path)[1].lower()]
    n = int(rate * seconds)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # One second per write: libsndfile's Vorbis encoder crashes on very large single writes.
    with sf.SoundFile(path, "w", rate, 2 if noise else 1, subtype, format=fmt) as out:
        for start in range(0, n, rate):
            count = min(rate, n - start)
            if noise:
                out.write(rng.uniform(-0.5, 0.5, (count, 2)))
            else:
                out.write(0.2 * np.sin(2 * np.pi * (220 + 7 * (seed % 97)) * np.arange(start, start + count) / rate))


def tag(path: str, tags: Tags) -> None:
    mf = mediafile.MediaFile(path)
    for field, value in vars(tags).items():
        if value is not None:
            setattr(mf, field, value)
    mf.save()


def make_track(path: str, tags: Tags, seed: int = 0, seconds: float = 0.5) -> str:
    write_audio(path, seconds, seed)
    tag(path, tags)
    return path


def _write_m4a(path: str, seconds: float, seed: int) -> None:
    """AAC in MP4, which libsndfile cannot write; PyAV (a test extra) bundles an encoder."""
    import av

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rate, frame = 44100, 1024
    with av.open(path, "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        freq = 220 + 7 * (seed % 97)
        for start in range(0, int(rate * seconds), frame):
            samples = (0.2 * np.sin(2 * np.pi * freq * np.arange(start, start + frame) / rate)).astype(np.float32)
            audio = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
            audio.sample_rate = rate
            for packet in stream.encode(audio):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def png_bytes(seed: int = 0, size: int = 8) -> bytes:
    """A real PNG image (one solid colour, varying by seed), so covers differ byte-wise."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rgb = bytes(((seed * 67) % 256, (seed * 131 + 40) % 256, (seed * 29 + 90) % 256))
    rows = b"".join(b"\x00" + rgb * size for _ in range(size))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def embed_cover(path: str, image: bytes) -> None:
    """Embed `image` in the file's tags as its front cover."""
    mf = mediafile.MediaFile(path)
    mf.images = [mediafile.Image(image, desc="cover", type=mediafile.ImageType.front)]
    mf.save()
