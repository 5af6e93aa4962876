"""Runs as the UI makes them, in-process: one-day partition-range runs (the UI's backfills) and
a selection of the tables without their manifest.

The test double transcriber (``doubles.py``); the daemon and UI themselves are in ``test_ui.py``.
"""

import logging
import shutil
import time
from pathlib import Path

import dagster as dg

from whisper_pipeline.definitions import build_resources
from whisper_pipeline.defs.assets.manifest import audio_manifest
from whisper_pipeline.defs.assets.subtitles import subtitle_files
from whisper_pipeline.defs.assets.transcription import transcript_tables
from whisper_pipeline_tests.doubles import FakeTranscriberResource
from whisper_pipeline_tests.inprocess import read_tables, retries, step_failures, storage_config

PARTITION = "2026-11-19"
CLIPS = ("short/jfk.flac", "short/lj001_0001.wav")
RANGE_TAGS = {
    "dagster/asset_partition_range_start": PARTITION,
    "dagster/asset_partition_range_end": PARTITION,
}


def land(corpus: Path, root: Path) -> None:
    landing = root / "raw" / PARTITION
    landing.mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(corpus / name, landing / Path(name).name)


def run(root: Path, *, selection=None, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [audio_manifest, transcript_tables, subtitle_files],
        selection=selection,
        resources=build_resources(FakeTranscriberResource()),
        run_config={"resources": storage_config(root)},
        raise_on_error=False,
        **kwargs,
    )


def test_a_one_day_range_run_publishes_that_day(corpus, tmp_path):
    land(corpus, tmp_path)
    result = run(tmp_path, tags=RANGE_TAGS)  # what a backfill launched from the UI tags
    assert result.success, step_failures(result)
    tables = read_tables(tmp_path, PARTITION)
    assert len(tables["transcripts"]) == len(CLIPS)
    assert {r["relative_path"] for r in tables["audio_files"]} == {Path(c).name for c in CLIPS}
    # The run's scratch (op outputs included) went with the partition's staging.
    assert not list((tmp_path / "staging" / PARTITION).glob(f"{result.run_id}*"))
    assert not (tmp_path / "staging" / "unpartitioned").exists()


def test_the_tables_without_their_manifest_fail_at_once_naming_it(corpus, tmp_path):
    land(corpus, tmp_path)
    started = time.monotonic()
    # The tables (a graph asset that cannot be subset: selecting transcripts selects all four)
    tables = dg.AssetSelection.assets(transcript_tables)
    selection = tables | dg.AssetSelection.checks_for_assets(transcript_tables)
    result = run(tmp_path, selection=selection, partition_key=PARTITION)
    assert time.monotonic() - started < 10
    assert not result.success
    assert retries(result) == 0
    (message,) = step_failures(result).values()
    assert "audio_manifest has not been materialized for partition 2026-11-19" in message
    assert "transcribe_partition" in message
    assert read_tables(tmp_path, PARTITION)["transcripts"] is None


def test_an_instance_without_the_pool_limit_is_warned_about_in_the_run_log(corpus, tmp_path):
    land(corpus, tmp_path)
    # An instance without deploy/dagster.yaml: no gpu pool limit.
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "home")) as bare:
        result = run(tmp_path, partition_key=PARTITION, instance=bare)
        assert result.success
        logs = [e.message for e in bare.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("sets no limit on pool 'gpu'" in message for message in logs)
