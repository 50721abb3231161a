"""What staging_scan_job declares to Dagster: assets (lineage, kinds, materializations of real runs),
the convergence check, the run config's contract with the settings, and the runs that end without work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from melodee_pipeline import convergence
from melodee_pipeline.cycle import OVERRIDABLE
from melodee_pipeline.definitions import defs
from melodee_pipeline.errors import SettingError
from melodee_pipeline.orchestration.assets import CONVERGED, staging_converged
from melodee_pipeline.orchestration.ops import SENSOR_TICK_TAG, ScanConfig
from melodee_pipeline.settings import PREFIX, SPECS, parse_value
from melodee_pipeline.staging.moves import temp_dir
from melodee_pipeline_tests.conftest import age, album, tree
from melodee_pipeline_tests.test_dagster_job import metadata, run

ITEMS = dg.AssetKey("staging_items")
CHECK = dg.AssetCheckKey(ITEMS, CONVERGED)


@pytest.fixture
def inbound(env, libs):
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(libs["inbound"], "AC/DC", "Back in Black", 1980, ["Hells Bells"], ".ogg", seed=5)
    age(libs["inbound"])
    return libs


def events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def check_evaluations(result) -> list:
    return [e.event_specific_data for e in events(result, "ASSET_CHECK_EVALUATION")]


# Assets -----------------------------------------------------------------------------------------

def test_assets_are_declared_with_lineage_kinds_group_and_the_check():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"inbound_library", "staging_library", "staging_items"}
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert [d.asset_key.to_user_string() for d in specs["staging_library"].deps] == ["inbound_library"]
    assert [d.asset_key.to_user_string() for d in specs["staging_items"].deps] == ["staging_library"]
    assert specs["staging_items"].kinds == {"postgres"}
    assert specs["staging_library"].kinds == specs["inbound_library"].kinds == {"filesystem"}
    assert all(s.group_name == "melodee" and s.description for s in specs.values())
    assert graph.asset_check_keys == {CHECK}
    assert "every album directory the run moved files into" in graph.get_check_spec(CHECK).description


def test_real_run_materialises_staging_and_rows_and_the_check_passes(inbound, engine):
    instance = dg.DagsterInstance.ephemeral()
    result = run(instance=instance)
    assert result.success
    [observed] = events(result, "ASSET_OBSERVATION")
    obs = observed.event_specific_data.asset_observation
    assert obs.asset_key.to_user_string() == "inbound_library" and obs.metadata["files"].value == 3
    mats = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
            for e in events(result, "ASSET_MATERIALIZATION")}
    assert set(mats) == {"staging_library", "staging_items"}
    assert mats["staging_library"].metadata["files_moved"].value == 3
    assert mats["staging_items"].metadata["inserted"].value == 2
    [check] = check_evaluations(result)
    assert check.passed and check.check_name == CONVERGED and check.metadata["albums_checked"].value == 2
    # The catalog reads these from the instance: the run is the latest materialization and check.
    assert instance.get_latest_materialization_event(ITEMS).run_id == result.run_id
    [execution] = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=5)
    assert execution.run_id == result.run_id and execution.status.value == "SUCCEEDED"


def test_dry_run_materialises_nothing_and_runs_no_check(inbound):
    result = run({"dry_run": True})
    assert result.success
    assert not events(result, "ASSET_MATERIALIZATION") and not check_evaluations(result)


def test_check_fails_the_run_of_a_row_postgres_refused(inbound, engine):
    # A row Postgres refuses fails that album alone; the album then has no row, and the check says so.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE staging_items ADD CONSTRAINT no_acdc CHECK (artist_name <> 'AC/DC')"))
    result = run()
    assert result.success
    [check] = check_evaluations(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["problems"].value == 1
    assert "no staging_items row for " + str(inbound["staging"] / "ACD" / "AC-DC" / "1980 - Back in Black") \
        in check.metadata["details"].value


def test_check_leaves_rows_the_admin_deleted_alone(inbound, engine):
    assert run().success
    with engine.begin() as conn:  # the admin rejects and deletes one row; its files stay in staging
        conn.execute(sa.text("DELETE FROM staging_items WHERE artist_name = 'AC/DC'"))
    # The same bytes again: already staged, the album gains nothing, its row stays deleted.
    (inbound["inbound"] / "again").mkdir()
    shutil.copy(inbound["staging"] / "ACD" / "AC-DC" / "1980 - Back in Black" / "01 - Hells Bells.ogg", inbound["inbound"] / "again")
    age(inbound["inbound"])
    second = run()
    assert second.success, second.output_for_node("record_staging_items")
    assert second.output_for_node("record_staging_items")["already_staged"] == 1
    [check] = check_evaluations(second)
    assert check.passed and check.metadata["albums_checked"].value == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items WHERE artist_name = 'AC/DC'")).scalar() == 0


def test_convergence_finds_a_missing_file_a_stale_row_and_temp_debris(inbound, engine):
    instance = dg.DagsterInstance.ephemeral()
    first = run(instance=instance)
    assert first.success
    scan_db, staging = first.output_for_node("record_staging_items")["scan_db"], str(inbound["staging"])
    assert convergence.check_run(engine, scan_db, staging).ok
    lz = inbound["staging"] / "LZ" / "Led Zeppelin" / "1971 - IV"
    (lz / "02 - Rock and Roll.flac").unlink()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staging_items SET checksum = 'stale' WHERE artist_name = 'AC/DC'"))
    os.makedirs(temp_dir(staging))
    Path(temp_dir(staging), "sidecar-123").write_bytes(b"half")
    found = convergence.check_run(engine, scan_db, staging)
    assert found.albums_checked == 2 and len(found.problems) == 3, found.problems
    assert f"sidecar of {lz} lists ['01 - Black Dog.flac', '02 - Rock and Roll.flac'], " \
           "directory holds ['01 - Black Dog.flac']" in found.problems
    assert any(p.startswith("staging_items row of ") and "has checksum stale" in p for p in found.problems)
    assert f"debris in the staging temp dir: {temp_dir(staging)}/sidecar-123" in found.problems

    # Executed on its own (the UI's "Execute" on the check): the latest real run's albums again.
    checked = dg.materialize([*defs.resolve_all_asset_specs(), staging_converged], selection=dg.AssetSelection.checks(CHECK),
                             resources=defs.resources, instance=instance, raise_on_error=False)
    [evaluation] = checked.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["problems"].value == 3
    assert evaluation.metadata["repair"].value.startswith("`melodee-pipeline reconcile` (or reconcile_staging_job) repairs")


# Run config: one source for defaults and rules --------------------------------------------------

def _config_fields() -> dict:
    job = defs.get_job_def("staging_scan_job")
    op_config = job.run_config_schema.config_type.fields["ops"].config_type.fields["scan_inbound"]
    return op_config.config_type.fields["config"].config_type.fields


def test_run_config_fields_are_the_overridable_settings_with_their_comments():
    fields = _config_fields()
    assert set(fields) == set(ScanConfig.model_fields) == set(OVERRIDABLE)
    for name, field in fields.items():
        spec = SPECS[PREFIX + name]
        assert not field.is_required
        assert spec.comment in field.description and repr(spec.default) in field.description


@pytest.mark.parametrize("name", [n for n in OVERRIDABLE if SPECS[PREFIX + n].low is not None])
def test_run_config_and_settings_share_the_bounds(name):
    spec = SPECS[PREFIX + name]
    outside = [spec.low - 1] + ([spec.high + 1] if spec.high is not None else [])
    inside = [spec.low] + ([spec.high] if spec.high is not None else [])
    for value in outside:
        with pytest.raises(ValueError):
            ScanConfig(**{name: value})
        with pytest.raises(SettingError):
            parse_value(spec.key, str(value))
    for value in inside:
        assert getattr(ScanConfig(**{name: value}), name) == parse_value(spec.key, str(value)) == value


def test_out_of_range_run_config_fails_before_any_file_moves(inbound):
    before = tree(inbound["inbound"])
    result = run({"workers": SPECS[PREFIX + "workers"].high + 1})
    assert not result.success
    failure = next(e for e in events(result, "STEP_FAILURE"))
    assert failure.step_key == "scan_inbound" and "less than or equal to 64" in str(failure.event_specific_data.error)
    assert tree(inbound["inbound"]) == before and not list(inbound["scandbs"].iterdir())


# Runs that end without work, and what a dry run says ---------------------------------------------

def _run_tagged(tags: dict):
    instance = dg.DagsterInstance.ephemeral()
    result = defs.get_job_def("staging_scan_job").execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    result.log_messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def test_sensor_run_ends_without_work_when_the_scan_was_disabled_meanwhile(inbound, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = 'false' WHERE key = 'staging_scan.enabled'"))
    before = tree(inbound["inbound"])
    queued = _run_tagged({SENSOR_TICK_TAG: "2026-01-01T10:00:00+00:00"})
    assert queued.success
    assert [e.step_key for e in events(queued, "STEP_SKIPPED")] == ["group_albums", "stage_albums", "record_staging_items"]
    assert "staging_scan.enabled was set to false after the sensor queued this run; nothing to do" in queued.log_messages
    assert tree(inbound["inbound"]) == before and not list(inbound["scandbs"].iterdir())
    # A run someone started by hand does not depend on the schedule being enabled.
    manual = _run_tagged({})
    assert manual.success and manual.output_for_node("record_staging_items")["files_moved"] == 3


def test_dry_run_of_two_new_albums_says_would_move_and_counts_the_rows_it_would_write(inbound, engine):
    result = run({"dry_run": True})
    assert result.success
    stage = metadata(result, "stage_albums")
    assert stage["files_to_move"] == 3 and "files_moved" not in stage and "albums_with_warnings" not in stage
    plan = stage["plan"]
    assert sorted(r.data["would_move"] for r in plan) == [1, 2] and "moved" not in plan[0].data
    assert "staging_items: would write 2 new and 0 updated rows" in result.log_messages
    assert any(m.startswith("planned 2 albums (0 failed): 3 files to move") for m in result.log_messages)
    record = metadata(result, "record_staging_items")
    assert (record["would_insert"], record["would_update"]) == (2, 0) and "inserted" not in record
    summary = result.output_for_node("record_staging_items")
    assert summary["files_to_move"] == 3 and "files_moved" not in summary
    assert summary["would_insert"] == 2 and "inserted" not in summary
    assert "albums_with_warnings" not in summary  # a plan runs no album checks: no 0 that means nothing
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 0
