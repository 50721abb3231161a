"""Deterministic benchmark corpus: N albums x T tracks of real, tagged audio in mixed formats.

    python benchmarks/corpus.py DIR --files 10000 [--tracks 10] [--file-size 8MB] [--seed 1]

Each format's audio is encoded once (soundfile) and copied; every file then gets its own tags
(mediafile), so every file is a valid, distinct, fully tagged track. With --file-size the audio is
white noise long enough to reach that size, as real music would. Same arguments, same corpus.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from melodee_pipeline.samples import Tags, tag, write_audio  # noqa: E402

FORMATS = [".mp3", ".flac", ".ogg", ".opus", ".wav"]
WORDS = "blue night river golden echo silent fire glass paper winter velvet storm neon ghost".split()


def parse_size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def plan(files: int, tracks: int, seed: int) -> list[tuple[str, Tags, str]]:
    rnd = random.Random(seed)
    out = []
    albums = -(-files // tracks)
    for a in range(albums):
        artist = f"{rnd.choice(WORDS).title()} {rnd.choice(WORDS).title()} {a}"
        album = f"{rnd.choice(WORDS).title()} {rnd.choice(WORDS).title()}"
        year = rnd.randint(1960, 2025)
        ext = FORMATS[a % len(FORMATS)]
        for t in range(1, tracks + 1):
            if len(out) == files:
                break
            title = f"{rnd.choice(WORDS).title()} {rnd.choice(WORDS)} {t}"
            out.append((f"{artist}/{album}/{t:02d} {title}{ext}", Tags(artist, album, title, artist, t, 1, year, "Rock"), ext))
    return out


def _make(args: tuple[str, str, Tags, str]) -> None:
    template, path, tags, _ext = args
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(template, path)
    tag(path, tags)


def build(root: str, files: int, tracks: int = 10, file_size: int = 0, seed: int = 1, processes: int = 2) -> float:
    started = time.monotonic()
    templates = tempfile.mkdtemp(prefix="melodee-corpus-")
    for i, ext in enumerate(FORMATS):
        template = os.path.join(templates, "t" + ext)
        write_audio(template, seconds=0.2, seed=i)
        if file_size:  # scale a one-second encode to the wanted size
            write_audio(template, seconds=1.0, seed=i, noise=True)
            write_audio(template, seconds=file_size / os.path.getsize(template), seed=i, noise=True)
    jobs = [(os.path.join(templates, "t" + ext), os.path.join(root, rel), tags, ext) for rel, tags, ext in plan(files, tracks, seed)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for _ in pool.imap_unordered(_make, jobs, chunksize=64):
            pass
        pool.close()  # let the workers exit: leaving the block terminates them, mid-read of their queue
        pool.join()
    shutil.rmtree(templates)
    # Finished copying long ago, as far as min_file_age_seconds is concerned.
    past = time.time() - 3600
    for dirpath, _d, names in os.walk(root):
        for n in names:
            os.utime(os.path.join(dirpath, n), (past, past))
    return time.monotonic() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--tracks", type=int, default=10)
    p.add_argument("--file-size", type=parse_size, default=0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    took = build(a.dir, a.files, a.tracks, a.file_size, a.seed)
    print(f"{a.files} files in {a.dir} ({took:.1f}s)")


if __name__ == "__main__":
    main()
