"""Run staging_scan_job once in this process, recorded on the Postgres-backed Dagster instance
(what `melodee-pipeline run` and `demo` do), and say why it failed as a user should read it.
Importing this module imports everything a run needs (the CLI imports it before it freezes the heap)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import dagster as dg
from dagster._utils.log import create_console_logger

from melodee_pipeline.definitions import defs
from melodee_pipeline.instance import held_connections, prepare_dagster_home
from melodee_pipeline.orchestration import launch
from melodee_pipeline.orchestration.job import staging_scan_job


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (Dagster reads its instance from them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _NoTracebackFormatter(logging.Formatter):
    """Dagster's console line for an event that carries an error, without the error: Dagster
    appends it (class, message, stack trace) after a blank line. The run's event log keeps it."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "dagster_event", None)
        data = getattr(event, "event_specific_data", None)
        if getattr(data, "error", None) is not None and isinstance(record.msg, str) and "\n\n" in record.msg:
            record = logging.makeLogRecord({**record.__dict__, "msg": record.msg.split("\n\n", 1)[0], "args": None})
        return self.inner.format(record)


def console_logger():
    """Dagster's colored console logger, minus step-failure tracebacks (the CLI prints the reason)."""
    @dg.logger({"log_level": dg.Field(str, is_required=False, default_value="INFO")},
               description="Dagster's console logger without error tracebacks")
    def console(init_context):
        log = create_console_logger("dagster", init_context.logger_config["log_level"])
        for handler in log.handlers:
            handler.setFormatter(_NoTracebackFormatter(handler.formatter or logging.Formatter()))
        return log

    return console


def run_job(dry_run: bool | None = None, workers: int | None = None, rate_limit: int | None = None,
            scan_db_data_path: str | None = None) -> tuple[bool, dict | None, str | None]:
    """One cycle through staging_scan_job in this process, recorded on the Postgres-backed instance."""
    home = prepare_dagster_home()
    overrides = {k: v for k, v in dict(dry_run=dry_run, workers=workers, rate_limit=rate_limit,
                                        scan_db_data_path=scan_db_data_path).items() if v is not None}
    job = defs.get_job_def(staging_scan_job.name).with_logger_defs({"console": console_logger()})
    run_config = {"ops": {"scan_inbound": {"config": overrides}}, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with environ(DAGSTER_HOME=str(home)), instance_at_a_terminal(home) as instance, held_connections(instance):
        result = launch.execute(instance, job, run_config)  # the UI can re-execute it
        summary = result.output_for_node("record_staging_items") if result.success and _produced(result) else None
    return result.success, summary, result.run_id if result.success else failure_message(result)


# Dagster copies a run process's stdout and stderr into files for the UI by starting `tail` and a
# Python watcher for each stream: ~0.25 s of every run. A run this process executes writes them to
# the user's terminal instead; its event log (every message, each failure with its traceback) is
# in Dagster's storage as always. Runs the daemon or the UI launch keep the capture.
NO_CAPTURE = {"compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}}


def instance_at_a_terminal(home) -> dg.DagsterInstance:
    """The instance of `home`'s dagster.yaml, without stdout/stderr capture unless that file
    configures `compute_logs` itself."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    configured, _ = dagster_instance_config(str(home))
    overrides = {} if configured.get("compute_logs") else NO_CAPTURE
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=overrides))


def _produced(result) -> bool:
    return any(e.is_successful_output and e.node_name == "record_staging_items" for e in result.all_events)


def failure_message(result) -> str:
    """The reason a run failed, as the user should read it: `dg.Failure` descriptions first,
    else the innermost exception's message (resource set-up, e.g. the staging lock, included)."""
    reasons = []
    for event in result.all_events:
        if event.event_type_value not in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE"):
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and user.description:
            reasons.append(f"{event.step_key}: {user.description}")
        elif getattr(data, "error", None) is not None:
            # No step: a resource could not be set up (the staging lock): its reason alone.
            reasons.append(f"{event.step_key}: {_innermost(data.error)}" if event.step_key else _innermost(data.error))
    if not reasons:
        reasons = [_innermost(e.event_specific_data.error) for e in result.all_events
                   if e.event_type_value == "PIPELINE_FAILURE" and e.event_specific_data.error][:1]
    return "; ".join(reasons) or "run failed"


def _innermost(error) -> str:
    while error.cause is not None:
        error = error.cause
    first = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
    prefix = f"{error.cls_name}: "
    return first.split(prefix, 1)[1] if prefix in first else first
