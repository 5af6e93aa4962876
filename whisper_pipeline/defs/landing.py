"""Landing folders observed: every daily partition stays equal to its landing folder.

``landing_zone_sensor`` and the nightly schedule (``schedules.py``) judge the partitions of the
lookback window (``WHISPER_PIPELINE_LOOKBACK_DAYS``, yesterday included) with one rule,
``landing_states``: a partition is stale when its folder exists and its listing fingerprint
(``Storage.listing_fingerprint``) differs from the one its published tables were built from,
unless a queued or running run already covers that listing. A partition whose folder is missing
is never stale. Run keys are ``{partition}:{fingerprint}:{manifest storage id}``; the sensor's
cursor maps each partition to the fingerprint last requested. Every asset declares
``BackfillPolicy.multi_run(1)``. Rationale: docs/ARCHITECTURE.md, sections "defs/landing.py"
and "Backfill policy".
"""

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from whisper_pipeline.core.schema import TABLE_SCHEMAS
from whisper_pipeline.core.storage import EMPTY_LISTING_FINGERPRINT, Storage
from whisper_pipeline.defs.jobs import TRANSCRIBE_JOB_NAME
from whisper_pipeline.defs.partitions import daily_partitions
from whisper_pipeline.resources import StorageResource

LOOKBACK_ENV = "WHISPER_PIPELINE_LOOKBACK_DAYS"
"""Environment variable: how many recent daily partitions are watched (read at evaluation)."""

DEFAULT_LOOKBACK_DAYS = 7
"""Partitions watched when ``WHISPER_PIPELINE_LOOKBACK_DAYS`` is unset: yesterday and 6 before."""

LANDING_SENSOR_INTERVAL_S = 120
"""Seconds between the sensor's ticks (each lists every watched landing folder once)."""

FINGERPRINT_METADATA_KEY = "landing_fingerprint"
"""``audio_manifest`` output metadata: the fingerprint of the listing it staged."""

LANDING_FINGERPRINT_TAG = "whisper_pipeline/landing_fingerprint"
"""Run tag on requested runs: the fingerprint of the listing the run was requested for."""

PARTITION_TAG = "dagster/partition"
"""Dagster's run tag holding a single-partition run's partition key."""

KEPT_METADATA_KEY = "files_kept_after_failure"
"""``transcripts`` output metadata: files that failed in that run and kept their published rows;
a partition whose latest materialization has any is stale (it is run again)."""

TRANSCRIPTS_KEY = dg.AssetKey("transcripts")

MANIFEST_KEY = dg.AssetKey("audio_manifest")
"""The staging asset whose materializations record the fingerprint."""

TABLE_KEYS = tuple(dg.AssetKey(name) for name in (*TABLE_SCHEMAS, "subtitle_files"))
"""What must be published after the manifest for its fingerprint to count: every table and the
subtitle exports, so a partition missing one (subtitles that failed, a table added since) is
stale."""

PENDING_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
"""Statuses of a run that has not finished transcribing what it was requested for."""


def lookback_days() -> int:
    """``WHISPER_PIPELINE_LOOKBACK_DAYS`` now, else 7.

    Raises:
        ValueError: When the variable is set to anything but a whole number of days >= 1 (the
            tick fails with this message rather than silently watching another window).
    """
    raw = os.environ.get(LOOKBACK_ENV, "").strip()
    if not raw:
        return DEFAULT_LOOKBACK_DAYS
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError(f"{LOOKBACK_ENV} must be a whole number of days >= 1, not {raw!r}")
    return days


def misnamed_landing_folders(names: Iterable[str]) -> list[str]:
    """The names under ``raw/`` that are no daily partition key, so nothing ever reads them.

    ``2026-02-30`` (no such day), ``2026-1-5`` (not zero-padded), ``20261105``, ``2023-12-31``
    (before the partitions start) and hidden names' siblings alike; hidden names (``.``) are
    skipped, as everywhere in the landing zone.
    """
    bad = []
    for name in names:
        if name.startswith("."):
            continue
        try:
            valid = datetime.strptime(name, "%Y-%m-%d").strftime("%Y-%m-%d") == name
        except ValueError:
            valid = False
        if not valid or name < daily_partitions.get_first_partition_key():
            bad.append(name)
    return bad


def lookback_window(now: datetime, days: int) -> list[str]:
    """The ``days`` most recent complete daily partitions at ``now``, oldest first.

    The last is yesterday's (a daily partition exists once its day has ended). A naive ``now``
    is taken as UTC.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return list(daily_partitions.get_partition_keys(current_time=now)[-days:])


@dataclass(frozen=True)
class LandingState:
    """What one partition's landing folder holds against what its tables were built from.

    Attributes:
        partition_key: The daily partition.
        fingerprint: The folder's listing fingerprint now; ``None`` when the folder is missing.
        recorded: The fingerprint the published tables were built from; ``None`` when unknown
            (never materialized, tables not published since the manifest, or a manifest
            materialized before fingerprints were recorded).
        since: Storage id of the latest ``audio_manifest`` materialization (0: none).
        in_flight: Whether a queued or running run is transcribing this exact listing.
    """

    partition_key: str
    fingerprint: str | None
    recorded: str | None
    since: int
    in_flight: bool

    @property
    def stale(self) -> bool:
        """Whether the partition must be rebuilt from its folder.

        The folder exists, no queued or running run covers this listing, and the listing
        differs from ``recorded`` (a partition never materialized: its folder is not empty).
        """
        if self.fingerprint is None or self.in_flight:
            return False
        if self.since == 0:
            return self.fingerprint != EMPTY_LISTING_FINGERPRINT
        return self.fingerprint != self.recorded

    @property
    def run_key(self) -> str:
        """``{partition}:{fingerprint}:{since}``: one run per listing and materialization state."""
        return f"{self.partition_key}:{self.fingerprint or 'missing'}:{self.since}"

    def run_request(self) -> dg.RunRequest:
        """A run of ``transcribe_partition`` for this partition, tagged with the fingerprint."""
        tags = {LANDING_FINGERPRINT_TAG: self.fingerprint} if self.fingerprint else {}
        return dg.RunRequest(partition_key=self.partition_key, run_key=self.run_key, tags=tags)

    def describe(self) -> str:
        """Why the partition is (not) requested, for logs."""
        if self.fingerprint is None:
            return f"{self.partition_key}: no landing folder"
        if self.in_flight:
            return f"{self.partition_key}: a queued or running run covers this listing"
        if self.since == 0:
            state = "never materialized"
        elif self.recorded is None:
            state = "tables not published from a fingerprinted manifest"
        elif self.recorded != self.fingerprint:
            state = "folder changed since the last materialization"
        else:
            return f"{self.partition_key}: up to date"
        return f"{self.partition_key}: {state}" + ("" if self.stale else " (empty folder)")


def _recorded(
    instance: dg.DagsterInstance, partition_keys: Sequence[str]
) -> dict[str, tuple[int, str | None]]:
    """Per partition: (storage id of the latest manifest materialization, usable fingerprint)."""
    materialized = dg.DagsterEventType.ASSET_MATERIALIZATION
    manifest_ids = instance.get_latest_storage_id_by_partition(
        MANIFEST_KEY, materialized, set(partition_keys)
    )
    if not manifest_ids:
        return {}
    tables = [
        instance.get_latest_storage_id_by_partition(key, materialized, set(manifest_ids))
        for key in TABLE_KEYS
    ]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=MANIFEST_KEY, storage_ids=list(manifest_ids.values())),
        limit=len(manifest_ids),
    ).records
    kept = _partitions_with_kept_files(instance, tables[TABLE_KEYS.index(TRANSCRIPTS_KEY)])
    recorded = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or materialization.partition is None:
            continue
        key = materialization.partition
        value = materialization.metadata.get(FINGERPRINT_METADATA_KEY)
        fingerprint = value.value if value is not None else None
        published = all(table.get(key, -1) > record.storage_id for table in tables)
        usable = fingerprint if published and isinstance(fingerprint, str) else None
        if key in kept:  # published, but some files kept an earlier transcript: run it again
            usable = None
        recorded[key] = (record.storage_id, usable)
    return recorded


def _partitions_with_kept_files(
    instance: dg.DagsterInstance, transcripts_ids: dict[str, int]
) -> set[str]:
    """Partitions whose latest ``transcripts`` materialization kept files after a failure."""
    if not transcripts_ids:
        return set()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=TRANSCRIPTS_KEY, storage_ids=list(transcripts_ids.values())
        ),
        limit=len(transcripts_ids),
    ).records
    kept = set()
    for record in records:
        materialization = record.asset_materialization
        value = materialization.metadata.get(KEPT_METADATA_KEY) if materialization else None
        if value is not None and value.value and materialization.partition:
            kept.add(materialization.partition)
    return kept


def _in_flight(instance: dg.DagsterInstance, partition_keys: Iterable[str]) -> set[tuple[str, str]]:
    """(partition, fingerprint) of every queued or running run of the job in the window."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=TRANSCRIBE_JOB_NAME,
            statuses=PENDING_STATUSES,
            tags={PARTITION_TAG: list(partition_keys)},
        )
    )
    return {
        (run.tags[PARTITION_TAG], run.tags[LANDING_FINGERPRINT_TAG])
        for run in runs
        if PARTITION_TAG in run.tags and LANDING_FINGERPRINT_TAG in run.tags
    }


def landing_states(
    instance: dg.DagsterInstance, storage: Storage, partition_keys: Sequence[str]
) -> list[LandingState]:
    """Judge each partition's landing folder against what its tables were built from.

    One listing per folder and four event-log queries plus one run query in all.

    Args:
        instance: The Dagster instance holding the materializations and runs.
        storage: The storage whose ``raw/`` folders are the landing zone.
        partition_keys: The partitions to judge (``lookback_window``).

    Returns:
        One ``LandingState`` per partition key, in the order given.
    """
    recorded = _recorded(instance, partition_keys)
    in_flight = _in_flight(instance, partition_keys)
    states = []
    for key in partition_keys:
        fingerprint = storage.listing_fingerprint(key)
        since, fingerprint_then = recorded.get(key, (0, None))
        states.append(
            LandingState(key, fingerprint, fingerprint_then, since, (key, fingerprint) in in_flight)
        )
    return states


@dg.sensor(
    job_name=TRANSCRIBE_JOB_NAME,
    minimum_interval_seconds=LANDING_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult:
    """Run every recent partition whose landing folder changed since it was last materialized.

    Late, deleted or replaced files under ``raw/YYYY-MM-DD/`` within the lookback window request
    one ``transcribe_partition`` run of that day per listing; a run that fails is not requested
    again for the same listing (the nightly schedule retries it).
    """
    keys = lookback_window(datetime.now(UTC), lookback_days())
    store = storage.get()
    misnamed = misnamed_landing_folders(store.landing_folder_names())
    if misnamed:
        context.log.warning(
            "never transcribed: %d entries under %s are not YYYY-MM-DD partition keys: %s",
            len(misnamed),
            store.uri(store.path("raw")),
            ", ".join(misnamed[:20]) + (" ..." if len(misnamed) > 20 else ""),
        )
    states = landing_states(context.instance, store, keys)
    requested = json.loads(context.cursor) if context.cursor else {}
    cursor = {key: requested[key] for key in keys if key in requested}
    requests = []
    for state in states:
        if state.stale and requested.get(state.partition_key) != state.fingerprint:
            context.log.info("requesting %s", state.describe())
            requests.append(state.run_request())
            cursor[state.partition_key] = state.fingerprint
    new_cursor = json.dumps(cursor, sort_keys=True)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)
    stale = sum(state.stale for state in states)
    reason = f"{len(keys)} landing folders ({keys[0]}..{keys[-1]}): nothing new to request"
    if stale:
        reason += f" ({stale} stale, already requested for their listing)"
    if misnamed:
        reason += f"; {len(misnamed)} misnamed landing folders never read: {misnamed[:5]}"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor)
