import numpy as np
import pytest

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import (
    CHUNK_LENGTH_S,
    chunk_time_map,
    pack_regions,
    split_speech,
)


@pytest.mark.parametrize(
    ("regions", "max_samples", "expected"),
    [
        ([], 10, []),
        ([(0, 4), (6, 10)], 10, [[(0, 4), (6, 10)]]),
        ([(0, 4), (6, 10), (12, 15)], 10, [[(0, 4), (6, 10)], [(12, 15)]]),
        ([(0, 10), (20, 30)], 10, [[(0, 10)], [(20, 30)]]),
    ],
)
def test_pack_regions_keeps_every_region_in_its_group(regions, max_samples, expected):
    groups = pack_regions([{"start": s, "end": e} for s, e in regions], max_samples)
    assert [[(r["start"], r["end"]) for r in group] for group in groups] == expected


def test_chunk_time_map_restores_removed_silence():
    # Speech at 1-2 s and 5-6 s of the file; chunk-local 1.5 s is 0.5 s into the second region.
    time_map = chunk_time_map([16000, 80000], [32000, 96000])
    assert time_map.get_original_time(0.5) == pytest.approx(1.5)
    assert time_map.get_original_time(1.5) == pytest.approx(5.5)


def test_silence_and_noise_have_no_speech():
    assert split_speech(np.zeros(16000 * 5, dtype=np.float32)) == []
    noise = np.random.default_rng(0).normal(0, 0.01, 16000 * 5).astype(np.float32)
    assert split_speech(noise) == []


def test_long_recording_splits_into_chunks_of_at_most_30_s(corpus):
    with open(corpus / "long/ljs_seven_wonders.flac", "rb") as handle:
        waveform = audio.decode(handle)
    chunks = split_speech(waveform)
    duration = waveform.shape[0] / audio.SAMPLE_RATE
    assert len(chunks) >= duration // CHUNK_LENGTH_S
    assert all(chunk.duration_s <= CHUNK_LENGTH_S for chunk in chunks)
    # Chunks are in time order, do not overlap, and keep most of a read-aloud recording.
    ends = [c.end_s for c in chunks]
    starts = [c.start_s for c in chunks]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))
    assert sum(c.duration_s for c in chunks) > 0.8 * duration
