"""The corpus partition through the Dagster CLI on an S3 root (loopback server) and on local disk.

    python -m benchmarks.s3_vs_local [--repeats 1]

Starts ``moto_server`` on 127.0.0.1 (``moto[server]``, the dev extra), uploads the shared corpus
to ``s3://bench/speech/raw/<date>/``, and times ``dagster asset materialize`` of the partition
with ``WHISPER_PIPELINE_ROOT=s3://bench/speech`` and the endpoint from ``AWS_ENDPOINT_URL``,
against the same files copied under a local root; alternating, each with a fresh root, cache
and instance. moto answers from memory in a Python process on the same cores, so the S3 figure
includes its CPU time, and no network latency (a real S3 adds tens of ms per request).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.run import corpus_dir
from devtools.commands import materialize_command
from devtools.instance import BASE_INSTANCE

PARTITION = "2026-11-20"
REPOSITORY = Path(__file__).resolve().parents[1]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not start")


def corpus_files() -> list[Path]:
    base = corpus_dir()
    return [p for folder in ("short", "long", "formats") for p in sorted((base / folder).iterdir())]


def materialize(root: str, env: dict) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_home_") as home:
        shutil.copy(BASE_INSTANCE, home)
        started = time.perf_counter()
        completed = subprocess.run(
            materialize_command(PARTITION),
            env={**os.environ, **env, "DAGSTER_HOME": home, "WHISPER_PIPELINE_ROOT": root},
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import boto3

    base = corpus_dir()
    files = corpus_files()
    process, url = start_moto()
    s3_env = {**CREDENTIALS, "AWS_ENDPOINT_URL": url}
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        for attempt in range(args.repeats):
            bucket = f"bench{attempt}"
            client.create_bucket(Bucket=bucket)
            for path in files:
                key = f"speech/raw/{PARTITION}/{path.relative_to(base).as_posix()}"
                client.upload_file(str(path), bucket, key)
            walls["s3"].append(materialize(f"s3://{bucket}/speech", s3_env))
            with tempfile.TemporaryDirectory(prefix="bench_root_") as root:
                for path in files:
                    target = Path(root) / "raw" / PARTITION / path.relative_to(base)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
                walls["local"].append(materialize(root, {}))
    finally:
        process.kill()
    local, s3 = min(walls["local"]), min(walls["s3"])
    print(f"{len(files)} files; best of {args.repeats}")
    print("| root | wall s (CLI) | ratio |")
    print("|---|--:|--:|")
    print(f"| local disk | {local:.1f} | 1 |")
    print(f"| S3 (moto on 127.0.0.1) | {s3:.1f} | {s3 / local:.2f}x |")


if __name__ == "__main__":
    main()
