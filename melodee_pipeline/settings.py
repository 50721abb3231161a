"""The `staging_scan.*` settings: the one place that knows every key, its default and its rule.

Values live as text in Melodee's `settings` table. A missing row (or NULL value) means the default;
an invalid value is never replaced by the default: it raises `SettingError` naming key and value.
Nothing here writes a row except `set_setting` and `insert_missing_keys`: Melodee seeds its own
defaults only into an empty `settings` table, so this project must never be first to write into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from croniter import CroniterBadDateError, croniter
from sqlalchemy.dialects.postgresql import insert

from melodee_pipeline.db.schema import libraries as libraries_table
from melodee_pipeline.db.schema import settings as settings_table
from melodee_pipeline.db.schema import utcnow
from melodee_pipeline.errors import SettingError
from melodee_pipeline.pathnorm import normalize_path

PREFIX = "staging_scan."
SCAN_DB_PATH_KEY = "staging_scan.scan_db_data_path"
# Melodee is written in Go, and Go's strconv.ParseBool accepts exactly these; yes/no (any case) too.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _bool(value: str) -> bool:
    v = value.strip()
    if v in _TRUE or v.lower() == "yes":
        return True
    if v in _FALSE or v.lower() == "no":
        return False
    raise ValueError("must be a boolean: 1, t, T, TRUE, true, True, yes / 0, f, F, FALSE, false, False, no")


def _int_range(lo: int, hi: int | None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
        if n < lo or (hi is not None and n > hi):
            raise ValueError(f"must be an integer from {lo} to {hi}" if hi else f"must be an integer >= {lo}")
        return n

    return parse


def _cron(value: str) -> str:
    expr = " ".join(value.split())
    if len(expr.split(" ")) != 5 or not croniter.is_valid(expr):
        raise ValueError("must be a 5-field cron expression (minute hour day month weekday), e.g. '0 */1 * * *'")
    try:  # valid fields, but a date that never comes ('0 0 31 2 *'): the sensor would fail every tick
        croniter(expr).get_next()
    except CroniterBadDateError:
        raise ValueError("never fires: no date matches its day and month fields") from None
    return expr


def _abs_dir(value: str) -> str:
    path = value.strip()
    if not path or not os.path.isabs(path):
        raise ValueError("must be an absolute directory path")
    return normalize_path(path)


@dataclass(frozen=True)
class SettingSpec:
    key: str
    default: str
    parse: Callable[[str], Any]
    comment: str
    # Integer settings: inclusive bounds (None: unbounded), shared by `parse` and the run config.
    low: int | None = None
    high: int | None = None


def _integer(key: str, default: str, low: int, high: int | None, comment: str) -> SettingSpec:
    return SettingSpec(key, default, _int_range(low, high), comment, low, high)


SPECS: dict[str, SettingSpec] = {
    s.key: s
    for s in [
        SettingSpec("staging_scan.enabled", "false", _bool, "Run the inbound -> staging scan on its schedule"),
        SettingSpec("staging_scan.dry_run", "false", _bool, "Plan only: move nothing, write no rows"),
        SettingSpec("staging_scan.schedule", "0 */1 * * *", _cron, "5-field cron expression, UTC"),
        _integer("staging_scan.workers", "4", 1, 64, "Parallel workers for scanning and staging (1..64)"),
        _integer("staging_scan.rate_limit", "0", 0, None, "Max file moves per second, 0 = unlimited"),
        SettingSpec("staging_scan.scan_db_data_path", "/var/melodee/scan-db", _abs_dir, "Directory for scan databases"),
        _integer("staging_scan.min_file_age_seconds", "60", 0, None, "Skip directories with files younger than this"),
        _integer("staging_scan.keep_scan_dbs", "20", 1, None, "Newest scan databases to keep"),
    ]
}


@dataclass(frozen=True)
class StagingScanSettings:
    enabled: bool
    dry_run: bool
    schedule: str
    workers: int
    rate_limit: int
    scan_db_data_path: str
    min_file_age_seconds: int
    keep_scan_dbs: int


def parse_value(key: str, value: str | None) -> Any:
    spec = SPECS.get(key)
    if spec is None:
        raise SettingError(key, value, f"unknown setting; known keys: {', '.join(SPECS)}")
    if value is None:
        return spec.parse(spec.default)
    try:
        return spec.parse(value)
    except ValueError as exc:
        raise SettingError(key, value, str(exc)) from None


def check_scan_db_path(path: str, library_paths: Iterable[str], key: str = SCAN_DB_PATH_KEY) -> None:
    """The scan DB directory may be neither inside a library nor contain one: scans and moves would see it."""
    p = PurePosixPath(normalize_path(path))
    for lib in library_paths:
        lp = PurePosixPath(normalize_path(lib))
        if p == lp or lp in p.parents:
            raise SettingError(key, path, f"is inside library path {lib}")
        if p in lp.parents:
            raise SettingError(key, path, f"contains library path {lib}")


def parse_settings(raw: dict[str, str | None], library_paths: Iterable[str] = ()) -> StagingScanSettings:
    values = {key[len(PREFIX):]: parse_value(key, raw.get(key)) for key in SPECS}
    check_scan_db_path(values["scan_db_data_path"], library_paths)
    return StagingScanSettings(**values)


def read_raw(conn: sa.Connection) -> dict[str, str | None]:
    rows = conn.execute(
        sa.select(settings_table.c.key, settings_table.c.value).where(settings_table.c.key.like(PREFIX + "%"))
    )
    return {k: v for k, v in rows}


def library_paths(conn: sa.Connection) -> list[str]:
    """Every library's path (any type), normalised: the scan DB directory must keep clear of all of them."""
    return [normalize_path(p) for p in conn.execute(sa.select(libraries_table.c.path)).scalars()]


def load_settings(conn: sa.Connection) -> StagingScanSettings:
    return parse_settings(read_raw(conn), library_paths(conn))


def scan_db_dir(conn: sa.Connection) -> str | None:
    """The scan DB directory, for work that only benefits from it (recording a recovered album in
    its run's scan DB): None when the setting is invalid, which fails the runs that need it."""
    try:
        return parse_value(SCAN_DB_PATH_KEY, read_raw(conn).get(SCAN_DB_PATH_KEY))
    except SettingError:
        return None


def set_setting(conn: sa.Connection, key: str, value: str) -> Any:
    """Validate and store one setting; refuses an invalid value without writing anything."""
    parsed = parse_value(key, value)
    if key == SCAN_DB_PATH_KEY:
        check_scan_db_path(parsed, library_paths(conn))
    stored = str(value).strip()
    now = utcnow()
    stmt = insert(settings_table).values(key=key, value=stored, comment=SPECS[key].comment, created_at=now, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=[settings_table.c.key], set_={"value": stored, "updated_at": now})
    )
    return parsed


def insert_missing_keys(conn: sa.Connection) -> list[str]:
    """Add the `staging_scan.*` keys that are missing, with their defaults, to a settings table
    Melodee seeded: one holding a key of its own (not `staging_scan.*`), so its admin UI lists them.
    An empty table is left alone: Melodee seeds its defaults only into an empty table, and a row
    written first by us would stop that for good. Nor are keys added beside rows only `settings set`
    wrote: an unset key keeps following its default. (No race: a table seen with such a row keeps
    it, and one seen without is not written.) Returns the keys added."""
    melodees = settings_table.c.key.not_like("staging\\_scan.%", escape="\\")
    if conn.execute(sa.select(sa.literal(1)).select_from(settings_table).where(melodees).limit(1)).first() is None:
        return []
    present = set(read_raw(conn))
    missing = [s for k, s in SPECS.items() if k not in present]
    if missing:
        now = utcnow()
        conn.execute(
            insert(settings_table).on_conflict_do_nothing(index_elements=[settings_table.c.key]),
            [{"key": s.key, "value": s.default, "comment": s.comment, "created_at": now, "updated_at": now}
             for s in missing],
        )
    return [s.key for s in missing]
