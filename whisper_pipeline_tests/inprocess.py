"""In-process materialization of the code location's assets with a chosen transcriber."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from whisper_pipeline.definitions import build_resources
from whisper_pipeline.defs.assets.manifest import audio_manifest
from whisper_pipeline.defs.assets.subtitles import subtitle_files
from whisper_pipeline.defs.assets.transcription import transcript_tables
from whisper_pipeline_tests.doubles import FakeTranscriberResource

TABLES = ("audio_files", "transcripts", "transcript_segments", "transcript_words")


def storage_config(root: str, endpoint_url: str = "") -> dict:
    """Run config for the ``storage`` resource."""
    return {"storage": {"config": {"root": str(root), "endpoint_url": endpoint_url}}}


def materialize(
    root: str | Path,
    partition: str,
    whisper=None,
    *,
    redo: bool = False,
    endpoint_url: str = "",
    instance: dg.DagsterInstance | None = None,
    profile: str = "local",
    write_config: dict | None = None,
    plan_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize every asset and check of ``partition`` in-process (never raises on failure).

    The storage root and endpoint come from run config only, as a launchpad user would set
    them; ``whisper`` defaults to ``FakeTranscriberResource``; ``write_config`` is the
    ``write_tables`` op's config, ``plan_config`` more of ``plan_shards``'.
    """
    graph_ops = {"plan_shards": {"config": {"redo": redo, **(plan_config or {})}}}
    if write_config is not None:
        graph_ops["write_tables"] = {"config": write_config}
    ops = {"transcript_tables": {"ops": graph_ops}}
    return dg.materialize(
        [audio_manifest, transcript_tables, subtitle_files],
        partition_key=partition,
        resources=build_resources(
            whisper if whisper is not None else FakeTranscriberResource(), profile=profile
        ),
        run_config={"resources": storage_config(root, endpoint_url), "ops": ops},
        instance=instance,
        raise_on_error=False,
    )


def read_tables(root: Path, partition: str) -> dict[str, list[dict]]:
    """The partition's published tables as rows (a missing table is ``None``)."""
    tables = {}
    for name in TABLES:
        path = Path(root) / "tables" / name / f"date={partition}" / "part-0.parquet"
        tables[name] = pq.read_table(path).to_pylist() if path.exists() else None
    return tables


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Failed step keys with their error messages."""
    return {
        event.step_key: event.step_failure_data.error.message
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_FAILURE
    }


def retries(result: dg.ExecuteInProcessResult) -> int:
    """Step attempts that were retried."""
    return sum(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
