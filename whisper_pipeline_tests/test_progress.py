import time

import pytest

from whisper_pipeline.core.progress import Progress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def make(clock, lines, total_items=10, total_audio_s=600.0, **kwargs):
    return Progress(
        "shard 0 preprocessing",
        total_items,
        total_audio_s,
        unit="files",
        log=lines.append,
        clock=clock,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (44.6, "45 s"), (200, "3 min 20 s"), (3900, "1 h 05 min"), (-3, "0 s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_logs_at_most_every_interval_with_counts_rate_and_time_left(clock):
    lines = []
    progress = make(clock, lines)
    clock.now += 10
    progress.advance(1, 60.0)
    assert lines == []  # 10 s < 30 s
    clock.now += 20
    progress.advance(2, 120.0)
    assert lines == [
        "shard 0 preprocessing: 3/10 files, 180/600 s audio (30%), 6.0 audio s/s, "
        "about 1 min 10 s left"
    ]
    clock.now += 29
    progress.advance(1, 60.0)
    assert len(lines) == 1
    clock.now += 1
    progress.advance(0, 0.0)
    assert len(lines) == 2 and lines[1].startswith("shard 0 preprocessing: 4/10 files, 240/600")


def test_finish_logs_once_with_totals(clock):
    lines = []
    progress = make(clock, lines)
    clock.now += 50
    progress.advance(10, 600.0)
    clock.now += 10
    progress.finish()
    progress.finish()
    assert lines[-1] == (
        "shard 0 preprocessing: done, 10/10 files, 600 s audio in 60.0 s (10.0 audio s/s)"
    )
    assert sum("done" in line for line in lines) == 1
    progress.advance(1, 1.0)
    clock.now += 100
    progress.advance(1, 1.0)
    assert sum("done" in line for line in lines) == 1 and len(lines) == 2


def test_time_left_from_items_when_audio_total_unknown(clock):
    lines = []
    progress = make(clock, lines, total_items=4, total_audio_s=0.0)
    clock.now += 30
    progress.advance(1, 0.0)
    assert lines == [
        "shard 0 preprocessing: 1/4 files, 0/0 s audio, 0.0 audio s/s, about 1 min 30 s left"
    ]


def test_time_left_unknown_before_anything_is_done(clock):
    lines = []
    progress = make(clock, lines)
    clock.now += 31
    progress.advance(0, 0.0)
    assert lines[0].endswith("0.0 audio s/s, time left unknown")


def test_each_counts_items_skipped_with_continue(clock):
    lines = []
    progress = make(clock, lines, total_items=3, total_audio_s=30.0)
    seen = []
    for name, _seconds in progress.each([("a", 10.0), ("b", 10.0), ("c", 10.0)], lambda f: f[1]):
        clock.now += 20
        if name == "b":
            continue
        seen.append(name)
    assert seen == ["a", "c"]
    assert (progress.items, progress.audio_s) == (3, 30.0)
    assert [line.split(":")[1].split(",")[0] for line in lines] == [" 2/3 files"]


def test_heartbeat_logs_while_one_item_takes_long_and_finish_on_exit():
    lines = []
    with Progress(
        "shard 0 transcription", 2, 60.0, unit="chunks", interval_s=0.05, log=lines.append
    ):
        time.sleep(0.3)  # one wave longer than the interval: the heartbeat still reports
        assert lines and lines[0].startswith("shard 0 transcription: 0/2 chunks")
    assert lines[-1].startswith("shard 0 transcription: done, 0/2 chunks")


def test_no_final_line_when_the_block_raises():
    lines = []
    with pytest.raises(RuntimeError):
        with Progress("x", 1, 1.0, interval_s=60, log=lines.append):
            raise RuntimeError("boom")
    assert lines == []
