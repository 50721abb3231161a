"""`melodee-pipeline`: the command line. Every command calls the same library functions as the
Dagster ops. A user error prints one `error: ...` line on stderr (database URLs masked, no
traceback) and exits 2; a failed run exits 1.

One module a group of commands (`admin`, `scans`, `repair`, `runs`), their arguments in `parser`;
here, running one and reporting its errors."""

from __future__ import annotations

import gc
import os
import re
import sys
from typing import Sequence

from melodee_pipeline.cli import database
from melodee_pipeline.cli.parser import build_parser
from melodee_pipeline.cli.runs import run_job
from melodee_pipeline.errors import RunFailed, UserError

__all__ = ["build_parser", "entry", "main", "redact", "run_job"]


_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@")


def redact(message: str) -> str:
    """Mask database passwords in a message, whatever produced it: the configured URLs (even
    unparseable ones) and anything shaped like scheme://user:password@."""
    from melodee_pipeline.db.engine import mask

    for var in ("MELODEE_DATABASE_URL", "DAGSTER_PG_URL"):
        raw = os.environ.get(var)
        if raw and raw in message:
            message = message.replace(raw, mask(raw))
        password = _password(raw) if raw else None
        if password and len(password) >= 3:
            message = message.replace(password, "***")
    return _CREDENTIALS.sub(lambda m: m.group("head") + "***@", message)


def _password(url: str) -> str | None:
    m = re.search(r"^(?:[^:/]*://)?[^\s:/@]*:([^\s@]*)@", url)
    return m.group(1) if m else None


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run one command. `own_process`: this process exists for the command (the console script,
    `python -m melodee_pipeline.cli`), so its garbage collector is tuned for it (see `_imports_done`)."""
    if own_process:
        gc.disable()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if own_process:
            _imports_done(args)
        return args.fn(args)
    except RunFailed as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MELODEE_DEBUG"):
            raise
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.DBAPIError):
            from melodee_pipeline.db.engine import database_error

            print(f"error: {redact(str(database_error(database.current, exc)))}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "DagsterPostgresException":  # dagster-postgres gave up on its storage
            print(f"error: run failed: Dagster's storage database cannot be reached ({redact(str(exc))}), so the run "
                  "cannot record its steps. What it staged stays staged; the next run records the rows it owes.",
                  file=sys.stderr)
            return 1
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: unexpected {type(exc).__name__}: {redact(first)} (MELODEE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _imports_done(args) -> None:
    """A command's imports (sqlalchemy; dagster and the job for `run` and `demo`) build a heap of
    a few hundred thousand objects that live until the process ends. The collector walked that
    heap ~45 times while the imports grew it: ~0.45 s of every `melodee-pipeline run`. So `main`
    pauses it through the imports; then the imported heap is frozen out of later collections
    (nor does a forked worker walk it), and collection resumes for the work."""
    from melodee_pipeline.cli.runs import cmd_demo, cmd_run

    if args.fn in (cmd_run, cmd_demo):
        import melodee_pipeline.orchestration.run_once  # noqa: F401
    gc.freeze()
    gc.enable()


def entry() -> int:
    """The console script `melodee-pipeline`."""
    sys.stdout = _ReaderMayLeave(sys.stdout)
    return main(own_process=True)


class _ReaderMayLeave:
    """stdout for a reader that may stop reading (`| head`): once the pipe is closed, output is
    dropped and the command still finishes its work (an `undo` or a run stopped half-way by a
    closed pipe is no help), with its own exit code."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def _guarded(self, call, *args):
        if not self._gone:
            try:
                return call(*args)
            except BrokenPipeError:
                self._gone = True
                # What is still buffered goes nowhere, so the interpreter's last flush cannot fail.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
        return None

    def write(self, text: str) -> int:
        self._guarded(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)

