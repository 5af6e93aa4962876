import dagster as dg
import pyarrow as pa
import pytest

from whisper_pipeline.defs.metrics import idle_metrics, preview_markdown, step_intervals


@pytest.mark.parametrize(
    ("intervals", "busy_s", "run_started", "expected"),
    [
        pytest.param([], 5.0, 0.0, {}, id="empty"),
        pytest.param(
            [(10.0, 20.0)],
            5.0,
            None,
            {
                "transcription_window_seconds": 10.0,
                "transcription_idle_fraction": 0.5,
                "transcription_wait_seconds": 0.0,
            },
            id="one-step-no-run-start",
        ),
        pytest.param(
            [(10.0, 20.0), (15.0, 25.0)],
            12.0,
            4.0,
            {
                "transcription_window_seconds": 15.0,
                "transcription_idle_fraction": 0.2,
                "transcription_wait_seconds": 0.0,
                "transcription_start_delay_seconds": 6.0,
            },
            id="overlap",
        ),
        pytest.param(
            [(30.0, 40.0), (10.0, 20.0)],
            10.0,
            10.0,
            {
                "transcription_window_seconds": 30.0,
                "transcription_idle_fraction": 0.6667,
                "transcription_wait_seconds": 10.0,
                "transcription_start_delay_seconds": 0.0,
            },
            id="gap-unsorted",
        ),
        pytest.param(
            [(10.0, 30.0), (12.0, 18.0), (35.0, 40.0)],
            20.0,
            None,
            {
                "transcription_window_seconds": 30.0,
                "transcription_idle_fraction": 0.3333,
                "transcription_wait_seconds": 5.0,
            },
            id="nested-and-gap",
        ),
        pytest.param(
            [(10.0, 10.0)],
            0.0,
            None,
            {
                "transcription_window_seconds": 0.0,
                "transcription_idle_fraction": 0.0,
                "transcription_wait_seconds": 0.0,
            },
            id="zero-window",
        ),
        pytest.param(
            [(10.0, 20.0)],
            12.0,
            None,
            {
                "transcription_window_seconds": 10.0,
                "transcription_idle_fraction": 0.0,
                "transcription_wait_seconds": 0.0,
            },
            id="busy-exceeds-window-clamped",
        ),
    ],
)
def test_idle_metrics(intervals, busy_s, run_started, expected):
    assert idle_metrics(intervals, busy_s, run_started) == expected


SCHEMA = pa.schema([("file_id", pa.string()), ("duration_s", pa.float64()), ("text", pa.string())])


def transcripts(*rows: tuple[str, float, str]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, row, strict=True)) for row in rows], SCHEMA)


def test_preview_markdown_escapes_pipes():
    preview = preview_markdown(transcripts(("a", 3.04, "left | right")))
    assert preview.splitlines() == [
        "| file_id | duration_s | text |",
        "|---|---|---|",
        "| a | 3.0 | left \\| right |",
    ]


def test_preview_markdown_truncates_text_and_rows():
    table = transcripts(*[(f"f{i}", 2.0, "x" * 200) for i in range(8)])
    lines = preview_markdown(table, rows=3).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2] == f"| f0 | 2.0 | {'x' * 120} |"


def test_preview_markdown_empty_table():
    assert preview_markdown(transcripts()) == "| file_id | duration_s | text |\n|---|---|---|"


def test_audio_files_metadata_counts_statuses_and_hours():
    from whisper_pipeline.defs.metrics import audio_files_metadata

    files = pa.table({"status": ["ok", "ok", "no_speech", "failed"]})
    transcripts = pa.table({"duration_s": [1800.0, 1800.0, 360.0]})
    assert audio_files_metadata(files, transcripts) == {
        "files": 4,
        "files_ok": 2,
        "files_no_speech": 1,
        "files_failed": 1,
        "audio_hours": 1.1,
    }


def test_transcripts_metadata_sums_this_runs_shards_and_transcription_steps():
    from whisper_pipeline.core.staging import (
        GroupTranscripts,
        ShardFeatures,
        ShardPlan,
        TranscriptionGroup,
    )
    from whisper_pipeline.defs.metrics import transcripts_metadata

    def shard(index, files, audio_s, preprocess_s, rss):
        plan = ShardPlan(index, "/run", "key", tuple((f"{i}", "p", None) for i in range(files)))
        return ShardFeatures(plan, 80, audio_s, preprocess_s, rss)

    def group(index, shards, transcribe_s, busy_s, first_s, rss):
        members = TranscriptionGroup(index, "/run", "key", tuple(s.plan for s in shards))
        audio_s = sum(s.audio_s for s in shards)
        return GroupTranscripts(
            members, audio_s, transcribe_s, 1.5, 10, rss, transcribe_s / 10, busy_s, first_s
        )

    transcripts = pa.table({"duration_s": [3600.0, 3600.0], "speech_duration_s": [1800.0, 0.0]})
    shards = [shard(0, 3, 600.0, 20.0, 500), shard(1, 2, 1200.0, 30.0, 900)]
    groups = [
        group(0, shards[:1], 60.0, 50.0, 2.5, 1000),
        group(1, shards[1:], 90.0, 80.0, 1.25, 1800),
    ]
    metadata = transcripts_metadata(transcripts, shards, groups, contents=7)
    assert metadata == {
        "audio_hours": 2.0,
        "speech_hours": 0.5,
        "audio_hours_transcribed_this_run": 0.5,
        "contents_from_cache": 2,
        "real_time_factor": round(150.0 / 1800.0, 4),
        "transcribe_seconds": 150.0,
        "model_busy_seconds": 130.0,
        "first_batch_seconds": 1.25,
        "preprocess_seconds": 50.0,
        "model_load_seconds": 3.0,
        "generate_calls": 20,
        "word_alignment_seconds": 15.0,
        "preprocess_peak_rss_mib": 900,
        "transcribe_peak_rss_mib": 1800,
        "shards": 2,
        "transcription_steps": 2,
    }
    cached = transcripts_metadata(transcripts, [], [], contents=7)
    assert cached["contents_from_cache"] == 7 and "first_batch_seconds" not in cached


@dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
def flaky_transcription(context: dg.OpExecutionContext) -> None:
    if context.retry_number == 0:
        raise RuntimeError("first attempt fails")


@dg.op
def other_op() -> None:
    pass


@dg.job
def retried_job():
    flaky_transcription()
    other_op()


def test_step_intervals_cover_every_attempt_of_a_retried_step():
    with dg.instance_for_test() as instance:
        result = retried_job.execute_in_process(instance=instance)
        assert result.success
        intervals = step_intervals(instance, result.run_id, "flaky_transcription")
        restarted = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_RESTARTED)
    assert len(restarted) == 1  # the second attempt begins with STEP_RESTARTED, not STEP_START
    assert len(intervals) == 2
    (first_start, first_end), (second_start, second_end) = sorted(intervals)
    assert first_start <= first_end <= second_start <= second_end
