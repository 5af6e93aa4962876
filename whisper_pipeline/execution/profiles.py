"""Deployment profiles: one environment switch, ``WHISPER_PIPELINE_PROFILE``, picks where it runs.

=============  ==============================  =============================================
profile        executor                        storage root
=============  ==============================  =============================================
``local``      multiprocess (this host)        ``WHISPER_PIPELINE_ROOT`` else ``./data``
``production`` multiprocess (this host)        ``WHISPER_PIPELINE_ROOT`` required (``s3://``)
``celery``     dagster-celery (Redis broker)   ``WHISPER_PIPELINE_ROOT`` required
``k8s``        dagster-k8s ``k8s_job_executor``  ``WHISPER_PIPELINE_ROOT`` required
=============  ==============================  =============================================

The Dagster instance (SQLite for ``local``, PostgreSQL elsewhere) is not a profile's business:
it is ``$DAGSTER_HOME/dagster.yaml`` (``deploy/``). Profiles other than ``local`` never fall back
to a local folder: a run whose root is missing fails instead of writing tables where nobody
reads them.
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
