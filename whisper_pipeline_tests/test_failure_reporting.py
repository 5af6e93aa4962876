"""The UI tells the truth: failed files as warning lines and WARN checks, progress lines, plain
reasons without FFmpeg error numbers.

In-process with the test double transcriber (``doubles.py``): real audio, real preprocessing,
real storage and Dagster, no model.
"""

import io
import logging
import re
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from whisper_pipeline.core import audio
from whisper_pipeline.defs.checks import failed_files_markdown
from whisper_pipeline_tests.doubles import FakeTranscriberResource
from whisper_pipeline_tests.fixtures import zero_channel_wav
from whisper_pipeline_tests.inprocess import materialize, read_tables, step_failures

PARTITION = "2026-11-17"
CLIPS = ("short/jfk.flac", "short/lj001_0001.wav", "short/lj001_0002.wav")

NOT_AUDIO = "not an audio file (not readable as audio: invalid data found when processing input)"


def land(corpus: Path, root: Path) -> Path:
    """Three good clips, two non-audio files, a truncated FLAC; returns the landing folder."""
    landing = root / "raw" / PARTITION
    (landing / "broken").mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(corpus / name, landing / Path(name).name)
    (landing / "broken" / "notes.mp3").write_bytes(b"Meeting notes: nothing to see here.\n" * 20)
    (landing / "broken" / "empty.wav").write_bytes(b"")
    flac = (corpus / "short/jfk.flac").read_bytes()
    (landing / "broken" / "cut.flac").write_bytes(flac[: len(flac) // 3])
    return landing


def run_logs(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list:
    return [r for r in instance.all_logs(result.run_id) if not r.is_dagster_event]


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def failing_run(corpus, tmp_path_factory):
    """A partition with three good clips (one failing in the "model") and three broken files."""
    root = tmp_path_factory.mktemp("root")
    land(corpus, root)
    sha = audio.fingerprint(io.BytesIO((corpus / CLIPS[1]).read_bytes()))
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(
        root, PARTITION, FakeTranscriberResource(fail_contents=[sha]), instance=instance
    )
    assert result.success, step_failures(result)
    return root, result, run_logs(instance, result)


def test_one_warning_line_per_failed_file_with_path_and_plain_reason(failing_run):
    root, _, logs = failing_run
    warnings = sorted(
        r.user_message
        for r in logs
        if r.level == logging.WARNING and r.step_key.endswith("write_tables")
    )
    assert re.fullmatch(
        r"failed: broken/cut\.flac: truncated: decoded \d\.\d\d s of the 11\.00 s declared",
        warnings[0],
    )
    assert warnings[1:] == [
        "failed: broken/empty.wav: empty file (0 bytes)",
        f"failed: broken/notes.mp3: {NOT_AUDIO}",
        "failed: lj001_0001.wav: model failed on chunk 0: RuntimeError: fake model failure",
    ]
    failed = [r for r in read_tables(root, PARTITION)["audio_files"] if r["status"] == "failed"]
    assert len(failed) == len(warnings)


def test_no_ffmpeg_error_numbers_reach_users(failing_run):
    root, _, logs = failing_run
    errors = [r["error"] for r in read_tables(root, PARTITION)["audio_files"]]
    assert not [e for e in errors if "Errno" in e or "'<none>'" in e]
    assert not [r.user_message for r in logs if "Errno" in r.user_message]


def test_no_failed_files_check_warns_with_a_table_of_failures(failing_run):
    _, result, _ = failing_run
    checks = evaluations(result)
    failed = checks["no_failed_files"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.WARN
    assert failed.description == "4 of 6 files failed"
    assert failed.metadata["files_failed"].value == 4
    table = failed.metadata["failed_files"].value
    assert table.splitlines()[:2] == ["| relative_path | reason |", "|---|---|"]
    assert f"| broken/notes.mp3 | {NOT_AUDIO} |" in table
    assert checks["files_landed"].passed
    # WARN checks do not fail the run; the contract checks all pass.
    assert all(e.passed for name, e in checks.items() if name != "no_failed_files")


def test_progress_lines_for_preprocessing_and_transcription(failing_run):
    _, _, logs = failing_run
    lines = [r.user_message for r in logs if r.level == logging.INFO]
    preprocessing = [line for line in lines if line.startswith("shard 0 preprocessing: done")]
    transcription = [line for line in lines if line.startswith("group 0 transcription: done")]
    # The three good clips and the truncated FLAC reach preprocessing (the probe passes it).
    assert len(preprocessing) == 1 and preprocessing[0].startswith(
        "shard 0 preprocessing: done, 4/4 files, "
    )
    # Transcription counts contents: the truncated FLAC's failure row is written by it too.
    assert len(transcription) == 1 and transcription[0].startswith(
        "group 0 transcription: done, 4/4 files, "
    )
    assert preprocessing[0].endswith("audio s/s)") and transcription[0].endswith("audio s/s)")


def test_warn_checks_pass_on_a_clean_partition(corpus, tmp_path):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    shutil.copy(corpus / CLIPS[0], landing / "jfk.flac")
    result = materialize(tmp_path, PARTITION)
    assert result.success, step_failures(result)
    checks = evaluations(result)
    assert checks["no_failed_files"].passed and checks["files_landed"].passed
    assert checks["no_failed_files"].metadata["files_failed"].value == 0


def test_files_landed_warns_on_a_day_without_files(tmp_path):
    (tmp_path / "raw" / PARTITION).mkdir(parents=True)
    result = materialize(tmp_path, PARTITION)
    assert result.success, step_failures(result)
    checks = evaluations(result)
    landed = checks["files_landed"]
    assert not landed.passed and landed.severity == dg.AssetCheckSeverity.WARN
    assert landed.description == f"no files landed under raw/{PARTITION}/"
    assert checks["no_failed_files"].passed


def test_failed_files_table_is_capped_and_escaped():
    failed = [{"relative_path": f"a|{i}.mp3", "error": "x\ny"} for i in range(60)]
    table = failed_files_markdown(failed, limit=50)
    lines = table.splitlines()
    assert lines[2] == "| a\\|0.mp3 | x y |"
    assert len([line for line in lines if line.startswith("| a")]) == 50
    assert lines[-1].startswith("… and 10 more")


@pytest.mark.parametrize(
    ("content", "probe_reason", "decode_reason"),
    [
        (b"", NOT_AUDIO, NOT_AUDIO),
        (b"hello, this is a text file named .mp3\n", NOT_AUDIO, NOT_AUDIO),
        (
            bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
            NOT_AUDIO,
            NOT_AUDIO,
        ),
        (
            zero_channel_wav(),
            "broken audio header (the stream declares zero channels)",
            "audio could not be decoded (decode failed: invalid argument)",
        ),
    ],
    ids=["empty", "text", "random_bytes", "zero_channels"],
)
def test_audio_errors_are_plain_words(tmp_path, content, probe_reason, decode_reason):
    with pytest.raises(audio.AudioError) as probed:
        audio.probe(io.BytesIO(content))
    assert str(probed.value) == probe_reason
    with pytest.raises(audio.AudioError) as decoded:
        audio.spool(io.BytesIO(content), str(tmp_path / "audio.s16"))
    assert str(decoded.value) == decode_reason
