import os
import time
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from pydantic import PrivateAttr

from whisper_pipeline.core.storage import Storage

DEFAULT_ROOT = "data"
"""Local root used when neither config nor ``WHISPER_PIPELINE_ROOT`` names one (relative to cwd)."""

ROOT_ENV = "WHISPER_PIPELINE_ROOT"
"""Environment variable naming the storage root when config names none."""

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""The AWS SDKs' standard endpoint variables, S3-specific first (AWS SDK "service-specific
endpoints"); read when ``endpoint_url`` is not configured."""


T = TypeVar("T")

STORAGE_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL)
"""Retries for steps whose failures are mostly transient storage errors (S3 throttling, 5xx).

Dagster's exponential backoff waits ``delay * (2**attempt - 1)``: 2, 6 and 14 s, so a storage
step that keeps failing fails its run about 22 s (plus four attempts) after its first error."""

WRITE_RETRY_DELAYS_S = (2.0, 6.0, 14.0)
"""Waits before each new attempt of a write that ``retry_write`` repeats in place: the same
waits as ``STORAGE_RETRY``'s, without redoing the step's work."""


def retry_write(write: Callable[[], T], what: str, log: Callable[..., None]) -> T:
    """Call ``write`` and, when it raises ``OSError`` (S3 5xx, a full disk), call it again.

    For writes that come after expensive work (the transcription of a shard): retrying the
    write where it failed keeps that work, where a step retry would redo it.

    Args:
        write: The write; it must be safe to repeat (atomic writes are).
        what: What is written, for the log.
        log: Logs a warning before each new attempt (``context.log.warning``).

    Returns:
        What ``write`` returns.

    Raises:
        OSError: The last attempt's error, after ``len(WRITE_RETRY_DELAYS_S)`` retries.
    """
    for delay in WRITE_RETRY_DELAYS_S:
        try:
            return write()
        except OSError as error:
            log("writing %s failed (%s); again in %.0f s", what, error, delay)
            time.sleep(delay)
    return write()


class StorageResource(dg.ConfigurableResource):
    """The project's single storage root: landing zone, staging area and tables.

    Attributes:
        root: Local path or ``s3://bucket/prefix``. Empty means ``$WHISPER_PIPELINE_ROOT`` read
            at run time, else ``./data``.
        endpoint_url: S3-compatible endpoint (MinIO, LocalStack, moto); empty means
            ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``, else AWS. Credentials are never
            configured here: s3fs reads the usual AWS environment variables, shared
            credentials file or instance/pod role at run time.
        require_root: Fail instead of falling back to ``./data`` when neither ``root`` nor
            ``$WHISPER_PIPELINE_ROOT`` is set (every profile but ``local``).
    """

    root: str = ""
    endpoint_url: str = ""
    require_root: bool = False

    _storage: Storage | None = PrivateAttr(default=None)

    def resolved_root(self) -> str:
        """The root in force for this run (see ``root``).

        Raises:
            dagster.Failure: ``require_root`` and no root configured (not retried).
        """
        root = self.root or os.environ.get(ROOT_ENV, "").strip()
        if not root:
            if self.require_root:
                raise dg.Failure(
                    f"no storage root: set {ROOT_ENV} (e.g. s3://bucket/prefix) or "
                    "resources.storage.config.root; this profile never falls back to ./data",
                    allow_retries=False,
                )
            root = DEFAULT_ROOT
        if "://" not in root:
            root = os.path.abspath(root)
        return root

    def resolved_endpoint_url(self) -> str:
        """The S3 endpoint in force: ``endpoint_url``, else the first of ``ENDPOINT_ENVS`` set."""
        if self.endpoint_url:
            return self.endpoint_url
        return next((os.environ[name] for name in ENDPOINT_ENVS if os.environ.get(name)), "")

    def get(self) -> Storage:
        """The ``Storage`` for this process, created on first use."""
        if self._storage is None:
            root = self.resolved_root()
            options = {}
            endpoint = self.resolved_endpoint_url()
            if endpoint and root.startswith("s3://"):
                options["client_kwargs"] = {"endpoint_url": endpoint}
            self._storage = Storage(root, options)
        return self._storage
