"""Bad input, re-runs and crashes never lose or duplicate rows (through the real CLI)."""

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from devtools.evaluation import english_wer
from devtools.harness import fresh_dagster_home
from whisper_pipeline_tests.conftest import (
    materialize_cli,
    plan_config,
    planned_and_cached,
)
from whisper_pipeline_tests.fixtures import SENTENCES, build_landing

pytestmark = pytest.mark.slow  # the real model through the Dagster CLI

PARTITION = "2026-11-21"


def table(root: Path, name: str) -> list[dict]:
    return pq.read_table(
        root / "tables" / name / f"date={PARTITION}" / "part-0.parquet"
    ).to_pylist()


def by_path(root: Path) -> dict[str, dict]:
    files = {row["file_id"]: row for row in table(root, "audio_files")}
    transcripts = {row["file_id"]: row for row in table(root, "transcripts")}
    return {
        row["relative_path"]: {**row, "transcript": transcripts.get(file_id)}
        for file_id, row in files.items()
    }


@pytest.fixture(scope="module")
def awkward_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    home = fresh_dagster_home(tmp_path_factory.mktemp("home"))
    expected = build_landing(root / "raw" / PARTITION)
    first = materialize_cli(root, home, PARTITION)
    assert first.returncode == 0, first.stderr[-5000:]
    return root, home, expected, by_path(root)


def test_every_file_gets_exactly_one_row_with_the_expected_status(awkward_run):
    _, _, expected, rows = awkward_run
    assert sorted(rows) == sorted(expected)  # the hidden .DS_Store has no row
    for path, outcome in expected.items():
        row = rows[path]
        assert row["status"] == outcome.status, (path, row["error"])
        if outcome.status == "failed":
            assert outcome.error in row["error"] and row["error"], (path, row["error"])
            assert row["transcript"] is None
        else:
            assert row["error"] == ""
            assert row["transcript"] is not None


def test_speech_in_every_container_and_codec_is_transcribed(awkward_run):
    _, _, expected, rows = awkward_run
    speech = [
        (path, outcome.sentence)
        for path, outcome in expected.items()
        if outcome.sentence is not None
    ]
    for path, sentence in speech:
        wer = english_wer([SENTENCES[sentence]], [rows[path]["transcript"]["text"]])
        # Piper speech through tiny.en: measured 0-10% per file; 8 kHz mu-law is the worst.
        assert wer <= 0.25, (path, rows[path]["transcript"]["text"])


def test_silence_and_noise_produce_no_text(awkward_run):
    _, _, _, rows = awkward_run
    for path in ("quiet/silence.wav", "quiet/noise.wav"):
        assert rows[path]["transcript"]["text"] == ""
        assert rows[path]["transcript"]["segment_count"] == 0


def test_identical_content_under_two_names_is_transcribed_once_and_reported_twice(awkward_run):
    _, _, _, rows = awkward_run
    original, copy = rows["speech/plain.wav"], rows["copies/same content.wav"]
    assert original["file_id"] != copy["file_id"]
    assert original["content_sha256"] == copy["content_sha256"]
    assert original["transcript"]["text"] == copy["transcript"]["text"] != ""


def test_rerun_replaces_rows_and_reuses_cached_transcripts(awkward_run):
    root, home, expected, before = awkward_run
    again = materialize_cli(root, home, PARTITION)
    assert again.returncode == 0, again.stderr[-5000:]
    # Successes are cached; failures after the probe (the truncated files) are tried again.
    planned, cached = planned_and_cached(again.stderr)
    retried = {
        r["content_sha256"] for r in before.values() if r["status"] == "failed" and r["codec"]
    }
    succeeded = {r["content_sha256"] for r in before.values() if r["status"] != "failed"}
    assert (planned, cached) == (len(retried), len(succeeded))
    after = by_path(root)
    assert sorted(after) == sorted(expected)
    for name in ("audio_files", "transcripts", "transcript_segments"):
        ((duplicates,),) = duckdb.sql(
            f"select count(*) - count(distinct (file_id, {'segment_index' if 'seg' in name else 0}"
            "))"
            f" from read_parquet('{root}/tables/{name}/*/*.parquet')"
        ).fetchall()
        assert duplicates == 0, name
    for path, row in after.items():
        if row["transcript"]:
            # Same result, not transcribed again: the model's timestamp is unchanged.
            assert (
                row["transcript"]["transcribed_at"] == before[path]["transcript"]["transcribed_at"]
            )
            assert row["transcript"]["text"] == before[path]["transcript"]["text"]


def test_redo_transcribes_again(awkward_run, tmp_path):
    root, home, _, before = awkward_run
    env_run = materialize_cli(root, home, PARTITION, extra_args=plan_config(redo=True))
    assert env_run.returncode == 0, env_run.stderr[-5000:]
    after = by_path(root)
    row = after["speech/plain.wav"]["transcript"]
    assert row["transcribed_at"] > before["speech/plain.wav"]["transcript"]["transcribed_at"]
    assert row["text"] == before["speech/plain.wav"]["transcript"]["text"]
