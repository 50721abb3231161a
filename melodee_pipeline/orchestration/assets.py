"""What staging_scan_job reads and writes, declared for the asset catalog (lineage, kinds,
descriptions), and the convergence check on what it wrote.

The job stays a job of ops: `stage_albums` and `record_staging_items` report materializations of
`staging_library` and `staging_items` on real runs (a dry run changes nothing, so reports none),
and the record op evaluates `CONVERGED` right after writing its rows.
"""

import os

import dagster as dg

from melodee_pipeline import convergence
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock

GROUP = "melodee"

inbound_library = dg.AssetSpec(
    "inbound_library",
    description="Melodee's inbound library: the directory new music is copied into. Read by scan_inbound; "
                "each run's scan is observed on it (files found, valid, refused).",
    kinds={"filesystem"},
    group_name=GROUP,
)
staging_library = dg.AssetSpec(
    "staging_library",
    description="Melodee's staging library: <code>/<artist>/<year> - <album>/ directories, each with an "
                "album.melodee.json sidecar. stage_albums moves inbound files here.",
    deps=[inbound_library],
    kinds={"filesystem"},
    group_name=GROUP,
)
staging_items = dg.AssetSpec(
    "staging_items",
    description="Melodee's review queue: the staging_items table in Postgres, one row per album directory "
                "in staging. record_staging_items writes the rows of the albums a run touched.",
    deps=[staging_library],
    kinds={"postgres"},
    group_name=GROUP,
)
ASSETS = [inbound_library, staging_library, staging_items]

CONVERGED = "staging_converged"
CONVERGED_DESCRIPTION = (
    "After each real run of staging_scan_job: every album directory the run moved files into has a sidecar "
    "listing exactly the files it holds and a staging_items row with the sidecar's checksum, and the staging "
    "temp dir holds no debris. Albums the run did not touch are not walked (reconcile does that). "
    "Executed on its own, it checks the albums of the latest real run again."
)


# What to do about a failed check: the drift is on disk or in the rows, and reconcile derives both
# again from what staging holds (an album's own files, sidecar and row).
REPAIR = ("`melodee-pipeline reconcile` (or reconcile_staging_job) repairs sidecars and rows from what the album "
          "directories hold; `--dry-run` shows what it would change")


def evaluation(result: convergence.Convergence, scan_id: str) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=staging_items.key, check_name=CONVERGED, passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR, metadata=_metadata(result, scan_id),
    )


def _metadata(result: convergence.Convergence, scan_id: str) -> dict:
    shown = result.problems[:50]
    more = len(result.problems) - len(shown)
    return {
        "scan_id": scan_id, "albums_checked": result.albums_checked, "problems": len(result.problems),
        **({"repair": REPAIR} if result.problems else {}),
        "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in shown) + (f"\n- … and {more} more" if more else ""))
        if shown else "none",
    }


@dg.asset_check(asset=staging_items.key, name=CONVERGED, description=CONVERGED_DESCRIPTION, blocking=False)
def staging_converged(context: dg.AssetCheckExecutionContext, database: MelodeeDatabase,
                      staging_lock: StagingRunLock) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(staging_items.key)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if "scan_db" not in meta or "staging_path" not in meta:
        return dg.AssetCheckResult(passed=True, description="no real run of staging_scan_job yet: nothing to check")
    scan_db, staging_path = meta["scan_db"].value, meta["staging_path"].value
    if not os.path.isfile(scan_db):
        return dg.AssetCheckResult(passed=True, description=f"the latest run's scan DB {scan_db} is gone (pruned): nothing to check")
    result = convergence.check_run(database.engine(), scan_db, staging_path)
    scan_id = meta["scan_id"].value if "scan_id" in meta else ""
    return dg.AssetCheckResult(passed=result.ok, severity=dg.AssetCheckSeverity.ERROR, metadata=_metadata(result, scan_id))

