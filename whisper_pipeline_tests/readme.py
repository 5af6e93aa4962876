"""README.md's code blocks, and a checkout-like folder where the README's demo has run.

``readme_checkout`` (session-scoped, slow: the demo runs the real model through the CLI) is a
temporary folder laid out as the README's commands expect to run in (``deploy/dagster.yaml``,
``workspace.yaml``, ``pyproject.toml``), in which the README's two demo commands ran verbatim:
``python -m devtools.demo`` (yesterday's partition, synthesized speech) and the
``--audio recordings --partition 2026-11-20`` one on a copy of that speech. Its ``data/`` then
holds two partitions of the demo's own data, which the README's queries are run against.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.instance import BASE_INSTANCE

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
FENCE = re.compile(r"^ *```(\w+)\n(.*?)^ *```$", re.MULTILINE | re.DOTALL)
DEMO_TIMEOUT_S = 600


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of ``language`` in README.md, in order, indentation removed."""
    blocks = []
    for lang, code in FENCE.findall(README.read_text()):
        if lang == language:
            indent = min(len(line) - len(line.lstrip()) for line in code.splitlines() if line)
            blocks.append("".join(line[indent:] + "\n" for line in code.splitlines()))
    return blocks


def readme_env() -> dict:
    """The environment of a user's shell: the venv on PATH, no pipeline variables set yet."""
    unset = ("DAGSTER_HOME", "WHISPER_PIPELINE_ROOT")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_block(code: str, cwd: Path, env: dict, timeout: float = DEMO_TIMEOUT_S):
    """Run ``code`` with bash in ``cwd`` (stopping at the first failing command)."""
    return subprocess.run(
        ["bash", "-ec", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Checkout:
    """Where the README's demo ran: the folder, the shell's environment, the demo's output."""

    cwd: Path
    env: dict
    partition: str
    """The demo's default partition (yesterday, UTC, when it ran)."""
    audio_partition: str
    """The partition of the README's ``--audio recordings --partition`` command."""
    demo_stdout: str
    audio_stdout: str


def demo_commands() -> tuple[str, str]:
    """The demo of the README's set-up line (after its venv and pip steps), and its --audio one."""
    setup = code_blocks("bash")[0].splitlines()[0]
    demo = setup.rsplit(" && ", 1)[1]
    (audio,) = [block for block in code_blocks("bash") if "devtools.demo --audio" in block]
    return demo, audio


@pytest.fixture(scope="session")
def readme_checkout(tmp_path_factory) -> Checkout:
    cwd = tmp_path_factory.mktemp("checkout")
    (cwd / "deploy").mkdir()
    shutil.copy(BASE_INSTANCE, cwd / "deploy" / "dagster.yaml")
    for name in ("workspace.yaml", "pyproject.toml"):
        shutil.copy(REPOSITORY / name, cwd / name)
    shutil.copytree(REPOSITORY / "devtools", cwd / "devtools")  # the demo is a checkout's tool
    env = readme_env()
    demo, audio = demo_commands()
    assert demo == "python -m devtools.demo"
    first = run_block(demo, cwd, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    partition = re.search(r"^Partition (\d{4}-\d\d-\d\d):", first.stdout, re.MULTILINE).group(1)
    shutil.copytree(cwd / "data" / "raw" / partition, cwd / "recordings")
    second = run_block(audio, cwd, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    audio_partition = re.search(r"--partition (\S+)", audio).group(1)
    return Checkout(cwd, env, partition, audio_partition, first.stdout, second.stdout)
