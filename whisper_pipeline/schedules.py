"""The job and the nightly schedule: yesterday's partition plus every stale one of the window."""

import dagster as dg

from whisper_pipeline.landing import (
    TRANSCRIBE_JOB_NAME,
    landing_states,
    lookback_days,
    lookback_window,
)
from whisper_pipeline.resources import StorageResource

transcribe_partition_job = dg.define_asset_job(
    TRANSCRIBE_JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="Stage, preprocess and transcribe one landing date into the transcript tables.",
)


@dg.schedule(
    name="transcribe_partition_schedule",  # the name build_schedule_from_partitioned_job gave it
    cron_schedule="0 2 * * *",
    job=transcribe_partition_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_transcription_schedule(
    context: dg.ScheduleEvaluationContext, storage: StorageResource
) -> list[dg.RunRequest]:
    """02:00 UTC: yesterday's partition, plus every stale partition of the lookback window.

    Daily partitions end at midnight, so the last complete partition is yesterday's; it is
    requested every night, as before. Any other partition of the last
    ``WHISPER_PIPELINE_LOOKBACK_DAYS`` (default 7) whose landing folder changed since its tables
    were built, or whose last run failed after staging, is requested too (the rule is
    ``whisper_pipeline.landing``'s, shared with ``landing_zone_sensor``). Run keys name the
    partition and its listing; Dagster scopes them to the scheduled time, so re-evaluating a
    tick launches nothing twice.
    """
    keys = lookback_window(context.scheduled_execution_time, lookback_days())
    states = landing_states(context.instance, storage.get(), keys)
    return [
        state.run_request() for state in states if state.partition_key == keys[-1] or state.stale
    ]
