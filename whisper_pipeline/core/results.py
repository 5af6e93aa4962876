"""Per-content transcription results and the cache key that lets re-runs skip finished work.

A result is keyed by the audio's SHA-256 plus everything that changes the text: model, compute
type, decoding options and this module's ``PREPROCESSING_VERSION``. Identical content under two
names, or landed again on another day, is transcribed once.
"""

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pyarrow as pa

from whisper_pipeline.core.schema import (
    AUDIO_FILES,
    STATUS_FAILED,
    STATUS_NO_SPEECH,
    STATUS_OK,
    TRANSCRIPT_SEGMENTS,
    TRANSCRIPT_WORDS,
    TRANSCRIPTS,
)
from whisper_pipeline.core.types import ChunkResult, DecodingOptions, Segment

PREPROCESSING_VERSION = "2"
"""Bump when decoding, normalization, VAD or features change in a way that changes the text.
2: chunks at the recorded level (was: peak-normalized); VAD input still peak-normalized."""


MODEL_FAILED = "model failed"
"""Start of the ``error`` of a file whose chunk raised inside the model."""

NO_RESULT = "no transcription result was produced"
"""``error`` of a readable file for which no step stored a result."""


def options_key(model: str, compute_type: str, options: DecodingOptions) -> str:
    """16 hex chars identifying a model + compute type + decoding options + preprocessing."""
    payload = {
        "model": model,
        "compute_type": compute_type,
        "preprocessing": PREPROCESSING_VERSION,
        **options.cache_key_fields(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """The model's identity: everything a transcript depends on, resolved once per run.

    Produced by ``TranscriberResource.spec()`` and passed to the result cache key, the table
    builder and the materialization metadata.

    Attributes:
        model: Model name as recorded in the tables (``tiny.en``), or a local directory.
        device: Resolved device: ``cpu`` or ``cuda``.
        compute_type: Resolved CTranslate2 compute type (``int8``, ``float16``...).
        options: Decoding options (beam size, temperatures, thresholds, batch sizes...).
    """

    model: str
    device: str
    compute_type: str
    options: DecodingOptions

    @property
    def cache_key(self) -> str:
        """The result-cache key of this model and options (``options_key``)."""
        return options_key(self.model, self.compute_type, self.options)

    def metadata(self) -> dict:
        """What a materialization records of the model."""
        return {
            "model": self.model,
            "device": self.device,
            "compute_type": self.compute_type,
            "beam_size": self.options.beam_size,
            "cache_key": self.cache_key,
        }


@dataclass
class ContentResult:
    """Everything the tables need about one distinct audio content.

    Attributes:
        content_sha256: SHA-256 of the file's bytes.
        status: ``ok``, ``no_speech`` or ``failed``.
        error: Why it failed; empty otherwise.
        duration_s: Decoded duration in seconds; ``None`` when decoding failed.
        speech_duration_s: Speech found by VAD, in seconds.
        language: ISO 639-1 code of the file: its chunks' majority, weighted by speech duration
            ("" without chunks).
        language_probability: Speech-weighted mean probability of that language's chunks (0-1).
        segments: Dicts with ``start_s``, ``end_s`` (seconds from file start), ``text``,
            ``avg_logprob``, ``no_speech_prob``, ``compression_ratio``, ``temperature``,
            ``language``, ``language_probability`` (its chunk's) and ``words`` (dicts with
            ``word``, ``start_s``, ``end_s``, ``probability``; empty without word timestamps),
            in order.
        transcribed_at: ISO 8601 UTC time the model produced the result.
    """

    content_sha256: str
    status: str
    error: str = ""
    duration_s: float | None = None
    speech_duration_s: float = 0.0
    language: str = ""
    language_probability: float = 0.0
    segments: list[dict] = field(default_factory=list)
    transcribed_at: str = ""

    def to_json(self) -> bytes:
        """Serialize as UTF-8 JSON."""
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ContentResult":
        """Parse what ``to_json`` wrote."""
        return cls(**json.loads(data))


def segment_record(segment: Segment, language: str, language_probability: float) -> dict:
    """A ``ContentResult.segments`` entry: the segment, its chunk's language and its words."""
    return {
        "start_s": segment.start,
        "end_s": segment.end,
        "text": segment.text,
        "avg_logprob": segment.avg_logprob,
        "no_speech_prob": segment.no_speech_prob,
        "compression_ratio": segment.compression_ratio,
        "temperature": segment.temperature,
        "language": language,
        "language_probability": language_probability,
        "words": [
            {"word": w.word, "start_s": w.start, "end_s": w.end, "probability": w.probability}
            for w in segment.words
        ],
    }


def majority_language(chunks: list[ChunkResult], chunk_frames: dict) -> tuple[str, float]:
    """A file's language: its chunks' majority, each chunk weighted by its feature frames.

    Whisper detects the language once per 30 s window; a file's chunks may disagree (code
    switching, or a short chunk misdetected). Weighting by speech duration lets the bulk of the
    speech decide, where faster-whisper and WhisperX use the first 30 s only.

    Args:
        chunks: The file's chunk results (``language``, ``language_probability``).
        chunk_frames: Feature frames per chunk key (100 per second of speech).

    Returns:
        ``(language, probability)``: the language with the most frames (ties: first in chunk
        order) and the frame-weighted mean probability of its chunks; ``("", 0.0)`` when no
        chunk has a language.
    """
    weights: dict[str, float] = {}
    mass: dict[str, float] = {}
    for chunk in chunks:
        if not chunk.language:
            continue
        weight = max(chunk_frames.get(chunk.key, 0), 1)
        weights[chunk.language] = weights.get(chunk.language, 0.0) + weight
        mass[chunk.language] = mass.get(chunk.language, 0.0) + weight * chunk.language_probability
    if not weights:
        return "", 0.0
    language = max(weights, key=lambda code: weights[code])
    return language, mass[language] / weights[language]


def assemble(
    files: list[dict], chunk_results: list[ChunkResult], chunk_frames: dict, transcribed_at: str
) -> list[ContentResult]:
    """Combine preprocessing outcomes and chunk results into one result per content.

    Args:
        files: Per content: ``content_sha256``, ``duration_s``, ``speech_duration_s``, ``status``
            (``ok``/``no_speech``/``failed`` from decoding and VAD) and ``error``.
        chunk_results: Model results keyed ``(content_sha256, chunk_index)``.
        chunk_frames: Feature frames per chunk key (weights of the chunks' languages).
        transcribed_at: ISO 8601 UTC timestamp to record.

    Returns:
        One ``ContentResult`` per entry of ``files``. A content any of whose chunks failed in
        the model is ``failed`` with the first chunk's error; one whose chunks gave no text is
        ``no_speech``.
    """
    by_content = defaultdict(list)
    for result in chunk_results:
        by_content[result.key[0]].append(result)
    assembled = []
    for info in files:
        sha = info["content_sha256"]
        chunks = sorted(by_content[sha], key=lambda r: r.key[1])
        result = ContentResult(
            content_sha256=sha,
            status=info["status"],
            error=info["error"],
            duration_s=info["duration_s"],
            speech_duration_s=info["speech_duration_s"],
            transcribed_at=transcribed_at,
        )
        failed = [c for c in chunks if c.error]
        if result.status != STATUS_FAILED and failed:
            result.status = STATUS_FAILED
            result.error = f"{MODEL_FAILED} on chunk {failed[0].key[1]}: {failed[0].error}"
        if result.status != STATUS_FAILED:
            result.segments = [
                segment_record(s, chunk.language, chunk.language_probability)
                for chunk in chunks
                for s in chunk.segments
            ]
            result.status = STATUS_OK if result.segments else STATUS_NO_SPEECH
        result.language, result.language_probability = majority_language(chunks, chunk_frames)
        assembled.append(result)
    return assembled


def build_tables(
    manifest: list[dict],
    results: dict[str, ContentResult],
    spec: ModelSpec,
    processed_at: datetime,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Join the staged manifest with per-content results into the four published tables.

    Every manifest row yields one ``audio_files`` row with its final status: ``failed`` at
    probe time, or the content's result status (``failed`` with the reason, ``no_speech`` or
    ``ok``). Files with status ok or no_speech get one ``transcripts`` row (empty text for
    no_speech) and their segments; files with identical content share one result.

    Args:
        manifest: ``audio_files`` rows as staged (probe-time status).
        results: Result per ``content_sha256``; a content missing here is ``failed``.
        spec: The model whose name, compute type and beam size ``transcripts`` records.
        processed_at: Timestamp for ``audio_files.processed_at`` (UTC).

    Returns:
        ``(audio_files, transcripts, transcript_segments, transcript_words)`` in the schemas of
        ``core.schema``.
    """
    files, transcripts, segments, words = [], [], [], []
    for staged in manifest:
        row = dict(staged, processed_at=processed_at)
        files.append(row)
        if row["status"] == STATUS_FAILED:
            continue
        result = results.get(row["content_sha256"])
        if result is None:
            row.update(status=STATUS_FAILED, error=NO_RESULT)
            continue
        row.update(status=result.status, error=result.error)
        if result.duration_s is not None:
            row["duration_s"] = result.duration_s
        if result.status == STATUS_FAILED:
            continue
        file_words = 0
        for index, segment in enumerate(result.segments):
            fields = {key: value for key, value in segment.items() if key != "words"}
            segments.append({"file_id": row["file_id"], "segment_index": index, **fields})
            for word in segment["words"]:
                words.append(
                    {"file_id": row["file_id"], "segment_index": index,
                     "word_index": file_words, **word}
                )  # fmt: skip
                file_words += 1
        transcripts.append(
            {
                "file_id": row["file_id"],
                "content_sha256": result.content_sha256,
                "text": " ".join(s["text"] for s in result.segments),
                "language": result.language,
                "language_probability": result.language_probability,
                "duration_s": row["duration_s"] or 0.0,
                "speech_duration_s": result.speech_duration_s,
                "segment_count": len(result.segments),
                "model": spec.model,
                "compute_type": spec.compute_type,
                "beam_size": spec.options.beam_size,
                "transcribed_at": datetime.fromisoformat(result.transcribed_at),
            }
        )
    return (
        pa.Table.from_pylist(files, schema=AUDIO_FILES),
        pa.Table.from_pylist(transcripts, schema=TRANSCRIPTS),
        pa.Table.from_pylist(segments, schema=TRANSCRIPT_SEGMENTS),
        pa.Table.from_pylist(words, schema=TRANSCRIPT_WORDS),
    )


def model_failures(files: pa.Table) -> tuple[int, list[str]]:
    """How many files reached transcription, and the errors of those that failed there.

    A file reached transcription when it was readable and had speech, or failed in the model
    (``MODEL_FAILED``) or with no stored result (``NO_RESULT``).

    Args:
        files: An ``audio_files`` table as ``build_tables`` returns it.

    Returns:
        ``(reached, errors)``: files that reached transcription, and the errors of those of them
        that failed.
    """
    reached, errors = 0, []
    for status, error in zip(
        files.column("status").to_pylist(), files.column("error").to_pylist(), strict=True
    ):
        if status == STATUS_OK:
            reached += 1
        elif status == STATUS_FAILED and (error.startswith(MODEL_FAILED) or error == NO_RESULT):
            reached += 1
            errors.append(error)
    return reached, errors


def transcribed_ids(files: pa.Table | None) -> set[str]:
    """The ``file_id`` of every file that ``files`` (an ``audio_files`` table) lists as transcribed.

    A transcribed file is one whose ``status`` is not ``failed`` (``ok`` or ``no_speech``): it
    must have a ``transcripts`` row. ``None`` (a partition never published) has none.
    """
    if files is None:
        return set()
    return {
        file_id
        for file_id, status in zip(
            files.column("file_id").to_pylist(), files.column("status").to_pylist(), strict=True
        )
        if status != STATUS_FAILED
    }


def row_ids(transcripts: pa.Table | None) -> set[str]:
    """The ``file_id`` of every row of a ``transcripts`` table; none for ``None``."""
    return set() if transcripts is None else set(transcripts.column("file_id").to_pylist())


@dataclass(frozen=True)
class PublishingPlan:
    """How ``write_tables`` replaces ``audio_files`` and ``transcripts``, one file after the other.

    Invariant: at every point between the writes, each file ``ok`` or ``no_speech`` in
    ``audio_files`` has its ``transcripts`` row. ``audio_files`` goes first when the published
    transcripts already cover the new ``audio_files`` (a re-run, a deleted file); ``transcripts``
    first when the new transcripts cover the published ``audio_files`` (a first publish, a late
    upload); when files are both added and deleted, a ``bridge`` (the new rows plus the
    published rows of the deleted files) is published before both.

    Attributes:
        bridge: The ``transcripts`` to publish before both tables, or ``None``.
        transcripts_first: Publish ``transcripts`` before ``audio_files``.
    """

    bridge: pa.Table | None
    transcripts_first: bool


def publishing_plan(
    old_files: pa.Table | None,
    old_transcripts: pa.Table | None,
    new_files: pa.Table,
    new_transcripts: pa.Table,
) -> PublishingPlan:
    """The order that keeps every file transcribed in ``audio_files`` with its transcript.

    Args:
        old_files: The published ``audio_files`` partition, or ``None`` if there is none.
        old_transcripts: The published ``transcripts`` partition, or ``None``.
        new_files: The ``audio_files`` about to be published.
        new_transcripts: The ``transcripts`` about to be published, in the new schema.

    Returns:
        The ``PublishingPlan``; its bridge, when there is one, is in the new schema.

    Raises:
        pyarrow.ArrowInvalid: The published transcripts' rows do not fit the new schema.
    """
    if transcribed_ids(new_files) <= row_ids(old_transcripts):
        return PublishingPlan(None, transcripts_first=False)
    deleted = transcribed_ids(old_files) - row_ids(new_transcripts)
    if not deleted or old_transcripts is None:
        return PublishingPlan(None, transcripts_first=True)
    keep = [row for row in old_transcripts.to_pylist() if row["file_id"] in deleted]
    names = new_transcripts.schema.names
    rows = [{name: row.get(name) for name in names} for row in keep]
    bridge = pa.concat_tables([new_transcripts, pa.Table.from_pylist(rows, new_transcripts.schema)])
    return PublishingPlan(bridge, transcripts_first=False)


@dataclass(frozen=True)
class KeptFile:
    """A file that failed in this run and kept the rows published for the same content.

    Attributes:
        file_id: The file's ``file_id``.
        relative_path: Its path under the landing folder.
        error: Why it failed in this run.
    """

    file_id: str
    relative_path: str
    error: str


def keep_published(
    built: dict[str, pa.Table], published: dict[str, pa.Table | None]
) -> tuple[dict[str, pa.Table], list[KeptFile]]:
    """Put back the published rows of files that failed now but whose content is unchanged.

    A failure in this run (a CUDA out-of-memory, a model that raised, a lost result) says
    nothing about content transcribed before. A file is kept when this run's ``audio_files`` row
    is ``failed`` and the published row of the same ``file_id`` has the same ``content_sha256``
    and is not ``failed``; its published rows of all four tables replace the new ones (a
    changed or new file is never kept).

    Args:
        built: The four tables as ``build_tables`` built them, by name.
        published: The partition's published tables by name (``None`` when absent).

    Returns:
        ``(tables, kept)``: the tables to publish (``built`` itself when nothing is kept) and
        the files kept, in ``audio_files`` order. Nothing is kept when a published table is
        missing or of an older schema.
    """
    old_files = published.get("audio_files")
    if old_files is None or any(published.get(name) is None for name in built):
        return built, []
    if any(published[name].schema != table.schema for name, table in built.items()):
        return built, []
    good = {
        row["file_id"]: row["content_sha256"]
        for row in old_files.to_pylist()
        if row["status"] != STATUS_FAILED and row["content_sha256"]
    }
    kept = [
        KeptFile(row["file_id"], row["relative_path"], row["error"])
        for row in built["audio_files"].to_pylist()
        if row["status"] == STATUS_FAILED
        and row["content_sha256"]
        and good.get(row["file_id"]) == row["content_sha256"]
    ]
    if not kept:
        return built, []
    ids = {k.file_id for k in kept}
    order = {row["file_id"]: i for i, row in enumerate(built["audio_files"].to_pylist())}
    tables = {}
    for name, table in built.items():
        new_rows = [row for row in table.to_pylist() if row["file_id"] not in ids]
        old_rows = [row for row in published[name].to_pylist() if row["file_id"] in ids]
        rows = sorted(new_rows + old_rows, key=lambda row: order[row["file_id"]])  # stable
        tables[name] = pa.Table.from_pylist(rows, schema=table.schema)
    return tables, kept
