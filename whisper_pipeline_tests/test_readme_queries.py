"""Every query in README.md's storage contract runs, verbatim, against real output.

The fenced ``sql`` and ``python`` blocks of the "Storage contract" section are read from the
README as they are and run from a folder laid out as the README assumes (``data/`` relative to
the working directory), after two partitions of real speech were materialized in-process with
the real model (the word query looks for a word that is said). Each must return rows. The
demo's printed query is run the same way.
"""

import ast
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from whisper_pipeline.demo import duckdb_query
from whisper_pipeline.resources.whisper import WhisperModelResource
from whisper_pipeline_tests.conftest import REPOSITORY
from whisper_pipeline_tests.inprocess import materialize, step_failures

pytestmark = pytest.mark.slow  # the real model in-process (the word query needs real words)

PARTITIONS = ("2026-11-19", "2026-11-20")
CLIPS = ("short/jfk.flac", "short/lj001_0001.wav")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def query_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of the fenced sql/python blocks under README's Storage contract."""
    readme = (REPOSITORY / "README.md").read_text()
    section = readme.split("\n## Storage contract\n", 1)[1].split("\n## ", 1)[0]
    return [(lang, code) for lang, code in FENCE.findall(section) if lang in ("sql", "python")]


BLOCKS = query_blocks()


def test_readme_has_duckdb_polars_and_pyarrow_queries():
    codes = [code for _, code in BLOCKS]
    assert [lang for lang, _ in BLOCKS].count("sql") >= 1
    assert any("import polars" in code for code in codes)
    assert any("import pyarrow" in code for code in codes)
    # Nothing pinned to a date the demo does not write.
    assert not [code for code in codes if re.search(r"\d{4}-\d\d-\d\d", code)]


@pytest.fixture(scope="module")
def data_cwd(corpus, tmp_path_factory):
    """A working directory whose ``data/`` holds two materialized partitions."""
    cwd = tmp_path_factory.mktemp("cwd")
    root = cwd / "data"
    whisper = WhisperModelResource(device="cpu")
    for partition in PARTITIONS:
        landing = root / "raw" / partition
        landing.mkdir(parents=True)
        for name in CLIPS:
            shutil.copy(corpus / name, landing / Path(name).name)
        (landing / "corrupt_upload.mp3").write_bytes(b"this upload was cut off\n")
        result = materialize(root, partition, whisper)
        assert result.success, step_failures(result)
    return cwd


def rows_of(value) -> int:
    """Rows of a query result: DuckDB relation, Polars or pandas DataFrame, Arrow table."""
    if hasattr(value, "fetchall"):
        return len(value.fetchall())
    if hasattr(value, "num_rows"):
        return value.num_rows
    return len(value)


def run_python(code: str):
    """Run a block as a notebook cell would; returns the value of its last expression."""
    tree = ast.parse(code)
    assert tree.body and isinstance(tree.body[-1], ast.Expr), "block must end in an expression"
    namespace: dict = {}
    exec(compile(ast.Module(tree.body[:-1], []), "README.md", "exec"), namespace)
    return eval(compile(ast.Expression(tree.body[-1].value), "README.md", "eval"), namespace)


@pytest.mark.parametrize(
    ("language", "code"), BLOCKS, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(BLOCKS)]
)
def test_readme_query_runs_verbatim_and_returns_rows(data_cwd, monkeypatch, language, code):
    monkeypatch.chdir(data_cwd)
    if language == "sql":
        rows = duckdb.sql(code).fetchall()
        assert rows
        # The latest partition, all three files, the failed one with its reason.
        if "max(date)" in code:
            assert {str(row[0]) for row in rows} == {PARTITIONS[-1]} and len(rows) == 3
        return
    if "import polars" in code:
        pytest.importorskip("polars")
    assert rows_of(run_python(code)) > 0


def test_demo_query_runs_for_the_partition_it_wrote(data_cwd):
    sql = duckdb_query(str(data_cwd / "data" / "tables"), PARTITIONS[0])
    rows = duckdb.sql(sql).fetchall()
    assert sorted(row[0] for row in rows) == ["corrupt_upload.mp3", "jfk.flac", "lj001_0001.wav"]
    statuses = {row[0]: row[1] for row in rows}
    assert statuses["corrupt_upload.mp3"] == "failed" and statuses["jfk.flac"] == "ok"
