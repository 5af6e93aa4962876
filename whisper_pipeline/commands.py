"""The Dagster CLI command that materializes one partition (used by the demo, tests, benchmarks)."""

import sys

DEFINITIONS_MODULE = "whisper_pipeline.definitions"


def materialize_command(
    partition: str, *extra_args: str, module: str = DEFINITIONS_MODULE
) -> list[str]:
    """``dagster asset materialize`` of every asset for ``partition``, as an argument list.

    Args:
        partition: Daily partition key, ``YYYY-MM-DD``.
        *extra_args: Appended as they are (e.g. ``"-c", "run_config.yaml"``).
        module: Code location module (``[tool.dagster] module_name``).

    Returns:
        Arguments for ``subprocess.run``, starting with this interpreter.
    """
    return [
        sys.executable, "-m", "dagster", "asset", "materialize", "-m", module,
        "--select", "*", "--partition", partition, *extra_args,
    ]  # fmt: skip
