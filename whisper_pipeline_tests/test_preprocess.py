import io
import re
import wave

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import CHUNK_LENGTH_S, HOP_LENGTH
from whisper_pipeline.core.preprocess import (
    TRUNCATION_RATIO,
    TRUNCATION_SLACK_S,
    is_truncated,
    preprocess_file,
)
from whisper_pipeline.core.schema import STATUS_FAILED, STATUS_NO_SPEECH, STATUS_OK

MAX_FRAMES = CHUNK_LENGTH_S * audio.SAMPLE_RATE // HOP_LENGTH  # 3000


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()  # Whisper's 80 mel bins, as tiny.en


def run(content: bytes, declared, extractor, tmp_path):
    """Preprocess ``content``; returns the outcome and the ``(chunk, features)`` handed over."""
    seen = []
    done = preprocess_file(
        io.BytesIO(content),
        declared,
        extractor,
        str(tmp_path / "audio.s16"),
        lambda chunk, features: seen.append((chunk, features)),
    )
    return done, seen


def test_a_speech_file_yields_its_chunks_with_features(corpus, extractor, tmp_path):
    content = (corpus / "short/jfk.flac").read_bytes()
    declared = audio.probe(io.BytesIO(content)).duration_s
    done, seen = run(content, declared, extractor, tmp_path)
    assert done.status == STATUS_OK and done.error == ""
    assert done.duration_s == pytest.approx(11.0, abs=0.1)
    assert 0 < done.speech_s <= done.duration_s
    assert done.chunks == len(seen) >= 1
    assert [chunk.index for chunk, _ in seen] == list(range(len(seen)))
    assert done.speech_s == pytest.approx(sum(chunk.duration_s for chunk, _ in seen))
    for chunk, features in seen:
        assert features.dtype == np.float32
        assert features.shape[0] == 80 and 0 < features.shape[1] <= MAX_FRAMES
        assert features.shape[1] == chunk.audio.shape[0] // HOP_LENGTH


def test_a_truncated_flac_fails_with_the_durations(corpus, extractor, tmp_path):
    content = (corpus / "short/jfk.flac").read_bytes()
    cut = content[: len(content) // 2]
    declared = audio.probe(io.BytesIO(cut)).duration_s  # the header still says 11 s
    done, seen = run(cut, declared, extractor, tmp_path)
    assert done.status == STATUS_FAILED and not seen
    assert re.fullmatch(r"truncated: decoded \d+\.\d\d s of the 11\.00 s declared", done.error)
    assert done.duration_s < TRUNCATION_RATIO * declared - TRUNCATION_SLACK_S
    assert f"decoded {done.duration_s:.2f} s" in done.error
    # Without a declared duration the same bytes are simply shorter audio.
    undeclared, _ = run(cut, None, extractor, tmp_path)
    assert undeclared.status != STATUS_FAILED


def test_silence_has_no_speech(extractor, tmp_path):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.SAMPLE_RATE)
        out.writeframes(np.zeros(5 * audio.SAMPLE_RATE, dtype=np.int16).tobytes())
    done, seen = run(buffer.getvalue(), 5.0, extractor, tmp_path)
    assert (done.status, done.error, done.speech_s, done.chunks) == (STATUS_NO_SPEECH, "", 0.0, 0)
    assert done.duration_s == pytest.approx(5.0)
    assert not seen


def test_random_bytes_fail_with_the_audio_error(extractor, tmp_path):
    content = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    with pytest.raises(audio.AudioError) as raised:
        audio.spool(io.BytesIO(content), str(tmp_path / "expected.s16"))
    done, seen = run(content, None, extractor, tmp_path)
    assert (done.status, done.error) == (STATUS_FAILED, str(raised.value))
    assert done.duration_s is None and done.speech_s == 0.0 and not seen


@pytest.mark.parametrize(
    ("decoded", "declared", "truncated"),
    [
        (10.0, None, False),  # unknown duration (raw AAC): never truncated
        (1.0, 0.0, False),
        (9.0, 10.0, False),  # exactly 0.9 of the header
        (8.6, 10.0, False),  # below 0.9 but within the 0.5 s slack
        (8.49, 10.0, True),
        (0.4, 0.9, False),  # short clips: the slack dominates
        (5.5, 11.0, True),
    ],
)
def test_truncation_threshold(decoded, declared, truncated):
    assert is_truncated(decoded, declared) is truncated
