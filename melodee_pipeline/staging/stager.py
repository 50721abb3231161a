"""Albums through the staging protocol a batch at a time (docs/design.md, "Group commit").

Each step (plan and journal, place, release and finish) runs for every album of the batch, and
then one barrier makes the whole step durable before the next begins: the ordering of the
per-album protocol, for a few `syncfs` calls a batch instead of about ten fsyncs an album. Placing
runs on the run's threads (a copy across filesystems waits on the disk); the other steps run in
order, since they are Python and metadata calls, which threads only slowed down. An album's own failure is its outcome, never the run's or the batch's; a full staging
filesystem stops every album whose files are not placed yet.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from melodee_pipeline.errors import RunFailed, StagingFull
from melodee_pipeline.staging import journal
from melodee_pipeline.staging.albumdir import remove_empty_dirs
from melodee_pipeline.staging.durability import GroupCommit
from melodee_pipeline.staging.moves import DISK_FULL
from melodee_pipeline.staging.plan import Album
from melodee_pipeline.staging.protocol import (
    ALBUM_ERRORS, AlbumOutcome, album_info, classify, finish_album, journal_album, place_files, plan_album,
    release_sources,
)
from melodee_pipeline.staging.ratelimit import RateLimiter

BATCH_ALBUMS = 32  # albums per group commit: ~5 syncfs calls where one album alone costs ~10 fsyncs


@dataclass
class _Work:
    out: AlbumOutcome
    info: dict | None = None
    prior: journal.Entry | None = None  # the album's journal entry from an earlier run
    done: bool = False  # failed, not started, or (dry run) planned: no further step


class AlbumStager:
    def __init__(self, root: str, scan_id: str, dry_run: bool, limiter: RateLimiter, tmp_dir: str,
                 recovered: set[str], pool: Executor | None = None):
        self.root, self.scan_id, self.dry_run, self.limiter, self.tmp = root, scan_id, dry_run, limiter, tmp_dir
        self.recovered, self.pool = recovered, pool
        self.full: StagingFull | None = None
        self._stop = threading.Event()
        self.group_commit = not dry_run and GroupCommit.available(root)

    def stage_batches(self, batches: Iterable[list[Album]], processes: Executor | None = None,
                      ahead: int = 4) -> Iterator[AlbumOutcome]:
        """Every batch's outcomes. With `processes`, each batch goes to a worker process whole (its
        group commit included), a few batches ahead, so the run's Python work uses every core; the
        albums were given their directories here first (`DirectoryClaims`), so no two workers
        ever share one. Once a worker finds staging full, no further batch is handed out (those
        handed out already run, and fail for themselves).
        `ahead`: batches in flight (about two a worker, so none waits for the next)."""
        if processes is None:
            for albums in batches:
                yield from self.stage(albums)
            return
        spec = _Spec(self.root, self.scan_id, self.tmp, frozenset(self.recovered))
        pending: deque = deque()

        def outcomes(albums: list[Album], result: tuple) -> list[AlbumOutcome]:
            batch, full = result
            if full is not None and self.full is None:
                self.full = full
                self._stop.set()
            for album, out in zip(albums, batch):
                out.album = album  # sent back without it: the parent has it
            return batch

        def collect() -> list[AlbumOutcome]:
            albums, future = pending.popleft()
            return outcomes(albums, future.result())

        try:
            for albums in batches:
                if self._stop.is_set():
                    yield from self.stage(albums)  # not started, each with the reason
                    continue
                pending.append((albums, processes.submit(stage_in_worker, spec, [_portable(a) for a in albums])))
                while len(pending) >= ahead or (pending and pending[0][1].done()):
                    yield from collect()
            while pending:
                yield from collect()
        except BrokenProcessPool:
            # Batches another worker finished are staged: their outcomes go to the scan DB too.
            for albums, future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    yield from outcomes(albums, future.result())
            raise RunFailed("a staging worker process died (killed, or out of memory?); the albums it had "
                            "begun stay in the journal and the next run finishes them") from None

    def stage(self, albums: list[Album]) -> list[AlbumOutcome]:
        commit = GroupCommit(self.root) if self.group_commit else None
        batch = [_Work(AlbumOutcome(a.rel_dir, album=a)) for a in albums]
        for step in (self._plan, self._place, self._finish):
            live = [w for w in batch if not w.done]
            if not live:
                break
            run = lambda w, step=step: self._run(step, w, commit)  # noqa: E731
            threaded = self.pool is not None and step == self._place
            list(self.pool.map(run, live) if threaded else map(run, live))
            if commit is not None:
                self._barrier(commit, live)
        return [w.out for w in batch]

    def _barrier(self, commit: GroupCommit, live: list[_Work]) -> None:
        """A failed publish fails its album: its `moving` entry stays, and the next run finishes
        it. A flush that fails before publishing fails every album of the step (after the place
        step: none of their sources goes; after the finish step they are gone already, and the
        `moving` entries finish those albums next run). A flush that fails after publishing fails
        them too, though what was published stays published (a `staged` entry keeps its row)."""
        try:
            failed, unflushed = commit.barrier()
        except OSError as exc:
            failed, unflushed = {w.out.album_dir: exc for w in live}, None
        for w in (w for w in live if not w.done):
            exc = failed.get(w.out.album_dir)
            if exc is not None:
                w.out.status, w.out.pending_row, w.done = "failed", False, True
                w.out.error = (f"could not make it durable: {type(exc).__name__}: {exc}; "
                               "its journal entry stays for the next run")
            elif unflushed is not None:
                w.out.status, w.done = "failed", True
                w.out.error = f"written, but the staging filesystem could not flush it: {unflushed}"

    def _run(self, step: Callable[[_Work], None], w: _Work, commit: GroupCommit | None) -> None:
        try:
            with commit.deferring(w.out.album_dir) if commit else nullcontext():
                step(w)
        except (StagingFull, OSError) as exc:
            if not isinstance(exc, StagingFull) and exc.errno not in DISK_FULL:
                self._fail(w, exc)
                return
            self.full = exc if isinstance(exc, StagingFull) else StagingFull(f"staging filesystem {self.root} is full: {exc}")
            self._stop.set()
            if step == self._finish:
                # Its sources are gone already: nothing to roll back. Its `moving` entry stays,
                # and the next run (with space again) finishes the album from it.
                w.out.status, w.out.error, w.done = "failed", f"{self.full}; its journal entry stays for the next run", True
            else:
                self._abandon(w, "failed", str(self.full))
        except ALBUM_ERRORS as exc:
            self._fail(w, exc)

    @staticmethod
    def _fail(w: _Work, exc: Exception) -> None:
        w.out.status, w.out.error, w.done = "failed", f"{type(exc).__name__}: {exc}", True

    def _abandon(self, w: _Work, status: str, error: str) -> None:
        """Nothing of this album is placed (rolled back, or never started): its directory goes if
        empty, and a row an earlier run left pending stays so."""
        remove_empty_dirs(self.root, os.path.join(self.root, w.out.album_dir))
        if w.prior is not None:
            try:
                journal.write(self.root, w.prior)
            except OSError:
                pass  # the `moving` entry stays instead; finishing it next run is harmless
        else:
            journal.remove(self.root, w.out.album_dir)
        w.out.status, w.out.error, w.done = status, error, True

    # the steps

    def _plan(self, w: _Work) -> None:
        """1-2: plan, then journal the plan (durable at the barrier, before anything moves)."""
        album = w.out.album
        if self._stop.is_set():
            w.out.status, w.out.error, w.done = "not_started", f"not started: {self.full}", True
            return
        w.out = plan_album(self.root, album, self.recovered)
        if self.dry_run:
            w.out.status, w.out.tracks, w.done = "planned", len(w.out.actions), True
            return
        w.info = album_info(album)
        w.prior = journal.read(self.root, w.out.album_dir)
        journal_album(self.root, w.out, self.scan_id, w.info, w.prior)

    def _place(self, w: _Work) -> None:
        """3a: every new name; durable at the barrier, before any source goes."""
        if self._stop.is_set():
            self._abandon(w, "not_started", f"not started: {self.full}")
            return
        place_files(self.root, w.out, self.tmp, self.limiter)

    def _finish(self, w: _Work) -> None:
        """3b-5: unlink the sources, write the sidecar and the `staged` entry, classify."""
        release_sources(self.root, w.out)
        finish_album(self.root, w.out, self.scan_id, w.info, self.tmp, w.prior)
        classify(w.out)


# a worker process's side of `stage_batches`

@dataclass(frozen=True)
class _Spec:
    root: str
    scan_id: str
    tmp: str
    recovered: frozenset[str]


_worker: tuple[_Spec, AlbumStager] | None = None  # one stager per worker process, kept across batches


def stage_in_worker(spec: _Spec, albums: list[Album]) -> tuple[list[AlbumOutcome], StagingFull | None]:
    global _worker
    if _worker is None or _worker[0] != spec:
        _worker = (spec, AlbumStager(spec.root, spec.scan_id, False, RateLimiter(0), spec.tmp, set(spec.recovered)))
    stager = _worker[1]
    outcomes = stager.stage(albums)
    for out in outcomes:
        out.album = None  # the parent holds it
    return outcomes, stager.full


def _portable(album: Album) -> Album:
    """A copy a worker process can receive: its extras as dicts (sqlite3.Row does not pickle); its
    files are dicts already (`iter_albums`)."""
    return dataclasses.replace(album, extras=[dict(r) for r in album.extras])
