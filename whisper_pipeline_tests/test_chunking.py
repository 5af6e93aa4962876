import tracemalloc

import numpy as np
import pytest

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import (
    CHUNK_LENGTH_S,
    chunk_time_map,
    pack_regions,
    speech_regions,
    split_speech,
    split_spooled,
)
from whisper_pipeline_tests.conftest import requires_corpus


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
    silence = np.zeros(16000 * 5, dtype=np.float32)
    assert list(split_speech(silence, vad_scale=audio.peak_scale(silence))) == []
    noise = np.random.default_rng(0).normal(0, 0.01, 16000 * 5).astype(np.float32)
    assert list(split_speech(noise)) == []
    # Peak-normalized for VAD, as the pipeline does: still no speech.
    assert audio.peak_scale(noise) > 15
    assert list(split_speech(noise, vad_scale=audio.peak_scale(noise))) == []


@requires_corpus
def test_chunks_keep_the_recorded_level_and_vad_sees_it_peak_normalized(corpus):
    with open(corpus / "short/jfk.flac", "rb") as handle:
        waveform = audio.decode(handle)
    quiet = waveform * np.float32(0.02)  # about -40 dBFS peaks
    chunks = list(split_speech(quiet, vad_scale=audio.peak_scale(quiet)))
    loud = list(split_speech(waveform, vad_scale=audio.peak_scale(waveform)))
    assert [c.speech_starts for c in chunks] == [c.speech_starts for c in loud] != []
    for chunk, reference in zip(chunks, loud, strict=True):
        np.testing.assert_allclose(chunk.audio, reference.audio * np.float32(0.02), atol=1e-7)


def test_long_recording_splits_into_chunks_of_at_most_30_s(corpus):
    with open(corpus / "long/ljs_seven_wonders.flac", "rb") as handle:
        waveform = audio.decode(handle)
    chunks = list(split_speech(waveform))
    duration = waveform.shape[0] / audio.SAMPLE_RATE
    assert len(chunks) >= duration // CHUNK_LENGTH_S
    assert all(chunk.duration_s <= CHUNK_LENGTH_S for chunk in chunks)
    # Chunks are in time order, do not overlap, and keep most of a read-aloud recording.
    ends = [c.end_s for c in chunks]
    starts = [c.start_s for c in chunks]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))
    assert sum(c.duration_s for c in chunks) > 0.8 * duration


def long_recording(corpus, path, minutes: float) -> None:
    """Write a 16 kHz 16-bit WAV of real read speech, the corpus's long files looped."""
    import wave

    names = ["long/ljs_seven_wonders.flac", "long/ljs_fireside_chat.flac", "short/jfk.flac"]
    pieces = []
    for name in names:
        with open(corpus / name, "rb") as handle:
            pieces.append(np.concatenate(list(audio.decode_pcm16(handle))))
    loop = np.concatenate(pieces)
    repeats = int(np.ceil(minutes * 60 * audio.SAMPLE_RATE / loop.shape[0]))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.SAMPLE_RATE)
        for _ in range(repeats):
            out.writeframes(loop.tobytes())


@requires_corpus
def test_blockwise_vad_finds_the_same_speech_as_one_pass(corpus):
    with open(corpus / "long/voxconverse_aepyx_8k.wav", "rb") as handle:
        waveform = audio.normalize_peak(audio.decode(handle))
    one_pass = speech_regions(waveform)
    blocks = speech_regions(waveform, block_s=40)
    assert len(waveform) > 3 * 40 * audio.SAMPLE_RATE  # several block boundaries

    def mask(regions):
        covered = np.zeros(len(waveform), dtype=bool)
        for region in regions:
            covered[region["start"] : region["end"]] = True
        return covered

    # With context either side of each block, the regions barely move at block boundaries.
    differing_s = np.count_nonzero(mask(one_pass) ^ mask(blocks)) / audio.SAMPLE_RATE
    assert differing_s < 1.5
    starts = [r["start"] for r in blocks]
    assert starts == sorted(starts)
    assert all(a["end"] <= b["start"] for a, b in zip(blocks, blocks[1:], strict=False))


@pytest.mark.slow  # decodes and VAD-splits a long synthetic recording
@requires_corpus
def test_long_file_is_chunked_in_bounded_memory(corpus, tmp_path):
    """A 20-minute file through spool + VAD + chunking never holds the whole waveform."""
    source = tmp_path / "long.wav"
    long_recording(corpus, source, minutes=20)
    tracemalloc.start()
    try:
        with open(source, "rb") as handle:
            decoded = audio.spool(handle, str(tmp_path / "audio.s16"))
        chunks = 0
        for chunk in split_spooled(decoded, block_s=60):
            assert chunk.duration_s <= CHUNK_LENGTH_S
            chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole_waveform_bytes = decoded.samples.shape[0] * 4
    assert decoded.duration_s >= 20 * 60
    assert chunks >= decoded.duration_s * 0.8 // CHUNK_LENGTH_S
    # numpy reports its buffers to tracemalloc: the peak is a few one-minute blocks, well under
    # the 77 MB a float32 copy of the whole file takes.
    assert peak < whole_waveform_bytes / 2, (peak, whole_waveform_bytes)
