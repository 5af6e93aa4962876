import io

import numpy as np
import pytest

from whisper_pipeline.core import audio
from whisper_pipeline_tests.conftest import corpus_rows, requires_corpus

FORMAT_ROWS = [row for row in corpus_rows() if row["file"].startswith("formats/")]


@requires_corpus
@pytest.mark.parametrize("row", FORMAT_ROWS, ids=[r["file"] for r in FORMAT_ROWS])
def test_probe_and_decode_every_corpus_format(corpus, row):
    with open(corpus / row["file"], "rb") as handle:
        probed = audio.probe(handle)
        handle.seek(0)
        waveform = audio.decode(handle)
    assert probed.codec == row["codec"]
    assert probed.sample_rate == int(row["sample_rate"])
    assert probed.channels == int(row["channels"])
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    # Decoded length matches the manifest's duration to within one 100 ms frame of codec delay.
    assert waveform.shape[0] / audio.SAMPLE_RATE == pytest.approx(float(row["duration_s"]), abs=0.1)


@requires_corpus
@pytest.mark.parametrize("row", FORMAT_ROWS, ids=[r["file"] for r in FORMAT_ROWS])
def test_short_probe_decodes_the_samples_ffmpeg_defaults_decode(corpus, row):
    # The first try reads 32 KiB to identify the format, not FFmpeg's 5 MB: the same samples.
    with open(corpus / row["file"], "rb") as handle:
        short = np.concatenate(list(audio._decode_pcm16(handle, audio.DECODE_PROBE_OPTIONS)))
        handle.seek(0)
        default = np.concatenate(list(audio._decode_pcm16(handle, {})))
    assert short.dtype == np.int16 and short.size > 0
    np.testing.assert_array_equal(short, default)


@requires_corpus
def test_a_file_the_first_try_cannot_open_is_decoded_with_ffmpeg_defaults(corpus, monkeypatch):
    with open(corpus / "formats/jfk.mp3", "rb") as handle:
        data = handle.read()
    expected = np.concatenate(list(audio._decode_pcm16(io.BytesIO(data), {})))
    # A probe size FFmpeg rejects makes every first try fail before its first block.
    monkeypatch.setattr(audio, "DECODE_PROBE_OPTIONS", {"probesize": "1"})
    with pytest.raises(audio.AudioError):
        next(audio._decode_pcm16(io.BytesIO(data), audio.DECODE_PROBE_OPTIONS))
    decoded = np.concatenate(list(audio.decode_pcm16(io.BytesIO(data))))
    np.testing.assert_array_equal(decoded, expected)
    # A file no options can read still raises, with FFmpeg's defaults' reason.
    with pytest.raises(audio.AudioError, match="not readable as audio"):
        list(audio.decode_pcm16(io.BytesIO(b"hello, this is a text file named .mp3\n")))


def test_fingerprint_is_sha256_of_content():
    data = b"not audio at all" * 100_000
    expected = __import__("hashlib").sha256(data).hexdigest()
    assert audio.fingerprint(io.BytesIO(data)) == expected


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, this is a text file named .mp3\n",
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    ],
    ids=["empty", "text", "random_bytes"],
)
def test_unreadable_input_raises_audio_error(content):
    with pytest.raises(audio.AudioError):
        audio.probe(io.BytesIO(content))
    with pytest.raises(audio.AudioError):
        audio.decode(io.BytesIO(content))


def test_normalize_peak_scales_quiet_audio_and_leaves_silence():
    quiet = np.array([0.0, 0.01, -0.02], dtype=np.float32)
    assert np.max(np.abs(audio.normalize_peak(quiet))) == pytest.approx(0.95)
    silence = np.zeros(10, dtype=np.float32)
    assert not audio.normalize_peak(silence).any()


@requires_corpus
def test_spool_matches_whole_file_decode_and_faster_whisper(corpus, tmp_path):
    from faster_whisper.audio import decode_audio

    path = corpus / "long/mfa_two_talkers_stereo.wav"
    with open(path, "rb") as handle:
        spooled = audio.spool(handle, str(tmp_path / "audio.s16"))
        handle.seek(0)
        waveform = audio.decode(handle)
    # Same samples as faster-whisper's own decoder, whichever way they are held.
    np.testing.assert_array_equal(waveform, decode_audio(str(path)))
    samples = spooled.samples[:]
    np.testing.assert_array_equal(samples * np.float32(audio.PCM16_SCALE), waveform)
    assert (
        samples.dtype == np.int16 and spooled.samples[100:110].tolist() == samples[100:110].tolist()
    )
    assert spooled.duration_s == pytest.approx(waveform.shape[0] / audio.SAMPLE_RATE)
    # The int16 scale is peak normalization: the loudest sample lands on 0.95.
    normalized = np.abs(samples.astype(np.float32)) * np.float32(spooled.scale())
    assert normalized.max() == pytest.approx(0.95)
    np.testing.assert_allclose(
        samples * np.float32(spooled.scale()), audio.normalize_peak(waveform), atol=1e-6
    )
    assert spooled.scale() == pytest.approx(audio.peak_scale(waveform) * audio.PCM16_SCALE)


def test_spool_of_unreadable_input_raises_audio_error(tmp_path):
    with pytest.raises(audio.AudioError):
        audio.spool(io.BytesIO(b"not audio" * 1000), str(tmp_path / "audio.s16"))


@requires_corpus
def test_decoding_leaves_no_resampler_for_the_garbage_collector(corpus):
    # decode_pcm16 no longer runs gc.collect() after each file; that is only safe while PyAV
    # frees a resampler by reference counting, without a reference cycle left to collect.
    import gc

    import av

    gc.collect()
    gc.disable()
    try:
        for name in ("formats/hotwords_44k_stereo.mp3", "short/lj001_0013.wav"):
            with open(corpus / name, "rb") as handle:
                assert sum(block.size for block in audio.decode_pcm16(handle)) > 0
        left = [o for o in gc.get_objects() if isinstance(o, av.audio.resampler.AudioResampler)]
    finally:
        gc.enable()
    assert not left, f"{len(left)} resamplers wait for a collection"
