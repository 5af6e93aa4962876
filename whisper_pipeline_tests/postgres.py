"""A live PostgreSQL server for tests of the production instance, started once per test session.

The cluster lives in a temporary directory and listens on 127.0.0.1 only, on a free port, with
a throw-away password. PostgreSQL refuses to run as root, so under root the server (and
``initdb``) run as the unprivileged user ``nobody``, which owns the directory. Without the
PostgreSQL binaries the tests that need them are skipped, except in CI (``CI`` set), where they
fail.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from devtools.instance import POSTGRES_ENV

USER = "dagster"
PASSWORD = "dagster-test-only"
DATABASE = "dagster"
SERVICE_USER = "nobody"
"""OS user the server runs as when the tests run as root."""

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PostgresServer:
    """Connection settings of a running PostgreSQL server and one of its databases."""

    host: str
    port: int
    user: str
    password: str
    db: str

    @property
    def env(self) -> dict[str, str]:
        """The ``DAGSTER_PG_*`` variables ``deploy/dagster.postgres.yaml`` reads."""
        values = {
            "hostname": self.host,
            "port": str(self.port),
            "username": self.user,
            "password": self.password,
            "db_name": self.db,
        }
        return {variable: values[name] for name, variable in POSTGRES_ENV.items()}

    def connect(self, db: str | None = None):
        """A psycopg2 connection (autocommit) to ``db``, default this server's database."""
        import psycopg2

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db or self.db,
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> "PostgresServer":
        """Create an empty database ``name``; the same server's settings pointing at it."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        connection = self.connect("postgres")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        finally:
            connection.close()
        return replace(self, db=name)


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, else ``PATH``'s."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda path: int(re.sub(r"\D", "", Path(path).parts[-3]) or 0))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service_account() -> dict:
    """``subprocess`` arguments running a command as ``SERVICE_USER`` under root, else nothing."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses root, and there is no user {SERVICE_USER}"
        ) from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _wait_until_up(process: subprocess.Popen, server: PostgresServer, log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}:\n{log.read_text()}")
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections within {STARTUP_TIMEOUT_S} s:\n"
                    f"{log.read_text()}"
                ) from None
            time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    """Immediate shutdown (SIGQUIT, as ``pg_ctl stop -m immediate``); SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 with an empty database, stopped and deleted at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        reason = "no PostgreSQL binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but there are {reason}")
        pytest.skip(reason)
    if not os.environ.get("CI"):
        pytest.importorskip("psycopg2", reason="psycopg2 is not installed (postgres extra)")
    as_service = _service_account()
    directory = Path(tempfile.mkdtemp(prefix="whisper_pipeline_pg_"))
    process = None
    try:
        if as_service:
            os.chown(directory, as_service["user"], as_service["group"])
        data, log = directory / "data", directory / "postgres.log"
        password_file = directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if as_service:
            os.chown(password_file, as_service["user"], as_service["group"])
        initdb = subprocess.run(
            [
                bin_dir / "initdb", "-D", data, "-U", USER, f"--pwfile={password_file}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            ],
            cwd=directory, capture_output=True, text=True, check=False, **as_service,
        )  # fmt: skip
        if initdb.returncode:
            raise RuntimeError(f"initdb exited with {initdb.returncode}:\n{initdb.stderr}")
        server = PostgresServer("127.0.0.1", _free_port(), USER, PASSWORD, "postgres")
        with open(log, "w") as handle:
            if as_service:
                os.chown(log, as_service["user"], as_service["group"])
            # Durability is not under test: no fsync keeps a 2-core machine's runs fast.
            process = subprocess.Popen(
                [
                    bin_dir / "postgres", "-D", data, "-h", server.host, "-p", str(server.port),
                    "-k", directory, "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ],
                cwd=directory, stdout=handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, **as_service,
            )  # fmt: skip
        _wait_until_up(process, server, log)
        yield server.create_database(DATABASE)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)
