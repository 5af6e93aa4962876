import tempfile
import time
from functools import partial

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import N_FRAMES
from whisper_pipeline.core.memory import release_free_memory
from whisper_pipeline.core.preprocess import (
    changed_content,
    preprocess_file,
    single_threaded_blas,
)
from whisper_pipeline.core.progress import Progress
from whisper_pipeline.core.schema import (
    TABLE_DESCRIPTIONS,
    TABLE_SCHEMAS,
)
from whisper_pipeline.core.sharding import (
    balance_shards,
    group_shards,
    pending_files,
    shard_count,
    usable_cores,
)
from whisper_pipeline.core.staging import (
    RUN_ACTIVE,
    RUN_ENDED,
    RUN_UNKNOWN,
    GroupTranscripts,
    ShardFeatures,
    ShardPlan,
    ShardWriter,
    TranscriptionGroup,
    remove_stale_runs,
)
from whisper_pipeline.core.streaming import ResultWriter, StagedChunks
from whisper_pipeline.defs.assets.publishing import (
    PREPROCESS_OP_NAME,
    TRANSCRIBE_OP_NAME,
    write_tables,
)
from whisper_pipeline.defs.checks import (
    CHECK_SPECS,
)
from whisper_pipeline.defs.dead_runs import record_orchestrator
from whisper_pipeline.defs.metrics import (
    cpu_metadata,
    cpu_usage,
    peak_rss_mib,
)
from whisper_pipeline.defs.partitions import daily_partitions
from whisper_pipeline.execution.placement import CPU_OP_TAGS, GPU_OP_TAGS, GPU_POOL
from whisper_pipeline.resources import StorageResource, TranscriberResource
from whisper_pipeline.resources.storage import STORAGE_RETRY, retry_write

MIN_AUDIO_S_PER_SHARD = 300.0
"""Least audio per shard in seconds by default: a shard costs a step process (about 0.2 s to
launch, ``benchmarks/RESULTS.md``, "Step overhead"), and 5 minutes of audio take about a second
to preprocess on one core."""

MAX_AUTO_SHARDS = 16
"""Most shards ``max_shards: 0`` (auto) makes: one per usable core of the planning step's
machine, up to the 16 cores of the GPU machine ``benchmarks/device_check.sh`` targets."""


class PlanShardsConfig(dg.Config):
    """How a partition is split for parallel preprocessing and transcription.

    Attributes:
        max_shards: Upper bound on shards, hence on preprocessing steps; 0 for one per usable
            CPU core of the machine planning them (at most ``MAX_AUTO_SHARDS``).
        min_audio_s_per_shard: Fewer shards for small partitions: each shard gets at least this
            much audio (seconds), since every step costs a process start.
        transcription_steps: Transcription steps the shards are spread over, each a model load
            on an accelerator of its own (the ``gpu`` pool bounds how many run at once); at most
            one per shard. One keeps a partition on one GPU with one model load.
        redo: Transcribe every file again, even those with a cached result for the same
            content, model and options.
    """

    max_shards: int = 0
    min_audio_s_per_shard: float = MIN_AUDIO_S_PER_SHARD
    transcription_steps: int = 1
    redo: bool = False

    def shard_limit(self) -> int:
        """``max_shards``, auto (0) resolved to the usable cores, at most ``MAX_AUTO_SHARDS``."""
        return self.max_shards or min(usable_cores(), MAX_AUTO_SHARDS)


def run_state(instance: dg.DagsterInstance, run_id: str) -> str:
    """``RUN_ACTIVE``, ``RUN_ENDED`` or ``RUN_UNKNOWN`` for a run id, from the instance."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return RUN_UNKNOWN
    return RUN_ENDED if run.is_finished else RUN_ACTIVE


@dg.op(
    out={"shards": dg.DynamicOut(ShardPlan), "groups": dg.DynamicOut(TranscriptionGroup)},
    retry_policy=STORAGE_RETRY,
    tags=CPU_OP_TAGS,
)
def plan_shards(
    context: dg.OpExecutionContext,
    config: PlanShardsConfig,
    storage: StorageResource,
    whisper: TranscriberResource,
    audio_manifest: pa.Table,
):
    """Group the readable files still to transcribe into shards, and the shards into groups.

    One entry per distinct content; contents with a cached result for the same model and
    options are skipped (unless ``redo``): a re-run, or a run after a crash, only does the work
    that is missing. Each shard is preprocessed by a step of its own (output ``shards``); each
    group of shards is transcribed by one step (output ``groups``) that reads them while they
    are preprocessed.
    """
    if config.max_shards < 0 or config.min_audio_s_per_shard < 0:
        raise dg.Failure(
            f"invalid plan_shards config: max_shards must be >= 0 (got {config.max_shards}; 0 for"
            f" auto) and min_audio_s_per_shard >= 0 (got {config.min_audio_s_per_shard})",
            allow_retries=False,
        )
    if config.transcription_steps < 1:
        raise dg.Failure(
            f"invalid plan_shards config: transcription_steps must be >= 1 (got "
            f"{config.transcription_steps})",
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
    shards = shard_count(total, config.min_audio_s_per_shard, config.shard_limit())
    groups = balance_shards(pending, shards) if pending else []
    plans = [
        ShardPlan(index, run_dir, spec.cache_key, tuple(
            (f.content_sha256, f.path, f.duration_s) for f in group
        ))
        for index, group in enumerate(groups)
    ]  # fmt: skip
    steps = group_shards(plans, config.transcription_steps)
    context.log.info(
        "%d distinct contents to transcribe (%.0f s of audio) in %d shards, %d transcription"
        " steps; %d already cached",
        len(pending),
        total,
        len(plans),
        len(steps),
        skipped,
    )
    for plan in plans:
        yield dg.DynamicOutput(plan, output_name="shards", mapping_key=f"shard_{plan.index:05d}")
    for index, members in enumerate(steps):
        group = TranscriptionGroup(index, run_dir, spec.cache_key, tuple(members), config.redo)
        yield dg.DynamicOutput(group, output_name="groups", mapping_key=f"group_{index:05d}")


@dg.op(retry_policy=STORAGE_RETRY, tags=CPU_OP_TAGS)
def preprocess_shard(
    context: dg.OpExecutionContext,
    shard: ShardPlan,
    storage: StorageResource,
    whisper: TranscriberResource,
) -> ShardFeatures:
    """Decode, downmix, resample to 16 kHz, VAD-split and featurize a shard.

    A file that cannot be decoded, decodes to no samples, or decodes to much less than its
    header declares (a truncated upload) is recorded as failed with the reason. Memory does not
    grow with a file's length (``core.preprocess``); the step's peak RSS is in its output
    metadata. Writes the shard's three staging files (``core.staging``).
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
    with single_threaded_blas(), ShardWriter(store, shard.shard_dir) as writer, progress:
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
"""A wave's size in first-pass batches of full 30 s windows (``core.streaming.StagedChunks``): the
unit a transcription step reads and holds, at most two at once
(``BatchTranscriber.transcribe_waves``). Counted in frames, not chunks, so a wave's feature
memory is bounded whatever the chunks' lengths (docs/ARCHITECTURE.md, "core/staging.py")."""


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


def failed_shards(context: dg.OpExecutionContext, group: TranscriptionGroup) -> set[int]:
    """Indices of the group's shards whose preprocessing step failed for good in this run.

    From the run's event log: a ``STEP_FAILURE`` (a step that will be retried reports
    ``STEP_UP_FOR_RETRY`` instead), whichever process or pod ran it.
    """
    wanted = {
        f"{PREPROCESS_OP_NAME}[shard_{shard.index:05d}]": shard.index for shard in group.shards
    }
    records = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    return {
        wanted[step]
        for step in (record.step_key.rsplit(".", 1)[-1] for record in records if record.step_key)
        if step in wanted
    }


@dg.op(
    retry_policy=STORAGE_RETRY,
    name=TRANSCRIBE_OP_NAME,
    pool=GPU_POOL,
    tags=GPU_OP_TAGS,
)
def transcribe_shards(
    context: dg.OpExecutionContext,
    group: TranscriptionGroup,
    storage: StorageResource,
    whisper: TranscriberResource,
) -> GroupTranscripts:
    """Transcribe a group of shards while they are preprocessed, in cross-file micro-batches.

    Starts with the group's preprocessing steps and loads the model while they decode; it then
    reads each shard's parts as they are committed (``core.streaming.StagedChunks``), so the
    first batch reaches the model within about a second of the first chunks, and decoding
    overlaps preprocessing. One model load per step. Runs one at a time per run (executor tag
    limit) and across runs (pool ``gpu``). Each content's result is written as soon as its last
    chunk is decoded: to the result cache, or, when it failed, to the run's staging folder (so
    the next run tries it again). A content already cached (a retried step, a re-executed run)
    is not decoded again, unless ``plan_shards`` was told to ``redo``.

    Raises:
        dagster.Failure: A shard's preprocessing step failed; the results of every content
            transcribed are written first, so a re-run does only the rest.
    """
    started = time.monotonic()
    warn_unlimited_pool(context)
    store = storage.get()
    declared = {sha: duration or 0.0 for shard in group.shards for sha, _, duration in shard.files}
    contents = set(declared)
    cached = set() if group.redo else store.cached_contents(group.options_key) & contents
    transcriber = whisper.transcriber()
    loaded = time.monotonic()
    n_mels = whisper.feature_extractor().mel_filters.shape[0]
    usage = cpu_usage()
    writer = ResultWriter(
        store,
        group.run_dir,
        group.options_key,
        cached,
        partial(retry_write, log=context.log.warning),
    )
    progress = Progress(
        f"group {group.index} transcription",
        len(contents),
        sum(declared.values()),
        unit="files",
        log=context.log.info,
    )
    if cached:
        context.log.info("%d contents already cached, not transcribed again", len(cached))
    with tempfile.TemporaryDirectory(prefix="whisper-pipeline-") as local_dir, progress:
        progress.advance(len(cached), sum(declared[sha] for sha in cached))
        staged = StagedChunks(
            store,
            {shard.index: shard.shard_dir for shard in group.shards},
            n_mels,
            wave_frames(whisper),
            local_dir,
            skip=cached,
            failed_shards=partial(failed_shards, context, group),
        )
        try:
            for done in transcriber.transcribe_waves(staged.waves()):
                writer.add(done)
                written = writer.flush_complete(staged)
                progress.advance(len(written), sum(declared[r["content_sha256"]] for r in written))
                release_free_memory()  # the heap must not grow with the chunks done (core.memory)
            written = writer.flush_complete(staged)  # files without chunks (failed, no speech)
            progress.advance(len(written), sum(declared[r["content_sha256"]] for r in written))
        finally:
            writer.close()
    finished = time.monotonic()
    decode_cpu = cpu_metadata(usage, cpu_usage())
    if staged.given_up:
        raise dg.Failure(
            f"preprocessing failed for shards {sorted(staged.given_up)}; the results of the"
            f" {len(writer.written) - len(cached)} contents transcribed were kept, so a re-run"
            " transcribes only the rest",
            allow_retries=False,
        )
    missing = contents - writer.written
    if missing:
        raise dg.Failure(
            f"{len(missing)} contents of finished shards have no result (first: "
            f"{sorted(missing)[0]}): their staged parts are incomplete",
            allow_retries=False,
        )
    decode_s = finished - loaded
    first = transcriber.first_batch_at
    first_batch_s = None if first is None else first - started
    peak = peak_rss_mib()
    context.log.info(
        "group %d: %d shards, %d chunks, %.1f s audio in %.1f s (RTF %.3f), model busy %.1f s,"
        " first batch %s s after the step's start, %d generate calls, peak RSS %.0f MiB",
        group.index,
        len(group.shards),
        len(staged.frames),
        writer.audio_s,
        decode_s,
        decode_s / max(writer.audio_s, 1e-9),
        transcriber.busy_s,
        "-" if first_batch_s is None else f"{first_batch_s:.1f}",
        transcriber.generate_calls,
        peak,
    )
    if transcriber.packing_stopped:
        context.log.info(
            "group %d: window packing stopped (most packed chunks came back out): %s",
            group.index,
            dict(transcriber.unpacked),
        )
    context.add_output_metadata(
        {
            "transcribe_seconds": round(decode_s, 2),
            "model_load_seconds": round(loaded - started, 2),
            "model_busy_seconds": round(transcriber.busy_s, 2),
            **({} if first_batch_s is None else {"first_batch_seconds": round(first_batch_s, 2)}),
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
    return GroupTranscripts(
        group,
        writer.audio_s,
        decode_s,
        loaded - started,
        transcriber.generate_calls,
        peak,
        transcriber.align_s,
        transcriber.busy_s,
        first_batch_s,
    )


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
    backfill_policy=dg.BackfillPolicy.multi_run(1),  # docs/ARCHITECTURE.md, "Backfill policy"
)
def transcript_tables(audio_manifest):
    """Preprocess shards in parallel, transcribe them in micro-batches meanwhile, publish."""
    shards, groups = plan_shards(audio_manifest)
    features = shards.map(preprocess_shard)
    # Transcription steps start with the preprocessing steps and read their shards as they
    # are written (core.streaming), so they take the plans, not the preprocessed shards.
    transcribed = groups.map(transcribe_shards)
    # Every output of write_tables: the four tables and one per asset check.
    return write_tables(audio_manifest, features.collect(), transcribed.collect())._asdict()
