"""What a staging cycle needs before it touches a file: settings, libraries, run overrides.

Shared by the Dagster ops, the sensor and the CLI, so all three apply the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from melodee_pipeline.libraries import RunLibraries, resolve_libraries
from melodee_pipeline.settings import PREFIX, StagingScanSettings, check_scan_db_path, load_settings, parse_value

OVERRIDABLE = ("dry_run", "workers", "rate_limit", "scan_db_data_path")


@dataclass(frozen=True)
class CyclePlan:
    settings: StagingScanSettings
    libraries: RunLibraries


def apply_overrides(settings: StagingScanSettings, overrides: dict[str, Any], library_paths: list[str]) -> StagingScanSettings:
    """Run config wins over settings; each value is validated by the same rule as the setting."""
    given = {k: v for k, v in overrides.items() if k in OVERRIDABLE and v is not None}
    parsed = {k: parse_value(PREFIX + k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in given.items()}
    result = replace(settings, **parsed)
    check_scan_db_path(result.scan_db_data_path, library_paths)
    return result


def plan_cycle(conn: sa.Connection, overrides: dict[str, Any] | None = None) -> CyclePlan:
    libs = resolve_libraries(conn)
    settings = load_settings(conn)
    settings = apply_overrides(settings, overrides or {}, [libs.inbound.path, libs.staging.path])
    return CyclePlan(settings, libs)
