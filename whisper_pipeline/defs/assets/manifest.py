import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core import audio
from whisper_pipeline.core.schema import AUDIO_FILES, STATUS_FAILED, STATUS_OK
from whisper_pipeline.core.storage import LandedFile, Storage
from whisper_pipeline.defs.dead_runs import record_orchestrator
from whisper_pipeline.defs.partitions import daily_partitions
from whisper_pipeline.execution.placement import CPU_OP_TAGS
from whisper_pipeline.resources import StorageResource, TranscriberResource
from whisper_pipeline.resources.storage import ROOT_ENV, STORAGE_RETRY

PERMANENT_OPEN_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError)
"""Errors opening a landed file that another attempt would meet again: that file's ``failed``
row, never a retry of the whole partition's staging."""

STAGING_THREADS = 8
"""Files fingerprinted and probed at once: the work is I/O-bound on object stores."""


def file_id_for(partition_key: str, relative_path: str) -> str:
    """Stable id of a landed file: 16 hex chars of SHA-256 over ``date/relative_path``."""
    return hashlib.sha256(f"{partition_key}/{relative_path}".encode()).hexdigest()[:16]


def stage_file(storage: Storage, partition_key: str, landed: LandedFile) -> dict:
    """Fingerprint and probe one landed file into an ``audio_files`` row (probe-time status).

    An entry listed with an ``error`` (a broken symbolic link, a FIFO, an unreadable key...)
    or one that cannot be opened for good (``PERMANENT_OPEN_ERRORS``: no read permission,
    deleted since the listing) becomes a ``failed`` row with that reason (``content_sha256`` is
    null, ``size_bytes`` as listed). Unreadable audio becomes a ``failed`` row with the reason;
    other storage errors (``OSError``: S3 throttling, a 5xx) propagate so the step's retry
    policy can handle them.
    """
    row = {
        "file_id": file_id_for(partition_key, landed.relative_path),
        "source_uri": storage.uri(landed.path),
        "relative_path": landed.relative_path,
        "size_bytes": landed.size_bytes,
        "content_sha256": None,
        "duration_s": None,
        "sample_rate_hz": None,
        "channels": None,
        "codec": None,
        "status": STATUS_OK,
        "error": "",
        "processed_at": datetime.now(UTC),
    }
    if landed.error:
        row.update(status=STATUS_FAILED, error=landed.error)
        return row
    try:
        handle = storage.fs.open(landed.path, "rb")
    except PERMANENT_OPEN_ERRORS as error:  # retrying the step would fail the same way
        row.update(status=STATUS_FAILED, error=f"cannot be read: {type(error).__name__}: {error}")
        return row
    with handle:
        row["content_sha256"] = audio.fingerprint(handle)
        if landed.size_bytes == 0:
            row.update(status=STATUS_FAILED, error="empty file (0 bytes)")
            return row
        handle.seek(0)
        try:
            probed = audio.probe(handle)
        except audio.AudioError as error:
            row.update(status=STATUS_FAILED, error=str(error))
            return row
    row.update(
        duration_s=probed.duration_s,
        sample_rate_hz=probed.sample_rate,
        channels=probed.channels,
        codec=probed.codec,
    )
    return row


@dg.asset(
    partitions_def=daily_partitions,
    io_manager_key="staging_io_manager",
    retry_policy=STORAGE_RETRY,
    group_name="staging",
    kinds={"python", "parquet"},
    op_tags=CPU_OP_TAGS,
    backfill_policy=dg.BackfillPolicy.multi_run(1),  # docs/ARCHITECTURE.md, "Backfill policy"
)
def audio_manifest(
    context: dg.AssetExecutionContext, storage: StorageResource, whisper: TranscriberResource
) -> dg.Output:
    """Audio files landed on the partition's date, fingerprinted (SHA-256) and probed.

    One row per entry under ``raw/YYYY-MM-DD/`` (subfolders included; see
    ``Storage.list_landed``), in the ``audio_files`` schema with probe-time status: entries that
    are not readable audio are ``failed`` here already.

    Fails without retry, before any work, when the Whisper configuration can never work
    (``TranscriberResource.validate``) or the landing folder does not exist: an unmounted
    volume or a mistyped root must not publish empty tables over good ones (the message names
    the bucket when an object store's bucket is missing). An existing empty folder is a day with
    no audio and publishes empty tables.
    """
    record_orchestrator(context)  # before any pool slot is held: lets dead_run_sensor find it
    try:
        whisper.validate()
    except ValueError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    store = storage.get()
    key = context.partition_key
    if not store.fs.isdir(store.raw_dir(key)):
        bucket = store.missing_bucket()
        if bucket:  # a mistyped root or endpoint, not a day without a folder
            endpoint = storage.resolved_endpoint_url()
            raise dg.Failure(
                f"bucket '{bucket}' does not exist"
                + (f" at {endpoint}" if endpoint else "")
                + f", so there is no landing folder {store.uri(store.raw_dir(key))}; check the"
                f" storage root ({ROOT_ENV} or resources.storage.config.root) and endpoint",
                allow_retries=False,
            )
        published = store.fs.exists(store.table_dir("audio_files", key))
        raise dg.Failure(
            f"landing folder {store.uri(store.raw_dir(key))} does not exist"
            + ("; the partition's published tables were left as they are" if published else "")
            + " (create the folder, even empty, to publish a day without audio)",
            allow_retries=False,
        )
    fingerprint = store.listing_fingerprint(key)  # before listing: a file landing now reruns
    landed = store.list_landed(key)
    with ThreadPoolExecutor(STAGING_THREADS) as pool:
        rows = list(pool.map(lambda f: stage_file(store, key, f), landed))
    table = pa.Table.from_pylist(rows, schema=AUDIO_FILES)
    failed = sum(row["status"] == STATUS_FAILED for row in rows)
    seconds = sum(row["duration_s"] or 0.0 for row in rows)
    if not rows:
        context.log.warning("no files under %s", store.raw_dir(key))
    return dg.Output(
        table,
        metadata={
            "files": len(rows),
            "files_unreadable": failed,
            "audio_hours": round(seconds / 3600, 4),
            "bytes": sum(row["size_bytes"] for row in rows),
            "landing_zone": dg.MetadataValue.path(store.uri(store.raw_dir(key))),
            "landing_fingerprint": fingerprint,  # read by whisper_pipeline.defs.landing
        },
    )
