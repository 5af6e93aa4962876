import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from devtools.commands import materialize_command
from devtools.harness import corpus_dir, fresh_dagster_home
from whisper_pipeline_tests.postgres import postgres_server  # noqa: F401
from whisper_pipeline_tests.readme import readme_checkout  # noqa: F401
from whisper_pipeline_tests.redis import redis_server  # noqa: F401
from whisper_pipeline_tests.s3 import s3_server  # noqa: F401

REPOSITORY = Path(__file__).resolve().parents[1]
CORPUS = corpus_dir()


def corpus_rows() -> list[dict]:
    """Rows of ``../shared/corpus/manifest.csv`` (empty when the corpus is absent)."""
    manifest = CORPUS / "manifest.csv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


if os.environ.get("CI") and not corpus_rows():
    # CI always has ../shared beside the clone: a missing corpus must fail, not skip silently.
    raise RuntimeError(f"CI is set but there is no corpus at {CORPUS}")

requires_corpus = pytest.mark.skipif(not corpus_rows(), reason=f"no corpus at {CORPUS}")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not corpus_rows():
        pytest.skip(f"no corpus at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def model():
    """The bundled tiny.en model on CPU, int8 (what CI and the default config run)."""
    from faster_whisper import WhisperModel

    from whisper_pipeline.resources.whisper import bundled_model_path

    return WhisperModel(bundled_model_path(), device="cpu", compute_type="int8")


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    return fresh_dagster_home(tmp_path / "dagster_home")


def materialize_cli(
    root: Path, home: Path, partition: str, timeout: float = 900, extra_args: tuple = ()
) -> subprocess.CompletedProcess:
    """Materialize every asset of a partition through the Dagster CLI (multiprocess executor)."""
    env = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root))
    return subprocess.run(
        materialize_command(partition, *extra_args),
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def plan_config(**config) -> tuple[str, str]:
    """CLI arguments (``--config-json``) setting the ``plan_shards`` op's config."""
    ops = {"transcript_tables": {"ops": {"plan_shards": {"config": config}}}}
    return ("--config-json", json.dumps({"ops": ops}))


SHARDED = plan_config(min_audio_s_per_shard=300, transcription_steps=2)
"""Several shards on the corpus (one per core, up to one per five minutes of audio) spread over
two transcription steps, so the tests exercise the fan-out on both sides: preprocessing steps in
processes of their own, and transcription steps held to one at a time, each reading its shards
while they are preprocessed."""


def planned_and_cached(log: str) -> tuple[int, int]:
    """(contents to transcribe, contents already cached) from ``plan_shards``' log line."""
    match = re.search(r"(\d+) distinct contents to transcribe.*; (\d+) already cached", log)
    assert match, "plan_shards did not log its plan"
    return int(match.group(1)), int(match.group(2))
