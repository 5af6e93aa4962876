"""Every query in README.md runs, verbatim, against the demo's own output and returns rows.

The fenced ``sql`` and ``python`` blocks of the README are read as they are and run from the
folder where the README's two demo commands ran (``readme.py``'s ``readme_checkout``: ``data/``
holds the demo's synthesized speech, in its default partition and in 2026-11-20), as a user who
just ran the demo would. Each must return at least one row; the word query looks for a word the
demo's sentences say. The demo's printed query is run the same way.
"""

import ast
import re

import duckdb
import pytest

from devtools.demo import SAMPLE_SENTENCES, duckdb_query
from whisper_pipeline_tests.readme import code_blocks

BLOCKS = [("sql", code) for code in code_blocks("sql")] + [
    ("python", code) for code in code_blocks("python")
]
DEMO_FILES = len(SAMPLE_SENTENCES) + 2  # the sentences, one silent file and one corrupt one
WORD = re.compile(r"= '(\w+)'")


def test_readme_has_duckdb_polars_and_pyarrow_queries():
    codes = [code for _, code in BLOCKS]
    assert [lang for lang, _ in BLOCKS].count("sql") >= 1
    assert any("import polars" in code for code in codes)
    assert any("import pyarrow" in code for code in codes)
    # Nothing pinned to a date the demo does not write.
    assert not [code for code in codes if re.search(r"\d{4}-\d\d-\d\d", code)]


def test_the_word_query_looks_for_a_word_the_demo_says():
    (word_query,) = [code for _, code in BLOCKS if "transcript_words" in code]
    word = WORD.search(word_query).group(1)
    spoken = {w.strip(".,").lower() for sentence in SAMPLE_SENTENCES for w in sentence.split()}
    assert word in spoken


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


@pytest.mark.slow  # the demo: the real model through the CLI
@pytest.mark.parametrize(
    ("language", "code"), BLOCKS, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(BLOCKS)]
)
def test_readme_query_runs_verbatim_and_returns_rows(readme_checkout, monkeypatch, language, code):
    monkeypatch.chdir(readme_checkout.cwd)
    if language == "sql":
        rows = duckdb.sql(code).fetchall()
        assert len(rows) >= 1
        # The latest partition (the demo's default one), all its files.
        if "max(date)" in code:
            assert {str(row[0]) for row in rows} == {readme_checkout.partition}
            assert len(rows) == DEMO_FILES
        return
    if "import polars" in code:
        pytest.importorskip("polars")
    assert rows_of(run_python(code)) >= 1


@pytest.mark.slow
def test_demo_query_runs_for_the_partition_it_wrote(readme_checkout):
    tables = str(readme_checkout.cwd / "data" / "tables")
    rows = duckdb.sql(duckdb_query(tables, readme_checkout.audio_partition)).fetchall()
    names = [f"sample_{i:02d}" for i in range(len(SAMPLE_SENTENCES))]
    assert [row[0].split(".")[0] for row in rows] == ["corrupt_upload", *names, "silence"]
    statuses = {row[0]: row[1] for row in rows}
    assert statuses["corrupt_upload.mp3"] == "failed" and statuses["silence.wav"] == "no_speech"
    assert {statuses[row[0]] for row in rows if row[0].startswith("sample_")} == {"ok"}
