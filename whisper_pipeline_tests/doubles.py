"""A deterministic transcriber with no model: the test implementation of ``TranscriberResource``.

It exercises everything around the model (the asset graph, staging, waves, the result cache,
redo, failure rows, publishing, the IO managers, the checks) in-process and in seconds. Its
text names the chunk (``chunk 0 of 1a2b3c4d``), so a test can tell which content a row came
from; its segment spans the chunk's speech, in seconds from the file's start, as the real
transcriber reports it.
"""

import time
from collections import Counter

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from pydantic import Field

from whisper_pipeline.core.audio import SAMPLE_RATE
from whisper_pipeline.core.results import ModelSpec
from whisper_pipeline.core.scheduler import IDLE_WAIT_S
from whisper_pipeline.core.types import ChunkInput, ChunkResult, Segment, Word
from whisper_pipeline.resources.transcriber import TranscriberResource
from whisper_pipeline.resources.whisper import bundled_model_path, model_feature_extractor


def fake_text(content_sha256: str, chunk_index: int) -> str:
    """The text ``FakeTranscriber`` gives a chunk."""
    return f"chunk {chunk_index} of {content_sha256[:8]}"


class FakeTranscriber:
    """Same interface as ``core.batching.BatchTranscriber``: ``transcribe``,
    ``transcribe_waves``, ``generate_calls``, ``align_s``, ``unpacked``, ``packing_stopped``
    (it never packs), ``busy_s`` and ``first_batch_at``.

    Args:
        fail_contents: SHA-256 prefixes whose chunks "raise in the model" (``"*"``: all).
        word_timestamps: Give each segment its words, the segment's span cut in equal parts.
    """

    def __init__(self, fail_contents: list[str], word_timestamps: bool = True):
        self.fail_contents = list(fail_contents)
        self.word_timestamps = word_timestamps
        self.generate_calls = 0
        self.align_s = 0.0
        self.chunks_seen = 0
        self.unpacked: Counter[str] = Counter()
        self.packing_stopped = False
        self.busy_s = 0.0
        self.first_batch_at: float | None = None

    def transcribe(self, chunks: list[ChunkInput]) -> list[ChunkResult]:
        """One result per chunk; reads every feature value, as the encoder would."""
        self.generate_calls += 1
        results = []
        for chunk in chunks:
            self.chunks_seen += 1
            float(np.asarray(chunk.features, dtype=np.float32).sum())
            sha, index = chunk.key
            if "*" in self.fail_contents or any(sha.startswith(p) for p in self.fail_contents):
                results.append(ChunkResult(chunk.key, error="RuntimeError: fake model failure"))
                continue
            start = chunk.speech_starts[0] / SAMPLE_RATE
            end = chunk.speech_ends[-1] / SAMPLE_RATE
            text = fake_text(sha, index)
            words = ()
            if self.word_timestamps:
                parts = text.split()
                step = (end - start) / len(parts)
                words = tuple(
                    Word(part, start + i * step, start + (i + 1) * step, 0.9)
                    for i, part in enumerate(parts)
                )
            segment = Segment(start, end, text, -0.1, 0.01, 1.2, 0.0, words)
            results.append(ChunkResult(chunk.key, [segment], "en", 1.0))
        return results

    def transcribe_waves(self, waves):
        """``transcribe`` of each wave, one list of results per wave; an empty wave (none
        ready yet) is waited for, as ``core.scheduler.Scheduler`` does."""
        for wave in waves:
            if not wave:
                time.sleep(IDLE_WAIT_S)
                continue
            started = time.monotonic()
            self.first_batch_at = self.first_batch_at or started
            results = self.transcribe(wave)
            self.busy_s += time.monotonic() - started
            yield results


class FakeTranscriberResource(TranscriberResource):
    """``TranscriberResource`` with ``FakeTranscriber`` instead of a model.

    Sizes are validated as for the real model (``beam_size``, ``batch_size``); there is no
    model, device or compute type to check. Features are the bundled model's frontend, as the
    real resource's default computes them.

    Attributes:
        fail_contents: SHA-256 prefixes whose chunks fail in the "model" (``"*"``: all).
    """

    fail_contents: list[str] = Field(default_factory=list)

    def config_problems(self) -> list[str]:
        """None: no model, device or compute type is used."""
        return []

    def spec(self) -> ModelSpec:
        """Model ``fake-transcriber`` on ``cpu``, compute type ``none``.

        Apart from any real model's in the tables and the cache key.
        """
        return ModelSpec("fake-transcriber", "cpu", "none", self.decoding_options())

    def feature_extractor(self) -> FeatureExtractor:
        """The bundled ``tiny.en`` model's frontend (80 mel bins)."""
        return model_feature_extractor(bundled_model_path())

    def transcriber(self) -> FakeTranscriber:
        """A fresh ``FakeTranscriber``."""
        return FakeTranscriber(self.fail_contents, self.word_timestamps)
