"""Compare four ways of transcribing the same audio with the same Whisper model, and ablations.

Usage (from the repository root)::

    python benchmarks/run.py [--inputs corpus,many-short] [--methods 1,2,3,4,5,6,7,8]
                             [--out benchmarks/out] [--malloc-hugepages]
                             [--limit N] [--short-clips 120] [--batch-size 8] [--repeat 1]
                             [--model DIR] [--device cpu] [--compute-type int8]
                             [--cpu-threads 0] [--num-workers 0]

Every method uses the same CTranslate2 model (the bundled ``tiny.en`` unless ``--model`` names
another model directory), device and compute type, and beam size 5:

1. **faster-whisper sequential**: ``WhisperModel.transcribe(file, beam_size=5)`` in a loop, one
   file after another (the segments generator consumed fully).
2. **faster-whisper batched**: ``BatchedInferencePipeline(model).transcribe(file, beam_size=5,
   batch_size=B)``, still one file at a time; only the chunks of one file share a batch.
3. **pipeline core in-process**: this project's ``core`` modules with no Dagster: every file is
   decoded, VAD-split (VAD input peak-normalized) and featurized, then the chunks of *all* files are
   decoded together by ``BatchTranscriber`` in length-sorted cross-file batches of ``B`` chunks,
   one batch in flight per CTranslate2 worker.
4. **Dagster partition via CLI**: the whole partition materialized with
   ``dagster asset materialize`` (multiprocess executor, manifest asset, sharded preprocessing,
   batched transcription, Parquet tables and asset checks) on a temporary storage root.
5. **core without window packing** (ablation of 3): the same, ``pack_windows=False``: every
   chunk has a 30 s encoder window of its own (with packing, chunks under 10 s from many files
   share windows, ``core.packing``).
6. **Dagster CLI without window packing** (ablation of 4): the same, with the ``whisper``
   resource's ``pack_windows: false`` in run config.
7. **Dagster CLI without huge pages for malloc** (ablation of 4): the same, with
   ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` in the CLI's environment, which the executor then
   leaves as it is (by default it gives its step processes ``glibc.malloc.hugetlb=1``,
   ``core.memory.hugepage_malloc_tunables``).
8. **faster-whisper batched across files**: every file decoded; a file of up to 30 s is one
   clip, a longer one's speech (faster-whisper's ``get_speech_timestamps`` with
   ``BatchedInferencePipeline``'s defaults) merged into clips of at most 30 s; the files
   concatenated, and the whole transcribed by one
   ``BatchedInferencePipeline.transcribe(audio, clip_timestamps=..., batch_size=B)``: since
   faster-whisper PRs #1345/#1376 each clip is one chunk, neither merged nor re-timed, so
   chunks of many files share batches. Segments go back to the file whose span holds their
   middle.

Methods 3 and 4 run with word timestamps on and window packing on (packing is off by default
since it lost words on real short clips); 5 and 6 are the pipeline's defaults.
The in-process methods (1-3, 5, 8) run in the environment they are given, as a user's own process
would: glibc's default small pages, unless ``--malloc-hugepages`` starts every worker with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which puts the baselines on the same footing.

Each method runs in a fresh worker subprocess, so imports, model load and peak memory are measured
per method. With ``--repeat N`` the methods of an input set run in N rounds (round 1: each method
once, in the order given; then round 2; ...), so a slow spell of a shared machine falls on every
method alike: a row's wall time is the median of its N runs, its speed-up the ratio of medians,
and the notes list every run's wall time. Its WER, memory and metadata are the first run's.

Input sets: ``corpus`` (every file of ``../shared/corpus/manifest.csv``, or of
``$WHISPER_PIPELINE_CORPUS``), ``real-short`` (the corpus's real recordings of at most 15 s)
and ``many-short`` (``--short-clips`` English sentences synthesized
offline with Piper, cached under ``OUT/many_short/``).

Reading the table:

- *wall s*: methods 1-3 and 5, seconds inside the worker from just before the model load to the
  last transcript (imports and interpreter start-up excluded); methods 4 and 6, the whole CLI
  command (Python and Dagster start-up, step processes, Parquet writes and checks included,
  which is the point).
- *RTF*: real-time factor, wall seconds / audio seconds; lower is faster (0.1 = ten times faster
  than real time).
- *speed-up vs 1*: method 1's wall time / this method's, same input set and invocation (medians
  with ``--repeat``).
- *WER*: corpus-level word error rate (Whisper English normalizer + jiwer) over the files that
  have an English reference; other files are transcribed and timed but not scored.
- *peak RSS*: methods 1-3, the worker's own peak resident memory (``VmHWM``; see
  ``peak_rss_self_mib`` for why not ``ru_maxrss``). Methods 4 and 6 run a process tree (CLI,
  forkserver, one process per step); the figure is the largest peak of any single process in it
  (``getrusage(RUSAGE_CHILDREN)`` in the worker, which adopts and reaps the orphaned forkserver),
  labelled "max per process". The notes and the JSON add a sampled peak of the whole tree's
  proportional set size (PSS), the closer figure for "memory the run needs".

Results go to ``OUT/results.md`` and ``OUT/results.json`` (with every transcript).
"""

import argparse
import bisect
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

if not __package__:  # run as ``python benchmarks/run.py``: the repository root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402 - after the path fix above
    DEFAULT_OUT,
    INPUT_SETS,
    PARTITION,
    REPOSITORY,
    AudioInput,
    ModelConfig,
    TreeMemorySampler,
    corpus_wer,
    load_input_set,
    load_model,
    load_pipeline_model,
    machine_info,
    prepare_chunks,
)
from devtools.commands import materialize_command
from devtools.harness import fresh_dagster_home
from whisper_pipeline.core.memory import GLIBC_TUNABLES, HUGEPAGE_TUNABLE

METHODS = {
    1: "faster-whisper sequential",
    2: "faster-whisper batched",
    3: "pipeline core in-process",
    4: "Dagster partition via CLI",
    5: "core, packing off",
    6: "Dagster CLI, packing off",
    7: "Dagster CLI, huge pages off",
    8: "faster-whisper batched, clip_timestamps across files",
}
CLI_METHODS = (4, 6, 7)
"""Methods that run the Dagster CLI (process-tree memory, the transcription op's idle time)."""


# ---------------------------------------------------------------------------------------------
# Input sets


# ---------------------------------------------------------------------------------------------
# Methods (each runs inside a worker subprocess)


PR_SET_CHILD_SUBREAPER = 36
"""``prctl`` option (Linux): orphaned descendants are re-parented to this process."""


def peak_rss_self_mib() -> float:
    """This process's peak resident set size in MiB.

    Read from ``VmHWM`` in ``/proc/self/status``, not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux
    keeps the peak of the memory image an ``execve`` replaces, and ``subprocess`` starts children
    with ``vfork``, so a worker's ``ru_maxrss`` would start at the *driver's* peak (with Piper
    loaded, hundreds of MiB). ``ru_maxrss`` (KiB on Linux) is the fallback off Linux.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_children_mib() -> float:
    """Largest peak RSS, in MiB, of any waited-for descendant (``RUSAGE_CHILDREN``)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``); whether it worked.

    Dagster's step processes are children of a multiprocessing forkserver that the CLI process
    never waits for; once the CLI exits, the forkserver is re-parented. Adopting and reaping it
    here is what brings the step processes' peaks into ``RUSAGE_CHILDREN``.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children(timeout_s: float = 60.0) -> int:
    """Wait for every remaining (adopted) child to exit, at most ``timeout_s``; returns reaped."""
    reaped = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            reaped += 1
        else:
            time.sleep(0.1)
    return reaped


def run_sequential(inputs: list[AudioInput], config: ModelConfig) -> dict:
    """Method 1: ``WhisperModel.transcribe`` file after file.

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message) and ``wall_s``.
    """
    import faster_whisper  # noqa: F401 - imported before the clock starts

    started = time.perf_counter()
    model = load_model(config)
    return transcribe_each(
        inputs, lambda path: model.transcribe(path, beam_size=config.beam_size)[0], started
    )


def transcribe_each(inputs: list[AudioInput], transcribe, started: float) -> dict:
    """Run a per-file faster-whisper ``transcribe`` over every input, consuming its segments.

    Args:
        inputs: The files.
        transcribe: Called with a path; returns the segments generator.
        started: ``time.perf_counter()`` taken before the model was loaded.

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message) and ``wall_s``.
    """
    texts, errors = {}, {}
    for item in inputs:
        try:
            texts[item.name] = " ".join(s.text.strip() for s in transcribe(item.path))
        except Exception as error:  # recorded, the benchmark goes on
            texts[item.name], errors[item.name] = "", f"{type(error).__name__}: {error}"
    return {"texts": texts, "errors": errors, "wall_s": time.perf_counter() - started}


def run_batched_per_file(inputs: list[AudioInput], config: ModelConfig) -> dict:
    """Method 2: faster-whisper's ``BatchedInferencePipeline``, one file at a time.

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message) and ``wall_s``.
    """
    from faster_whisper import BatchedInferencePipeline

    started = time.perf_counter()
    pipeline = BatchedInferencePipeline(load_model(config))
    return transcribe_each(
        inputs,
        lambda path: pipeline.transcribe(
            path, beam_size=config.beam_size, batch_size=config.batch_size
        )[0],
        started,
    )


def speech_spans(audio, rate: int, vad, get_speech_timestamps) -> list[tuple[int, int]]:
    """A file's clips in samples: the whole file up to 30 s, else its VAD speech merged into
    spans of at most 30 s (first speech start to last speech end), as ``collect_chunks`` does."""
    limit = 30 * rate
    if len(audio) <= limit:
        return [(0, len(audio))]
    spans: list[tuple[int, int]] = []
    for speech in get_speech_timestamps(audio, vad):
        if spans and speech["end"] - spans[-1][0] <= limit:
            spans[-1] = (spans[-1][0], speech["end"])
        else:
            spans.append((speech["start"], speech["end"]))
    return spans


def run_batched_clips(inputs: list[AudioInput], config: ModelConfig) -> dict:
    """Method 8: ``BatchedInferencePipeline`` over all files at once, with ``clip_timestamps``.

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message) and ``wall_s``.
    """
    import numpy as np
    from faster_whisper import BatchedInferencePipeline, decode_audio
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    started = time.perf_counter()
    pipeline = BatchedInferencePipeline(load_model(config))
    rate = pipeline.model.feature_extractor.sampling_rate
    vad = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    texts, errors, pieces, spans, clips = {}, {}, [], [], []
    offset = 0
    for item in inputs:
        texts[item.name] = ""
        try:
            audio = decode_audio(item.path, sampling_rate=rate)
        except Exception as error:  # recorded, the benchmark goes on
            errors[item.name] = f"{type(error).__name__}: {error}"
            continue
        for start, end in speech_spans(audio, rate, vad, get_speech_timestamps):
            clips.append({"start": (offset + start) / rate, "end": (offset + end) / rate})
        pieces.append(audio)
        spans.append((offset / rate, (offset + len(audio)) / rate, item.name))
        offset += len(audio)
    if clips:
        segments, _ = pipeline.transcribe(
            np.concatenate(pieces),
            beam_size=config.beam_size,
            batch_size=config.batch_size,
            clip_timestamps=clips,
        )
        parts: dict[str, list[str]] = {}
        starts = [start for start, _, _ in spans]
        for segment in segments:
            # Its middle: faster-whisper rounds times, so a start can fall just before its clip.
            middle = (segment.start + segment.end) / 2
            index = max(0, bisect.bisect_right(starts, middle) - 1)
            parts.setdefault(spans[index][2], []).append(segment.text.strip())
        texts.update({name: " ".join(words) for name, words in parts.items()})
    return {"texts": texts, "errors": errors, "wall_s": time.perf_counter() - started}


def run_core(inputs: list[AudioInput], config: ModelConfig, pack_windows: bool = True) -> dict:
    """Method 3: the project's core (decode, VAD-split, featurize, cross-file batches).

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message), ``wall_s``, and
        ``chunks`` and ``generate_calls`` counts.
    """
    from whisper_pipeline.core.batching import BatchTranscriber
    from whisper_pipeline.core.types import DecodingOptions

    started = time.perf_counter()
    model = load_pipeline_model(config)
    chunk_inputs, errors = prepare_chunks(inputs, model.feature_extractor)
    options = DecodingOptions(
        beam_size=config.beam_size, batch_size=config.batch_size, pack_windows=pack_windows
    )
    transcriber = BatchTranscriber(model, options)
    results = transcriber.transcribe(chunk_inputs)
    wall_s = time.perf_counter() - started
    pieces: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for result in results:
        name, index = result.key
        if result.error:
            errors.setdefault(name, f"chunk {index}: {result.error}")
        pieces[name].append((index, " ".join(segment.text for segment in result.segments)))
    texts = {
        item.name: " ".join(text for _, text in sorted(pieces[item.name]) if text)
        for item in inputs
    }
    return {
        "texts": texts,
        "errors": errors,
        "wall_s": wall_s,
        "chunks": len(chunk_inputs),
        "generate_calls": transcriber.generate_calls,
    }


def run_dagster_cli(
    inputs: list[AudioInput],
    config: ModelConfig,
    log_path: Path,
    pack_windows: bool = True,
    hugepages: bool = True,
) -> dict:
    """Methods 4, 6 and 7: materialize one partition of every asset through the Dagster CLI.

    The inputs are copied to ``ROOT/raw/<PARTITION>/<name>`` of a temporary storage root, with a
    temporary ``DAGSTER_HOME`` holding a copy of the repository's ``dagster.yaml``; the model
    settings go in as run config of the ``whisper`` resource. The CLI's output is written to
    ``log_path``. ``hugepages=False`` sets ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` for the
    CLI (method 7).

    Returns:
        ``texts`` (name to transcript), ``errors`` (name to message), ``wall_s`` (the whole
        command), ``returncode`` and the tree memory samples.
    """
    import pyarrow.parquet as pq

    whisper_config = {
        "device": config.device,
        "compute_type": config.compute_type,
        "cpu_threads": config.cpu_threads,
        "num_workers": config.num_workers,
        "beam_size": config.beam_size,
        "batch_size": config.batch_size,
        "pack_windows": pack_windows,
    }
    if config.model_given:
        whisper_config["model"] = config.model
    run_config = {"resources": {"whisper": {"config": whisper_config}}}
    with tempfile.TemporaryDirectory(prefix="whisper_bench_") as scratch:
        root, home = Path(scratch) / "root", Path(scratch) / "dagster_home"
        landing = root / "raw" / PARTITION
        for item in inputs:
            target = landing / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, target)
        fresh_dagster_home(home)
        env = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root))
        if not hugepages:
            env[GLIBC_TUNABLES] = f"{HUGEPAGE_TUNABLE}=0"
        command = materialize_command(PARTITION, "--config-json", json.dumps(run_config))
        subreaper = become_subreaper()
        sampler = TreeMemorySampler()
        sampler.start()
        started = time.perf_counter()
        with open(log_path, "w") as log:
            completed = subprocess.run(
                command, env=env, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        wall_s = time.perf_counter() - started
        sampler.stop()
        orphans = reap_children() if subreaper else 0
        texts = {item.name: "" for item in inputs}
        errors = {}
        if completed.returncode != 0:
            errors["<run>"] = f"dagster exited with {completed.returncode}; see {log_path}"
        tables = root / "tables"
        files_path = tables / "audio_files" / f"date={PARTITION}" / "part-0.parquet"
        transcripts_path = tables / "transcripts" / f"date={PARTITION}" / "part-0.parquet"
        if files_path.exists() and transcripts_path.exists():
            files = pq.read_table(
                files_path, columns=["file_id", "relative_path", "status", "error"]
            )
            transcripts = pq.read_table(transcripts_path, columns=["file_id", "text"])
            by_id = dict(zip(*transcripts.to_pydict().values(), strict=True))
            for row in files.to_pylist():
                texts[row["relative_path"]] = by_id.get(row["file_id"], "")
                if row["status"] == "failed":
                    errors[row["relative_path"]] = row["error"]
        run_metadata = transcripts_metadata(home)
    return {
        "texts": texts,
        "errors": errors,
        "wall_s": wall_s,
        "returncode": completed.returncode,
        "subreaper": subreaper,
        "orphans_reaped": orphans,
        "tree_peak_pss_mib": sampler.peak_pss_mib,
        "sampled_max_process_rss_mib": sampler.peak_process_rss_mib,
        "max_processes": sampler.peak_processes,
        **run_metadata,
    }


RUN_METADATA = (
    "transcription_idle_fraction",
    "transcription_wait_seconds",
    "transcription_window_seconds",
    "transcription_start_delay_seconds",
    "preprocess_peak_rss_mib",
    "transcribe_peak_rss_mib",
)
"""Metadata of the ``transcripts`` materialization the benchmark reports for methods 4 and 6."""


def transcripts_metadata(dagster_home: Path) -> dict:
    """``RUN_METADATA`` values of the latest ``transcripts`` materialization in an instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("transcripts"))
    if event is None or event.asset_materialization is None:
        return {}
    metadata = event.asset_materialization.metadata
    return {key: metadata[key].value for key in RUN_METADATA if key in metadata}


def run_worker(args: argparse.Namespace) -> int:
    """Worker mode: run one method on the inputs file, write the result file."""
    payload = json.loads(Path(args.inputs_file).read_text())
    inputs = [AudioInput(**item) for item in payload["inputs"]]
    config = ModelConfig(**payload["config"])
    if args.worker == 1:
        result = run_sequential(inputs, config)
    elif args.worker == 2:
        result = run_batched_per_file(inputs, config)
    elif args.worker == 8:
        result = run_batched_clips(inputs, config)
    elif args.worker in (3, 5):
        result = run_core(inputs, config, pack_windows=args.worker == 3)
    else:
        log_path = Path(payload["log_path"])
        pack_windows, hugepages = args.worker != 6, args.worker != 7
        result = run_dagster_cli(inputs, config, log_path, pack_windows, hugepages)
    if args.worker in CLI_METHODS:
        result.update(peak_rss_mib=peak_rss_children_mib(), rss_scope="child")
    else:
        result.update(peak_rss_mib=peak_rss_self_mib(), rss_scope="process")
    Path(args.result_file).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# Driver


def run_method(
    method: int, inputs: list[AudioInput], config: ModelConfig, scratch: Path, log_path: Path
) -> dict:
    """Run one method in a fresh worker subprocess and return its result.

    Returns:
        The worker's result; on a crashed worker, ``{"failed": message}`` instead.
    """
    inputs_file = scratch / f"inputs-{method}.json"
    result_file = scratch / f"result-{method}.json"
    payload = {
        "inputs": [asdict(item) for item in inputs],
        "config": asdict(config),
        "log_path": str(log_path),
    }
    inputs_file.write_text(json.dumps(payload))
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--worker",
        str(method),
        "--inputs-file",
        str(inputs_file),
        "--result-file",
        str(result_file),
    ]
    completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, check=False)
    if method not in CLI_METHODS:  # their workers write the Dagster CLI's output there
        log_path.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0 or not result_file.exists():
        return {"failed": f"worker exited with {completed.returncode}: {completed.stderr[-3000:]}"}
    return json.loads(result_file.read_text())


def summarize(input_set: str, method: int, inputs: list[AudioInput], result: dict) -> dict:
    """One table row (plus the transcripts) from a worker result."""
    audio_s = sum(item.duration_s for item in inputs)
    row = {
        "input_set": input_set,
        "method": method,
        "method_name": METHODS[method],
        "files": len(inputs),
        "scored_files": sum(item.scored for item in inputs),
        "audio_s": audio_s,
    }
    if "failed" in result:
        return {**row, "failed": result["failed"]}
    return {
        **row,
        "wall_s": result["wall_s"],
        "rtf": result["wall_s"] / audio_s if audio_s else None,
        "wer": corpus_wer(inputs, result["texts"]),
        **{key: value for key, value in result.items() if key != "wall_s"},
    }


def merge_repeats(row: dict, walls: list[float]) -> dict:
    """A row whose wall time (and RTF) is the median of ``walls``, each run's wall time in seconds.

    ``row`` is the first run's (``summarize``); with one run it is returned as it is.
    """
    if len(walls) < 2 or "failed" in row:
        return row
    wall = statistics.median(walls)
    return {**row, "wall_s": wall, "rtf": wall / row["audio_s"], "walls_s": walls}


def add_speedups(rows: list[dict]) -> None:
    """Set each row's ``speedup``: method 1's wall time / its own, within the same input set."""
    baseline = {
        row["input_set"]: row["wall_s"] for row in rows if row["method"] == 1 and "wall_s" in row
    }
    for row in rows:
        base = baseline.get(row["input_set"])
        row["speedup"] = base / row["wall_s"] if base and row.get("wall_s") else None


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table, followed by notes on failures and scored files."""
    lines = [
        "| input set | method | files | audio s | wall s | RTF | speed-up vs 1 | WER "
        "| peak RSS (MiB) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for row in rows:
        method = f"{row['method']}. {row['method_name']}"
        if "failed" in row:
            cells = ["failed"] * 5
            notes.append(f"- {row['input_set']} / method {row['method']} failed: {row['failed']}")
        else:
            rss = _fmt(row["peak_rss_mib"], ".0f")
            if row["rss_scope"] == "child":
                rss += " (max per process)"
            wer = _fmt(row["wer"] * 100 if row["wer"] is not None else None, ".1f")
            cells = [
                _fmt(row["wall_s"], ".1f"),
                _fmt(row["rtf"], ".3f"),
                _fmt(row["speedup"], ".2f") + ("x" if row["speedup"] is not None else ""),
                wer + ("%" if row["wer"] is not None else ""),
                rss,
            ]
            if row["errors"]:
                shown = "; ".join(f"{k}: {v}" for k, v in list(row["errors"].items())[:3])
                notes.append(
                    f"- {row['input_set']} / method {row['method']}: "
                    f"{len(row['errors'])} file(s) with errors ({shown})"
                )
        lines.append(
            f"| {row['input_set']} | {method} | {row['files']} | {row['audio_s']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    for input_set in dict.fromkeys(row["input_set"] for row in rows):
        first = next(row for row in rows if row["input_set"] == input_set)
        notes.append(
            f"- {input_set}: WER over {first['scored_files']} of {first['files']} files "
            "(those with an English reference)."
        )
    for row in rows:
        if "walls_s" in row:
            walls = ", ".join(f"{wall:.1f}" for wall in row["walls_s"])
            notes.append(
                f"- {row['input_set']} / method {row['method']}: wall times {walls} s "
                f"(median {row['wall_s']:.1f} s)."
            )
        if row["method"] in CLI_METHODS and "tree_peak_pss_mib" in row:
            notes.append(
                f"- {row['input_set']} / method {row['method']}: whole process tree peaked at "
                f"{row['tree_peak_pss_mib']:.0f} MiB PSS over up to {row['max_processes']} "
                f"processes (sampled every 0.5 s; largest single process sampled at "
                f"{row['sampled_max_process_rss_mib']:.0f} MiB RSS)."
            )
        if row["method"] in CLI_METHODS and "transcription_idle_fraction" in row:
            notes.append(
                f"- {row['input_set']} / method {row['method']}: transcription op idle "
                f"{row['transcription_idle_fraction']:.0%} of its "
                f"{row['transcription_window_seconds']:.1f} s window (no transcription step "
                f"running for {row['transcription_wait_seconds']:.1f} s of it; the first one "
                f"started {row.get('transcription_start_delay_seconds', float('nan')):.1f} s "
                f"after the run); peak RSS per "
                f"worker: preprocessing {row['preprocess_peak_rss_mib']} MiB, transcription "
                f"{row['transcribe_peak_rss_mib']} MiB."
            )
    return "\n".join(lines + [""] + notes)


def report(rows: list[dict], info: dict, config: ModelConfig) -> str:
    """The full Markdown report: machine, settings, table and notes."""
    settings = {
        "model": config.model,
        "device": config.device,
        "compute type": config.compute_type,
        "beam size": config.beam_size,
        "batch size (methods 2-4)": config.batch_size,
        "cpu threads": config.cpu_threads or "auto (1-2: CTranslate2 default; 3-4: pipeline)",
        "workers (methods 3-4)": config.num_workers or "auto (pipeline rule)",
    }
    lines = ["# Transcription benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", markdown_table(rows), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default="corpus,many-short", help="comma-separated sets")
    parser.add_argument("--methods", default="1,2,3,4,5,6,8", help="comma-separated method numbers")
    parser.add_argument(
        "--malloc-hugepages",
        action="store_true",
        help=f"start every worker with {GLIBC_TUNABLES}={HUGEPAGE_TUNABLE}=1",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--limit", type=int, help="use only the first N files of each set")
    parser.add_argument("--short-clips", type=int, default=120, help="clips in many-short")
    parser.add_argument("--model", help="CTranslate2 model directory (default: bundled tiny.en)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compute-type", default="int8", help="int8, float16, int8_float16...")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: auto")
    parser.add_argument("--num-workers", type=int, default=0, help="methods 3-4; 0: auto")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="chunks per batch (2-4)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every method; rows report the median"
    )
    parser.add_argument("--worker", type=int, choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--inputs-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected methods on the selected input sets; print and save the report."""
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    input_sets = [name.strip() for name in args.inputs.split(",") if name.strip()]
    methods = [int(m) for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS] + [
        s for s in input_sets if s not in INPUT_SETS
    ]
    if unknown:
        sys.exit(f"unknown method or input set: {unknown}")
    if args.malloc_hugepages:  # every worker subprocess inherits it
        os.environ[GLIBC_TUNABLES] = f"{HUGEPAGE_TUNABLE}=1"
    if args.model:
        model = str(Path(args.model).resolve())
    else:
        from whisper_pipeline.resources.whisper import bundled_model_path

        model = bundled_model_path()
    config = ModelConfig(
        model=model,
        model_given=bool(args.model),
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        num_workers=args.num_workers,
        beam_size=args.beam_size,
        batch_size=args.batch_size,
    )
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    info = machine_info(config)
    rows = []
    for input_set in input_sets:
        inputs = load_input_set(input_set, args.limit, args.short_clips, out)
        audio_s = sum(item.duration_s for item in inputs)
        print(f"{input_set}: {len(inputs)} files, {audio_s:.1f} s of audio", file=sys.stderr)
        first: dict[int, dict] = {}
        walls: dict[int, list[float]] = {method: [] for method in methods}
        for _ in range(max(1, args.repeat)):
            for method in methods:
                log_path = out / "logs" / f"{input_set}-method{method}.log"
                with tempfile.TemporaryDirectory(prefix="whisper_bench_worker_") as scratch:
                    result = run_method(method, inputs, config, Path(scratch), log_path)
                row = summarize(input_set, method, inputs, result)
                if "failed" in row or method not in first:  # any failed run fails the row
                    first[method] = row
                if "failed" not in row:
                    walls[method].append(row["wall_s"])
                status = row.get("failed") or f"{row['wall_s']:.1f} s"
                print(f"  method {method} ({METHODS[method]}): {status}", file=sys.stderr)
        rows += [merge_repeats(first[method], walls[method]) for method in methods]
    add_speedups(rows)
    text = report(rows, info, config)
    (out / "results.md").write_text(text)
    payload = {"machine": info, "config": asdict(config), "rows": rows}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    print(text)
    return 1 if any("failed" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
