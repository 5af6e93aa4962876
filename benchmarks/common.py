"""What the benchmarks share: the input sets, the model settings and loaders, the machine.

Input sets (``load_input_set``): ``corpus`` (``../shared/corpus``, real recordings with
references), ``real-short`` (its recordings of at most ``REAL_SHORT_MAX_S``) and ``many-short``
(Piper-synthesized clips of generated sentences, cached under ``benchmarks/out/``) and
``perturbed-2h`` (two hours of speed- and pitch-perturbed corpus copies, ``benchmarks.perturbed``,
cached under ``benchmarks/out/perturbed/``).
"""

import csv
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import wave
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from devtools.harness import corpus_dir, write_speech
from whisper_pipeline.core.memory import GLIBC_TUNABLES

REPOSITORY = Path(__file__).resolve().parents[1]


DEFAULT_OUT = REPOSITORY / "benchmarks" / "out"


PARTITION = "2026-11-20"


INPUT_SETS = ("corpus", "real-short", "many-short", "perturbed-2h")


SENTENCE_SEED = 20261120


@dataclass(frozen=True)
class AudioInput:
    """One audio file of an input set.

    Attributes:
        name: Unique relative name (``short/jfk.flac``); the landing-zone path in method 4.
        path: Absolute path of the file.
        reference: Reference transcript, or empty.
        language: Language of the speech (``en``, ``de``, ``en+de``...).
        duration_s: Audio duration in seconds.
    """

    name: str
    path: str
    reference: str
    language: str
    duration_s: float

    @property
    def scored(self) -> bool:
        """Whether the file counts towards WER: English with a non-empty reference."""
        return self.language == "en" and bool(self.reference.strip())


@dataclass(frozen=True)
class ModelConfig:
    """What every method runs with.

    Attributes:
        model: CTranslate2 model directory.
        model_given: Whether ``--model`` named it (method 4 otherwise runs its default model).
        device: ``cpu`` or ``cuda``.
        compute_type: CTranslate2 compute type.
        cpu_threads: CTranslate2 intra-op threads; 0: CTranslate2 chooses for methods 1-2
            (one worker, every core) and the pipeline's auto rule for methods 3-4.
        num_workers: CTranslate2 workers for methods 3-4, which keep one batch in flight per
            worker; 0: the pipeline's auto rule (``resources.whisper.cpu_parallelism``: two
            single-threaded workers on 2 cores). Methods 1-2 make one call at a time, so a
            second worker would sit idle; they run one.
        beam_size: Beam width at temperature 0.
        batch_size: Chunks per batch (methods 2-4).
    """

    model: str
    model_given: bool
    device: str
    compute_type: str
    cpu_threads: int
    num_workers: int
    beam_size: int
    batch_size: int


REAL_SHORT_MAX_S = 15.0
"""Longest corpus file of the ``real-short`` set: the corpus's real recorded short clips."""


def load_corpus(limit: int | None) -> list[AudioInput]:
    """Files listed in the corpus manifest (its first ``limit`` rows when given).

    Raises:
        FileNotFoundError: The manifest does not exist.
    """
    base = corpus_dir()
    with open(base / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        AudioInput(
            name=row["file"],
            path=str((base / row["file"]).resolve()),
            reference=row["reference"] or "",
            language=row["language"] or "",
            duration_s=float(row["duration_s"]),
        )
        for row in rows[:limit]
    ]


MIN_WORDS, MAX_WORDS = 6, 20

_DETERMINERS = ("the", "my", "our", "her", "his", "their", "that")


_PERSON_ADJECTIVES = (
    "old", "young", "quiet", "busy", "careful", "happy", "tired", "clever", "brave", "gentle",
    "patient", "curious", "proud", "friendly", "serious", "cheerful",
)  # fmt: skip


_THING_ADJECTIVES = (
    "old", "small", "heavy", "wooden", "broken", "empty", "shiny", "dusty", "green", "yellow",
    "little", "cheap", "new", "red",
)  # fmt: skip


_PEOPLE = (
    "farmer", "teacher", "doctor", "baker", "pilot", "painter", "driver", "student", "captain",
    "neighbor", "sister", "brother", "writer", "gardener", "singer", "engineer", "nurse", "cook",
)  # fmt: skip


_VERBS = (
    "carried", "opened", "painted", "found", "washed", "cleaned", "moved", "fixed", "sold",
    "bought", "packed", "checked", "borrowed", "dropped", "carved", "wrapped", "lifted", "hid",
)  # fmt: skip


_THINGS = (
    "box", "letter", "window", "basket", "bicycle", "table", "gate", "door", "chair", "bottle",
    "map", "lamp", "blanket", "ladder", "jacket", "kettle", "mirror", "notebook", "umbrella",
)  # fmt: skip


_PHRASES = (
    "before dinner", "after the storm", "near the river", "in the morning", "behind the station",
    "under the old bridge", "during the long summer", "at the end of the street", "with great care",
    "on a cold afternoon", "without a word", "next to the market", "late at night", "by the lake",
)  # fmt: skip


_CONNECTORS = ("and then", "because", "while", "but", "so", "after")


def _noun_phrase(
    rng: random.Random, adjectives: tuple[str, ...], nouns: tuple[str, ...]
) -> list[str]:
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(adjectives))
    return [*words, rng.choice(nouns)]


def _clause(rng: random.Random) -> list[str]:
    subject = _noun_phrase(rng, _PERSON_ADJECTIVES, _PEOPLE)
    return [*subject, rng.choice(_VERBS), *_noun_phrase(rng, _THING_ADJECTIVES, _THINGS)]


def make_sentences(count: int, seed: int = SENTENCE_SEED) -> list[str]:
    """Distinct English sentences of 6-20 words, the same for the same ``count`` and ``seed``.

    Each is a clause ("the old farmer carried my basket"), optionally followed by a phrase
    ("near the river") and a second clause after a connector. The first ``k`` sentences do not
    depend on ``count``.
    """
    rng = random.Random(seed)
    sentences: list[str] = []
    seen: set[str] = set()
    while len(sentences) < count:
        words = _clause(rng)
        if rng.random() < 0.7:
            words += rng.choice(_PHRASES).split()
        if rng.random() < 0.5:
            words += [*rng.choice(_CONNECTORS).split(), *_clause(rng)]
            if rng.random() < 0.4:
                words += rng.choice(_PHRASES).split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS:
            continue
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + "."
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def wav_duration_s(path: Path) -> float:
    """Duration of a WAV file from its header."""
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / handle.getframerate()


def synthesize_clips(count: int, cache_root: Path) -> list[AudioInput]:
    """``count`` short English clips spoken by Piper, cached in ``cache_root/n<count>/``.

    The cache is reused when its manifest holds exactly the sentences ``make_sentences(count)``
    gives and every clip exists; otherwise the clips are synthesized again.
    """
    sentences = make_sentences(count)
    directory = cache_root / f"n{count}"
    manifest_path = directory / "manifest.json"
    names = [f"clip_{index:04d}.wav" for index in range(count)]
    cached = False
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        cached = manifest.get("sentences") == sentences and all(
            (directory / name).exists() for name in names
        )
    if not cached:
        directory.mkdir(parents=True, exist_ok=True)
        for name, sentence in zip(names, sentences, strict=True):
            write_speech(sentence, directory / name)
        manifest = {"seed": SENTENCE_SEED, "sentences": sentences, "files": names}
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return [
        AudioInput(
            name=name,
            path=str((directory / name).resolve()),
            reference=sentence,
            language="en",
            duration_s=wav_duration_s(directory / name),
        )
        for name, sentence in zip(names, sentences, strict=True)
    ]


def load_input_set(name: str, limit: int | None, short_clips: int, out: Path) -> list[AudioInput]:
    """The files of input set ``name`` (see ``INPUT_SETS``), at most ``limit`` of them."""
    if name == "corpus":
        return load_corpus(limit)
    if name == "real-short":
        short = [a for a in load_corpus(None) if a.duration_s <= REAL_SHORT_MAX_S]
        return short[:limit]
    if name == "many-short":
        return synthesize_clips(short_clips, out / "many_short")[:limit]
    if name == "perturbed-2h":
        from benchmarks.perturbed import perturbed_set

        return perturbed_set(2.0, out / "perturbed")[:limit]
    raise ValueError(f"unknown input set {name!r}; choose from {', '.join(INPUT_SETS)}")


def load_model(config: ModelConfig):
    """The ``faster_whisper.WhisperModel`` methods 1-2 use: one worker, ``cpu_threads``."""
    from faster_whisper import WhisperModel

    return WhisperModel(
        config.model,
        device=config.device,
        compute_type=config.compute_type,
        cpu_threads=config.cpu_threads,
    )


def load_pipeline_model(config: ModelConfig):
    """The model as method 3's pipeline loads it: its ``WhisperModelResource`` (own threads and
    workers rule)."""
    from whisper_pipeline.resources.whisper import WhisperModelResource

    return WhisperModelResource(
        model=config.model,
        device=config.device,
        compute_type=config.compute_type,
        cpu_threads=config.cpu_threads,
        num_workers=config.num_workers,
    ).load()


def prepare_chunks(inputs: list[AudioInput], feature_extractor) -> tuple[list, dict[str, str]]:
    """The pipeline's preprocessing of every input: ``(chunk inputs, errors by name)``.

    Each file goes through ``core.preprocess.preprocess_file`` as in ``preprocess_shard``, numpy's
    BLAS on one thread as there (``single_threaded_blas``); chunk keys are ``(name, chunk
    index)``.
    """
    from whisper_pipeline.core.preprocess import preprocess_file, single_threaded_blas
    from whisper_pipeline.core.schema import STATUS_FAILED
    from whisper_pipeline.core.types import ChunkInput

    errors: dict[str, str] = {}
    chunk_inputs = []
    with tempfile.TemporaryDirectory(prefix="whisper_bench_") as scratch, single_threaded_blas():
        spool_path = os.path.join(scratch, "audio.s16")
        for item in inputs:

            def add_chunk(chunk, features, name=item.name):
                chunk_inputs.append(
                    ChunkInput(
                        key=(name, chunk.index),
                        features=features,
                        speech_starts=chunk.speech_starts,
                        speech_ends=chunk.speech_ends,
                    )
                )

            with open(item.path, "rb") as handle:
                # No declared duration: the benchmark never skipped truncated files.
                done = preprocess_file(handle, None, feature_extractor, spool_path, add_chunk)
            if done.status == STATUS_FAILED:
                errors[item.name] = done.error
    return chunk_inputs, errors


def corpus_wer(inputs: list[AudioInput], texts: dict[str, str]) -> float | None:
    """Corpus-level English WER over the scored inputs; ``None`` when none is scored."""
    scored = [item for item in inputs if item.scored]
    if not scored:
        return None
    from devtools.evaluation import english_wer  # jiwer and the normalizer: dev extras

    return english_wer([item.reference for item in scored], [texts[item.name] for item in scored])


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (``lscpu``'s), else the platform's."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(config: ModelConfig) -> dict:
    """CPU, cores, memory, GPU (when used), library versions and the date."""
    from whisper_pipeline.resources.whisper import usable_cores

    cpu = cpu_model()
    memory = "unknown"
    try:
        with open("/proc/meminfo") as handle:
            total_kib = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
            memory = f"{total_kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory": memory,
        "python": platform.python_version(),
        "ctranslate2": _package_version("ctranslate2"),
        "faster-whisper": _package_version("faster-whisper"),
        "dagster": _package_version("dagster"),
        "GLIBC_TUNABLES (in-process methods)": os.environ.get(GLIBC_TUNABLES, "unset"),
    }
    if config.device != "cpu" and shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, check=False)
        info["gpu"] = gpu.stdout.strip()
    return info


class TreeMemorySampler(threading.Thread):
    """Samples, from ``/proc``, the memory of every descendant of this process.

    Records the peak of the summed proportional set size (PSS: shared pages split between the
    processes sharing them, so forked copies are not counted twice), the largest single RSS, and
    per sample the largest process's RSS and anonymous RSS (``largest``; ``largest_summary``).

    Args:
        interval_s: Seconds between samples.
    """

    def __init__(self, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak_pss_mib = 0.0
        self.peak_process_rss_mib = 0.0
        self.peak_processes = 0
        self._stop_event = threading.Event()
        self._page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._since = time.monotonic()
        self.largest: list[tuple[float, float, float]] = []
        """``(seconds from the start, RSS MiB, anonymous RSS MiB)`` of the largest process."""

    def run(self) -> None:
        """Sample until ``stop`` is called."""
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join()

    def sample(self) -> None:
        """Take one sample of the descendants' memory."""
        parents, rss = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()  # fields from the 3rd (state) on
            parents[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * self._page_mib
        children = defaultdict(list)
        for pid, parent in parents.items():
            children[parent].append(pid)
        tree, stack = [], list(children[os.getpid()])
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children[pid])
        pss = sum(self._proc_mib(f"/proc/{pid}/smaps_rollup", "Pss:", rss[pid]) for pid in tree)
        self.peak_pss_mib = max(self.peak_pss_mib, pss)
        self.peak_process_rss_mib = max([self.peak_process_rss_mib, *(rss[p] for p in tree)])
        self.peak_processes = max(self.peak_processes, len(tree))
        if tree:
            pid = max(tree, key=rss.__getitem__)
            seconds = time.monotonic() - self._since
            self.largest.append(
                (seconds, rss[pid], self._proc_mib(f"/proc/{pid}/status", "RssAnon:"))
            )

    def largest_summary(self) -> dict:
        """The largest process's ``typical_peak_mib`` (median of its per-minute maxima),
        ``sampled_peak_mib`` and ``floor_anon_mib`` (lowest anonymous RSS in the last half of
        the samples); empty without samples."""
        if not self.largest:
            return {}
        minutes: dict[int, float] = {}
        for seconds, rss, _ in self.largest:
            minutes[int(seconds // 60)] = max(minutes.get(int(seconds // 60), 0.0), rss)
        half = self.largest[len(self.largest) // 2 :]
        return {
            "typical_peak_mib": round(statistics.median(minutes.values())),
            "sampled_peak_mib": round(max(rss for _, rss, _ in self.largest)),
            "floor_anon_mib": round(min(anon for _, _, anon in half)),
        }

    @staticmethod
    def _proc_mib(path: str, field: str, fallback_mib: float = 0.0) -> float:
        """A ``kB`` field (``"RssAnon:"``, ``"Pss:"``) of a ``/proc`` file, in MiB; the
        fallback if the process is gone or the field is missing."""
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(field):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return fallback_mib
