"""Awkward and broken landing-zone files, built from speech synthesized offline with Piper."""

import shutil
import struct
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import av
import numpy as np
import soundfile

from devtools.harness import synthesize

SENTENCES = (
    "The warehouse shipped four hundred boxes of apples on Monday morning.",
    "Please call the support desk before the end of the week.",
    "Our quarterly revenue grew faster than the market expected.",
)


@cache
def speech(index: int) -> tuple[np.ndarray, int]:
    """Sentence ``index`` spoken by Piper's joe voice: (mono float32 samples, rate in Hz)."""
    samples, rate = synthesize(SENTENCES[index])
    # Half a second of silence around the speech, as in a real recording.
    pad = np.zeros(rate // 2, dtype=np.float32)
    return np.concatenate([pad, samples, pad]), rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear-interpolation resampling; good enough to make test fixtures at other rates."""
    times = np.arange(int(len(samples) * target / rate)) / target
    return np.interp(times, np.arange(len(samples)) / rate, samples).astype(np.float32)


def encode_aac_m4a(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write an AAC-in-MP4 (.m4a) file with PyAV's FFmpeg encoder."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def zero_channel_wav() -> bytes:
    """A RIFF/WAVE header that claims zero channels, followed by some data."""
    data = b"\x00\x01" * 8000
    fmt = struct.pack("<HHIIHH", 1, 0, 16000, 32000, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


@dataclass(frozen=True)
class Expected:
    """What the tables must say about one landed file."""

    status: str
    sentence: int | None = None  # index into SENTENCES when the file is speech
    error: str = ""  # substring of audio_files.error for failed files


def build_landing(landing: Path) -> dict[str, Expected]:
    """Write every awkward and broken case under ``landing``; returns expectations by path."""
    expected: dict[str, Expected] = {}

    def put(relative: str, outcome: Expected) -> Path:
        path = landing / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        expected[relative] = outcome
        return path

    s0, r0 = speech(0)
    s1, r1 = speech(1)
    s2, r2 = speech(2)
    soundfile.write(put("speech/plain.wav", Expected("ok", 0)), s0, r0)
    stereo_96k = np.stack([resample(s1, r1, 96000)] * 2, axis=1)
    soundfile.write(put("speech/hi-res 96k stereo.flac", Expected("ok", 1)), stereo_96k, 96000,
                    subtype="PCM_24")  # fmt: skip
    soundfile.write(put("speech/clip.mp3", Expected("ok", 2)), s2, r2)
    soundfile.write(put("speech/clip.ogg", Expected("ok", 0)), s0, r0, subtype="VORBIS")
    soundfile.write(put("speech/clip.opus", Expected("ok", 1)), resample(s1, r1, 48000), 48000,
                    format="OGG", subtype="OPUS")  # fmt: skip
    encode_aac_m4a(put("speech/clip.m4a", Expected("ok", 2)), s2, r2)
    soundfile.write(put("Telephone Calls/ünïcödé call 8k.WAV", Expected("ok", 1)),
                    resample(s1, r1, 8000), 8000, subtype="ULAW")  # fmt: skip
    soundfile.write(put("mislabelled/really_flac.mp3", Expected("ok", 2)), s2, r2, format="FLAC")
    shutil.copy(landing / "speech/plain.wav", put("copies/same content.wav", Expected("ok", 0)))

    put("broken/empty.wav", Expected("failed", error="empty")).write_bytes(b"")
    random_bytes = np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    put("broken/random.flac", Expected("failed")).write_bytes(random_bytes)
    put("broken/zero_channels.wav", Expected("failed", error="zero channels")).write_bytes(
        zero_channel_wav()
    )
    put("broken/notes.mp3", Expected("failed", error="not readable")).write_bytes(
        b"Meeting notes: nothing to see here.\n" * 20
    )
    put("README.txt", Expected("failed", error="not readable")).write_text("Upload guide\n" * 10)
    # WAV is left out: FFmpeg takes its duration from the file size, so a cut WAV is just short.
    for name in ("truncated.mp3", "truncated.flac"):
        full = BytesIO()
        soundfile.write(full, np.concatenate([s0, s1]), r0, format=name.split(".")[1].upper())
        put(f"broken/{name}", Expected("failed", error="truncated")).write_bytes(
            full.getvalue()[: len(full.getvalue()) // 3]
        )
    soundfile.write(put("quiet/silence.wav", Expected("no_speech")), np.zeros(16000 * 5), 16000)
    noise = np.random.default_rng(3).normal(0, 0.05, 16000 * 5)
    soundfile.write(put("quiet/noise.wav", Expected("no_speech")), noise, 16000)
    (landing / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: skipped, no row
    return expected
