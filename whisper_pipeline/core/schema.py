"""The Parquet table schemas: the project's storage contract (documented in ``docs/SCHEMA.md``).

Tables live at ``ROOT/tables/<table>/date=YYYY-MM-DD/part-0.parquet``. The ``date`` partition
column is in the path only (hive layout), never inside the files, as Spark, Athena and DuckDB's
``hive_partitioning`` expect. Columns are only ever added, at the end, never renamed or retyped.
"""

import pyarrow as pa

STATUS_OK = "ok"
STATUS_NO_SPEECH = "no_speech"
STATUS_FAILED = "failed"
STATUSES = (STATUS_OK, STATUS_NO_SPEECH, STATUS_FAILED)

_UTC = pa.timestamp("us", tz="UTC")


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


AUDIO_FILES = pa.schema(
    [
        _field("file_id", pa.string(), "16 hex chars of SHA-256 over 'date/relative_path'."),
        _field("source_uri", pa.string(), "Full URI of the file in the landing zone."),
        _field("relative_path", pa.string(), "Path below ROOT/raw/YYYY-MM-DD/."),
        _field("size_bytes", pa.int64(), "File size in bytes."),
        _field("content_sha256", pa.string(), "SHA-256 hex digest of the file's bytes.", True),
        _field("duration_s", pa.float64(), "Audio duration in seconds (decoded length).", True),
        _field("sample_rate_hz", pa.int32(), "Source sample rate in Hz.", True),
        _field("channels", pa.int32(), "Source channel count.", True),
        _field("codec", pa.string(), "FFmpeg decoder name (pcm_s16le, flac, mp3, opus...).", True),
        _field("status", pa.string(), "ok, no_speech or failed."),
        _field("error", pa.string(), "Why the file failed; empty unless status is failed."),
        _field("processed_at", _UTC, "When this row was written (UTC)."),
    ]
)

TRANSCRIPTS = pa.schema(
    [
        _field("file_id", pa.string(), "Key into audio_files."),
        _field("content_sha256", pa.string(), "SHA-256 of the audio file's bytes."),
        _field("text", pa.string(), "Full transcript: the segments' text joined by spaces."),
        _field(
            "language",
            pa.string(),
            "ISO 639-1 code of the file's language: the majority of its chunks' languages, "
            "weighted by speech duration (the configured language, or en for *.en models).",
        ),
        _field(
            "language_probability",
            pa.float64(),
            "Speech-weighted mean detection probability of that language's chunks (0-1).",
        ),
        _field("duration_s", pa.float64(), "Audio duration in seconds."),
        _field("speech_duration_s", pa.float64(), "Speech found by VAD, in seconds."),
        _field("segment_count", pa.int32(), "Rows of this file in transcript_segments."),
        _field("model", pa.string(), "Model name or directory."),
        _field("compute_type", pa.string(), "CTranslate2 compute type (int8, float16...)."),
        _field("beam_size", pa.int32(), "Beam width at temperature 0."),
        _field("transcribed_at", _UTC, "When the model produced this transcript (UTC)."),
    ]
)

TRANSCRIPT_SEGMENTS = pa.schema(
    [
        _field("file_id", pa.string(), "Key into audio_files."),
        _field("segment_index", pa.int32(), "Position of the segment in its file, from 0."),
        _field("start_s", pa.float64(), "Start, in seconds from the start of the file."),
        _field("end_s", pa.float64(), "End, in seconds from the start of the file."),
        _field("text", pa.string(), "Segment text, stripped of leading and trailing spaces."),
        _field("avg_logprob", pa.float64(), "Mean token log-probability of the chunk's decode."),
        _field("no_speech_prob", pa.float64(), "Model's no-speech probability for the chunk."),
        _field("compression_ratio", pa.float64(), "gzip compression ratio of the text."),
        _field("temperature", pa.float64(), "Decoding temperature that produced the text."),
        _field(
            "language",
            pa.string(),
            "ISO 639-1 code detected on the segment's chunk (its first 30 s window).",
        ),
        _field("language_probability", pa.float64(), "Probability of that language (0-1)."),
    ]
)

TRANSCRIPT_WORDS = pa.schema(
    [
        _field("file_id", pa.string(), "Key into audio_files."),
        _field("segment_index", pa.int32(), "The word's segment in transcript_segments."),
        _field("word_index", pa.int32(), "Position of the word in its file, from 0."),
        _field("word", pa.string(), "The word with its attached punctuation, stripped of spaces."),
        _field("start_s", pa.float64(), "Start, in seconds from the start of the file."),
        _field("end_s", pa.float64(), "End, in seconds from the start of the file."),
        _field("probability", pa.float64(), "Mean probability of the word's tokens (0-1)."),
    ]
)

TABLE_DESCRIPTIONS = {
    "audio_files": "One row per entry landed under raw/YYYY-MM-DD/: where it is, its SHA-256, "
    "what the probe found, and its final status (ok, no_speech, or failed with the reason).",
    "transcripts": "One row per transcribed file (status ok or no_speech): the full text, its "
    "language, durations, and the model, compute type and beam size that produced it.",
    "transcript_segments": "The timestamped segments of each transcript, times in seconds from "
    "the start of the file, with the language detected on each segment's chunk.",
    "transcript_words": "One row per word of each transcript, timed by cross-attention alignment "
    "(CTranslate2 Whisper.align, as faster-whisper's word_timestamps), seconds from the start "
    "of the file.",
}
"""What each published table holds (its description in the Dagster UI)."""

TABLE_SCHEMAS = {
    "audio_files": AUDIO_FILES,
    "transcripts": TRANSCRIPTS,
    "transcript_segments": TRANSCRIPT_SEGMENTS,
    "transcript_words": TRANSCRIPT_WORDS,
}
"""Published tables by name."""


def schema_markdown() -> str:
    """Render every table schema as Markdown (``docs/SCHEMA.md`` is generated from this)."""
    lines = []
    for name, schema in TABLE_SCHEMAS.items():
        lines += [f"## `{name}`", "", "| column | type | null | meaning |", "|---|---|---|---|"]
        for field in schema:
            doc = field.metadata[b"doc"].decode()
            lines.append(
                f"| `{field.name}` | {field.type} | {'yes' if field.nullable else 'no'} | {doc} |"
            )
        lines.append("")
    return "\n".join(lines)
