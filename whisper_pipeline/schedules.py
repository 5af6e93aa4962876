"""The nightly job: materialize yesterday's landing partition."""

import dagster as dg

transcribe_partition_job = dg.define_asset_job(
    "transcribe_partition",
    selection=dg.AssetSelection.all(),
    description="Stage, preprocess and transcribe one landing date into the transcript tables.",
)

nightly_transcription_schedule = dg.build_schedule_from_partitioned_job(
    transcribe_partition_job, hour_of_day=2, minute_of_hour=0
)
"""02:00 UTC every night: the partition of the day that just ended (daily partitions end at
midnight, so the last complete partition is yesterday's)."""
