import math
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow as pa

from whisper_pipeline.assets.manifest import STORAGE_RETRY
from whisper_pipeline.core import audio
from whisper_pipeline.core.batching import BatchTranscriber, ChunkInput
from whisper_pipeline.core.chunking import log_mel, split_speech
from whisper_pipeline.core.schema import (
    AUDIO_FILES,
    STATUS_FAILED,
    STATUS_NO_SPEECH,
    STATUS_OK,
    TRANSCRIPT_SEGMENTS,
    TRANSCRIPTS,
)
from whisper_pipeline.partitions import daily_partitions
from whisper_pipeline.resources import StorageResource, WhisperModelResource

ACCELERATOR_TAG_KEY = "whisper_pipeline/accelerator"
"""Op tag the executor's ``tag_concurrency_limits`` holds to one step at a time per run."""

GPU_POOL = "gpu"
"""Dagster pool of the transcription op; ``dagster.yaml`` limits it to one slot across runs."""

SHARD_FILES = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("speech_duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
SHARD_CHUNKS = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("frame_offset", pa.int64()),
        ("n_frames", pa.int32()),
        ("speech_starts", pa.list_(pa.int64())),
        ("speech_ends", pa.list_(pa.int64())),
    ]
)
SHARD_SEGMENTS = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("text", pa.string()),
        ("avg_logprob", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("compression_ratio", pa.float64()),
        ("temperature", pa.float64()),
    ]
)
SHARD_CHUNK_RESULTS = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("n_frames", pa.int32()),
        ("language", pa.string()),
        ("language_probability", pa.float64()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class ShardPlan:
    """Files (unique contents) one preprocessing step handles; passed between steps, small.

    Attributes:
        index: Shard number, from 0.
        run_dir: Staging folder of this run and partition.
        files: ``(content_sha256, path)`` pairs, one per distinct content.
    """

    index: int
    run_dir: str
    files: tuple[tuple[str, str], ...]

    @property
    def shard_dir(self) -> str:
        """This shard's staging folder."""
        return posixpath.join(self.run_dir, f"shard-{self.index:05d}")


@dataclass(frozen=True)
class ShardFeatures:
    """Where a preprocessed shard's chunk features are (features never travel through Dagster).

    Attributes:
        plan: The shard.
        n_mels: Mel bins per feature frame.
        chunks: Number of <=30 s chunks.
        audio_s: Decoded audio in seconds.
        preprocess_s: Wall seconds the step spent decoding, VAD-splitting and featurizing.
    """

    plan: ShardPlan
    n_mels: int
    chunks: int
    audio_s: float
    preprocess_s: float


@dataclass(frozen=True)
class ShardTranscripts:
    """Summary of a transcribed shard; its segments are in ``shard_dir/segments.parquet``.

    Attributes:
        features: The preprocessed shard it came from.
        transcribe_s: Wall seconds of batched decoding (model load excluded).
        model_load_s: Seconds spent loading the model in this step.
        generate_calls: CTranslate2 ``generate`` calls made (fallbacks and seeks included).
        compute_type: Compute type the model ran with.
    """

    features: ShardFeatures
    transcribe_s: float
    model_load_s: float
    generate_calls: int
    compute_type: str


class PlanShardsConfig(dg.Config):
    """How a partition is split for parallel preprocessing.

    Attributes:
        max_shards: Upper bound on shards, hence on preprocessing steps and model loads.
        min_audio_s_per_shard: Fewer shards for small partitions: each shard gets at least this
            much audio (seconds), since every step costs a process start.
    """

    max_shards: int = 4
    min_audio_s_per_shard: float = 300.0


def plan(files: list[tuple[str, str, float]], shards: int) -> list[list[tuple[str, str]]]:
    """Split files into ``shards`` groups of about equal audio duration.

    Longest-processing-time-first greedy (Graham 1969): each file, longest first, goes to the
    group with the least audio so far; within 4/3 of the optimum makespan.

    Args:
        files: ``(content_sha256, path, duration_s)`` triples.
        shards: Number of groups (>= 1).

    Returns:
        Non-empty groups of ``(content_sha256, path)``.
    """
    groups: list[list[tuple[str, str]]] = [[] for _ in range(shards)]
    loads = [0.0] * shards
    for sha, path, duration in sorted(files, key=lambda f: f[2], reverse=True):
        target = loads.index(min(loads))
        groups[target].append((sha, path))
        loads[target] += max(duration, 1e-3)
    return [group for group in groups if group]


@dg.op(out=dg.DynamicOut(ShardPlan), retry_policy=STORAGE_RETRY)
def plan_shards(
    context: dg.OpExecutionContext,
    config: PlanShardsConfig,
    storage: StorageResource,
    audio_manifest: pa.Table,
):
    """Group the partition's readable files, one entry per distinct content, into shards."""
    store = storage.get()
    run_dir = store.staging_dir(context.partition_key, context.run_id)
    distinct: dict[str, tuple[str, str, float]] = {}
    for row in audio_manifest.to_pylist():
        if row["status"] != STATUS_OK or row["content_sha256"] in distinct:
            continue
        path = store.fs._strip_protocol(row["source_uri"])
        # Unknown durations (raw AAC) are estimated from size at 128 kbit/s for balancing only.
        duration = row["duration_s"] or row["size_bytes"] / 16000
        distinct[row["content_sha256"]] = (row["content_sha256"], path, duration)
    total = sum(f[2] for f in distinct.values())
    shards = max(1, min(config.max_shards, math.ceil(total / config.min_audio_s_per_shard)))
    groups = plan(list(distinct.values()), shards)
    context.log.info(
        "%d distinct files, %.0f s of audio, in %d shards", len(distinct), total, len(groups)
    )
    for index, group in enumerate(groups):
        yield dg.DynamicOutput(
            ShardPlan(index, run_dir, tuple(group)), mapping_key=f"shard_{index:05d}"
        )


@dg.op(retry_policy=STORAGE_RETRY, tags={ACCELERATOR_TAG_KEY: "cpu"})
def preprocess_shard(
    context: dg.OpExecutionContext,
    shard: ShardPlan,
    storage: StorageResource,
    whisper: WhisperModelResource,
) -> ShardFeatures:
    """Decode, downmix, resample to 16 kHz, peak-normalize, VAD-split and featurize a shard.

    Writes to the shard's staging folder: ``features.f32`` (every chunk's log-mel frames,
    float32, row-major ``(frames, n_mels)``), ``chunks.parquet`` (where each chunk's frames are,
    and its speech regions in file samples) and ``files.parquet`` (per file: decoded duration,
    speech found, and ``failed``/``no_speech`` with a reason).
    """
    started = time.perf_counter()
    store = storage.get()
    extractor = whisper.feature_extractor()
    files, chunks = [], []
    frame_offset = 0
    audio_s = 0.0
    features_path = posixpath.join(shard.shard_dir, "features.f32")
    store.fs.makedirs(shard.shard_dir, exist_ok=True)
    with store.fs.open(features_path, "wb") as features_out:
        for sha, path in shard.files:
            try:
                with store.fs.open(path, "rb") as handle:
                    waveform = audio.decode(handle)
            except audio.AudioError as error:
                files.append(_file_row(sha, None, 0.0, STATUS_FAILED, str(error)))
                continue
            duration = waveform.shape[0] / audio.SAMPLE_RATE
            audio_s += duration
            speech = split_speech(audio.normalize_peak(waveform))
            del waveform
            speech_s = sum(chunk.duration_s for chunk in speech)
            status = STATUS_OK if speech else STATUS_NO_SPEECH
            files.append(_file_row(sha, duration, speech_s, status, ""))
            for chunk in speech:
                features = log_mel(extractor, chunk.audio)
                features_out.write(np.ascontiguousarray(features.T, dtype=np.float32).tobytes())
                chunks.append(
                    {
                        "content_sha256": sha,
                        "chunk_index": chunk.index,
                        "frame_offset": frame_offset,
                        "n_frames": features.shape[1],
                        "speech_starts": list(chunk.speech_starts),
                        "speech_ends": list(chunk.speech_ends),
                    }
                )
                frame_offset += features.shape[1]
    store.write_parquet(
        posixpath.join(shard.shard_dir, "chunks.parquet"),
        pa.Table.from_pylist(chunks, schema=SHARD_CHUNKS),
    )
    store.write_parquet(
        posixpath.join(shard.shard_dir, "files.parquet"),
        pa.Table.from_pylist(files, schema=SHARD_FILES),
    )
    elapsed = time.perf_counter() - started
    context.log.info(
        "shard %d: %d files, %.1f s audio -> %d chunks in %.1f s",
        shard.index,
        len(shard.files),
        audio_s,
        len(chunks),
        elapsed,
    )
    return ShardFeatures(shard, extractor.mel_filters.shape[0], len(chunks), audio_s, elapsed)


def _file_row(sha: str, duration, speech_s: float, status: str, error: str) -> dict:
    return {
        "content_sha256": sha,
        "duration_s": duration,
        "speech_duration_s": speech_s,
        "status": status,
        "error": error,
    }


def load_chunk_inputs(store, shard: ShardFeatures) -> list[ChunkInput]:
    """Read a preprocessed shard back as model inputs keyed ``(content_sha256, chunk_index)``."""
    shard_dir = shard.plan.shard_dir
    chunks = store.read_parquet(posixpath.join(shard_dir, "chunks.parquet")).to_pylist()
    raw = store.fs.cat_file(posixpath.join(shard_dir, "features.f32"))
    frames = np.frombuffer(raw, dtype=np.float32).reshape(-1, shard.n_mels)
    return [
        ChunkInput(
            key=(row["content_sha256"], row["chunk_index"]),
            features=frames[row["frame_offset"] : row["frame_offset"] + row["n_frames"]].T,
            speech_starts=tuple(row["speech_starts"]),
            speech_ends=tuple(row["speech_ends"]),
        )
        for row in chunks
    ]


@dg.op(
    retry_policy=STORAGE_RETRY,
    pool=GPU_POOL,
    tags={ACCELERATOR_TAG_KEY: "gpu", "dagster/priority": "10"},
)
def transcribe_shard(
    context: dg.OpExecutionContext,
    shard: ShardFeatures,
    storage: StorageResource,
    whisper: WhisperModelResource,
) -> ShardTranscripts:
    """Transcribe a shard's chunks in cross-file micro-batches; one model load per step.

    Runs one at a time per run (executor tag limit) and across runs (pool ``gpu``), and ahead
    of waiting preprocessing steps (``dagster/priority``), so the accelerator is kept busy while
    CPU steps prepare later shards. Writes ``segments.parquet`` and ``chunk_results.parquet``.
    """
    store = storage.get()
    started = time.perf_counter()
    model = whisper.load()
    loaded = time.perf_counter()
    inputs = load_chunk_inputs(store, shard)
    transcriber = BatchTranscriber(model, whisper.decoding_options())
    results = transcriber.transcribe(inputs)
    finished = time.perf_counter()
    segments, chunk_rows = [], []
    frames = {chunk.key: chunk.features.shape[-1] for chunk in inputs}
    for result in results:
        sha, index = result.key
        chunk_rows.append(
            {
                "content_sha256": sha,
                "chunk_index": index,
                "n_frames": frames[result.key],
                "language": result.language,
                "language_probability": result.language_probability,
                "error": result.error,
            }
        )
        for segment in result.segments:
            segments.append(
                {
                    "content_sha256": sha,
                    "chunk_index": index,
                    "start_s": segment.start,
                    "end_s": segment.end,
                    "text": segment.text,
                    "avg_logprob": segment.avg_logprob,
                    "no_speech_prob": segment.no_speech_prob,
                    "compression_ratio": segment.compression_ratio,
                    "temperature": segment.temperature,
                }
            )
    shard_dir = shard.plan.shard_dir
    store.write_parquet(
        posixpath.join(shard_dir, "segments.parquet"),
        pa.Table.from_pylist(segments, schema=SHARD_SEGMENTS),
    )
    store.write_parquet(
        posixpath.join(shard_dir, "chunk_results.parquet"),
        pa.Table.from_pylist(chunk_rows, schema=SHARD_CHUNK_RESULTS),
    )
    decode_s = finished - loaded
    context.log.info(
        "shard %d: %d chunks, %.1f s audio in %.1f s (RTF %.3f), %d generate calls",
        shard.plan.index,
        len(inputs),
        shard.audio_s,
        decode_s,
        decode_s / max(shard.audio_s, 1e-9),
        transcriber.generate_calls,
    )
    return ShardTranscripts(
        shard,
        decode_s,
        loaded - started,
        transcriber.generate_calls,
        whisper.resolved_compute_type(),
    )


def _read_shard_tables(store, shards: list[ShardTranscripts]) -> dict[str, pa.Table]:
    names = ("files", "segments", "chunk_results")
    parts: dict[str, list[pa.Table]] = {name: [] for name in names}
    for shard in shards:
        for name in names:
            path = posixpath.join(shard.features.plan.shard_dir, f"{name}.parquet")
            parts[name].append(store.read_parquet(path))
    schemas = {
        "files": SHARD_FILES,
        "segments": SHARD_SEGMENTS,
        "chunk_results": SHARD_CHUNK_RESULTS,
    }
    return {
        name: pa.concat_tables(parts[name]) if parts[name] else schemas[name].empty_table()
        for name in names
    }


def build_tables(
    manifest: pa.Table,
    shard_tables: dict[str, pa.Table],
    model: str,
    compute_type: str,
    beam_size: int,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Join the manifest with shard results into the three published tables.

    Every manifest row yields one ``audio_files`` row with its final status: ``failed`` (probe,
    decode or model error, with the reason), ``no_speech`` (VAD or the model found none) or
    ``ok``. Files with status ok or no_speech get one ``transcripts`` row (empty text for
    no_speech); files with identical content share the one transcription of that content.

    Returns:
        ``(audio_files, transcripts, transcript_segments)`` in the schemas of ``core.schema``.
    """
    now = datetime.now(UTC)
    file_info = {row["content_sha256"]: row for row in shard_tables["files"].to_pylist()}
    chunk_info = defaultdict(list)
    for row in shard_tables["chunk_results"].to_pylist():
        chunk_info[row["content_sha256"]].append(row)
    segments_by_sha = defaultdict(list)
    for row in shard_tables["segments"].to_pylist():
        segments_by_sha[row["content_sha256"]].append(row)

    files, transcripts, segments = [], [], []
    for row in manifest.to_pylist():
        row = dict(row, processed_at=now)
        sha = row["content_sha256"]
        info = file_info.get(sha)
        if row["status"] == STATUS_FAILED:
            files.append(row)
            continue
        if info is None:
            row.update(status=STATUS_FAILED, error="file was not preprocessed")
            files.append(row)
            continue
        if info["duration_s"] is not None:
            row["duration_s"] = info["duration_s"]
        errors = [c for c in chunk_info[sha] if c["error"]]
        if info["status"] == STATUS_FAILED:
            row.update(status=STATUS_FAILED, error=info["error"])
        elif errors:
            first = min(errors, key=lambda c: c["chunk_index"])
            row.update(
                status=STATUS_FAILED,
                error=f"model failed on chunk {first['chunk_index']}: {first['error']}",
            )
        file_segments = sorted(segments_by_sha[sha], key=lambda s: (s["chunk_index"], s["start_s"]))
        if row["status"] != STATUS_FAILED:
            row["status"] = STATUS_OK if file_segments else STATUS_NO_SPEECH
        files.append(row)
        if row["status"] == STATUS_FAILED:
            continue
        for index, segment in enumerate(file_segments):
            segments.append(
                {
                    "file_id": row["file_id"],
                    "segment_index": index,
                    **{k: segment[k] for k in TRANSCRIPT_SEGMENTS.names if k in segment},
                }
            )
        chunks = chunk_info[sha]
        main = max(chunks, key=lambda c: c["n_frames"]) if chunks else None
        transcripts.append(
            {
                "file_id": row["file_id"],
                "content_sha256": sha,
                "text": " ".join(s["text"] for s in file_segments),
                "language": main["language"] if main else "",
                "language_probability": main["language_probability"] if main else 0.0,
                "duration_s": row["duration_s"] or 0.0,
                "speech_duration_s": info["speech_duration_s"],
                "segment_count": len(file_segments),
                "model": model,
                "compute_type": compute_type,
                "beam_size": beam_size,
                "transcribed_at": now,
            }
        )
    return (
        pa.Table.from_pylist(files, schema=AUDIO_FILES),
        pa.Table.from_pylist(transcripts, schema=TRANSCRIPTS),
        pa.Table.from_pylist(segments, schema=TRANSCRIPT_SEGMENTS),
    )


def _preview(transcripts: pa.Table, rows: int = 5) -> str:
    lines = ["| file_id | duration_s | text |", "|---|---|---|"]
    for row in transcripts.slice(0, rows).to_pylist():
        text = row["text"][:120].replace("|", "\\|")
        lines.append(f"| {row['file_id']} | {row['duration_s']:.1f} | {text} |")
    return "\n".join(lines)


@dg.op(
    out={
        # Graph-backed assets take the IO manager from the op's outputs.
        "audio_files": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        "transcripts": dg.Out(pa.Table, io_manager_key="table_io_manager"),
        "transcript_segments": dg.Out(pa.Table, io_manager_key="table_io_manager"),
    },
    retry_policy=STORAGE_RETRY,
)
def write_tables(
    context: dg.OpExecutionContext,
    storage: StorageResource,
    whisper: WhisperModelResource,
    audio_manifest: pa.Table,
    shards: list[ShardTranscripts],
):
    """Assemble the partition's three tables; the IO manager replaces each one atomically."""
    store = storage.get()
    compute_type = shards[0].compute_type if shards else whisper.resolved_compute_type()
    files, transcripts, segments = build_tables(
        audio_manifest,
        _read_shard_tables(store, shards),
        whisper.model_name,
        compute_type,
        whisper.beam_size,
    )
    statuses = files.column("status").to_pylist()
    audio_s = sum(s.features.audio_s for s in shards)
    transcribe_s = sum(s.transcribe_s for s in shards)
    speech_s = sum(transcripts.column("speech_duration_s").to_pylist())
    yield dg.Output(
        files,
        "audio_files",
        metadata={
            "files": len(statuses),
            "files_ok": statuses.count(STATUS_OK),
            "files_no_speech": statuses.count(STATUS_NO_SPEECH),
            "files_failed": statuses.count(STATUS_FAILED),
            "audio_hours": round(audio_s / 3600, 4),
        },
    )
    yield dg.Output(
        transcripts,
        "transcripts",
        metadata={
            "audio_hours": round(audio_s / 3600, 4),
            "speech_hours": round(speech_s / 3600, 4),
            "real_time_factor": round(transcribe_s / max(audio_s, 1e-9), 4),
            "transcribe_seconds": round(transcribe_s, 2),
            "preprocess_seconds": round(sum(s.features.preprocess_s for s in shards), 2),
            "model_load_seconds": round(sum(s.model_load_s for s in shards), 2),
            "generate_calls": sum(s.generate_calls for s in shards),
            "shards": len(shards),
            "model": whisper.model_name,
            "compute_type": compute_type,
            "beam_size": whisper.beam_size,
            "preview": dg.MetadataValue.md(_preview(transcripts)),
        },
    )
    yield dg.Output(segments, "transcript_segments", metadata={"files": transcripts.num_rows})
    if shards:
        store.fs.rm(shards[0].features.plan.run_dir, recursive=True)


@dg.graph_multi_asset(
    outs={
        "audio_files": dg.AssetOut(kinds={"parquet"}),
        "transcripts": dg.AssetOut(kinds={"parquet"}),
        "transcript_segments": dg.AssetOut(kinds={"parquet"}),
    },
    partitions_def=daily_partitions,
    group_name="transcripts",
)
def transcript_tables(audio_manifest):
    """Preprocess shards on CPU in parallel, transcribe them in micro-batches, publish tables."""
    shards = plan_shards(audio_manifest)
    transcribed = shards.map(lambda shard: transcribe_shard(preprocess_shard(shard)))
    audio_files, transcripts, transcript_segments = write_tables(
        audio_manifest, transcribed.collect()
    )
    return {
        "audio_files": audio_files,
        "transcripts": transcripts,
        "transcript_segments": transcript_segments,
    }
