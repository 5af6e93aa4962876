"""The nightly schedule: yesterday's partition plus every stale one of the window."""

import dagster as dg

from whisper_pipeline.defs.jobs import transcribe_partition_job
from whisper_pipeline.defs.landing import landing_states, lookback_days, lookback_window
from whisper_pipeline.resources import StorageResource


@dg.schedule(
    name="transcribe_partition_schedule",  # the name build_schedule_from_partitioned_job gave it
    cron_schedule="0 2 * * *",
    job=transcribe_partition_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_transcription_schedule(
    context: dg.ScheduleEvaluationContext, storage: StorageResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """02:00 UTC: yesterday's partition, plus every stale partition of the lookback window.

    Yesterday (the last complete daily partition) is requested when its landing folder exists
    (an empty folder publishes a day without audio) or its tables were published before (so
    ``audio_manifest`` fails loudly on the vanished folder); a day with neither is skipped with
    a ``SkipReason`` that names it. Staleness is ``whisper_pipeline.defs.landing``'s rule, shared
    with ``landing_zone_sensor``; Dagster scopes run keys to the scheduled time, so
    re-evaluating a tick launches nothing twice.
    """
    keys = lookback_window(context.scheduled_execution_time, lookback_days())
    store = storage.get()
    states = landing_states(context.instance, store, keys)
    yesterday = states[-1]
    published = store.fs.exists(store.table_dir("audio_files", yesterday.partition_key))
    requests = [
        state.run_request()
        for state in states
        if state.stale or (state is yesterday and (state.fingerprint is not None or published))
    ]
    if requests:
        return requests
    reason = f"{len(keys)} landing folders ({keys[0]}..{keys[-1]}): nothing to request"
    if yesterday.fingerprint is None:
        reason = (
            f"{yesterday.partition_key}: no landing folder"
            f" {store.uri(store.raw_dir(yesterday.partition_key))} and no published tables"
            f" (nothing landed that day), and none of the other {len(keys) - 1} days of the"
            " window is stale"
        )
    return dg.SkipReason(reason)
