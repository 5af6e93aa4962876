"""The one job: every asset of a daily partition, the unit of runs, schedules and backfills."""

import dagster as dg

TRANSCRIBE_JOB_NAME = "transcribe_partition"
"""Name of the asset job that materializes one partition (every asset)."""

transcribe_partition_job = dg.define_asset_job(
    TRANSCRIBE_JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="Stage, preprocess and transcribe one landing date into the transcript tables.",
)
