"""Runs that `melodee-pipeline run|demo` execute in their own process, recorded as the UI records
its runs: with the origin of the code location `melodee_pipeline`. The UI re-executes a run (all
of it, or from its failed op) through that origin; `execute_in_process` records none, and the UI
then cannot re-execute the run at all. Outputs stay on disk (the job's FilesystemIOManager), so a
re-execution from the failed op loads the inputs this run produced.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import dagster as dg
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import ExecuteRunWithPlanIterable, create_execution_plan, job_execution_iterator
from dagster._core.execution.context_creation_job import PlanOrchestrationContextManager, orchestration_context_event_generator
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from melodee_pipeline.instance import LOCATION_NAME

DEFINITIONS_MODULE = "melodee_pipeline.definitions"


def create_run(instance: dg.DagsterInstance, job: dg.JobDefinition, run_config: Mapping[str, Any],
               plan: ExecutionPlan | None = None) -> dg.DagsterRun:
    """A run of `job` (a job of `definitions.defs`, loggers aside) carrying the code location's origin."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE), location_name=LOCATION_NAME)
    with origin.create_location(instance) as location:
        remote = location.get_repository(SINGLETON_REPOSITORY_NAME).get_full_job(job.name)
        return instance.create_run_for_job(
            job_def=job, execution_plan=plan, run_config=run_config, tags=job.run_tags,
            remote_job_origin=remote.get_remote_origin(), job_code_origin=remote.get_python_origin(),
        )


def execute(instance: dg.DagsterInstance, job: dg.JobDefinition, run_config: Mapping[str, Any]) -> dg.ExecuteInProcessResult:
    """Create the run, then execute it in this process as `execute_in_process` does (outputs
    captured, so the caller reads them without setting the resources up again: that would take
    the staging lock a second time)."""
    in_memory = InMemoryJob(job)
    plan = create_execution_plan(in_memory, run_config=run_config, instance_ref=instance.get_ref())
    run = create_run(instance, job, run_config, plan)
    outputs: dict = {}
    events = list(ExecuteRunWithPlanIterable(
        execution_plan=plan, iterator=job_execution_iterator,
        execution_context_manager=PlanOrchestrationContextManager(
            context_event_generator=orchestration_context_event_generator, job=in_memory, execution_plan=plan,
            dagster_run=run, instance=instance, run_config=run_config, executor_defs=None,
            output_capture=outputs, raise_on_error=False,
        ),
    ))
    return dg.ExecuteInProcessResult(job_def=job, event_list=events, dagster_run=instance.get_run_by_id(run.run_id),
                                     output_capture=outputs)
