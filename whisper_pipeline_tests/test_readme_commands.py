"""Every bash block of README.md is run verbatim by a test, or named here as one that cannot run.

``COMMANDS`` maps each block (by its first line) to the test that runs it verbatim, or to why it
cannot run here and what covers it instead; a block added to the README without an entry fails
``test_every_bash_block_is_accounted_for``. The blocks that run here run in a checkout-like
folder (``readme.py``'s ``readme_checkout``, where the README's demo ran), with the README's
variables block first where they need it, as a user's shell would have it.
"""

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import dagster as dg
import pytest

from whisper_pipeline_tests.readme import REPOSITORY, code_blocks, run_block
from whisper_pipeline_tests.s3 import free_port

SETUP = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" -c constraints.txt'
    " && python -m devtools.demo\n"
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" -c constraints.txt'
    " && python -m pytest\n"
)

COMMANDS = {
    "python3 -m venv .venv": "the demo after the venv and pip steps: readme_checkout (slow); the"
    " venv and pip steps are .ci/run's on a fresh machine, and pytest is this suite",
    "python -m devtools.demo --audio": "readme_checkout (slow), verbatim",
    "export DAGSTER_HOME=": "before each block below that needs it (slow), verbatim",
    "dagster dev": "test_dagster_dev_serves_without_an_instance_warning (slow), verbatim",
    "pkill -f": "test_dagster_dev_stops_on_ctrl_c_and_the_readme_stops_a_killed_one (slow),"
    " verbatim",
    "dagster asset materialize": "test_cli_materialize_recipe (slow), verbatim",
    "dagster-daemon run": "test_cli_backfill_recipe (slow), verbatim, as its daemon",
    "dagster job backfill": "test_cli_backfill_recipe (slow), verbatim",
    'pip install -e ".[postgres]"': "not here (S3 and a production instance); test_s3_end_to_end"
    ", test_postgres, test_celery and test_k8s cover the profiles with live loopback servers",
}
RUNS_HERE = {key for key, how in COMMANDS.items() if not how.startswith("not here")}
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
BACKFILL_TIMEOUT_S = 300
UI_START_TIMEOUT_S = 120


def block(first_line: str) -> str:
    """The one README bash block starting with ``first_line``."""
    (found,) = [code for code in code_blocks("bash") if code.startswith(first_line)]
    return found


def test_the_set_up_commands_are_the_readmes_first_block():
    readme = (REPOSITORY / "README.md").read_text()
    assert readme.index("```bash\n" + SETUP + "```") == readme.index("```")  # the first block


def test_every_bash_block_is_accounted_for():
    blocks = code_blocks("bash")
    keys = [[key for key in COMMANDS if code.startswith(key)] for code in blocks]
    assert all(len(matches) == 1 for matches in keys), list(zip(blocks, keys, strict=True))
    assert sorted(key for (key,) in keys) == sorted(COMMANDS)  # no entry without its block


@pytest.mark.slow
def test_the_demo_prints_its_partition_and_the_querys_rows(readme_checkout):
    out = readme_checkout.demo_stdout
    assert f"Partition {readme_checkout.partition}: 8 files" in out
    assert "8 rows:" in out and "corrupt_upload.mp3" in out and "failed" in out
    assert "DEBUG" not in out and "Warning" not in out  # the event stream went to the log
    log = readme_checkout.cwd / ".dagster_home" / f"demo-{readme_checkout.partition}.log"
    assert str(log) in out and "RUN_SUCCESS" in log.read_text()
    assert f"Partition {readme_checkout.audio_partition}: 8 files" in readme_checkout.audio_stdout


def shell(readme_checkout, command_block: str, **kwargs):
    """The README's variables block, then ``command_block``, in one bash in the checkout."""
    code = block("export DAGSTER_HOME=") + command_block
    return run_block(code, readme_checkout.cwd, readme_checkout.env, **kwargs)


@pytest.mark.slow
def test_cli_materialize_recipe(readme_checkout):
    completed = shell(readme_checkout, block("dagster asset materialize"))
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert "RUN_SUCCESS" in completed.stderr
    assert "2026-11-20" in block("dagster asset materialize")  # the demo's --audio partition


def started(code: str, readme_checkout, log_path, env=None) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(
            ["bash", "-ec", code],
            cwd=readme_checkout.cwd,
            env=env or readme_checkout.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@pytest.mark.slow
def test_cli_backfill_recipe(readme_checkout, tmp_path):
    backfill = block("dagster job backfill")
    partitions = ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert ",".join(partitions) in backfill
    raw = readme_checkout.cwd / "data" / "raw"
    for partition in partitions:  # the demo's speech (cached: the runs only publish)
        shutil.copytree(raw / readme_checkout.partition, raw / partition, dirs_exist_ok=True)
    daemon_code = block("export DAGSTER_HOME=") + block("dagster-daemon run")
    daemon = started(daemon_code, readme_checkout, tmp_path / "daemon.log")
    try:
        launched = shell(readme_checkout, backfill, timeout=120)
        assert launched.returncode == 0, launched.stderr[-5000:]
        instance = dg.DagsterInstance.from_config(str(readme_checkout.cwd / ".dagster_home"))
        (backfill_id,) = [b.backfill_id for b in instance.get_backfills()]
        runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        deadline = time.monotonic() + BACKFILL_TIMEOUT_S
        while True:
            runs = instance.get_runs(filters=runs_filter)
            if len(runs) == len(partitions) and all(run.status in FINISHED for run in runs):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-5000:]
            assert time.monotonic() < deadline, [run.status for run in runs]
            time.sleep(1)
    finally:
        stop(daemon)
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert sorted(run.tags["dagster/partition"] for run in runs) == partitions
    tables = readme_checkout.cwd / "data" / "tables" / "transcripts"
    assert all((tables / f"date={partition}").exists() for partition in partitions)


@pytest.mark.slow
def test_dagster_dev_serves_without_an_instance_warning(readme_checkout, tmp_path):
    # Dagster's CLI reads DAGSTER_CLI_DEV_HOST/PORT for `dagster dev --host/--port`: loopback and
    # a free port, while the block itself runs as written.
    port = free_port()
    env = dict(readme_checkout.env, DAGSTER_CLI_DEV_HOST="127.0.0.1")
    env["DAGSTER_CLI_DEV_PORT"] = str(port)
    code = block("export DAGSTER_HOME=") + block("dagster dev")
    log_path = tmp_path / "dev.log"
    dev = started(code, readme_checkout, log_path, env=env)
    try:
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        while "Serving dagster-webserver" not in log_path.read_text():
            assert dev.poll() is None, log_path.read_text()[-5000:]
            assert time.monotonic() < deadline, log_path.read_text()[-5000:]
            time.sleep(1)
    finally:
        stop(dev)
    log = log_path.read_text()
    assert f"127.0.0.1:{port}" in log
    # What dagster dev warned while the instance template was ./dagster.yaml.
    assert "will not be used to configure Dagster" not in log
    assert (readme_checkout.cwd / ".dagster_home" / "dagster.yaml").exists()


DEV_STOP_BOUND_S = 60
"""Ctrl-C to the end of ``dagster dev``, its webserver and its daemon (20 s was too tight on a
loaded 2-core CI machine)."""
CODE_SERVER_STOP_BOUND_S = 90
"""Ctrl-C to the end of its code server, which waits out its 45 s heartbeat timeout."""


def group_processes(pgid: int) -> dict[int, str]:
    """Live processes of process group ``pgid``, pid to command line (zombies left out)."""
    listing = subprocess.run(
        ["ps", "-ww", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True
    )
    found = {}
    for line in listing.stdout.splitlines():
        pid, stat, args = line.split(None, 2)
        if not stat.startswith("Z"):
            found[int(pid)] = args
    return found


def answers(url: str) -> bool:
    """Whether an HTTP GET of ``url`` gets a response."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def serving_dev(readme_checkout, log_path) -> subprocess.Popen:
    """The README's variables and ``dagster dev`` blocks, once the webserver answers HTTP.

    The log line comes before the webserver installs its signal handlers: a Ctrl-C at that
    moment once left ``dagster dev`` running. A user presses it once the UI is up.
    """
    port = free_port()
    env = dict(readme_checkout.env, DAGSTER_CLI_DEV_HOST="127.0.0.1")
    env["DAGSTER_CLI_DEV_PORT"] = str(port)
    dev = started(block("export DAGSTER_HOME=") + block("dagster dev"), readme_checkout, log_path,
                  env=env)  # fmt: skip
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/server_info"
    while "Serving dagster-webserver" not in log_path.read_text() or not answers(url):
        assert dev.poll() is None, log_path.read_text()[-5000:]
        assert time.monotonic() < deadline, log_path.read_text()[-5000:]
        time.sleep(1)
    return dev


def wait_until(condition, bound_s: float, message) -> float:
    started_at = time.monotonic()
    while not condition():
        assert time.monotonic() - started_at < bound_s, message()
        time.sleep(0.5)
    return time.monotonic() - started_at


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="Known, open: in 2 of 4 clean-clone CI runs on 2026-12-07 dagster dev was still "
    "running 60 s after SIGINT (its daemon had shut down), also with the UI answering first",
)
def test_dagster_dev_stops_on_ctrl_c(readme_checkout, tmp_path):
    # Ctrl-C: the terminal sends SIGINT to the foreground process group.
    dev = serving_dev(readme_checkout, tmp_path / "dev.log")
    try:
        children = group_processes(dev.pid)
        assert any("dagster_webserver" in args for args in children.values()), children
        assert any("dagster._daemon" in args for args in children.values()), children
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=DEV_STOP_BOUND_S)
        wait_until(
            lambda: (
                not any(
                    "dagster_webserver" in a or "dagster._daemon" in a
                    for a in group_processes(dev.pid).values()
                )
            ),
            DEV_STOP_BOUND_S,
            lambda: group_processes(dev.pid),
        )
        wait_until(lambda: not group_processes(dev.pid), CODE_SERVER_STOP_BOUND_S,
                   lambda: group_processes(dev.pid))  # fmt: skip
    finally:
        stop(dev)


@pytest.mark.slow
def test_the_readme_stops_a_killed_dagster_dev(readme_checkout, tmp_path):
    # `dagster dev` itself killed: its webserver, daemon and code servers stay, until the
    # README's command stops them.
    dev = serving_dev(readme_checkout, tmp_path / "killed.log")
    try:
        (dev_pid,) = [
            pid for pid, args in group_processes(dev.pid).items() if "bin/dagster dev" in args
        ]
        os.kill(dev_pid, signal.SIGKILL)
        dev.wait(timeout=20)
        time.sleep(3)
        left = group_processes(dev.pid)
        assert any("dagster_webserver" in args for args in left.values()), left
        stopped = shell(readme_checkout, block("pkill -f"), timeout=30)
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: not group_processes(dev.pid), DEV_STOP_BOUND_S,
                   lambda: group_processes(dev.pid))  # fmt: skip
    finally:
        if group_processes(dev.pid):
            os.killpg(dev.pid, signal.SIGKILL)
