"""CTranslate2 ``Whisper`` stand-ins: one that records the real model's outputs, one that replays.

``RecordingWhisper`` wraps a real ``ctranslate2.models.Whisper`` and keeps, for every row of
every ``generate`` and ``align`` call, what the model returned and the frame count of the row's
window. ``ReplayWhisper`` has the real class's constructor, attributes and methods; ``encode``
returns zeros and ``generate``/``align`` return recorded results, so the pipeline's own code
(batching, scheduling, fallback, segmentation, word timing, Parquet, Dagster) runs as it does
with a real model while the model itself costs close to nothing.

How a replayed row is chosen: ``encode`` sees each row's log-mel features, zero-padded to 3000
frames (``core.batching.pad_features``), so it knows the window's frame count (the last column
that is not all zeros) and takes a fingerprint of the features (CRC-32 of that last column). Both
are written into the row's otherwise all-zero encoder output (``[row, 0, 0]`` and ``[row, 0, 1]``)
and so survive what the pipeline does with encoder outputs (host copies, re-stacking rows for
temperature fallback and alignment). ``generate`` reads them back and returns the recorded row of
one of the ``CANDIDATES`` windows whose frame counts are nearest, chosen by the fingerprint:
deterministic, whatever rows share a batch. Beam-search calls (temperature 0) draw from rows
recorded at temperature 0, sampling calls from rows recorded while sampling. ``align`` returns
the recorded alignment of the same text tokens, or, for tokens never recorded, a straight
diagonal path over the window.

The recording is JSON (``RECORDING_VERSION``), written by ``benchmarks.standin.record``.
"""

import bisect
import json
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

RECORDING_ENV = "WHISPER_PIPELINE_STANDIN"
"""Environment variable naming the recording file ``ReplayWhisper`` replays."""

FIRST_GENERATE_ENV = "WHISPER_PIPELINE_STANDIN_FIRST_GENERATE"
"""Environment variable naming a file to which each process appends ``<unix time> <pid>`` at its
first ``generate`` call (``time.time()``, seconds)."""

RECORDING_VERSION = 1

CANDIDATES = 4
"""Recorded windows of the nearest frame counts a replayed row is chosen from."""

N_FRAMES = 3000
"""Log-mel frames of a Whisper encoder window (30 s at 100 frames/s)."""

ENCODER_FRAMES = 1500
"""Encoder output positions per window (the encoder's stride is 2)."""


def window_frames(features: np.ndarray) -> list[int]:
    """Per row, its window's frame count: one past the last column that is not zero-padding.

    Args:
        features: Log-mel features, shape ``(batch, n_mels, 3000)``, float32, zero-padded past
            each window's end. Two mel bins are looked at: a real log-mel column is never
            exactly 0 in both.

    Returns:
        Frame counts, 0 to 3000.
    """
    n_mels = features.shape[1]
    used = (features[:, 0, :] != 0) | (features[:, n_mels // 2, :] != 0)
    last = features.shape[-1] - np.argmax(used[:, ::-1], axis=1)
    return [int(frames) if row.any() else 0 for frames, row in zip(last, used, strict=True)]


def fingerprint(features: np.ndarray, frames: int) -> int:
    """A 24-bit fingerprint of one row's features, ``(n_mels, 3000)``: CRC-32 of its last column.

    24 bits: it is stored in a float32, whose integers are exact up to 2**24.
    """
    column = np.ascontiguousarray(features[:, max(frames - 1, 0)])
    return zlib.crc32(column.tobytes()) & 0xFFFFFF


def sampling_temperature(options: dict) -> float:
    """The temperature of a ``generate`` call with these options; 0 for beam search.

    CTranslate2 samples when ``beam_size`` is 1 and ``sampling_topk`` is not 1 (its defaults:
    5 and 1), as faster-whisper and ``core.decoding`` ask above temperature 0.
    """
    if options.get("beam_size", 5) == 1 and options.get("sampling_topk", 1) != 1:
        return float(options.get("sampling_temperature", 1.0))
    return 0.0


@dataclass(slots=True)
class GenerationResult:
    """What CTranslate2's ``WhisperGenerationResult`` holds, per batch row.

    Attributes:
        sequences: Per hypothesis, its tokens as strings.
        sequences_ids: Per hypothesis, its token ids (no prompt).
        scores: Per hypothesis, its length-normalised log-probability (``return_scores``).
        no_speech_prob: Probability of the no-speech token (``return_no_speech_prob``).
        logits: Always empty (``return_logits_vocab`` is not replayed).
    """

    sequences: list[list[str]]
    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float
    logits: list = field(default_factory=list)


@dataclass(slots=True)
class AlignmentResult:
    """What CTranslate2's ``WhisperAlignmentResult`` holds, per batch row.

    Attributes:
        alignments: The DTW path, ``[text token index, encoder position]`` pairs; indices run
            over the text tokens and the end-of-text token, positions 0-1499 (50 per second).
        text_token_probs: Per text token, its probability.
    """

    alignments: list[list[int]]
    text_token_probs: list[float]


class RecordingWhisper:
    """A real CTranslate2 ``Whisper`` that keeps what ``generate`` and ``align`` return.

    Every other attribute is the wrapped model's. Thread-safe (the pipeline calls the model
    from one thread per worker).

    Args:
        model: The real ``ctranslate2.models.Whisper``.

    Attributes:
        generated: Per generated row: ``frames``, ``temperature`` and the result's fields.
        aligned: Per aligned row: ``tokens``, ``num_frames`` and the result's fields.
    """

    def __init__(self, model):
        self._model = model
        self._frames: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.d_model = 0
        self.generated: list[dict] = []
        self.aligned: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    @staticmethod
    def _row_key(encoder_output: np.ndarray, row: int) -> bytes:
        return encoder_output[row, 0, :16].tobytes()

    def encode(self, features, to_cpu: bool = False):
        """The real encoder output; each row's frame count is kept, keyed by its first values."""
        output = self._model.encode(features, to_cpu=to_cpu)
        host = np.asarray(output)
        frames = window_frames(np.asarray(features))
        with self._lock:
            self.d_model = host.shape[-1]
            for row, count in enumerate(frames):
                self._frames[self._row_key(host, row)] = count
        return output

    def generate(self, encoder_output, prompts, **options):
        """The real ``generate``; every row's result is kept with its window's frame count."""
        results = self._model.generate(encoder_output, prompts, **options)
        host = np.asarray(encoder_output)
        temperature = sampling_temperature(options)
        with self._lock:
            for row, result in enumerate(results):
                self.generated.append(
                    {
                        "frames": self._frames.get(self._row_key(host, row), -1),
                        "temperature": float(temperature),
                        "prompt_length": len(prompts[row]),
                        "max_length": options.get("max_length", 448),
                        "sequences": [list(s) for s in result.sequences],
                        "sequences_ids": [list(s) for s in result.sequences_ids],
                        "scores": [float(s) for s in result.scores],
                        "no_speech_prob": float(result.no_speech_prob),
                    }
                )
        return results

    def align(self, encoder_output, start_sequence, text_tokens, num_frames, **options):
        """The real ``align``; every row's path and token probabilities are kept."""
        results = self._model.align(encoder_output, start_sequence, text_tokens, num_frames,
                                    **options)  # fmt: skip
        frames = [num_frames] * len(text_tokens) if isinstance(num_frames, int) else num_frames
        with self._lock:
            for tokens, count, result in zip(text_tokens, frames, results, strict=True):
                self.aligned.append(
                    {
                        "tokens": list(tokens),
                        "num_frames": int(count),
                        "alignments": [list(pair) for pair in result.alignments],
                        "text_token_probs": [float(p) for p in result.text_token_probs],
                    }
                )
        return results

    def recording(self, source: dict) -> dict:
        """Everything kept, as the JSON document ``ReplayWhisper`` reads.

        Args:
            source: What was recorded, how (model, options, corpus), for the reader.
        """
        model = {
            "is_multilingual": bool(self._model.is_multilingual),
            "n_mels": int(self._model.n_mels),
            "num_languages": int(self._model.num_languages),
            "d_model": int(self.d_model),
        }
        return {
            "version": RECORDING_VERSION,
            "model": model,
            "source": source,
            "generate": [row for row in self.generated if row["frames"] >= 0],
            "align": self.aligned,
        }


class _Pool:
    """Recorded generation rows of one kind (beam search or sampling), sorted by frame count."""

    def __init__(self, rows: list[dict]):
        rows = sorted(rows, key=lambda row: row["frames"])
        self.frames = [row["frames"] for row in rows]
        self.results = [
            GenerationResult(
                row["sequences"], row["sequences_ids"], row["scores"], row["no_speech_prob"]
            )
            for row in rows
        ]

    def __bool__(self) -> bool:
        return bool(self.results)

    def choose(self, frames: int, key: int) -> GenerationResult:
        """One of the ``CANDIDATES`` results of the nearest frame counts, picked by ``key``."""
        at = bisect.bisect_left(self.frames, frames)
        near = range(max(0, at - CANDIDATES), min(len(self.frames), at + CANDIDATES))
        ranked = sorted(near, key=lambda i: (abs(self.frames[i] - frames), i))[:CANDIDATES]
        return self.results[ranked[key % len(ranked)]]


class Recording:
    """A recording file, read once per process (``load_recording``).

    Args:
        document: The JSON document ``RecordingWhisper.recording`` made.

    Raises:
        ValueError: The document is of another ``RECORDING_VERSION`` or holds no beam-search
            rows.
    """

    def __init__(self, document: dict):
        if document.get("version") != RECORDING_VERSION:
            raise ValueError(
                f"recording version {document.get('version')}, not {RECORDING_VERSION}"
            )
        self.model = document["model"]
        rows = document["generate"]
        self.beam = _Pool([row for row in rows if row["temperature"] == 0])
        self.sampled = _Pool([row for row in rows if row["temperature"] > 0]) or self.beam
        if not self.beam:
            raise ValueError("the recording holds no temperature-0 generate rows")
        self.alignments = {
            tuple(row["tokens"]): (row["num_frames"], row["alignments"], row["text_token_probs"])
            for row in document["align"]
        }
        probabilities = [p for row in document["align"] for p in row["text_token_probs"]]
        self.mean_probability = float(np.mean(probabilities)) if probabilities else 0.5


@cache
def load_recording(path: str) -> Recording:
    """The recording at ``path``, parsed once per process.

    Raises:
        OSError: It cannot be read.
        ValueError: It is not a recording of this version (``Recording``).
    """
    return Recording(json.loads(Path(path).read_text()))


class ReplayWhisper:
    """A drop-in for ``ctranslate2.models.Whisper`` that replays a recording.

    The constructor takes the real one's arguments (the model files are not read) and the
    recording from ``$WHISPER_PIPELINE_STANDIN`` unless ``recording`` names one.

    Args:
        model_path: The model directory (only kept).
        device: ``cpu`` or ``cuda`` (only reported; everything runs on the host).
        device_index: GPU id(s), reported in ``device_index``.
        compute_type: Reported in ``compute_type``.
        inter_threads: Workers (``num_workers``), as the real model's replicas.
        intra_threads: Ignored.
        recording: Path of the recording; default ``$WHISPER_PIPELINE_STANDIN``.
        **unused: The real constructor's other arguments, ignored.

    Raises:
        KeyError: No recording is named.

    Attributes:
        stats: Counters of this process, shared by every instance: ``generate_calls``,
            ``generate_rows``, ``align_rows``, ``align_recorded`` (rows replayed as recorded)
            and ``align_synthesized``.
    """

    stats = {
        "generate_calls": 0,
        "generate_rows": 0,
        "align_rows": 0,
        "align_recorded": 0,
        "align_synthesized": 0,
    }
    _lock = threading.Lock()
    _first_generate_logged = False

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        device_index: int | list[int] = 0,
        compute_type: str = "default",
        inter_threads: int = 1,
        intra_threads: int = 0,
        recording: str | None = None,
        **unused,
    ):
        self._recording = load_recording(recording or os.environ[RECORDING_ENV])
        attributes = self._recording.model
        self.model_path = model_path
        self.device = device
        self.device_index = list(device_index) if isinstance(device_index, list) else [device_index]
        self.compute_type = compute_type
        self.num_workers = max(1, inter_threads) * len(self.device_index)
        self.is_multilingual = attributes["is_multilingual"]
        self.n_mels = attributes["n_mels"]
        self.num_languages = attributes["num_languages"]
        self.d_model = attributes["d_model"]
        self.tensor_parallel = False
        self.num_queued_batches = 0
        self.num_active_batches = 0
        self.model_is_loaded = True

    def load_model(self, keep_cache: bool = False) -> None:
        """No-op (the real one reloads unloaded weights)."""

    def unload_model(self, to_cpu: bool = False) -> None:
        """No-op (the real one frees the weights)."""

    def encode(self, features, to_cpu: bool = False):
        """Zeros of the encoder output's shape, each row's frame count and fingerprint inside.

        Args:
            features: ``StorageView`` or array, shape ``(batch, n_mels, 3000)``, float32.
            to_cpu: Ignored (the output is always on the host).

        Returns:
            ``ctranslate2.StorageView`` of shape ``(batch, 1500, d_model)``, float32, on the CPU:
            zeros but ``[row, 0, 0]`` (frames) and ``[row, 0, 1]`` (fingerprint).
        """
        import ctranslate2

        host = np.asarray(features)
        output = np.zeros((host.shape[0], ENCODER_FRAMES, self.d_model), dtype=np.float32)
        for row, frames in enumerate(window_frames(host)):
            output[row, 0, 0] = frames
            output[row, 0, 1] = fingerprint(host[row], frames)
        return ctranslate2.StorageView.from_array(output)

    def detect_language(self, encoder_output) -> list[list[tuple[str, float]]]:
        """Per row, ``[("<|en|>", 1.0)]``: every recorded window is taken as English."""
        return [[("<|en|>", 1.0)] for _ in range(np.asarray(encoder_output).shape[0])]

    def _log_first_generate(self) -> None:
        with ReplayWhisper._lock:
            if ReplayWhisper._first_generate_logged:
                return
            ReplayWhisper._first_generate_logged = True
        path = os.environ.get(FIRST_GENERATE_ENV)
        if path:
            with open(path, "a") as handle:
                handle.write(f"{time.time():.6f} {os.getpid()}\n")

    def generate(self, encoder_output, prompts, asynchronous: bool = False, **options):
        """Per row, a recorded result of a window of about its frame count (module docstring).

        Args:
            encoder_output: ``encode``'s output (or rows of it re-stacked), shape
                ``(batch, 1500, d_model)``.
            prompts: Per row, its prompt token ids (their length counts towards
                ``max_length``).
            asynchronous: Must be false.
            **options: ``generate``'s options; ``num_hypotheses`` and ``sampling_temperature``
                (sampling), ``max_length`` (tokens beyond it are cut) are used.

        Returns:
            A ``GenerationResult`` per row, ``num_hypotheses`` hypotheses each.

        Raises:
            NotImplementedError: ``asynchronous`` is true.
        """
        if asynchronous:
            raise NotImplementedError("the stand-in replays synchronously only")
        self._log_first_generate()
        tags = np.asarray(encoder_output)[:, 0, :2]
        temperature = sampling_temperature(options)
        pool = self._recording.sampled if temperature > 0 else self._recording.beam
        hypotheses = int(options.get("num_hypotheses", 1))
        max_length = int(options.get("max_length", 448))
        results = []
        for (frames, key), prompt in zip(tags, prompts, strict=True):
            recorded = pool.choose(int(frames), int(key) + round(temperature * 10))
            budget = max(0, max_length - len(prompt))
            picks = [i % len(recorded.sequences_ids) for i in range(hypotheses)]
            results.append(
                GenerationResult(
                    [recorded.sequences[i][:budget] for i in picks],
                    [recorded.sequences_ids[i][:budget] for i in picks],
                    [recorded.scores[i] for i in picks],
                    recorded.no_speech_prob,
                )
            )
        with ReplayWhisper._lock:
            self.stats["generate_calls"] += 1
            self.stats["generate_rows"] += len(results)
        return results

    def align(self, encoder_output, start_sequence, text_tokens, num_frames, **options):
        """Per row, the recorded alignment of the same tokens, else a diagonal path.

        Args:
            encoder_output: Encoder output of the rows (unused).
            start_sequence: The alignment prompt (unused).
            text_tokens: Per row, its text token ids.
            num_frames: Per row (or for all), its window's log-mel frames.
            **options: ``median_filter_width`` (unused).

        Returns:
            An ``AlignmentResult`` per row; recorded positions past the window are clamped to
            its last encoder position.
        """
        counts = [num_frames] * len(text_tokens) if isinstance(num_frames, int) else num_frames
        results, recorded_rows = [], 0
        for tokens, frames in zip(text_tokens, counts, strict=True):
            last = max(1, min(ENCODER_FRAMES, frames // 2)) - 1
            recorded = self._recording.alignments.get(tuple(tokens))
            if recorded is not None:
                recorded_rows += 1
                recorded_frames, path, probabilities = recorded
                if recorded_frames > frames:
                    path = [[index, min(position, last)] for index, position in path]
                results.append(AlignmentResult(path, probabilities))
                continue
            count = len(tokens)
            path = [[index, round(index * last / max(count, 1))] for index in range(count + 1)]
            probability = self._recording.mean_probability
            results.append(AlignmentResult(path, [probability] * count))
        with ReplayWhisper._lock:
            self.stats["align_rows"] += len(results)
            self.stats["align_recorded"] += recorded_rows
            self.stats["align_synthesized"] += len(results) - recorded_rows
        return results


def install(ctranslate2_module=None) -> None:
    """Replace ``ctranslate2.models.Whisper`` with ``ReplayWhisper`` in this process.

    faster-whisper (``WhisperModel.__init__``) and the pipeline (``WhisperModelResource.sampler``)
    look the class up as ``ctranslate2.models.Whisper`` when they build a model, so this one
    attribute is enough.
    """
    if ctranslate2_module is None:
        import ctranslate2 as ctranslate2_module
    ctranslate2_module.models.Whisper = ReplayWhisper
