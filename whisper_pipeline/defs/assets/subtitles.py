"""Subtitle exports: one SubRip (``.srt``) and one WebVTT (``.vtt``) file per transcribed file."""

import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core.schema import STATUS_OK
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.core.subtitles import build_cues, export_stems, to_srt, to_vtt
from whisper_pipeline.defs.partitions import daily_partitions
from whisper_pipeline.execution.placement import CPU_OP_TAGS
from whisper_pipeline.resources import StorageResource
from whisper_pipeline.resources.storage import STORAGE_RETRY

SUBTITLE_FORMATS = {".srt": to_srt, ".vtt": to_vtt}
"""Extension and renderer of each subtitle file written per transcribed file."""

WRITE_THREADS = 8
"""Subtitle files written at once: the work is I/O-bound on object stores."""


def subtitle_dir(store: Storage, partition_key: str) -> str:
    """The partition's subtitle folder: ``exports/subtitles/date=YYYY-MM-DD``."""
    return store.path("exports", "subtitles", f"date={partition_key}")


def rows_by_file(table: pa.Table) -> dict[str, list[dict]]:
    """A table's rows grouped by ``file_id``."""
    grouped = defaultdict(list)
    for row in table.to_pylist():
        grouped[row["file_id"]].append(row)
    return grouped


def remove_stale(store: Storage, folder: str, keep: set[str]) -> list[str]:
    """Remove every file under ``folder`` whose path below it is not in ``keep``.

    Returns:
        The removed paths.
    """
    if not store.fs.exists(folder):
        return []
    prefix = folder.rstrip("/") + "/"
    stale = [
        path
        for path in store.fs.find(folder)
        if path.startswith(prefix) and path[len(prefix) :] not in keep
    ]
    for path in stale:
        store.fs.rm(path)
    return stale


@dg.asset(
    partitions_def=daily_partitions,
    ins={
        name: dg.AssetIn(input_manager_key="table_io_manager")
        for name in ("audio_files", "transcript_segments", "transcript_words")
    },
    group_name="exports",
    kinds={"srt", "vtt"},
    retry_policy=STORAGE_RETRY,
    op_tags=CPU_OP_TAGS,
    backfill_policy=dg.BackfillPolicy.multi_run(1),  # docs/ARCHITECTURE.md, "Backfill policy"
)
def subtitle_files(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    audio_files: pa.Table,
    transcript_segments: pa.Table,
    transcript_words: pa.Table,
) -> dg.MaterializeResult:
    """Subtitles of every transcribed file: ``exports/subtitles/date=YYYY-MM-DD/<name>.srt|.vtt``.

    Each file with status ok and at least one segment with text gets one ``.srt`` and one
    ``.vtt`` (cue rules in ``whisper_pipeline.core.subtitles``; names from
    ``export_stems``: a readable slug of the relative path plus part of the file id). Every
    file is replaced atomically; then every other file in the folder (subtitles of files deleted
    or no longer transcribed) is removed, so the folder holds exactly this run's subtitles.
    """
    store = storage.get()
    folder = subtitle_dir(store, context.partition_key)
    segments = rows_by_file(transcript_segments)
    words = rows_by_file(transcript_words)
    files = [
        row
        for row in audio_files.to_pylist()
        if row["status"] == STATUS_OK and segments.get(row["file_id"])
    ]
    stems = export_stems((row["file_id"], row["relative_path"]) for row in files)
    outputs: dict[str, bytes] = {}
    cue_count = 0
    for row in files:
        cues = build_cues(
            segments[row["file_id"]], words.get(row["file_id"], ()), row["duration_s"]
        )
        if not cues:
            continue
        cue_count += len(cues)
        for extension, render in SUBTITLE_FORMATS.items():
            outputs[stems[row["file_id"]] + extension] = render(cues).encode("utf-8")
    store.makedirs(folder)
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(
            pool.map(
                lambda item: store.write_bytes_atomic(posixpath.join(folder, item[0]), item[1]),
                outputs.items(),
            )
        )
    removed = remove_stale(store, folder, set(outputs))
    context.log.info(
        "wrote %d subtitle files (%d cues) for %d transcribed files; removed %d stale files",
        len(outputs),
        cue_count,
        len(outputs) // len(SUBTITLE_FORMATS),
        len(removed),
    )
    return dg.MaterializeResult(
        metadata={
            "files_written": len(outputs),
            "transcribed_files": len(outputs) // len(SUBTITLE_FORMATS),
            "cues": cue_count,
            "stale_files_removed": len(removed),
            "folder": dg.MetadataValue.path(store.uri(folder)),
        }
    )
