"""Production storage on live S3: a partition through the Dagster CLI with an ``s3://`` root.

One moto server for the module, with IAM authentication on (it rejects unknown credentials).
The run's configuration is the production one: the root from ``WHISPER_PIPELINE_ROOT``, the
endpoint from the standard ``AWS_ENDPOINT_URL`` only, credentials from ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` only (no AWS config files). Real speech from the corpus lands under
keys with spaces, non-ASCII characters and nested prefixes, beside a file that is not audio.

The tables are read back from S3 the way users read them (pyarrow datasets over s3fs, Polars,
DuckDB's httpfs) and compared with a run of the same files on a local folder. Failures (no
server, missing bucket, wrong credentials, the network cut in the middle of a run) fail the run
with the reason, leave the published tables as they were, and the next run repairs everything.
"""

import concurrent.futures
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest
import s3fs
from dagster import DagsterEventType, DagsterInstance, EventLogEntry
from dagster._serdes import serialize_value

from devtools.commands import materialize_command
from devtools.evaluation import english_wer
from devtools.harness import fresh_dagster_home
from whisper_pipeline.core.schema import TABLE_SCHEMAS
from whisper_pipeline.core.storage import PARTITION_FILE, Storage
from whisper_pipeline_tests.conftest import (
    REPOSITORY,
    corpus_rows,
    plan_config,
    planned_and_cached,
)
from whisper_pipeline_tests.s3 import (
    NetworkSwitch,
    S3Server,
    enforce_authentication,
    free_port,
    running_s3_server,
    with_iam_user,
)

pytestmark = pytest.mark.slow  # the real model through the Dagster CLI

log = logging.getLogger(__name__)

PARTITION = "2026-11-20"
BUCKET = "whisper-e2e"
PREFIX = "prod/pipeline"
ROOT = f"s3://{BUCKET}/{PREFIX}"
TABLES = tuple(TABLE_SCHEMAS)  # every published table, transcript_words included

LANDED = {
    "équipe A/réunion 1.wav": "short/lj001_0002.wav",
    "équipe A/sous-dossier/appel n°2.flac": "formats/one_two_three_44k_s24.flac",
    "日本語/会議 #3.wav": "short/lj001_0013.wav",
    "top level.wav": "short/lj001_0008.wav",
}
"""Relative path under ``raw/<date>/`` -> corpus clip (four clips, 9 s of speech)."""

NOT_AUDIO = ("notes/lisez-moi ü.txt", b"Ceci n'est pas un fichier audio.\n")

RUN_DEPENDENT = {"source_uri", "processed_at", "transcribed_at"}
"""Columns that legitimately differ between runs and roots (URIs and timestamps)."""

KEYS = {"audio_files": ("file_id",), "transcripts": ("file_id",)}
KEYS["transcript_segments"] = ("file_id", "segment_index")
KEYS["transcript_words"] = ("file_id", "word_index")

RETRY_DELAYS_S = 2 + 6 + 14
"""``STORAGE_RETRY``'s three waits (Dagster's exponential backoff: delay x (2^attempt - 1)): a
storage step that keeps failing fails the run after at least this long."""


def landed_objects(corpus: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every landed entry."""
    objects = {relative: (corpus / clip).read_bytes() for relative, clip in LANDED.items()}
    objects[NOT_AUDIO[0]] = NOT_AUDIO[1]
    return objects


def new_home(tmp_path_factory) -> Path:
    return fresh_dagster_home(tmp_path_factory.mktemp("dagster_home"))


def clean_env(home: Path, root: str) -> dict[str, str]:
    """This process's environment without any AWS setting, plus the instance and the root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # No AWS config or credentials file of the machine running the tests may take part.
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env.update(DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=root)
    return env


def s3_env(home: Path, server: S3Server, endpoint: str = "", root: str = ROOT, **aws) -> dict:
    """The environment of a production run on ``server`` (``aws`` overrides AWS variables)."""
    env = clean_env(home, root)
    env.update(server.env)  # access key, secret key, region
    env["AWS_ENDPOINT_URL"] = endpoint or server.endpoint_url
    env.update(aws)
    return env


@dataclass
class Run:
    """A finished CLI run, and where its instance (event log) is."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    home: Path
    run_id: str

    def events(self, event_type: DagsterEventType) -> list[EventLogEntry]:
        """The run's events of one type, from its event log (not the CLI's output)."""
        instance = DagsterInstance.from_config(str(self.home))
        try:
            return instance.all_logs(self.run_id, of_type=event_type)
        finally:
            instance.dispose()

    def messages(self) -> str:
        """Every log message of the run (``context.log`` lines included), one per line."""
        instance = DagsterInstance.from_config(str(self.home))
        try:
            return "\n".join(event.user_message for event in instance.all_logs(self.run_id))
        finally:
            instance.dispose()

    def retries(self, step: str) -> int:
        """How often steps whose key starts with ``step`` were retried."""
        events = self.events(DagsterEventType.STEP_UP_FOR_RETRY)
        return sum(event.step_key.startswith(step) for event in events)

    def failure(self, step: str) -> str:
        """The error (message, stack, causes) of the failed step whose key starts with ``step``."""
        failures = [
            event.dagster_event.step_failure_data.error.to_string()
            for event in self.events(DagsterEventType.STEP_FAILURE)
            if event.step_key.startswith(step)
        ]
        assert failures, f"{step} did not fail:\n{self.stderr[-5000:]}"
        return failures[-1]


def last_run_id(home: Path) -> str:
    """Id of the latest run of the instance in ``home``."""
    instance = DagsterInstance.from_config(str(home))
    try:
        (run,) = instance.get_runs(limit=1)
        return run.run_id
    finally:
        instance.dispose()


def start_cli(env: dict, *extra_args: str) -> subprocess.Popen:
    """Start materializing the partition through the Dagster CLI (output piped, as text)."""
    return subprocess.Popen(
        materialize_command(PARTITION, *extra_args),
        env=env,
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(env: dict, *extra_args: str, timeout: float = 600) -> Run:
    started = time.perf_counter()
    process = start_cli(env, *extra_args)
    stdout, stderr = process.communicate(timeout=timeout)
    seconds = time.perf_counter() - started
    home = Path(env["DAGSTER_HOME"])
    return Run(process.returncode, stdout, stderr, seconds, home, last_run_id(home))


def succeeded(run: Run) -> Run:
    assert run.returncode == 0, run.stderr[-5000:]
    return run


def object_state(server: S3Server, bucket: str = BUCKET) -> dict[str, str]:
    """Key -> ETag of every object in ``bucket`` (read straight from the server)."""
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def bucket_exists(server: S3Server, bucket: str) -> bool:
    return bucket in {b["Name"] for b in server.client().list_buckets()["Buckets"]}


def normalized(rows: list[dict], table: str) -> list[dict]:
    """Rows without the run-dependent columns, sorted by the table's key, dates as text."""
    rows = [
        {k: (str(v) if k == "date" else v) for k, v in row.items() if k not in RUN_DEPENDENT}
        for row in rows
    ]
    return sorted(rows, key=lambda row: tuple(row[k] for k in KEYS[table]))


def local_tables(root: Path) -> dict[str, list[dict]]:
    store = Storage(str(root))
    return {name: store.read_partition(name, PARTITION).to_pylist() for name in TABLES}


def s3_tables(server: S3Server) -> dict[str, list[dict]]:
    store = Storage(ROOT, server.storage_options)
    return {name: store.read_partition(name, PARTITION).to_pylist() for name in TABLES}


def assert_one_file_per_partition(server: S3Server) -> None:
    """Under ``tables/`` only ``<table>/date=<day>/part-0.parquet`` keys: no temporaries."""
    tables = sorted(k for k in object_state(server) if k.startswith(f"{PREFIX}/tables/"))
    assert tables == [
        f"{PREFIX}/tables/{name}/date={PARTITION}/{PARTITION_FILE}" for name in sorted(TABLES)
    ]


def assert_no_duplicates(tables: dict[str, list[dict]]) -> None:
    for name, rows in tables.items():
        keys = [tuple(row[k] for k in KEYS[name]) for row in rows]
        assert len(keys) == len(set(keys)), name


def assert_same_rows(tables: dict[str, list[dict]], expected: dict[str, list[dict]]) -> None:
    for name in TABLES:
        assert normalized(tables[name], name) == normalized(expected[name], name), name


def assert_no_secret(server: S3Server, *runs: Run) -> None:
    """Neither the access key id nor the secret key is in the runs' output."""
    for run in runs:
        for secret in (server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"]):
            assert secret not in run.stdout + run.stderr


def run_staging_keys(server: S3Server) -> list[str]:
    """Keys of per-run staging folders of the partition (``staging/<date>/<run>/...``)."""
    return [k for k in object_state(server) if k.startswith(f"{PREFIX}/staging/{PARTITION}/")]


PIPELINE_POLICY = (
    # What a production role needs: everything under the root, and on the bucket itself only
    # listing and deleting objects; never creating buckets. Written with wildcards so it does
    # not depend on how a server names the action behind a request: AWS checks ListObjectsV2
    # as s3:ListBucket and HeadObject as s3:GetObject, moto 5.2 by the operation's own name
    # (s3:ListObjectsV2, s3:HeadObject), and a batch delete (POST ?delete) against the bucket.
    {"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"},
    {
        "Effect": "Allow",
        "Action": ["s3:List*", "s3:DeleteObject*"],
        "Resource": f"arn:aws:s3:::{BUCKET}",
    },
)


@dataclass(frozen=True)
class Servers:
    """One moto server checking signatures and policies, seen with two users' credentials.

    Attributes:
        pipeline: The pipeline's user (``PIPELINE_POLICY``): runs and readers use it.
        admin: A user allowed every S3 action, for the tests' own checks.
    """

    pipeline: S3Server
    admin: S3Server


@pytest.fixture(scope="module")
def servers(corpus) -> Servers:
    """The server, with the partition landed in ``BUCKET``, authentication on."""
    if not os.environ.get("CI"):
        pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    with running_s3_server() as open_server:
        admin = with_iam_user(open_server, "admin")
        pipeline = with_iam_user(open_server, "pipeline", PIPELINE_POLICY)
        enforce_authentication(open_server)
        objects = landed_objects(corpus)
        admin.put_objects(
            BUCKET, {f"{PREFIX}/raw/{PARTITION}/{rel}": data for rel, data in objects.items()}
        )
        yield Servers(pipeline, admin)


@pytest.fixture(scope="module")
def server(servers) -> S3Server:
    """The server with the pipeline's credentials."""
    return servers.pipeline


@dataclass
class FirstRuns:
    """The partition run once on a local folder and once on S3 (same files)."""

    local_root: Path
    local: Run
    s3: Run
    s3_requests: list[tuple[str, str]]
    s3_tables: dict[str, list[dict]]


@pytest.fixture(scope="module")
def first_runs(server, corpus, tmp_path_factory) -> FirstRuns:
    local_root = tmp_path_factory.mktemp("local_root")
    for relative, data in landed_objects(corpus).items():
        path = local_root / "raw" / PARTITION / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    local_home = new_home(tmp_path_factory)
    local = succeeded(run_cli(clean_env(local_home, str(local_root))))
    before = len(server.requests())
    s3 = succeeded(run_cli(s3_env(new_home(tmp_path_factory), server)))
    log.info(
        "one partition run through the CLI: %.1f s on S3 (moto), %.1f s on local disk",
        s3.seconds,
        local.seconds,
    )
    return FirstRuns(local_root, local, s3, server.requests()[before:], s3_tables(server))


def test_tables_on_s3_have_the_same_rows_as_a_local_run(first_runs):
    local = local_tables(first_runs.local_root)
    assert_same_rows(first_runs.s3_tables, local)
    files = {row["relative_path"]: row for row in first_runs.s3_tables["audio_files"]}
    # Spaces, accents, CJK, '#', '°' and nested prefixes survive as they were landed.
    assert sorted(files) == sorted([*LANDED, NOT_AUDIO[0]])
    assert {path: row["status"] for path, row in files.items()} == {
        **dict.fromkeys(LANDED, "ok"),
        NOT_AUDIO[0]: "failed",
    }
    for relative, row in files.items():
        assert row["source_uri"] == f"{ROOT}/raw/{PARTITION}/{relative}"
    texts = {row["file_id"]: row["text"] for row in first_runs.s3_tables["transcripts"]}
    assert len(texts) == len(LANDED)
    references = {row["file"]: row["reference"] for row in corpus_rows()}
    for relative, clip in LANDED.items():
        text = texts[files[relative]["file_id"]]
        assert english_wer([references[clip]], [text]) <= 0.25, (relative, text)


def httpfs_extension_directory() -> Path:
    """The extension directory inside the ``duckdb-ext-httpfs`` wheel (no download needed).

    The wheel installs ``duckdb_ext/extensions/v<duckdb>/<platform>/httpfs.duckdb_extension``,
    the layout DuckDB expects under ``extension_directory``.
    """
    import duckdb_ext  # namespace package of the duckdb-ext-* wheels

    (directory,) = {Path(path) / "extensions" for path in duckdb_ext.__path__}
    assert list(directory.glob(f"v{duckdb.__version__}/*/httpfs.duckdb_extension")), directory
    return directory


def test_pyarrow_polars_and_duckdb_read_the_tables_from_s3(first_runs, server):
    expected = {
        name: [{**row, "date": PARTITION} for row in rows]
        for name, rows in first_runs.s3_tables.items()
    }
    env = server.env
    fs = s3fs.S3FileSystem(**server.storage_options)
    duck = duckdb.connect()
    duck.execute("SET autoinstall_known_extensions = false")
    duck.execute("SET extension_directory = ?", [str(httpfs_extension_directory())])
    duck.execute("LOAD httpfs")
    duck.execute(
        f"CREATE SECRET moto (TYPE s3, KEY_ID '{env['AWS_ACCESS_KEY_ID']}',"
        f" SECRET '{env['AWS_SECRET_ACCESS_KEY']}', REGION '{env['AWS_DEFAULT_REGION']}',"
        f" ENDPOINT '127.0.0.1:{server.port}', URL_STYLE 'path', USE_SSL false)"
    )
    polars_options = {
        "aws_endpoint_url": server.endpoint_url,
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "aws_region": env["AWS_DEFAULT_REGION"],
        "aws_allow_http": "true",
    }
    for name in TABLES:
        table_uri = f"{ROOT}/tables/{name}"
        arrow = ds.dataset(
            f"{BUCKET}/{PREFIX}/tables/{name}", filesystem=fs, format="parquet", partitioning="hive"
        ).to_table()
        frame = pl.scan_parquet(
            f"{table_uri}/**/*.parquet", storage_options=polars_options, hive_partitioning=True
        ).collect()
        relation = duck.sql(
            f"select * from read_parquet('{table_uri}/*/*.parquet', hive_partitioning = true)"
        )
        duck_rows = [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]
        for reader, rows in (
            ("pyarrow", arrow.to_pylist()),
            ("polars", frame.to_dicts()),
            ("duckdb", duck_rows),
        ):
            assert normalized(rows, name) == normalized(expected[name], name), (reader, name)


def test_no_credential_is_written_anywhere(first_runs, server):
    secrets = [server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"]]
    run = first_runs.s3
    places = {"stdout": run.stdout, "stderr": run.stderr}
    instance = DagsterInstance.from_config(str(run.home))
    try:
        events = instance.all_logs(run.run_id)
        assert events
        places["event log"] = "\n".join(serialize_value(event) for event in events)
    finally:
        instance.dispose()
    for name, text in places.items():
        for secret in secrets:
            assert secret not in text, name
    # Every file the instance wrote (SQLite event log, compute logs), byte for byte.
    for path in run.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in secrets if s.encode() in data], path
    client = server.client()
    for key in object_state(server):
        data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert not [s for s in secrets if s in key or s.encode() in data], key


def test_staging_is_removed_and_each_table_is_one_put(first_runs, server):
    assert run_staging_keys(server) == []
    assert_one_file_per_partition(server)
    requests = first_runs.s3_requests
    tables = [(m, p) for m, p in requests if p.startswith(f"/{BUCKET}/{PREFIX}/tables/")]
    targets = {f"/{BUCKET}/{PREFIX}/tables/{n}/date={PARTITION}/{PARTITION_FILE}" for n in TABLES}
    puts = [path for method, path in tables if method == "PUT"]
    # One whole-object PUT per table, nothing else written: no multipart upload (POST ?uploads,
    # PUT ?partNumber=), no temporary key, no copy.
    assert sorted(puts) == sorted(targets)
    assert not [(m, p) for m, p in tables if m not in ("GET", "HEAD", "PUT")]
    bucket_level = [m for m, p in requests if "/" not in p.split("?")[0].strip("/")]
    # The pipeline never creates buckets (a mistyped root must fail, not make a new bucket), and
    # writes, preprocessing included, do not probe the bucket first (Storage.makedirs).
    assert "PUT" not in bucket_level
    assert bucket_level.count("HEAD") == 0


@dataclass
class FailedRuns:
    """Runs that cannot reach the store, started together; the bucket before and after."""

    unreachable: Run
    missing_bucket: Run
    wrong_credentials: Run
    before: dict[str, str]
    after: dict[str, str]


@pytest.fixture(scope="module")
def failed_runs(first_runs, servers, tmp_path_factory) -> FailedRuns:
    """Three failing runs at once (each mostly waits out the retry policy's backoff).

    ``AWS_MAX_ATTEMPTS=1`` turns the SDK's own retries off (botocore's default spends about
    10 s on each call to a closed port): the pipeline's ``RetryPolicy`` is what is tested.
    """
    server = servers.pipeline
    envs = {
        "unreachable": s3_env(
            new_home(tmp_path_factory),
            server,
            f"http://127.0.0.1:{free_port()}",  # nothing listens there
            AWS_MAX_ATTEMPTS="1",
        ),
        # With every S3 right, as a mistyped bucket must not be created whatever the role.
        "missing_bucket": s3_env(
            new_home(tmp_path_factory), servers.admin, root=f"s3://no-such-bucket-e2e/{PREFIX}"
        ),
        "wrong_credentials": s3_env(
            new_home(tmp_path_factory),
            server,
            AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzWRONGKEY",
        ),
    }
    before = object_state(server)
    with concurrent.futures.ThreadPoolExecutor(len(envs)) as pool:
        runs = dict(zip(envs, pool.map(run_cli, envs.values()), strict=True))
    return FailedRuns(**runs, before=before, after=object_state(server))


def test_unreachable_server_fails_after_retries_and_changes_nothing(failed_runs, server):
    run = failed_runs.unreachable
    assert run.returncode != 0
    assert run.retries("audio_manifest") == 3 and run.seconds > RETRY_DELAYS_S
    assert "Could not connect to the endpoint URL" in run.failure("audio_manifest")
    assert failed_runs.after == failed_runs.before
    assert_no_secret(server, run)


def test_missing_bucket_fails_at_once_naming_it_and_creates_nothing(failed_runs, servers):
    run = failed_runs.missing_bucket
    assert run.returncode != 0
    # A root that does not exist is a configuration error: no retry (like a missing folder).
    assert run.retries("audio_manifest") == 0
    message = run.failure("audio_manifest")
    assert "bucket 'no-such-bucket-e2e' does not exist" in message, message
    assert not bucket_exists(servers.admin, "no-such-bucket-e2e")
    assert failed_runs.after == failed_runs.before
    assert_no_secret(servers.admin, run)


def test_wrong_credentials_fail_after_retries_and_change_nothing(failed_runs, server):
    run = failed_runs.wrong_credentials
    assert run.returncode != 0
    assert run.retries("audio_manifest") == 3 and run.seconds > RETRY_DELAYS_S
    message = run.failure("audio_manifest")
    assert "PermissionError" in message and "signature" in message, message
    assert "WRONGKEY" not in run.stderr + run.stdout
    assert failed_runs.after == failed_runs.before
    assert_no_secret(server, run)


def test_rerun_after_the_failures_is_idempotent(first_runs, failed_runs, server, tmp_path_factory):
    before = len(server.requests())
    again = succeeded(run_cli(s3_env(new_home(tmp_path_factory), server)))
    requests = server.requests()[before:]
    assert planned_and_cached(again.messages()) == (0, len(LANDED))
    tables = s3_tables(server)
    assert_same_rows(tables, first_runs.s3_tables)
    assert_no_duplicates(tables)
    assert_one_file_per_partition(server)
    assert run_staging_keys(server) == []
    puts = [p for m, p in requests if m == "PUT" and "/tables/" in p]
    assert len(puts) == len(TABLES)


def test_network_cut_between_table_writes_keeps_tables_readable_and_the_next_run_repairs(
    first_runs, failed_runs, server, tmp_path_factory
):
    """The network goes down as ``write_tables`` sends its second table's PUT.

    ``audio_files`` is published, ``transcripts`` never reaches the server; every later request
    is refused, so the step's retries fail too. Readers see consistent tables throughout (the
    old or new ``audio_files`` with the old ``transcripts``: same files, each transcribed one
    with its transcript), and the next run publishes the exact tables.
    """
    switch = NetworkSwitch(server.port)
    published = {k: v for k, v in object_state(server).items() if "/tables/" in k}
    home = new_home(tmp_path_factory)
    env = s3_env(home, server, switch.endpoint_url, AWS_MAX_ATTEMPTS="1")
    try:
        # redo: transcribe everything again, so that the run publishes new versions.
        switch.cut_when_sent(f"PUT /{BUCKET}/{PREFIX}/tables/transcripts/".encode())
        cut = run_cli(env, *plan_config(redo=True))
        assert switch.is_cut and cut.returncode != 0, cut.stderr[-5000:]
        assert cut.retries("transcript_tables.write_tables") == 3
        first_retry = cut.events(DagsterEventType.STEP_UP_FOR_RETRY)[0]
        first_error = first_retry.dagster_event.event_specific_data.error.to_string()
        assert "Could not connect to the endpoint URL" in first_error, first_error
        assert f"/{BUCKET}/{PREFIX}/tables/transcripts/" in first_error, first_error
        assert "Could not connect to the endpoint URL" in cut.failure("transcript_tables.write")
        # Straight from the server: audio_files is the new version, the others are the old.
        now = {k: v for k, v in object_state(server).items() if "/tables/" in k}
        changed = sorted(k for k in now if now[k] != published[k])
        assert changed == [f"{PREFIX}/tables/audio_files/date={PARTITION}/{PARTITION_FILE}"]
        assert_same_rows(s3_tables(server), first_runs.s3_tables)
        stale = run_staging_keys(server)
        assert stale and all(f"/{cut.run_id}/" in key for key in stale)

        switch.restore()
        repaired = succeeded(run_cli(env))
    finally:
        switch.close()
    assert "removed the staging folders of 1 ended runs" in repaired.messages()
    assert run_staging_keys(server) == []
    tables = s3_tables(server)
    assert_same_rows(tables, first_runs.s3_tables)
    assert_no_duplicates(tables)
    assert_one_file_per_partition(server)
    assert_no_secret(server, cut, repaired)
