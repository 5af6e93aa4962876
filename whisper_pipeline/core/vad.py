"""Faster Silero VAD: small ONNX Runtime calls, and the model's STFT done by numpy's FFT.

faster-whisper's ``get_speech_timestamps`` runs the process's one ``SileroVADModel``
(``faster_whisper.vad.get_vad_model()``, its bundled ``silero_vad_v6.onnx``), feeding its ONNX
Runtime session up to 10,000 windows per call. ``configure_vad`` replaces that model's session
by a ``SileroSession``, which gives the same probabilities (bit-identical, or within float32
rounding with the FFT) for less CPU; faster-whisper's thresholds and region logic are unchanged.

The model's first layer is an STFT written as a ``Conv`` (258 filters of 256 samples, stride
128: a periodic Hann window times the cosines and minus the sines of a 256-point DFT) over each
window reflect-padded by 64 samples on the right, followed by the magnitude. That is
``|rfft(hann * frame)|`` of four frames per window, which numpy's FFT computes in O(n log n)
instead of a dense matrix product; the rest of the graph is cut out of the model file
(``onnx.utils.Extractor``) and run by ONNX Runtime. The cut model is cached on disk, keyed by
the model file's SHA-256, so only the first process on a machine imports ``onnx`` (0.8 s).
Before it is used, the FFT path is checked against the whole model on a fixed input; a model
whose first layer is not this STFT falls back to the stock session with a warning.
"""

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VAD_WINDOWS_PER_CALL = 512
"""Silero VAD windows (512 samples, 32 ms at 16 kHz) per ONNX Runtime call: 16 s of audio.
faster-whisper runs up to 10,000 windows (320 s) per call, whose intermediate tensors (tens of
MB) outgrow the CPU's caches; with 500-1,000 windows the same model needs about 11% less CPU on
a 370 s block, with bit-identical probabilities (the LSTM state is carried from call to call).
``benchmarks/RESULTS.md``, "Preprocessing per stage"."""

WINDOW_SAMPLES = 512
"""Samples per Silero VAD window at 16 kHz (faster-whisper's ``SileroVADModel``)."""

CONTEXT_SAMPLES = 64
"""Samples of the previous window prepended to each window (faster-whisper's model input is
``(n_windows, 576)``)."""

STFT_SIZE = 256
"""Silero VAD v6's STFT frame (``filter_length``) in samples."""

STFT_HOP = 128
"""Silero VAD v6's STFT hop in samples."""

STFT_PAD = 64
"""Reflect padding (samples) Silero VAD v6 adds to the right of each 576-sample window."""

STFT_OUTPUT = "/encoder/feature_extractor/Sqrt_output_0"
"""The model's STFT magnitude tensor, ``(n_windows, 129, 4)`` float32: where the cut graph
starts."""

FFT_TOLERANCE = 1e-4
"""Largest difference in speech probability the FFT path may show against the whole model on
the check input before it is refused (measured: 3.1e-6 on 370 s of real speech)."""

_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(STFT_SIZE) / STFT_SIZE)).astype(np.float32)


def stft_magnitude(windows: np.ndarray) -> np.ndarray:
    """Silero VAD v6's STFT magnitude of model-input windows, by numpy's real FFT.

    Args:
        windows: Model input, shape ``(n_windows, 576)`` float32 (64 context samples, then a
            512-sample window, 16 kHz, in [-1, 1]).

    Returns:
        ``|rfft(hann * frame)|`` of the four 256-sample frames (hop 128) of each window,
        reflect-padded by 64 samples on the right, shape ``(n_windows, 129, 4)`` float32: the
        model's ``STFT_OUTPUT``.
    """
    padded = np.pad(windows, ((0, 0), (0, STFT_PAD)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, STFT_SIZE, axis=1)[:, ::STFT_HOP]
    spectrum = np.fft.rfft(frames * _HANN, axis=-1)
    return np.abs(spectrum).astype(np.float32).transpose(0, 2, 1)


class SileroSession:
    """Stands in for ``SileroVADModel.session``: the same outputs, in calls of fewer windows.

    ``run(None, {"input", "h", "c"})`` takes model input of shape ``(n_windows, 576)`` float32
    and LSTM state ``h``, ``c`` of shape ``(1, 1, 128)``, and returns ``[probabilities
    (n_windows, 1), h, c]``. The windows are fed ``windows`` at a time, each call starting from
    the state the previous one returned, exactly as faster-whisper feeds its own batches.

    Args:
        stock: faster-whisper's session of the whole model.
        windows: Windows per call.
        after_stft: A session of the graph after the STFT (input ``STFT_OUTPUT``, ``h``, ``c``),
            or ``None`` to run ``stock`` on the windows.

    Raises:
        ValueError: If ``windows`` is below 1.
    """

    def __init__(self, stock, windows: int, after_stft=None):
        if windows < 1:
            raise ValueError(f"windows per VAD call must be at least 1, got {windows}")
        self.stock = stock
        self.windows = windows
        self.after_stft = after_stft

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``feeds["input"]`` in calls of ``windows``; see the class."""
        windows, h, c = feeds["input"], feeds["h"], feeds["c"]
        if windows.shape[0] == 0:
            return self.stock.run(output_names, feeds)
        probabilities = []
        for first in range(0, windows.shape[0], self.windows):
            batch = windows[first : first + self.windows]
            if self.after_stft is None:
                output, h, c = self.stock.run(output_names, {"input": batch, "h": h, "c": c})
            else:
                magnitude = stft_magnitude(batch)
                output, h, c = self.after_stft.run(
                    output_names, {STFT_OUTPUT: magnitude, "h": h, "c": c}
                )
            probabilities.append(output)
        return [np.concatenate(probabilities, axis=0), h, c]


def cache_dir() -> Path:
    """Where the cut VAD graph is cached.

    ``$WHISPER_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/whisper_pipeline``, else
    ``~/.cache/whisper_pipeline``.
    """
    if os.environ.get("WHISPER_PIPELINE_CACHE"):
        return Path(os.environ["WHISPER_PIPELINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whisper_pipeline"


def graph_after_stft(model_path: str, refresh: bool = False) -> bytes:
    """The Silero VAD graph from ``STFT_OUTPUT`` to its outputs, as serialized ONNX.

    Read from the cache (``cache_dir()``, keyed by the model file's SHA-256) or cut with
    ``onnx.utils.Extractor`` and written there atomically; an unwritable cache only costs the
    cut (and ``import onnx``) again in the next process. ``refresh`` cuts it again and rewrites
    the cache (a cached file ONNX Runtime cannot load).

    Raises:
        ImportError: If the graph is not cached and ``onnx`` is not installed.
        Exception: Whatever ``onnx`` raises for a model without ``STFT_OUTPUT``.
    """
    data = Path(model_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    cached = cache_dir() / f"{Path(model_path).stem}.{digest}.after-stft.onnx"
    if not refresh:
        try:
            return cached.read_bytes()
        except OSError:
            pass
    import onnx
    import onnx.utils

    model = onnx.load_model_from_string(data)
    outputs = [output.name for output in model.graph.output]
    cut = onnx.utils.Extractor(model).extract_model([STFT_OUTPUT, "h", "c"], outputs)
    serialized = cut.SerializeToString()
    partial = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as handle:
            partial = handle.name
            handle.write(serialized)
        os.chmod(partial, 0o644)  # readable by every user sharing the cache, as a plain file
        os.replace(partial, cached)
    except OSError as error:
        logger.warning("could not cache the cut VAD graph at %s: %s", cached, error)
        if partial is not None and os.path.exists(partial):
            os.unlink(partial)  # a full disk leaves no partial file behind
    return serialized


def check_input() -> np.ndarray:
    """Fixed model input for checking the FFT path: 64 windows of a chirp in noise, seed 0.

    Returns:
        Shape ``(64, 576)`` float32, in [-1, 1].
    """
    rng = np.random.default_rng(0)
    t = np.arange(64 * WINDOW_SAMPLES) / 16000
    audio = 0.5 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.05 * rng.standard_normal(t.size)
    windows = audio.astype(np.float32).reshape(-1, WINDOW_SAMPLES)
    context = np.roll(windows[:, -CONTEXT_SAMPLES:], 1, axis=0)
    context[0] = 0
    return np.ascontiguousarray(np.concatenate([context, windows], axis=1))


def fft_session(stock, model_path: str):
    """An ONNX Runtime session of the graph after the STFT, checked against ``stock``.

    Returns:
        The session, or ``None`` (with a warning in the log) if the graph cannot be cut or its
        probabilities on ``check_input()`` differ from ``stock``'s by more than
        ``FFT_TOLERANCE``.
    """
    import onnxruntime

    def session(graph: bytes):  # with faster-whisper's options (one thread)
        return onnxruntime.InferenceSession(
            graph, sess_options=stock.get_session_options(), providers=stock.get_providers()
        )

    try:
        try:
            after = session(graph_after_stft(model_path))
        except Exception:  # InvalidProtobuf and the like: a damaged cached file
            after = session(graph_after_stft(model_path, refresh=True))
        windows = check_input()
        state = {"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}
        expected = stock.run(None, {"input": windows, **state})[0]
        got = after.run(None, {STFT_OUTPUT: stft_magnitude(windows), **state})[0]
        difference = float(np.abs(expected - got).max())
    except Exception as error:  # any model this code does not know: use the stock session
        logger.warning("Silero VAD's STFT by FFT is off (%s); using the whole model", error)
        return None
    if not difference <= FFT_TOLERANCE:
        logger.warning(
            "Silero VAD's STFT by FFT is off: probabilities differ by %.2g from the model's",
            difference,
        )
        return None
    return after


_configured = False


def configure_vad(windows: int | None = VAD_WINDOWS_PER_CALL, fft: bool = True) -> None:
    """Set how faster-whisper's shared Silero VAD model runs in this process.

    Replaces the session of ``faster_whisper.vad.get_vad_model()`` (one per process) by a
    ``SileroSession``; every faster-whisper VAD call in the process then uses it.
    ``chunking.speech_regions`` calls this with the defaults on first use.

    Args:
        windows: Windows per ONNX Runtime call; ``None`` restores faster-whisper's own session
            (10,000 windows per call, the whole model).
        fft: Compute the STFT with numpy's FFT (if the check passes; see ``fft_session``).

    Raises:
        ValueError: If ``windows`` is below 1.
    """
    global _configured
    from faster_whisper.vad import get_assets_path, get_vad_model

    model = get_vad_model()
    session = model.session
    stock = session.stock if isinstance(session, SileroSession) else session
    if windows is None:
        model.session = stock
    else:
        after = None
        if fft:
            reuse = isinstance(session, SileroSession) and session.after_stft is not None
            path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
            after = session.after_stft if reuse else fft_session(stock, path)
        model.session = SileroSession(stock, windows, after)
    _configured = True


def ensure_configured() -> None:
    """``configure_vad()`` with the defaults, unless this process already configured VAD."""
    if not _configured:
        configure_vad()
