"""A live S3 server (moto) for tests of ``s3://`` roots, and helpers to break the link to it.

The ``s3_server`` fixture starts one server per test session. Credentials are fake and never
put in ``os.environ`` by the fixture: tests pass ``S3Server.storage_options`` to ``Storage`` or
set ``S3Server.env`` with ``monkeypatch``.

``running_s3_server`` starts a server of one's own (e.g. one whose authentication a module
switches on with ``enforce_authentication``, for users made with ``with_iam_user``).
``NetworkSwitch`` is a TCP proxy in front of a server whose link can be cut and restored on the
same port: a network partition that keeps the server's in-memory objects (moto has no
persistence: a stopped and restarted server would have lost the tables a test checks).
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""What moto accepts; set them with ``monkeypatch.setenv`` so they do not leak into other tests."""

STARTUP_TIMEOUT_S = 30.0

_REQUEST_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*"')
"""A request in the server's (werkzeug's) log, colours or not: method and raw path."""


@dataclass(frozen=True)
class S3Server:
    """A running moto server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        env: AWS credentials and region the server accepts, as environment variables.
        log_path: The server's log (one line per request); empty when not kept.
    """

    endpoint_url: str
    env: dict[str, str] = field(default_factory=lambda: dict(FAKE_CREDENTIALS))
    log_path: str = ""

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(urllib.parse.urlsplit(self.endpoint_url).port)

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

    def client(self, service: str = "s3"):
        """A boto3 client of this server (boto3 writes keys verbatim; s3fs would not)."""
        import boto3

        return boto3.client(
            service,
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

    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request logged so far, the path percent-decoded.

        The path includes the query string, e.g. ``("POST", "/bucket/key?uploads")``.
        """
        if not self.log_path:
            raise ValueError("this server's log is not kept")
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return [
                (match.group(1), urllib.parse.unquote(match.group(2)))
                for match in map(_REQUEST_LINE.search, log)
                if match
            ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on when asked."""
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


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Run a moto S3 server on 127.0.0.1, on a free port, for the ``with`` block.

    It accepts any credentials until ``enforce_authentication``. Its log (one line per request,
    see ``S3Server.requests``) is a temporary file, not a pipe nobody drains, which would fill.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-") as directory:
        log_path = os.path.join(directory, "server.log")
        with open(log_path, "w+") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                _wait_until_up(process, url, log)
                yield S3Server(url, log_path=log_path)
            finally:
                process.kill()
                process.wait(timeout=10)


ALLOW_ALL_S3 = ({"Effect": "Allow", "Action": "s3:*", "Resource": "*"},)
"""An IAM policy statement allowing every S3 action on every resource."""


def with_iam_user(server: S3Server, user: str, statements=ALLOW_ALL_S3) -> S3Server:
    """Create an IAM user with an inline policy; ``server`` with the user's access key in ``env``.

    Call it before ``enforce_authentication`` (or on a server whose ``env`` may use IAM).

    Args:
        server: The server.
        user: Name of the IAM user to create.
        statements: The policy's statements (default: every S3 action).

    Returns:
        A copy of ``server`` whose ``env`` holds the key the server generated for the user.
    """
    iam = server.client("iam")
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": list(statements)}
    iam.put_user_policy(UserName=user, PolicyName="policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    env = {
        **server.env,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    return replace(server, env=env)


def enforce_authentication(server: S3Server) -> None:
    """Make the server check every request's signature and its IAM user's policy.

    From then on it rejects requests signed with credentials it does not know and actions the
    user's policy does not allow (moto's IAM authentication, switched on for the whole server
    through ``/moto-api/reset-auth``). Create users first (``with_iam_user``).
    """
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/reset-auth",
        data=b"0",  # unauthenticated requests allowed from now on: none
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


class NetworkSwitch:
    """A TCP proxy on 127.0.0.1 in front of a server; ``cut`` and ``restore`` its link.

    Cut, the port refuses connections and the open ones are dropped, as when the network to
    the store goes down; restored, it listens on the same port again. The server behind it
    keeps running, so the objects it holds stay readable directly. ``cut_when_sent`` cuts at a
    precise request: the first one whose bytes contain a pattern never reaches the server.

    Args:
        target_port: The server's port on 127.0.0.1.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._trigger: bytes | None = None
        self.restore()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<proxy port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut."""
        return self._listener is None

    def restore(self) -> None:
        """Listen on the proxy's port again (no-op when not cut)."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.settimeout(0.1)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening (connections are refused) and drop every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = self._open, set()
        if listener is not None:
            listener.close()
        for connection in connections:
            _close(connection)

    def cut_when_sent(self, pattern: bytes) -> None:
        """Cut as soon as a client sends bytes containing ``pattern``, instead of forwarding them.

        E.g. ``b"PUT /bucket/key"``: that request fails (its connection is dropped) and every
        later one is refused, while every earlier one went through. The pattern must not span
        two reads of a connection (a request line and its headers come in one).
        """
        self._trigger = pattern

    def close(self) -> None:
        """Cut for good (the proxy's threads end)."""
        self._trigger = None
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    return
                self._open.update((client, upstream))
            for source, sink, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, outbound), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(65536):
                trigger = self._trigger
                if outbound and trigger is not None and trigger in data:
                    self._trigger = None
                    self.cut()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                _close(end)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1, on a free port, killed when the session ends."""
    if not os.environ.get("CI"):
        pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    with running_s3_server() as server:
        yield server
