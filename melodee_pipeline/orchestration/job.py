"""staging_scan_job: scan_inbound -> group_albums -> stage_albums -> record_staging_items."""

import dagster as dg

from melodee_pipeline.orchestration.ops import group_albums, record_staging_items, scan_inbound, stage_albums

JOB_NAME = "staging_scan_job"
# dagster.yaml limits runs carrying this tag to one at a time.
CONCURRENCY_TAG = {"melodee/job": JOB_NAME}


@dg.job(
    name=JOB_NAME,
    # Ops run in sequence and parallelise inside; the in-process executor saves ~1 s per step and
    # keeps resources (the staging lock) alive for the whole run.
    executor_def=dg.in_process_executor,
    tags=CONCURRENCY_TAG,
    description="Move new music from Melodee's inbound library into staging and record staging_items rows.",
)
def staging_scan_job():
    record_staging_items(stage_albums(group_albums(scan_inbound())))
