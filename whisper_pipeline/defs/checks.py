"""Asset checks on a partition's tables, evaluated before they are published.

They are ``check_specs`` of ``transcript_tables``, evaluated by ``write_tables`` on the tables it
built, so a table that breaks its contract is never published. ``CHECKS`` are blocking (the step
fails and publishes nothing); ``WARNINGS`` are non-blocking notes about the partition's data
(failed files, a day with nothing landed).
"""

from collections.abc import Iterator, Sequence

import dagster as dg
import pyarrow as pa

from whisper_pipeline.core.results import KeptFile
from whisper_pipeline.core.schema import STATUS_FAILED, STATUS_OK, STATUSES, TABLE_SCHEMAS
from whisper_pipeline.defs.partitions import daily_partitions

CHECKS = {
    ("audio_files", "one_row_per_landed_file"): "Every staged file has exactly one row.",
    ("transcripts", "one_row_per_transcribed_file"): "One row per file not failed; no others.",
    ("transcripts", "text_where_speech"): "Files with status ok have non-empty text.",
    ("transcript_words", "word_times_inside_file"): "Word starts never go back within a file, "
    "and every word lies inside its file: 0 <= start_s <= end_s <= duration_s.",
    **{
        (table, "schema_matches_contract"): "Columns and types equal docs/SCHEMA.md."
        for table in TABLE_SCHEMAS
    },
}

WARNINGS = {
    ("audio_files", "no_failed_files"): "No landed file failed; the failed ones are listed.",
    ("audio_files", "files_landed"): "At least one file landed in the partition.",
}

FAILED_FILES_SHOWN = 50
"""Failed files listed in the ``no_failed_files`` check's metadata (the count covers all)."""


KEPT_REASON = "failed in this run, published transcript kept"
"""How ``no_failed_files`` lists a file that kept its published rows after failing."""


def failed_description(failed: int, kept: int, files: int) -> str | None:
    """``no_failed_files``' description: e.g. ``"1 of 4 files failed"``; ``None`` if none did."""
    parts = [f"{failed} of {files} files failed"] if failed else []
    if kept:
        parts.append(f"{kept} of {files} failed in this run and kept their published transcript")
    return "; ".join(parts) or None


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def failed_files_markdown(failed: list[dict], limit: int = FAILED_FILES_SHOWN) -> str:
    """A markdown table of failed ``audio_files`` rows: relative path and reason.

    At most ``limit`` rows, then a line saying how many more there are.
    """
    lines = ["| relative_path | reason |", "|---|---|"]
    lines += [f"| {_cell(r['relative_path'])} | {_cell(r['error'])} |" for r in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"\n… and {len(failed) - limit} more (`status = 'failed'` in audio_files)")
    return "\n".join(lines)


WORD_TIME_SLACK_S = 0.01
"""Rounding allowance in seconds: word times are rounded to 10 ms, as faster-whisper's are."""


def word_time_violations(words: list[dict], durations: dict[str, float]) -> list[str]:
    """Words that go back in time within their file or lie outside it, described.

    Args:
        words: ``transcript_words`` rows (``file_id``, ``word_index``, ``word``, ``start_s``,
            ``end_s``).
        durations: ``audio_files.duration_s`` by ``file_id``, seconds.

    Returns:
        One line per violation, e.g. ``"1a2b...: word 7 'hello' ends at 12.30 s > 12.00 s"``.
    """
    problems = []
    last_start: dict[str, float] = {}
    for row in sorted(words, key=lambda r: (r["file_id"], r["word_index"])):
        file_id, start, end = row["file_id"], row["start_s"], row["end_s"]
        where = f"{file_id}: word {row['word_index']} {row['word']!r}"
        duration = durations.get(file_id, 0.0)
        if start < last_start.get(file_id, 0.0) - WORD_TIME_SLACK_S:
            problems.append(f"{where} starts at {start:.2f} s, before the previous word")
        if not 0.0 <= start <= end:
            problems.append(f"{where} spans {start:.2f} to {end:.2f} s")
        if end > duration + WORD_TIME_SLACK_S:
            problems.append(f"{where} ends at {end:.2f} s > {duration:.2f} s")
        last_start[file_id] = start
    return problems


def _schema_differences(table, expected) -> list[str]:
    if table.schema.names != expected.names:
        return [f"columns {table.schema.names} != {expected.names}"]
    return [
        f"{field.name}: {table.schema.field(field.name).type} != {field.type}"
        for field in expected
        if table.schema.field(field.name).type != field.type
    ]


EVALUATED_BEFORE_PUBLISHING = (
    " Evaluated by write_tables on the partition's new tables before it publishes them, so it"
    " cannot be executed on its own: to evaluate it again, materialize the partition (its"
    " transcripts come from the result cache)."
)
"""Appended to every check's description: why the UI's "Execute" of a check alone cannot
evaluate it, and what to launch instead."""

CHECK_SPECS = [
    dg.AssetCheckSpec(
        name,
        asset=asset,
        description=description + EVALUATED_BEFORE_PUBLISHING,
        blocking=blocking,
        # A result per partition, like the tables'.
        partitions_def=daily_partitions,
    )
    for checks, blocking in ((CHECKS, True), (WARNINGS, False))
    for (asset, name), description in checks.items()
]
"""The ``AssetCheckSpec`` of every check and warning, partitioned like the tables: ``check_specs``
of ``transcript_tables``. The ``CHECKS`` are blocking (``write_tables`` publishes nothing when
one fails); the ``WARNINGS`` are not."""


NOT_PUBLISHED = "Not published: the partition's tables were left as they were."
"""The description of a failed blocking check's result (``not_published``)."""


def _blocks(result: dg.AssetCheckResult) -> bool:
    return not result.passed and result.severity == dg.AssetCheckSeverity.ERROR


def blocking_failures(results: list[dg.AssetCheckResult]) -> list[dg.AssetCheckResult]:
    """The failed results of blocking checks (``AssetCheckSeverity.ERROR``) among ``results``."""
    return [r for r in results if _blocks(r)]


def not_published(results: list[dg.AssetCheckResult]) -> list[dg.AssetCheckResult]:
    """``results``, each failed blocking one with ``NOT_PUBLISHED`` as its description.

    What ``write_tables`` reports when it publishes nothing because of ``blocking_failures``.
    """
    return [
        dg.AssetCheckResult(
            passed=False,
            asset_key=r.asset_key,
            check_name=r.check_name,
            metadata=r.metadata,
            severity=r.severity,
            description=NOT_PUBLISHED,
        )
        if _blocks(r)
        else r
        for r in results
    ]


def check_results(
    tables: dict[str, pa.Table],
    manifest: pa.Table,
    key: str,
    landing_uri: str,
    kept: Sequence[KeptFile] = (),
) -> Iterator[dg.AssetCheckResult]:
    """Row-count, coverage, empty-text, schema, failed-file and empty-day checks on a partition.

    Args:
        tables: The partition's tables by name (``TABLE_SCHEMAS``), as built.
        manifest: The partition's ``audio_manifest`` (one row per landed entry).
        key: The partition's date, ``YYYY-MM-DD``.
        landing_uri: The partition's landing folder, shown on the ``files_landed`` warning.
        kept: Files that failed in this run and kept their published rows
            (``core.results.keep_published``): ``no_failed_files`` lists them with the failures.

    Yields:
        One result per ``CHECKS`` and ``WARNINGS`` entry.
    """
    files = tables["audio_files"].to_pylist()
    ids = [row["file_id"] for row in files]
    missing = set(manifest.column("file_id").to_pylist()) - set(ids)
    unknown = [row["status"] for row in files if row["status"] not in STATUSES]
    yield dg.AssetCheckResult(
        asset_key="audio_files",
        check_name="one_row_per_landed_file",
        passed=len(ids) == len(set(ids)) and not missing and not unknown,
        metadata={"rows": len(ids), "duplicate_ids": len(ids) - len(set(ids)),
                  "missing_files": len(missing), "unknown_statuses": len(unknown)},
    )  # fmt: skip

    transcripts = tables["transcripts"].select(["file_id", "text"]).to_pylist()
    transcript_ids = [row["file_id"] for row in transcripts]
    expected = {row["file_id"] for row in files if row["status"] != STATUS_FAILED}
    yield dg.AssetCheckResult(
        asset_key="transcripts",
        check_name="one_row_per_transcribed_file",
        passed=set(transcript_ids) == expected and len(transcript_ids) == len(expected),
        metadata={"rows": len(transcript_ids), "expected": len(expected)},
    )

    durations = {row["file_id"]: row["duration_s"] or 0.0 for row in files}
    bad_words = word_time_violations(tables["transcript_words"].to_pylist(), durations)
    yield dg.AssetCheckResult(
        asset_key="transcript_words",
        check_name="word_times_inside_file",
        passed=not bad_words,
        metadata={
            "words": tables["transcript_words"].num_rows,
            "violations": len(bad_words),
            "examples": "; ".join(bad_words[:5]),
        },
    )

    ok_ids = {row["file_id"] for row in files if row["status"] == STATUS_OK}
    empty = [r["file_id"] for r in transcripts if r["file_id"] in ok_ids and not r["text"].strip()]
    yield dg.AssetCheckResult(
        asset_key="transcripts",
        check_name="text_where_speech",
        passed=not empty,
        metadata={"empty_ok_transcripts": len(empty), "examples": ", ".join(empty[:5])},
    )

    failed = [row for row in files if row["status"] == STATUS_FAILED]
    kept_rows = [
        {"relative_path": k.relative_path, "error": f"{KEPT_REASON}: {k.error}"} for k in kept
    ]
    yield dg.AssetCheckResult(
        asset_key="audio_files",
        check_name="no_failed_files",
        passed=not failed and not kept,
        severity=dg.AssetCheckSeverity.WARN,
        description=failed_description(len(failed), len(kept), len(files)),
        metadata={
            "files_failed": len(failed),
            "files_kept_after_failure": len(kept),
            "files": len(files),
            "failed_files": dg.MetadataValue.md(failed_files_markdown(failed + kept_rows)),
        },
    )
    yield dg.AssetCheckResult(
        asset_key="audio_files",
        check_name="files_landed",
        passed=bool(files),
        severity=dg.AssetCheckSeverity.WARN,
        description=None if files else f"no files landed under raw/{key}/",
        metadata={
            "files": len(files),
            "landing_zone": dg.MetadataValue.path(landing_uri),
        },
    )

    for name, schema in TABLE_SCHEMAS.items():
        differences = _schema_differences(tables[name], schema)
        yield dg.AssetCheckResult(
            asset_key=name,
            check_name="schema_matches_contract",
            passed=not differences,
            metadata={"differences": "; ".join(differences) or "none"},
        )
