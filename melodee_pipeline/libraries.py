"""Melodee libraries: CRUD for the CLI and the resolver every run starts with.

Paths are normalised (`melodee_pipeline.pathnorm`) when stored and when read, so one directory is
one library whatever its spelling. Removing a library is refused when Melodee would lose data with
it: its catalogue tables reference `libraries(id) ON DELETE CASCADE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa

from melodee_pipeline.db.schema import libraries as libraries_table
from melodee_pipeline.db.schema import utcnow
from melodee_pipeline.errors import LibraryError, UserError
from melodee_pipeline.pathnorm import normalize_path
from melodee_pipeline.settings import SCAN_DB_PATH_KEY, check_scan_db_path, parse_value, read_raw

TYPES = ("inbound", "staging", "production")


@dataclass(frozen=True)
class Library:
    id: int
    name: str
    path: str
    type: str
    is_locked: bool


def list_libraries(conn: sa.Connection) -> list[Library]:
    """Every library, its path normalised (Melodee may have stored `/music/staging/`)."""
    t = libraries_table
    rows = conn.execute(sa.select(t.c.id, t.c.name, t.c.path, t.c.type, t.c.is_locked).order_by(t.c.id))
    return [Library(r.id, r.name, normalize_path(r.path), r.type, bool(r.is_locked)) for r in rows]


def _same_directory(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # one directory through a symlink or bind mount
    except OSError:
        return False


def add_library(conn: sa.Connection, name: str, type_: str, path: str) -> Library:
    if type_ not in TYPES:
        raise UserError(f"invalid library type {type_!r}: must be one of {', '.join(TYPES)}")
    if not name.strip():
        raise UserError("library name must not be empty")
    if not os.path.isabs(path):
        raise UserError(f"library path {path!r} must be absolute")
    path = normalize_path(path)
    if not os.path.isdir(path):
        raise UserError(f"library path {path} does not exist or is not a directory")
    existing = list_libraries(conn)
    if type_ in ("inbound", "staging"):
        same = [lib for lib in existing if lib.type == type_]
        if same:
            raise UserError(f"{'an' if type_[0] in 'aeiou' else 'a'} {type_} library is already configured (id {same[0].id}); exactly one is allowed")
    for lib in existing:
        if _same_directory(lib.path, path):
            raise UserError(f"{path} is already {lib.type} library {lib.name!r} (id {lib.id}) at {lib.path}; "
                            "one directory is one library")
    check_scan_db_path(parse_value(SCAN_DB_PATH_KEY, read_raw(conn).get(SCAN_DB_PATH_KEY)), [path])
    new_id = conn.execute(
        sa.insert(libraries_table).values(name=name, path=path, type=type_, created_at=utcnow())
        .returning(libraries_table.c.id)
    ).scalar_one()
    return Library(new_id, name, path, type_, False)


_REFERENCES = sa.text("""
    SELECT c.conrelid::regclass::text AS tbl, a.attname AS col
    FROM pg_constraint c
    JOIN LATERAL unnest(c.conkey, c.confkey) AS k(local, remote) ON true
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.local
    JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = k.remote
    WHERE c.contype = 'f' AND c.confrelid = CAST(:libraries AS regclass) AND r.attname = 'id'
    ORDER BY 1, 2
""")


def library_references(conn: sa.Connection, library_id: int) -> dict[str, int]:
    """Rows of other tables (Melodee's albums, tracks, ...) that reference this library: table -> count.

    Found through the catalogue, so every referencing table counts, known to us or not.
    """
    counts: dict[str, int] = {}
    for tbl, col in conn.execute(_REFERENCES, {"libraries": libraries_table.name}).all():
        # Both names come from the catalogue: `tbl` is already quoted as needed by regclass::text.
        n = conn.execute(
            sa.text(f"SELECT count(*) FROM {tbl} WHERE {conn.dialect.identifier_preparer.quote(col)} = :id"),
            {"id": library_id},
        ).scalar_one()
        if n:
            counts[tbl] = counts.get(tbl, 0) + n
    return counts


def remove_library(conn: sa.Connection, library_id: int) -> Library:
    """Delete a library row, unless that would delete anything else or is a production library.

    Melodee's catalogue tables reference `libraries(id) ON DELETE CASCADE`, so a delete would
    silently take its albums and tracks with it. The row is locked first: a concurrent insert that
    references it waits for this transaction, so nothing can start referencing it between the
    count and the delete.
    """
    t = libraries_table
    row = conn.execute(
        sa.select(t.c.id, t.c.name, t.c.path, t.c.type, t.c.is_locked).where(t.c.id == library_id).with_for_update()
    ).first()
    if row is None:
        raise UserError(f"no library with id {library_id}")
    lib = Library(row.id, row.name, normalize_path(row.path), row.type, bool(row.is_locked))
    if lib.type == "production":
        raise UserError(f"library {lib.id} ({lib.name!r}) is a production library; it is not removed "
                        "(Melodee deletes its catalogue with it)")
    refs = library_references(conn, library_id)
    if refs:
        listed = ", ".join(f"{tbl} ({n} row{'s' if n != 1 else ''})" for tbl, n in refs.items())
        raise UserError(f"library {lib.id} ({lib.name!r}) is referenced by {listed}; it is not removed "
                        "(deleting it would delete those rows)")
    conn.execute(sa.delete(t).where(t.c.id == library_id))
    return lib


@dataclass(frozen=True)
class RunLibraries:
    inbound: Library
    staging: Library

    @property
    def locked(self) -> Library | None:
        return next((lib for lib in (self.inbound, self.staging) if lib.is_locked), None)

    @property
    def locked_reason(self) -> str | None:
        """Why a run must end without work: a locked library (Melodee is working on it)."""
        lib = self.locked
        return f"{lib.type} library {lib.name!r} (id {lib.id}) is locked" if lib else None


def _exactly_one(libs: list[Library], type_: str) -> Library:
    found = [lib for lib in libs if lib.type == type_]
    if not found:
        raise LibraryError(f"no {type_} library configured")
    if len(found) > 1:
        ids = ", ".join(str(lib.id) for lib in found)
        raise LibraryError(f"{len(found)} {type_} libraries configured (ids {ids}); exactly one is allowed")
    return found[0]


def resolve_libraries(conn: sa.Connection) -> RunLibraries:
    """Exactly one inbound and one staging library, with usable (normalised) paths; else `LibraryError`."""
    libs = list_libraries(conn)
    result = RunLibraries(_exactly_one(libs, "inbound"), _exactly_one(libs, "staging"))
    check_library_paths(result)
    return result


def check_library_paths(libs: RunLibraries) -> None:
    for lib in (libs.inbound, libs.staging):
        if not os.path.isdir(lib.path):
            raise LibraryError(f"{lib.type} library {lib.name!r} (id {lib.id}): path {lib.path} does not exist or is not a directory")
    if not os.access(libs.staging.path, os.W_OK | os.X_OK):
        raise LibraryError(f"staging library {libs.staging.name!r} (id {libs.staging.id}): path {libs.staging.path} is not writable")
    check_disjoint(libs.inbound.path, libs.staging.path)


def check_disjoint(inbound: str, staging: str) -> None:
    """Inbound and staging may not contain each other: a scan would read staged files as new ones
    and "already staged" would then remove their only copy."""
    a, b = os.path.realpath(inbound), os.path.realpath(staging)
    if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
        raise LibraryError(f"inbound path {inbound} and staging path {staging} must not contain each other")
