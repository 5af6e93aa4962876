"""Run metrics reported in materialization metadata: peak memory, accelerator idle time, preview.

Reads the Dagster instance's event log (``step_intervals``) but defines no assets or ops, so
the transcription assets and the benchmarks share one implementation.
"""

import math
import resource

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core.schema import STATUS_FAILED, STATUS_NO_SPEECH, STATUS_OK
from whisper_pipeline.core.staging import GroupTranscripts, ShardFeatures

STEP_ENDS = (
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
)
"""Event types that end a step attempt (``step_intervals``)."""

STEP_BEGINS = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED)
"""Event types that begin a step attempt: a retried attempt begins with ``STEP_RESTARTED``."""


def cpu_usage() -> tuple[float, float, int]:
    """This process's CPU time so far, all threads: ``(user s, system s, minor page faults)``.

    From ``getrusage(RUSAGE_SELF)``. System time and minor page faults show how much of a step's
    CPU went to the kernel, e.g. faulting in fresh buffers (``core.memory``).
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def cpu_metadata(before: tuple[float, float, int], after: tuple[float, float, int]) -> dict:
    """Step metadata from two ``cpu_usage`` samples: the CPU spent between them.

    Returns:
        ``cpu_user_seconds``, ``cpu_system_seconds`` (both summed over threads, so up to the
        wall time times the cores used) and ``minor_page_faults``.
    """
    return {
        "cpu_user_seconds": round(after[0] - before[0], 2),
        "cpu_system_seconds": round(after[1] - before[1], 2),
        "minor_page_faults": after[2] - before[2],
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``getrusage``; Linux reports KiB).

    A step process forked from the executor's forkserver starts from the forkserver's size, so
    this includes the preloaded modules.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_intervals(instance: dg.DagsterInstance, run_id: str, op_name: str) -> list[tuple]:
    """Wall-clock ``(start, end)`` epoch seconds of each attempt of an op's steps in a run.

    Read from the run's event log (``STEP_START``, or ``STEP_RESTARTED`` for a retried attempt,
    to success, failure or retry), so it covers steps that ran in other processes and every
    attempt of a retried step. A step still running has no interval.
    """
    records = instance.all_logs(run_id, of_type={*STEP_BEGINS, *STEP_ENDS})
    starts: dict[str, float] = {}
    intervals = []
    for record in sorted(records, key=lambda r: r.timestamp):
        step = record.step_key or ""
        if step.rsplit(".", 1)[-1].split("[", 1)[0] != op_name:
            continue
        if record.dagster_event.event_type in STEP_BEGINS:
            starts[step] = record.timestamp
        elif step in starts:
            intervals.append((starts.pop(step), record.timestamp))
    return intervals


def idle_metrics(intervals: list[tuple], busy_s: float, run_started: float | None = None) -> dict:
    """How much of the transcription window the accelerator was not decoding.

    The window runs from the first transcription step's start to the last one's end. Idle
    time is the window less ``busy_s`` (seconds with a batch in the model, summed over steps):
    step start-up, the model load, waiting for preprocessing (transcription steps start with
    the preprocessing steps), feature reads and result writes.
    What comes before the window (the manifest, planning, the first shard's preprocessing) is
    reported apart, as the start delay.

    Args:
        intervals: ``(start, end)`` epoch seconds of the transcription steps.
        busy_s: Seconds with a batch in the model, summed over those steps.
        run_started: Epoch seconds the run started (``RunStats.start_time``), if known.

    Returns:
        ``transcription_window_seconds``, ``transcription_idle_fraction`` (0 to 1),
        ``transcription_wait_seconds`` (window time with no transcription step running at all)
        and, given ``run_started``, ``transcription_start_delay_seconds`` (run start to the
        first transcription step's start); empty when there were no steps.
    """
    if not intervals:
        return {}
    first_start = min(start for start, _ in intervals)
    window = max(end for _, end in intervals) - first_start
    covered, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return {
        "transcription_window_seconds": round(window, 2),
        "transcription_idle_fraction": round(max(0.0, 1 - busy_s / window), 4) if window else 0.0,
        "transcription_wait_seconds": round(window - covered, 2),
        **(
            {"transcription_start_delay_seconds": round(first_start - run_started, 2)}
            if run_started is not None
            else {}
        ),
    }


def preview_markdown(transcripts: pa.Table, rows: int = 5) -> str:
    """A Markdown table of the first ``rows`` transcripts: file id, duration and text.

    Text is cut to 120 characters and its ``|`` escaped, so the table stays one line per row.
    """
    lines = ["| file_id | duration_s | text |", "|---|---|---|"]
    for row in transcripts.slice(0, rows).to_pylist():
        text = row["text"][:120].replace("|", "\\|")
        lines.append(f"| {row['file_id']} | {row['duration_s']:.1f} | {text} |")
    return "\n".join(lines)


def audio_files_metadata(files: pa.Table, transcripts: pa.Table) -> dict:
    """``audio_files`` materialization metadata: files by status, hours of the files not failed.

    Args:
        files: The partition's ``audio_files`` table.
        transcripts: Its ``transcripts`` table (decoded durations of the files not failed).
    """
    statuses = files.column("status").to_pylist()
    durations = transcripts.column("duration_s").to_pylist()
    return {
        "files": len(statuses),
        "files_ok": statuses.count(STATUS_OK),
        "files_no_speech": statuses.count(STATUS_NO_SPEECH),
        "files_failed": statuses.count(STATUS_FAILED),
        "audio_hours": round(sum(durations) / 3600, 4),
    }


def transcripts_metadata(
    transcripts: pa.Table,
    shards: list[ShardFeatures],
    groups: list[GroupTranscripts],
    contents: int,
) -> dict:
    """``transcripts`` materialization metadata: hours, this run's work and speed, memory.

    Args:
        transcripts: The partition's ``transcripts`` table.
        shards: The shards this run preprocessed (none when every content was cached).
        groups: The transcription steps' summaries.
        contents: Distinct readable contents in the partition (cached or transcribed now).

    Returns:
        Audio and speech hours, hours transcribed in this run, contents taken from the cache,
        the real-time factor (transcription seconds per audio second), seconds per phase, the
        model's busy seconds, the first batch's delay, generate calls, peak RSS of the steps,
        the shard and transcription step counts. The caller adds the idle metrics
        (``idle_metrics``), the model (``ModelSpec.metadata``) and a preview.
    """
    audio_s = sum(s.audio_s for s in shards)
    transcribe_s = sum(g.transcribe_s for g in groups)
    first = [g.first_batch_s for g in groups if g.first_batch_s is not None]
    return {
        "audio_hours": round(sum(transcripts.column("duration_s").to_pylist()) / 3600, 4),
        "speech_hours": round(sum(transcripts.column("speech_duration_s").to_pylist()) / 3600, 4),
        "audio_hours_transcribed_this_run": round(audio_s / 3600, 4),
        "contents_from_cache": contents - sum(len(s.plan.files) for s in shards),
        "real_time_factor": round(transcribe_s / audio_s, 4) if audio_s else 0.0,
        "transcribe_seconds": round(transcribe_s, 2),
        "model_busy_seconds": round(sum(g.busy_s for g in groups), 2),
        **({"first_batch_seconds": round(min(first), 2)} if first else {}),
        "preprocess_seconds": round(sum(s.preprocess_s for s in shards), 2),
        "model_load_seconds": round(sum(g.model_load_s for g in groups), 2),
        "generate_calls": sum(g.generate_calls for g in groups),
        "word_alignment_seconds": round(sum(g.align_s for g in groups), 2),
        "preprocess_peak_rss_mib": round(max((s.peak_rss_mib for s in shards), default=0)),
        "transcribe_peak_rss_mib": round(max((g.peak_rss_mib for g in groups), default=0)),
        "shards": len(shards),
        "transcription_steps": len(groups),
    }
