"""A live S3 server (moto) for tests of ``s3://`` roots, started once per test session.

Credentials are fake and never put in ``os.environ`` by the fixture: tests pass
``S3Server.storage_options`` to ``Storage`` or set ``S3Server.env`` with ``monkeypatch``.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""What moto accepts; set them with ``monkeypatch.setenv`` so they do not leak into other tests."""

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    """A running moto server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        env: Fake AWS credentials and region, as environment variables.
    """

    endpoint_url: str
    env: dict[str, str] = field(default_factory=lambda: dict(FAKE_CREDENTIALS))

    @property
    def storage_options(self) -> dict:
        """s3fs options reaching this server with the fake credentials (no environment)."""
        return {
            "key": self.env["AWS_ACCESS_KEY_ID"],
            "secret": self.env["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {
                "endpoint_url": self.endpoint_url,
                "region_name": self.env["AWS_DEFAULT_REGION"],
            },
            "skip_instance_cache": True,
        }

    def client(self):
        """A boto3 S3 client of this server (boto3 writes keys verbatim; s3fs would not)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def put_objects(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Create ``bucket`` (if needed) and upload ``{key: bytes}``, keys taken literally."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        for key, data in objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=data)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1, on a free port, killed when the session ends."""
    if not os.environ.get("CI"):
        pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The server logs every request: a file, not a pipe nobody drains, which would fill up.
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(process, url, log)
        yield S3Server(url)
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()
