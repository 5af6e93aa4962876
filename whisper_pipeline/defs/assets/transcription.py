import posixpath
import tempfile
import time
from datetime import UTC, datetime
from functools import partial

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import N_FRAMES
from whisper_pipeline.core.memory import release_free_memory
from whisper_pipeline.core.preprocess import changed_content, preprocess_file
from whisper_pipeline.core.progress import Progress
from whisper_pipeline.core.results import (
    assemble,
    build_tables,
    keep_published,
    model_failures,
    publishing_plan,
)
from whisper_pipeline.core.schema import (
    STATUS_FAILED,
    STATUS_OK,
    TABLE_DESCRIPTIONS,
    TABLE_SCHEMAS,
)
from whisper_pipeline.core.sharding import balance_shards, pending_files, shard_count
from whisper_pipeline.core.staging import (
    FILES_FILE,
    RUN_ACTIVE,
    RUN_ENDED,
    RUN_UNKNOWN,
    ShardFeatures,
    ShardPlan,
    ShardTranscripts,
    ShardWriter,
    chunk_waves,
    read_chunk_rows,
    read_results,
    remove_run_dir,
    remove_stale_runs,
    write_results,
)
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.defs.assets.manifest import STORAGE_RETRY, retry_write
from whisper_pipeline.defs.checks import (
    CHECK_SPECS,
    blocking_failures,
    check_results,
    not_published,
)
from whisper_pipeline.defs.dead_runs import record_orchestrator
from whisper_pipeline.defs.landing import KEPT_METADATA_KEY
from whisper_pipeline.defs.metrics import (
    audio_files_metadata,
    cpu_metadata,
    cpu_usage,
    idle_metrics,
    peak_rss_mib,
    preview_markdown,
    step_intervals,
    transcripts_metadata,
)
from whisper_pipeline.defs.partitions import daily_partitions
from whisper_pipeline.execution.placement import CPU_OP_TAGS, GPU_OP_TAGS, GPU_POOL
from whisper_pipeline.resources import StorageResource, TranscriberResource

CHECK_OUTPUTS = [spec.get_python_identifier() for spec in CHECK_SPECS]
"""``write_tables``' output name of each asset check, as Dagster names a check's output."""

CPU_MIN_AUDIO_S_PER_SHARD = 1800.0
"""Audio per shard when the model runs on CPU. There transcription is far slower than
preprocessing, so overlapping them saves little, while every extra shard costs two step
processes, a model load and emptier batches: the corpus partition ran fastest as one shard
(timings in ``benchmarks/RESULTS.md``)."""

GPU_MIN_AUDIO_S_PER_SHARD = 300.0
"""Audio per shard when the model runs on CUDA, where transcription is about as fast as one
core's preprocessing and shards must preprocess in parallel to keep the GPU busy."""


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


class PlanShardsConfig(dg.Config):
    """How a partition is split for parallel preprocessing.

    Attributes:
        max_shards: Upper bound on shards, hence on preprocessing steps and model loads.
        min_audio_s_per_shard: Fewer shards for small partitions: each shard gets at least this
            much audio (seconds), since every step costs a process start. 0 for auto:
            ``CPU_MIN_AUDIO_S_PER_SHARD`` when the model runs on CPU, else
            ``GPU_MIN_AUDIO_S_PER_SHARD``.
        redo: Transcribe every file again, even those with a cached result for the same
            content, model and options.
    """

    max_shards: int = 4
    min_audio_s_per_shard: float = 0.0
    redo: bool = False

    def audio_s_per_shard(self, device: str) -> float:
        """The least audio per shard in seconds, auto resolved for ``device`` (cpu/cuda)."""
        if self.min_audio_s_per_shard > 0:
            return self.min_audio_s_per_shard
        return CPU_MIN_AUDIO_S_PER_SHARD if device == "cpu" else GPU_MIN_AUDIO_S_PER_SHARD


def run_state(instance: dg.DagsterInstance, run_id: str) -> str:
    """``RUN_ACTIVE``, ``RUN_ENDED`` or ``RUN_UNKNOWN`` for a run id, from the instance."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return RUN_UNKNOWN
    return RUN_ENDED if run.is_finished else RUN_ACTIVE


@dg.op(out=dg.DynamicOut(ShardPlan), retry_policy=STORAGE_RETRY, tags=CPU_OP_TAGS)
def plan_shards(
    context: dg.OpExecutionContext,
    config: PlanShardsConfig,
    storage: StorageResource,
    whisper: TranscriberResource,
    audio_manifest: pa.Table,
):
    """Group the readable files still to transcribe, one entry per distinct content, into shards.

    Contents with a cached result for the same model and options are skipped (unless ``redo``):
    a re-run, or a run after a crash, only does the work that is missing.
    """
    if config.max_shards < 1 or config.min_audio_s_per_shard < 0:
        raise dg.Failure(
            f"invalid plan_shards config: max_shards must be >= 1 (got {config.max_shards}) "
            f"and min_audio_s_per_shard >= 0 (got {config.min_audio_s_per_shard})",
            allow_retries=False,
        )
    record_orchestrator(context)  # runs re-executed without audio_manifest are watched too
    store = storage.get()
    removed = remove_stale_runs(
        store, lambda run_id: run_state(context.instance, run_id), keep=context.run_id
    )
    if removed:
        context.log.info("removed the staging folders of %d ended runs", len(removed))
    run_dir = store.staging_dir(context.partition_key, context.run_id)
    spec = whisper.spec()
    cached = set() if config.redo else store.cached_contents(spec.cache_key)
    pending, skipped = pending_files(audio_manifest.to_pylist(), cached, store.path_of)
    total = sum(f.balance_s for f in pending)
    shards = shard_count(total, config.audio_s_per_shard(spec.device), config.max_shards)
    groups = balance_shards(pending, shards) if pending else []
    context.log.info(
        "%d distinct contents to transcribe (%.0f s of audio) in %d shards; %d already cached",
        len(pending),
        total,
        len(groups),
        skipped,
    )
    for index, group in enumerate(groups):
        files = tuple((f.content_sha256, f.path, f.duration_s) for f in group)
        yield dg.DynamicOutput(
            ShardPlan(index, run_dir, spec.cache_key, files), mapping_key=f"shard_{index:05d}"
        )


@dg.op(retry_policy=STORAGE_RETRY, tags=CPU_OP_TAGS)
def preprocess_shard(
    context: dg.OpExecutionContext,
    shard: ShardPlan,
    storage: StorageResource,
    whisper: TranscriberResource,
) -> ShardFeatures:
    """Decode, downmix, resample to 16 kHz, VAD-split and featurize a shard.

    A file that cannot be decoded, decodes to no samples, or decodes to much less than its
    header declares (a truncated upload) is recorded as failed with the reason.

    Memory does not grow with a file's length: each file is decoded into a local 16-bit PCM
    spool (``audio.spool``), VAD-scanned in blocks and sliced one chunk at a time
    (``chunking.split_spooled``); features go straight to storage. The step's peak RSS is in
    its output metadata.

    Writes the shard's three staging files (``core.staging``): the chunks' log-mel features,
    where each chunk's frames are with its speech regions, and per file the decoded duration,
    the speech found and ``failed``/``no_speech`` with a reason.
    """
    started = time.perf_counter()
    store = storage.get()
    extractor = whisper.feature_extractor()
    progress = Progress(
        f"shard {shard.index} preprocessing",
        len(shard.files),
        sum(declared or 0.0 for _, _, declared in shard.files),
        unit="files",
        log=context.log.info,
    )
    with ShardWriter(store, shard.shard_dir) as writer, progress:
        for sha, path, declared in progress.each(shard.files, lambda f: f[2] or 0.0):
            # Decoded from a local copy hashed while it is made: what is transcribed (and cached
            # under ``sha``) is provably the content audio_manifest hashed.
            with store.fs.open(path, "rb") as remote, open(writer.source_path, "w+b") as local:
                decoded_sha = audio.copy_fingerprinted(remote, local)
                if decoded_sha != sha:
                    context.log.warning("changed since staging, not transcribed: %s", path)
                    outcome = changed_content(sha, decoded_sha)
                else:
                    local.seek(0)
                    sink = partial(writer.add_chunk, sha)
                    outcome = preprocess_file(local, declared, extractor, writer.spool_path, sink)
            writer.add_file(sha, outcome)
    elapsed = time.perf_counter() - started
    peak = peak_rss_mib()
    context.log.info(
        "shard %d: %d files, %.1f s audio -> %d chunks in %.1f s, peak RSS %.0f MiB",
        shard.index,
        len(shard.files),
        writer.audio_s,
        len(writer.chunks),
        elapsed,
        peak,
    )
    context.add_output_metadata(
        {
            "audio_seconds": round(writer.audio_s, 2),
            "chunks": len(writer.chunks),
            "peak_rss_mib": round(peak),
        }
    )
    n_mels = extractor.mel_filters.shape[0]
    return ShardFeatures(shard, n_mels, writer.audio_s, elapsed, peak)


WAVE_BATCHES = 8
"""Full 30 s windows' worth of frames in a wave (``core.staging.chunk_waves``), the unit a
transcription step reads and holds (at most two waves at once,
``BatchTranscriber.transcribe_waves``): enough for every CTranslate2 worker to have several
batches in hand, few enough that the feature pages a step keeps resident do not grow with the
shard. Counted in frames, not chunks, so a wave of short clips holds as many of them as the
same memory allows, and they pack into shared windows as the in-process core packs them: in
waves of 64 chunks the 120 short clips split in two waves, the shortest clips crowded together
in the second, and Whisper ran them into shared segments more often (``benchmarks/RESULTS.md``)."""


FRAMES_PER_SECOND = 100
"""Log-mel feature frames per second of audio (hop of 160 samples at 16 kHz)."""


def wave_frames(whisper: TranscriberResource) -> int:
    """Feature frames per wave: ``WAVE_BATCHES`` first-pass batches of full 30 s windows."""
    return WAVE_BATCHES * max(1, whisper.batch_size) * N_FRAMES


def warn_unlimited_pool(context: dg.OpExecutionContext) -> None:
    """Warn in the run log when the instance sets no limit on the ``gpu`` pool.

    That is an instance without ``deploy/dagster.yaml`` (``DAGSTER_HOME`` unset under
    ``dagster dev``, or a home it was never copied to): transcription steps of several runs
    then load models on one accelerator at once.
    """
    storage = context.instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    if storage.get_concurrency_info(GPU_POOL).limit is None:
        context.log.warning(
            "the instance sets no limit on pool %r: runs may transcribe at once on one"
            " accelerator; copy deploy/dagster.yaml to $DAGSTER_HOME/dagster.yaml",
            GPU_POOL,
        )


@dg.op(
    retry_policy=STORAGE_RETRY,
    pool=GPU_POOL,
    tags=GPU_OP_TAGS,
)
def transcribe_shard(
    context: dg.OpExecutionContext,
    shard: ShardFeatures,
    storage: StorageResource,
    whisper: TranscriberResource,
) -> ShardTranscripts:
    """Transcribe a shard's chunks in cross-file micro-batches; one model load per step.

    Runs one at a time per run (executor tag limit) and across runs (pool ``gpu``), and ahead
    of waiting preprocessing steps (``dagster/priority``), so the accelerator is kept busy while
    CPU steps prepare later shards. Each content's result goes to the result cache, or, when it
    failed, to the run's staging folder (so the next run tries it again).
    """
    warn_unlimited_pool(context)
    store = storage.get()
    frames = {
        (r["content_sha256"], r["chunk_index"]): r["n_frames"]
        for r in read_chunk_rows(store, shard.plan.shard_dir)
    }
    started = time.perf_counter()
    transcriber = whisper.transcriber()
    loaded = time.perf_counter()
    usage = cpu_usage()
    shard_dir = shard.plan.shard_dir
    results = []
    progress = Progress(
        f"shard {shard.plan.index} transcription",
        len(frames),
        sum(frames.values()) / FRAMES_PER_SECOND,
        unit="chunks",
        log=context.log.info,
    )
    with tempfile.TemporaryDirectory(prefix="whisper-pipeline-") as local_dir, progress:
        waves = chunk_waves(store, shard_dir, shard.n_mels, wave_frames(whisper), local_dir)
        for done in transcriber.transcribe_waves(waves):
            results += done
            progress.advance(len(done), sum(frames[r.key] for r in done) / FRAMES_PER_SECOND)
            release_free_memory()  # the heap must not grow with the chunks done (core.memory)
    finished = time.perf_counter()
    decode_cpu = cpu_metadata(usage, cpu_usage())
    files = store.read_parquet(posixpath.join(shard_dir, FILES_FILE)).to_pylist()
    assembled = assemble(files, results, frames, datetime.now(UTC).isoformat())
    # Retried here, not by the step: a step retry would transcribe the whole shard again.
    retry_write(
        lambda: write_results(store, shard.plan.run_dir, shard.plan.options_key, assembled),
        f"shard {shard.plan.index}'s results",
        context.log.warning,
    )
    decode_s = finished - loaded
    peak = peak_rss_mib()
    context.log.info(
        "shard %d: %d chunks, %.1f s audio in %.1f s (RTF %.3f), %d generate calls, "
        "peak RSS %.0f MiB",
        shard.plan.index,
        len(frames),
        shard.audio_s,
        decode_s,
        decode_s / max(shard.audio_s, 1e-9),
        transcriber.generate_calls,
        peak,
    )
    if transcriber.packing_stopped:
        context.log.info(
            "shard %d: window packing stopped (most packed chunks came back out): %s",
            shard.plan.index,
            dict(transcriber.unpacked),
        )
    context.add_output_metadata(
        {
            "transcribe_seconds": round(decode_s, 2),
            "model_load_seconds": round(loaded - started, 2),
            "generate_calls": transcriber.generate_calls,
            "word_alignment_seconds": round(transcriber.align_s, 2),
            # CPU of the step's process while it decoded (all threads): a large system share
            # means the kernel is faulting in fresh buffers (``core.memory``, huge pages).
            **decode_cpu,
            "peak_rss_mib": round(peak),
            # Packed chunks decoded again, by reason (``core.packing``), and whether packing
            # stopped for this step (``core.scheduler.PACK_STOP_OUT_FRACTION``).
            "packed_chunks_out": dict(transcriber.unpacked),
            "window_packing_stopped": transcriber.packing_stopped,
        }
    )
    return ShardTranscripts(
        shard, decode_s, loaded - started, transcriber.generate_calls, peak, transcriber.align_s
    )


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
    shards: list[ShardTranscripts],
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
    intervals = step_intervals(context.instance, context.run_id, transcribe_shard.name)
    run_started = context.instance.get_run_stats(context.run_id).start_time
    metadata = {
        **transcripts_metadata(transcripts, shards, len(contents)),
        **idle_metrics(intervals, sum(s.transcribe_s for s in shards), run_started),
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


def table_out(name: str) -> dg.AssetOut:
    """The ``AssetOut`` of a published table: its own description and column schema in the UI."""
    columns = [
        dg.TableColumn(
            field.name,
            str(field.type),
            description=field.metadata[b"doc"].decode(),
            constraints=dg.TableColumnConstraints(nullable=field.nullable),
        )
        for field in TABLE_SCHEMAS[name]
    ]
    return dg.AssetOut(
        description=TABLE_DESCRIPTIONS[name],
        kinds={"parquet"},
        metadata={"dagster/column_schema": dg.TableSchema(columns=columns)},
    )


@dg.graph_multi_asset(
    outs={name: table_out(name) for name in TABLE_SCHEMAS},
    check_specs=CHECK_SPECS,
    partitions_def=daily_partitions,
    group_name="transcripts",
    backfill_policy=dg.BackfillPolicy.multi_run(1),  # see whisper_pipeline.defs.landing
)
def transcript_tables(audio_manifest):
    """Preprocess shards on CPU in parallel, transcribe them in micro-batches, publish tables."""
    shards = plan_shards(audio_manifest)
    transcribed = shards.map(lambda shard: transcribe_shard(preprocess_shard(shard)))
    # Every output of write_tables: the four tables and one per asset check.
    return write_tables(audio_manifest, transcribed.collect())._asdict()
