import logging

import numpy as np
import onnx
import onnx.utils
import onnxruntime
import pytest
from faster_whisper.vad import get_assets_path, get_speech_timestamps, get_vad_model

from whisper_pipeline.core import audio, vad
from whisper_pipeline.core.chunking import default_vad_options
from whisper_pipeline.core.vad import VAD_WINDOWS_PER_CALL, SileroSession, configure_vad
from whisper_pipeline_tests.conftest import requires_corpus


@pytest.fixture
def vad_cache(tmp_path, monkeypatch):
    """A fresh cache for the cut graph; the process's VAD set back to the defaults after."""
    monkeypatch.setenv("WHISPER_PIPELINE_CACHE", str(tmp_path / "cache"))
    configure_vad(None)
    yield tmp_path / "cache"
    configure_vad()


def probabilities_and_regions(waveform):
    return get_vad_model()(waveform), get_speech_timestamps(waveform, default_vad_options())


@requires_corpus
def test_small_calls_and_fft_give_faster_whisper_s_probabilities_and_regions(corpus, vad_cache):
    with open(corpus / "long/voxconverse_aepyx_8k.wav", "rb") as handle:
        waveform = audio.normalize_peak(audio.decode(handle))[: 200 * audio.SAMPLE_RATE]
    waveform = waveform[: len(waveform) // 512 * 512]  # whole 512-sample windows
    assert len(waveform) // 512 > 10 * VAD_WINDOWS_PER_CALL  # many calls, state carried across
    stock_session = get_vad_model().session
    stock, stock_regions = probabilities_and_regions(waveform)
    assert stock_regions

    configure_vad(fft=False)
    session = get_vad_model().session
    assert isinstance(session, SileroSession) and session.stock is stock_session
    assert session.after_stft is None
    small, small_regions = probabilities_and_regions(waveform)
    np.testing.assert_array_equal(small, stock)  # bit-identical
    assert small_regions == stock_regions

    configure_vad()
    session = get_vad_model().session
    assert session.stock is stock_session and session.after_stft is not None  # wrapped once
    assert list(vad_cache.glob("silero_vad_v6.*.after-stft.onnx"))
    fft, fft_regions = probabilities_and_regions(waveform)
    assert np.abs(fft - stock).max() < 1e-5
    assert fft_regions == stock_regions


def test_stft_magnitude_is_the_model_s_first_layer():
    model = onnx.load(f"{get_assets_path()}/silero_vad_v6.onnx")
    head = onnx.utils.Extractor(model).extract_model(["input"], [vad.STFT_OUTPUT])
    session = onnxruntime.InferenceSession(head.SerializeToString())
    windows = vad.check_input()
    expected = session.run(None, {"input": windows})[0]
    got = vad.stft_magnitude(windows)
    assert got.shape == expected.shape == (64, 129, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_the_cut_graph_is_read_from_the_cache_without_onnx(vad_cache, monkeypatch):
    configure_vad()  # cuts and caches
    cached = list(vad_cache.glob("*.after-stft.onnx"))
    assert len(cached) == 1
    configure_vad(None)
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx now fails
    configure_vad()
    assert get_vad_model().session.after_stft is not None


def test_a_model_the_fft_does_not_match_falls_back_to_the_stock_session(
    vad_cache, monkeypatch, caplog
):
    with monkeypatch.context() as patched:
        patched.setattr(vad, "_HANN", np.ones_like(vad._HANN))  # an STFT unlike the model's
        with caplog.at_level(logging.WARNING, logger="whisper_pipeline.core.vad"):
            configure_vad()
    session = get_vad_model().session
    assert isinstance(session, SileroSession) and session.after_stft is None
    assert "probabilities differ" in caplog.text


def test_windows_per_call_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        SileroSession(object(), 0)


def test_an_unwritable_cache_still_gives_the_fft_path(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("WHISPER_PIPELINE_CACHE", str(blocker / "cache"))
    configure_vad(None)
    try:
        with caplog.at_level(logging.WARNING, logger="whisper_pipeline.core.vad"):
            configure_vad()
        assert get_vad_model().session.after_stft is not None
        assert "could not cache" in caplog.text
    finally:
        configure_vad()


def test_a_damaged_cached_graph_is_cut_again(vad_cache):
    configure_vad()
    (cached,) = vad_cache.glob("*.after-stft.onnx")
    cached.write_bytes(b"half a file")
    configure_vad(None)
    configure_vad()
    assert get_vad_model().session.after_stft is not None
    assert cached.read_bytes() != b"half a file"
