"""Deployment profiles: one environment switch, ``WHISPER_PIPELINE_PROFILE``, picks where it runs.

``local`` (default) and ``production`` run the multiprocess executor on this host, ``celery``
dagster-celery workers, ``k8s`` one Kubernetes Job per step (``PROFILES``). Every profile but
``local`` requires ``WHISPER_PIPELINE_ROOT`` and never falls back to a local folder. The Dagster
instance (SQLite, PostgreSQL) is ``$DAGSTER_HOME/dagster.yaml``, not a profile's business.
"""

import os

PROFILE_ENV = "WHISPER_PIPELINE_PROFILE"
"""Environment variable naming the profile; unset or empty means ``local``."""

LOCAL = "local"
PRODUCTION = "production"
CELERY = "celery"
K8S = "k8s"

PROFILES = {
    LOCAL: "multiprocess executor on this host; tables under ./data unless a root is given",
    PRODUCTION: "multiprocess executor on this host; storage root required (S3 in production)",
    CELERY: "dagster-celery executor: steps on Celery workers (queues cpu and gpu)",
    K8S: "dagster-k8s executor: one Kubernetes Job per step, GPU pods for transcription",
}
"""Every profile and what it selects."""


def current_profile(environ: dict | None = None) -> str:
    """The profile named by ``WHISPER_PIPELINE_PROFILE`` (default ``local``).

    Args:
        environ: Environment to read; default ``os.environ``.

    Raises:
        ValueError: The variable names no profile (a typo fails the code location loudly
            rather than running on the wrong executor or storage).
    """
    environ = os.environ if environ is None else environ
    name = environ.get(PROFILE_ENV, "").strip().lower() or LOCAL
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={environ.get(PROFILE_ENV)!r} is not a profile; "
            f"use one of {', '.join(PROFILES)}"
        )
    return name
