"""Asset checks on the published tables, run after each partition's materialization."""

import dagster as dg
import pyarrow.compute as pc

from whisper_pipeline.core.schema import STATUS_FAILED, STATUS_OK, TABLE_SCHEMAS
from whisper_pipeline.resources import StorageResource


def _read(storage: StorageResource, table: str, partition_key: str):
    return storage.get().read_partition(table, partition_key)


@dg.asset_check(asset="audio_files", additional_deps=["audio_manifest"], blocking=True)
def audio_files_one_row_per_landed_file(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """Every staged file has exactly one ``audio_files`` row and a known status."""
    key = context.partition_key
    files = _read(storage, "audio_files", key)
    manifest = storage.get().read_partition("audio_manifest", key, area="staging")
    ids = files.column("file_id").to_pylist()
    missing = set(manifest.column("file_id").to_pylist()) - set(ids)
    bad_status = [
        s for s in files.column("status").to_pylist() if s not in ("ok", "no_speech", "failed")
    ]
    return dg.AssetCheckResult(
        passed=len(ids) == len(set(ids)) and not missing and not bad_status,
        metadata={
            "rows": len(ids),
            "duplicate_ids": len(ids) - len(set(ids)),
            "missing_files": len(missing),
            "unknown_statuses": len(bad_status),
        },
    )


@dg.asset_check(asset="transcripts", additional_deps=["audio_files"], blocking=True)
def transcripts_one_row_per_transcribed_file(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """One transcript row per file not failed; none for failed files; no duplicates."""
    key = context.partition_key
    files = _read(storage, "audio_files", key).to_pylist()
    transcript_ids = _read(storage, "transcripts", key).column("file_id").to_pylist()
    expected = {row["file_id"] for row in files if row["status"] != STATUS_FAILED}
    return dg.AssetCheckResult(
        passed=set(transcript_ids) == expected and len(transcript_ids) == len(expected),
        metadata={"rows": len(transcript_ids), "expected": len(expected)},
    )


@dg.asset_check(asset="transcripts")
def transcripts_have_text_where_speech(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """Files with status ok have non-empty text (warns: the model may fairly hear nothing)."""
    table = _read(storage, "transcripts", context.partition_key)
    files = _read(storage, "audio_files", context.partition_key)
    ok_ids = set(files.filter(pc.equal(files["status"], STATUS_OK)).column("file_id").to_pylist())
    empty = [
        row["file_id"]
        for row in table.select(["file_id", "text"]).to_pylist()
        if row["file_id"] in ok_ids and not row["text"].strip()
    ]
    return dg.AssetCheckResult(
        passed=not empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"empty_ok_transcripts": len(empty), "examples": ", ".join(empty[:5])},
    )


def _schema_check(table: str):
    @dg.asset_check(asset=table, name=f"{table}_schema_matches_contract")
    def check(context: dg.AssetCheckExecutionContext, storage: StorageResource):
        schema = _read(storage, table, context.partition_key).schema
        expected = TABLE_SCHEMAS[table]
        differences = (
            [
                f"{field.name}: {field.type}"
                for field in expected
                if schema.field(field.name).type != field.type
            ]
            if set(expected.names) <= set(schema.names)
            else ["missing columns"]
        )
        return dg.AssetCheckResult(
            passed=not differences and schema.names == expected.names,
            metadata={"columns": ", ".join(schema.names), "differences": "; ".join(differences)},
        )

    check.__doc__ = f"The ``{table}`` partition has exactly the documented columns and types."
    return check


schema_checks = [_schema_check(table) for table in TABLE_SCHEMAS]

all_checks = [
    audio_files_one_row_per_landed_file,
    transcripts_one_row_per_transcribed_file,
    transcripts_have_text_where_speech,
    *schema_checks,
]
