"""Melodee libraries (SPEC §4): CRUD for the CLI and the resolver every run starts with."""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa

from melodee_pipeline.db.schema import libraries as libraries_table
from melodee_pipeline.errors import LibraryError, UserError

TYPES = ("inbound", "staging", "production")


@dataclass(frozen=True)
class Library:
    id: int
    name: str
    path: str
    type: str
    is_locked: bool


def list_libraries(conn: sa.Connection) -> list[Library]:
    t = libraries_table
    rows = conn.execute(sa.select(t.c.id, t.c.name, t.c.path, t.c.type, t.c.is_locked).order_by(t.c.id))
    return [Library(r.id, r.name, r.path, r.type, bool(r.is_locked)) for r in rows]


def all_library_paths(conn: sa.Connection) -> list[str]:
    return [lib.path for lib in list_libraries(conn)]


def add_library(conn: sa.Connection, name: str, type_: str, path: str) -> Library:
    if type_ not in TYPES:
        raise UserError(f"invalid library type {type_!r}: must be one of {', '.join(TYPES)}")
    if not name.strip():
        raise UserError("library name must not be empty")
    if not os.path.isabs(path):
        raise UserError(f"library path {path!r} must be absolute")
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise UserError(f"library path {path} does not exist or is not a directory")
    existing = list_libraries(conn)
    if type_ in ("inbound", "staging"):
        same = [lib for lib in existing if lib.type == type_]
        if same:
            raise UserError(f"a {type_} library is already configured (id {same[0].id}); exactly one is allowed")
    from melodee_pipeline.settings import check_scan_db_path, load_settings

    check_scan_db_path(load_settings(conn).scan_db_data_path, [path])
    new_id = conn.execute(
        sa.insert(libraries_table).values(name=name, path=path, type=type_).returning(libraries_table.c.id)
    ).scalar_one()
    return Library(new_id, name, path, type_, False)


def remove_library(conn: sa.Connection, library_id: int) -> None:
    result = conn.execute(sa.delete(libraries_table).where(libraries_table.c.id == library_id))
    if result.rowcount == 0:
        raise UserError(f"no library with id {library_id}")


@dataclass(frozen=True)
class RunLibraries:
    inbound: Library
    staging: Library

    @property
    def locked(self) -> Library | None:
        return next((lib for lib in (self.inbound, self.staging) if lib.is_locked), None)


def _exactly_one(libs: list[Library], type_: str) -> Library:
    found = [lib for lib in libs if lib.type == type_]
    if not found:
        raise LibraryError(f"no {type_} library configured")
    if len(found) > 1:
        ids = ", ".join(str(lib.id) for lib in found)
        raise LibraryError(f"{len(found)} {type_} libraries configured (ids {ids}); exactly one is allowed")
    return found[0]


def resolve_libraries(conn: sa.Connection, check_paths: bool = True) -> RunLibraries:
    """Exactly one inbound and one staging library, with usable paths; else `LibraryError`."""
    libs = list_libraries(conn)
    result = RunLibraries(_exactly_one(libs, "inbound"), _exactly_one(libs, "staging"))
    if check_paths:
        check_library_paths(result)
    return result


def check_library_paths(libs: RunLibraries) -> None:
    for lib in (libs.inbound, libs.staging):
        if not os.path.isdir(lib.path):
            raise LibraryError(f"{lib.type} library {lib.name!r} (id {lib.id}): path {lib.path} does not exist or is not a directory")
    if not os.access(libs.staging.path, os.W_OK | os.X_OK):
        raise LibraryError(f"staging library {libs.staging.name!r} (id {libs.staging.id}): path {libs.staging.path} is not writable")
    a, b = os.path.realpath(libs.inbound.path), os.path.realpath(libs.staging.path)
    if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
        raise LibraryError(f"inbound path {libs.inbound.path} and staging path {libs.staging.path} must not contain each other")
