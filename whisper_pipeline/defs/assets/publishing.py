"""The publishing op: a partition's four tables from its shards' results, checked, then written.

Tables are written atomically, in the order that keeps them consistent at every failure point
(``core.results.publishing_plan``); a blocking check failure publishes nothing.
"""

from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core.results import (
    build_tables,
    keep_published,
    model_failures,
    publishing_plan,
)
from whisper_pipeline.core.schema import (
    STATUS_FAILED,
    STATUS_OK,
    TABLE_SCHEMAS,
)
from whisper_pipeline.core.staging import (
    GroupTranscripts,
    ShardFeatures,
    read_results,
    remove_run_dir,
)
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.defs.checks import (
    CHECK_SPECS,
    blocking_failures,
    check_results,
    not_published,
)
from whisper_pipeline.defs.landing import KEPT_METADATA_KEY
from whisper_pipeline.defs.metrics import (
    audio_files_metadata,
    idle_metrics,
    preview_markdown,
    step_intervals,
    transcripts_metadata,
)
from whisper_pipeline.execution.placement import CPU_OP_TAGS
from whisper_pipeline.resources import StorageResource, TranscriberResource
from whisper_pipeline.resources.storage import STORAGE_RETRY

CHECK_OUTPUTS = [spec.get_python_identifier() for spec in CHECK_SPECS]
"""``write_tables``' output name of each asset check, as Dagster names a check's output."""

TRANSCRIBE_OP_NAME = "transcribe_shards"
"""The transcription op, whose steps' busy and idle time ``write_tables`` reports."""

PREPROCESS_OP_NAME = "preprocess_shard"
"""The preprocessing op, whose failed steps a transcription step stops waiting for."""


class WriteTablesConfig(dg.Config):
    """How a partition's tables are published.

    Attributes:
        keep_published_on_failure: A file that fails in this run while its content is unchanged
            keeps the transcript published for it (``core.results.keep_published``), reported
            as a warning, in ``no_failed_files`` and in the ``files_kept_after_failure``
            metadata, and the partition is requested again (``whisper_pipeline.defs.landing``).
            False publishes the failure rows instead.
    """

    keep_published_on_failure: bool = True


def plan_publishing(
    context: dg.OpExecutionContext,
    store: Storage,
    published: dict[str, pa.Table | None],
    files: pa.Table,
    transcripts: pa.Table,
) -> bool:
    """Publish the bridge of ``core.results.publishing_plan`` if it has one; its table order.

    Args:
        context: The ``write_tables`` step's context (its partition key, its log).
        store: Where the partition's tables are published.
        published: The partition's published tables (``read_published``).
        files: The ``audio_files`` about to be published.
        transcripts: The ``transcripts`` about to be published.

    Returns:
        Whether ``write_tables`` yields ``transcripts`` before ``audio_files``; the IO manager
        replaces each table as it is yielded.
    """
    try:
        old_files, old_transcripts = published["audio_files"], published["transcripts"]
        plan = publishing_plan(old_files, old_transcripts, files, transcripts)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        # Tables of an older schema (columns are only ever added): nothing safe to carry over.
        context.log.warning("published transcripts not carried over (%s)", error)
        return True
    if plan.bridge is not None:
        store.replace_partition("transcripts", context.partition_key, plan.bridge)
    return plan.transcripts_first


def read_published(store: Storage, key: str) -> dict[str, pa.Table | None]:
    """The partition's published tables by name; ``None`` for a table never published."""
    published = {}
    for name in TABLE_SCHEMAS:
        try:
            published[name] = store.read_partition(name, key)
        except FileNotFoundError:
            published[name] = None
    return published


def warn_failed_files(context: dg.OpExecutionContext, files: pa.Table) -> None:
    """One warning line per failed file of the ``audio_files`` table: its path and the reason.

    Where users look first (the run's log in the UI), e.g. ``failed: broken/notes.mp3: not an
    audio file (...)``. The same rows are the ``no_failed_files`` check's table.
    """
    for row in files.select(["relative_path", "status", "error"]).to_pylist():
        if row["status"] == STATUS_FAILED:
            context.log.warning("failed: %s: %s", row["relative_path"], row["error"])


@dg.op(
    out={
        # Graph-backed assets take the IO manager from the op's outputs.
        "audio_files": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        "transcripts": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        "transcript_segments": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        "transcript_words": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        # One output per asset check (``transcript_tables``' ``check_specs``), which Dagster
        # fills from each ``AssetCheckResult``; no IO manager stores them.
        **{name: dg.Out() for name in CHECK_OUTPUTS},
    },
    retry_policy=STORAGE_RETRY,
    tags=CPU_OP_TAGS,
)
def write_tables(
    context: dg.OpExecutionContext,
    config: WriteTablesConfig,
    storage: StorageResource,
    whisper: TranscriberResource,
    audio_manifest: pa.Table,
    shards: list[ShardFeatures],
    groups: list[GroupTranscripts],
):
    """Assemble the partition's tables, check them, and publish them if the checks pass.

    Reads one result per distinct content: this run's, or the cached one from an earlier run.
    The asset checks (``whisper_pipeline.defs.checks``) run on the built tables before anything is
    published. If a blocking one fails, the step reports every result and fails, and the
    published partition stays as it was; otherwise the IO manager replaces each table
    atomically and the results follow, each on its table's new materialization.

    Raises:
        dagster.Failure: A blocking check failed, or transcription failed for every file that
            reached it.
    """
    started_at = datetime.now(UTC)
    store = storage.get()
    spec = whisper.spec()
    run_dir = store.staging_dir(context.partition_key, context.run_id)
    manifest = audio_manifest.to_pylist()
    contents = sorted({row["content_sha256"] for row in manifest if row["status"] == STATUS_OK})
    results = read_results(store, run_dir, spec.cache_key, contents)
    files, transcripts, segments, words = build_tables(manifest, results, spec, started_at)
    warn_failed_files(context, files)
    reached, model_errors = model_failures(files)
    if reached and len(model_errors) == reached:
        raise dg.Failure(
            f"transcription failed for every one of the {reached} files that reached it "
            f"(first error: {model_errors[0]}); the partition's tables were left as they were",
            allow_retries=False,
        )
    built = {"audio_files": files, "transcripts": transcripts, "transcript_segments": segments,
             "transcript_words": words}  # fmt: skip
    kept = []
    published = read_published(store, context.partition_key)
    if config.keep_published_on_failure:
        built, kept = keep_published(built, published)
        files, transcripts = built["audio_files"], built["transcripts"]
        segments, words = built["transcript_segments"], built["transcript_words"]
        for file in kept:
            context.log.warning(
                "failed in this run, kept its published transcript (same content): %s: %s",
                file.relative_path,
                file.error,
            )
    landing_uri = store.uri(store.raw_dir(context.partition_key))
    checks = list(check_results(built, audio_manifest, context.partition_key, landing_uri, kept))
    failures = blocking_failures(checks)
    if failures:
        yield from not_published(checks)
        names = ", ".join(f"{r.check_name} ({r.asset_key.to_user_string()})" for r in failures)
        raise dg.Failure(
            f"blocking asset checks failed: {names}; the partition's tables were left as they were",
            allow_retries=False,
        )
    transcripts_first = plan_publishing(context, store, published, files, transcripts)
    files_out = dg.Output(files, "audio_files", metadata=audio_files_metadata(files, transcripts))
    if not transcripts_first:
        yield files_out
    intervals = step_intervals(context.instance, context.run_id, TRANSCRIBE_OP_NAME)
    run_started = context.instance.get_run_stats(context.run_id).start_time
    metadata = {
        **transcripts_metadata(transcripts, shards, groups, len(contents)),
        **idle_metrics(intervals, sum(g.busy_s for g in groups), run_started),
        **spec.metadata(),
        # Read by whisper_pipeline.defs.landing: a partition with kept files is run again.
        KEPT_METADATA_KEY: len(kept),
        "preview": dg.MetadataValue.md(preview_markdown(transcripts)),
    }
    yield dg.Output(transcripts, "transcripts", metadata=metadata)
    if transcripts_first:
        yield files_out
    yield dg.Output(segments, "transcript_segments", metadata={"files": transcripts.num_rows})
    yield dg.Output(words, "transcript_words", metadata={"files": transcripts.num_rows})
    yield from checks
    remove_run_dir(store, run_dir)
