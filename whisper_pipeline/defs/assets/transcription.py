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
)
from whisper_pipeline.core.schema import (
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
    remove_stale_runs,
    write_results,
)
from whisper_pipeline.defs.assets.publishing import TRANSCRIBE_OP_NAME, write_tables
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

CPU_MIN_AUDIO_S_PER_SHARD = 1800.0
"""Least audio per shard in seconds when the model runs on CPU: most partitions are one shard,
as each extra shard costs two step processes and a model load (``benchmarks/RESULTS.md``,
"Shard size on CPU")."""

GPU_MIN_AUDIO_S_PER_SHARD = 300.0
"""Least audio per shard in seconds when the model runs on CUDA, where shards preprocess in
parallel to keep the GPU busy."""


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
"""A wave's size in first-pass batches of full 30 s windows (``core.staging.chunk_waves``): the
unit a transcription step reads and holds, at most two at once
(``BatchTranscriber.transcribe_waves``). Counted in frames, not chunks, so a wave's feature
memory is bounded whatever the chunks' lengths (docs/ARCHITECTURE.md, "core/staging.py")."""


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
    name=TRANSCRIBE_OP_NAME,
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
    """Preprocess shards on CPU in parallel, transcribe them in micro-batches, publish tables."""
    shards = plan_shards(audio_manifest)
    transcribed = shards.map(lambda shard: transcribe_shard(preprocess_shard(shard)))
    # Every output of write_tables: the four tables and one per asset check.
    return write_tables(audio_manifest, transcribed.collect())._asdict()
