"""The demo's output: a summary on success; on failure the tail of the run's log and its exit code.

The success path through the real model is run verbatim from the README in
``test_readme_commands.py`` (slow lane); here the Dagster CLI is replaced by a command that fails.
"""

import sys

from devtools import demo


def test_a_failed_run_prints_its_log_tail_and_exits_with_its_code(tmp_path, monkeypatch, capsys):
    failing = [sys.executable, "-c", "import sys; print('line 1'); sys.exit('the run blew up')"]
    monkeypatch.setattr(demo, "materialize_command", lambda partition: failing)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WHISPER_PIPELINE_ROOT", str(tmp_path / "data"))
    (tmp_path / "audio").mkdir()
    code = demo.main(["--audio", str(tmp_path / "audio"), "--partition", "2026-11-20"])
    assert code == 1
    out, err = capsys.readouterr()
    log = tmp_path / "home" / "demo-2026-11-20.log"
    assert "failed (exit 1)" in err and str(log) in err
    assert "line 1" in err and "the run blew up" in err  # the log's tail, stdout and stderr
    assert "Partition" not in out  # no summary of tables that were not written
    assert (tmp_path / "home" / "dagster.yaml").exists()


def test_run_id_is_read_from_the_cli_log():
    line = (
        "2026-12-07 02:01:37 +0000 - dagster - DEBUG - __ASSET_JOB - "
        "6df69cbb-17ed-40db-b4c8-fda505494bb4 - 14429 - RUN_START - Started execution of run"
    )
    assert demo.run_id_in(f"warning\n{line}\n") == "6df69cbb-17ed-40db-b4c8-fda505494bb4"
    assert demo.run_id_in("no run here") is None
