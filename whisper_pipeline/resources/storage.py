import os

import dagster as dg
from pydantic import PrivateAttr

from whisper_pipeline.core.storage import Storage

DEFAULT_ROOT = "data"
"""Local root used when neither config nor ``WHISPER_PIPELINE_ROOT`` names one (relative to cwd)."""


class StorageResource(dg.ConfigurableResource):
    """The project's single storage root: landing zone, staging area and tables.

    Attributes:
        root: Local path or ``s3://bucket/prefix``. Empty means ``$WHISPER_PIPELINE_ROOT`` read
            at run time, else ``./data``.
        endpoint_url: S3-compatible endpoint (MinIO, LocalStack); empty for AWS. Credentials come
            from the usual AWS environment variables or instance role, read by s3fs at run time.
    """

    root: str = ""
    endpoint_url: str = ""

    _storage: Storage | None = PrivateAttr(default=None)

    def resolved_root(self) -> str:
        """The root in force for this run (see ``root``)."""
        root = self.root or os.environ.get("WHISPER_PIPELINE_ROOT") or DEFAULT_ROOT
        if "://" not in root:
            root = os.path.abspath(root)
        return root

    def get(self) -> Storage:
        """The ``Storage`` for this process, created on first use."""
        if self._storage is None:
            options = {}
            if self.endpoint_url:
                options["client_kwargs"] = {"endpoint_url": self.endpoint_url}
            self._storage = Storage(self.resolved_root(), options)
        return self._storage
