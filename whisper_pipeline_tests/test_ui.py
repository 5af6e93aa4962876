"""The paths a user takes through the UI, against a real ``dagster dev`` on loopback.

One ``dagster dev`` (webserver and daemon) serves the whole module, with the real bundled
tiny.en model. The launches are the GraphQL mutations the UI sends (``dagster-webserver``'s
``LaunchAssetChoosePartitionsDialog.tsx``, ``LaunchAssetExecutionButton.tsx`` and
``ExecuteChecksButton.tsx``): a backfill of every asset over two partitions, one partition's run
of every asset, the tables alone (the graph asset with its checks) with and without their
manifest, one check alone; and one test clicks through the UI itself in headless Chromium.
Their in-process counterparts, with the test double transcriber, are in ``test_launch_paths.py``.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import requests

from devtools.commands import DEFINITIONS_MODULE
from devtools.harness import fresh_dagster_home
from whisper_pipeline.core.schema import TABLE_SCHEMAS
from whisper_pipeline.definitions import defs
from whisper_pipeline.defs.dead_runs import PID_TAG, process_start_ticks
from whisper_pipeline.defs.landing import LOOKBACK_ENV
from whisper_pipeline.execution.placement import GPU_POOL
from whisper_pipeline.resources.storage import ROOT_ENV
from whisper_pipeline_tests.conftest import REPOSITORY
from whisper_pipeline_tests.s3 import free_port
from whisper_pipeline_tests.tables import assert_each_file_once

pytestmark = pytest.mark.slow  # dagster dev, the real model, seven runs and a browser

LANDED = {
    "2026-11-01": ("lj001_0002.wav",),  # backfill
    "2026-11-02": ("lj001_0013.wav", "lj001_0008.wav"),  # backfill
    "2026-11-03": ("lj001_0011.wav",),  # one run of every asset
    "2026-11-04": ("lj001_0020.wav",),  # the manifest, then the tables alone
    "2026-11-05": ("lj001_0004.wav",),  # the tables alone, never a manifest
    "2026-11-06": ("lj001_0006.wav",),  # through the UI in Chromium
    "2026-11-07": ("../long/voxconverse_aepyx_8k.wav", "../long/apollo11_8k.mp3"),  # killed
}
"""1-2 short clips (2-6 s of speech) per partition, all different: every run transcribes; the
killed run's partition has 260 s of audio, so its transcription holds the gpu slot ~10 s."""
BACKFILLED = ["2026-11-01", "2026-11-02"]
ONE_RUN, WITH_MANIFEST, WITHOUT_MANIFEST, IN_BROWSER = (
    "2026-11-03",
    "2026-11-04",
    "2026-11-05",
    "2026-11-06",
)
KILLED = "2026-11-07"

LOCATION = DEFINITIONS_MODULE  # [tool.dagster] code_location_name and workspace.yaml agree
REPOSITORY_NAME = "__repository__"
ASSET_JOB = "__ASSET_JOB"
"""The hidden job of every asset: what the UI launches assets with (``getCommonJob``)."""
ASSETS = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]
"""Every asset: what the UI's select-all header checkbox selects."""
TABLES = list(TABLE_SCHEMAS)
"""The outputs of the graph asset ``transcript_tables``, which cannot be subset."""

START_BOUND_S = 180
RUN_BOUND_S = 240
STOP_BOUND_S = 20
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
UI_TAGS = [{"key": "dagster/from_ui", "value": "true"}]
"""Added by the UI to everything it launches (``uiExecutionTags.tsx``)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

CHECKS_QUERY = """
query {
  assetNodes {
    assetKey { path }
    assetChecksOrError {
      ... on AssetChecks { checks { name description canExecuteIndividually jobNames } }
    }
  }
}
"""

LAUNCH_BACKFILL_MUTATION = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs {
      results {
        runId
        status
        startTime
        endTime
        tags { key value }
        assetSelection { path }
      }
    }
  }
}
"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on ExecutionStepFailureEvent { stepKey error { message } }
        }
      }
    }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { status numPartitions partitionNames }
  }
}
"""


@dataclass
class DagsterDev:
    """A running ``dagster dev``: its process, address, storage root and log."""

    process: subprocess.Popen
    url: str
    home: Path
    root: Path
    log_path: Path
    artifacts: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, **variables) -> dict:
        """POST ``query`` as the UI does; returns ``data`` (GraphQL errors fail the test)."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def runs(self, **tags: str) -> list[dict]:
        """Runs carrying every tag of ``tags`` (``{"dagster/backfill": id}``...)."""
        selector = [{"key": key, "value": value} for key, value in tags.items()]
        return self.graphql(RUNS_QUERY, filter={"tags": selector})["runsOrError"]["results"]

    def run(self, run_id: str) -> dict:
        (found,) = self.graphql(RUNS_QUERY, filter={"runIds": [run_id]})["runsOrError"]["results"]
        return found

    def wait_for_run(self, run_id: str, bound_s: float = RUN_BOUND_S) -> dict:
        """The run once it has finished (the daemon dequeues and launches it)."""
        deadline = time.monotonic() + bound_s
        while (run := self.run(run_id))["status"] not in FINISHED:
            assert self.process.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
            time.sleep(1)
        return run

    def events(self, run_id: str) -> list[dict]:
        return self.graphql(RUN_EVENTS_QUERY, runId=run_id)["runOrError"]["eventConnection"][
            "events"
        ]

    def step_failures(self, run_id: str) -> dict[str, str]:
        """Failed step keys of a run with their error messages."""
        return {
            event["stepKey"]: event["error"]["message"]
            for event in self.events(run_id)
            if event["__typename"] == "ExecutionStepFailureEvent"
        }

    def launch(self, assets: list[str], checks: list[dict], tags: list[dict]) -> dict:
        """``launchPipelineExecution`` as the UI's Materialize (or a check's Execute) sends it.

        Returns:
            The mutation's result (``__typename`` ``LaunchRunSuccess`` or an error type).
        """
        params = {
            "mode": "default",
            "runConfigData": "{}",
            "executionMetadata": {"tags": tags + UI_TAGS},
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY_NAME,
                "pipelineName": ASSET_JOB,
                "assetSelection": [{"path": [name]} for name in assets],
                "assetCheckSelection": checks,
            },
        }
        return self.graphql(LAUNCH_RUN_MUTATION, executionParams=params)["launchPipelineExecution"]

    def materialize(self, assets: list[str], partition: str) -> dict:
        """Launch ``assets`` with their checks on one partition (the UI's "Launch 1 run"); wait.

        Returns:
            The finished run.
        """
        launched = self.launch(
            assets,
            self.checks_of(assets),
            [{"key": "dagster/partition", "value": partition}],
        )
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return self.wait_for_run(launched["run"]["runId"])

    def checks(self) -> dict[str, dict[str, dict]]:
        """Every asset check by asset name, then check name."""
        nodes = self.graphql(CHECKS_QUERY)["assetNodes"]
        return {
            node["assetKey"]["path"][-1]: {
                check["name"]: check for check in node["assetChecksOrError"].get("checks", [])
            }
            for node in nodes
        }

    def checks_of(self, assets: list[str]) -> list[dict]:
        """The ``assetCheckSelection`` the UI sends with ``assets`` (``getAssetCheckHandleInputs``:
        their checks in the asset job)."""
        checks = self.checks()
        return [
            {"assetKey": {"path": [asset]}, "name": name}
            for asset in assets
            for name, check in checks.get(asset, {}).items()
            if ASSET_JOB in check["jobNames"]
        ]


def location_loaded(dev: DagsterDev) -> bool:
    """Whether the webserver answers and has loaded the code location."""
    try:
        workspace = dev.graphql(WORKSPACE_QUERY)["workspaceOrError"]
    except requests.RequestException:
        return False
    entries = {entry["name"]: entry for entry in workspace.get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    assert [repository["name"] for repository in location["repositories"]] == [REPOSITORY_NAME]
    return True


def stop_group(process: subprocess.Popen, bound_s: float = STOP_BOUND_S) -> None:
    """SIGTERM the process group of ``process``, SIGKILL what is left after ``bound_s``."""

    def group_alive() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        # The leader stays in the group as a zombie until it is reaped.
        return process.poll() is None or group_has_others()

    def group_has_others() -> bool:
        listing = subprocess.run(
            ["ps", "-o", "pid=", "-g", str(process.pid)], capture_output=True, text=True
        )
        return any(int(pid) != process.pid for pid in listing.stdout.split())

    for sig, bound in ((signal.SIGTERM, bound_s), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + bound
        while group_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not group_alive():
            return
    raise RuntimeError(f"process group {process.pid} survived SIGKILL")


@pytest.fixture(scope="module")
def dagster_dev(corpus, tmp_path_factory) -> Iterator[DagsterDev]:
    """``dagster dev`` on a free loopback port, with a fresh instance and the clips landed."""
    tmp = tmp_path_factory.mktemp("ui")
    home = fresh_dagster_home(tmp / "dagster_home")
    root = tmp / "root"
    for partition, names in LANDED.items():
        landing = root / "raw" / partition
        landing.mkdir(parents=True)
        for name in names:
            shutil.copy(corpus / "short" / name, landing / Path(name).name)
    artifacts = tmp / "screenshots"
    artifacts.mkdir()
    port = free_port()
    # The landing sensor watches only yesterday (no folder there): it launches nothing here.
    env = dict(os.environ, DAGSTER_HOME=str(home), **{ROOT_ENV: str(root), LOOKBACK_ENV: "1"})
    log_path = tmp / "dagster_dev.log"
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=env, cwd=REPOSITORY, stdout=log, stderr=log, start_new_session=True
        )
    dev = DagsterDev(process, f"http://127.0.0.1:{port}", home, root, log_path, artifacts)
    try:
        deadline = time.monotonic() + START_BOUND_S
        while not location_loaded(dev):
            assert process.poll() is None, f"dagster dev exited:\n{dev.log_tail()}"
            assert time.monotonic() < deadline, (
                f"not loaded in {START_BOUND_S} s:\n{dev.log_tail()}"
            )
            time.sleep(1)
        yield dev
    finally:
        stop_group(process)


def test_a_ui_backfill_of_every_asset_publishes_each_day(dagster_dev):
    # Materialize (every asset) -> a partition range -> Launch backfill.
    params = {
        "tags": UI_TAGS,
        "assetSelection": [{"path": [name]} for name in ASSETS],
        "partitionNames": BACKFILLED,
        "fromFailure": False,
    }
    launched = dagster_dev.graphql(LAUNCH_BACKFILL_MUTATION, backfillParams=params)[
        "launchPartitionBackfill"
    ]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    deadline = time.monotonic() + RUN_BOUND_S
    while True:  # the daemon submits one run per day (BackfillPolicy.multi_run(1)), then ends it
        runs = dagster_dev.runs(**{"dagster/backfill": backfill_id})
        backfill = dagster_dev.graphql(BACKFILL_QUERY, backfillId=backfill_id)[
            "partitionBackfillOrError"
        ]
        finished = len(runs) == len(BACKFILLED) and {r["status"] for r in runs} <= FINISHED
        if finished and backfill["status"] in BACKFILL_DONE:
            break
        assert dagster_dev.process.poll() is None, dagster_dev.log_tail()
        assert time.monotonic() < deadline, (backfill, [r["status"] for r in runs])
        time.sleep(1)

    failures = {r["runId"]: dagster_dev.step_failures(r["runId"]) for r in runs}
    assert {r["status"] for r in runs} == {"SUCCESS"}, failures
    assert backfill["status"] == "COMPLETED_SUCCESS"
    assert sorted(backfill["partitionNames"]) == BACKFILLED
    # Each run carries a one-day partition range, not a partition tag.
    ranges = []
    for run in runs:
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        assert "dagster/partition" not in tags
        ranges.append(
            (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
        )
        assert sorted(key["path"][-1] for key in run["assetSelection"]) == sorted(ASSETS)
    assert sorted(ranges) == [(day, day) for day in BACKFILLED]
    for day in BACKFILLED:
        assert_each_file_once(dagster_dev.root, day, list(LANDED[day]))


def test_one_partition_of_every_asset(dagster_dev):
    run = dagster_dev.materialize(ASSETS, ONE_RUN)  # Materialize -> one partition -> Launch 1 run
    assert run["status"] == "SUCCESS", dagster_dev.step_failures(run["runId"])
    assert_each_file_once(dagster_dev.root, ONE_RUN, list(LANDED[ONE_RUN]))
    subtitles = dagster_dev.root / "exports" / "subtitles" / f"date={ONE_RUN}"
    assert sorted(path.suffix for path in subtitles.iterdir()) == [".srt", ".vtt"]  # one file


def test_the_tables_alone_after_their_manifest(dagster_dev):
    manifest = dagster_dev.materialize(["audio_manifest"], WITH_MANIFEST)
    assert manifest["status"] == "SUCCESS", dagster_dev.step_failures(manifest["runId"])
    assert not (dagster_dev.root / "tables" / "transcripts" / f"date={WITH_MANIFEST}").exists()
    # Selecting transcripts selects the graph asset's four tables, and the UI sends their checks.
    run = dagster_dev.materialize(TABLES, WITH_MANIFEST)
    assert run["status"] == "SUCCESS", dagster_dev.step_failures(run["runId"])
    assert_each_file_once(dagster_dev.root, WITH_MANIFEST, list(LANDED[WITH_MANIFEST]))


def test_the_tables_alone_without_their_manifest_fail_at_once_naming_it(dagster_dev):
    run = dagster_dev.materialize(TABLES, WITHOUT_MANIFEST)
    assert run["status"] == "FAILURE"
    assert run["endTime"] - run["startTime"] < 10
    events = dagster_dev.events(run["runId"])
    assert not [e for e in events if e["__typename"] == "ExecutionStepUpForRetryEvent"]
    (message,) = dagster_dev.step_failures(run["runId"]).values()
    assert f"audio_manifest has not been materialized for partition {WITHOUT_MANIFEST}" in message
    assert not (dagster_dev.root / "tables" / "transcripts" / f"date={WITHOUT_MANIFEST}").exists()


def test_a_check_alone_is_refused(dagster_dev):
    checks = dagster_dev.checks()
    # Every check is evaluated by write_tables: the UI disables its "Execute" button.
    assert {
        check["canExecuteIndividually"] for by_name in checks.values() for check in by_name.values()
    } == {"REQUIRES_MATERIALIZATION"}
    assert (
        "cannot be executed on its own" in checks["audio_files"]["no_failed_files"]["description"]
    )
    before = len(dagster_dev.runs())
    # What the "Execute" button would send (ExecuteChecksButton.tsx): no assets, one check.
    launched = dagster_dev.launch(
        [], [{"assetKey": {"path": ["audio_files"]}, "name": "no_failed_files"}], []
    )
    assert launched["__typename"] == "InvalidSubsetError"
    assert "This AssetsDefinition does not support subsetting" in launched["message"]
    assert "attempted to select only assets [] and checks" in launched["message"]
    assert len(dagster_dev.runs()) == before  # no run was created


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no {CHROMIUM}")
def test_materialize_one_partition_in_the_browser(dagster_dev):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = dagster_dev.artifacts
    # What the "Skip" of the "Join the Dagster community" dialog sends: that dialog would
    # otherwise open over whatever is on screen a second after the first page loads.
    assert dagster_dev.graphql("mutation { setNuxSeen }")["setNuxSeen"]
    assert not dagster_dev.graphql("query { shouldShowNux }")["shouldShowNux"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{dagster_dev.url}/assets")
            page.locator('a[href="/assets/audio_manifest"]').wait_for()
            # The header checkbox selects every asset (its <input> is hidden behind an SVG).
            page.locator("label").filter(has=page.get_by_role("checkbox")).first.click()
            page.get_by_role(
                "button", name=re.compile(rf"Materialize selected \({len(ASSETS)}\)")
            ).click()

            dialog = page.get_by_role("dialog")
            dialog.get_by_text(f"Launch runs to materialize {len(ASSETS)} assets").wait_for()
            show_all = dialog.get_by_text("Show all partitions")
            if show_all.count():  # partitions older than 90 days are hidden by default
                show_all.click()
            partitions = dialog.get_by_placeholder("No matching partitions")
            partitions.fill(IN_BROWSER)
            partitions.press("Enter")
            dialog.get_by_text("1 partition", exact=True).wait_for()
            page.screenshot(path=shots / "1-partition-dialog.png")
            dialog.get_by_role("button", name="Launch 1 run").click()
            dialog.wait_for(state="detached")

            view = page.get_by_role("region", name="Notifications alt+T").get_by_role(
                "link", name="View"
            )
            run_id = view.get_attribute("href").removeprefix("/runs/")
            view.click()  # at once: the toast goes away after a few seconds
            page.wait_for_url(f"**/runs/{run_id}")
            run = dagster_dev.wait_for_run(run_id)
            assert run["status"] == "SUCCESS", dagster_dev.step_failures(run_id)
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            assert tags["dagster/partition"] == IN_BROWSER
            assert sorted(key["path"][-1] for key in run["assetSelection"]) == sorted(ASSETS)
            assert_each_file_once(dagster_dev.root, IN_BROWSER, list(LANDED[IN_BROWSER]))
            # The run's page follows the run live: it shows the partition and then Success.
            page.get_by_text(f"partition: {IN_BROWSER}").wait_for()
            page.get_by_text("Success", exact=True).first.wait_for()
            page.screenshot(path=shots / "2-run.png")

            page.goto(f"{dagster_dev.url}/assets/audio_files")
            page.get_by_role("tab", name="Checks").click()
            page.get_by_text("no_failed_files", exact=True).first.click()
            latest = page.get_by_text("Latest execution")
            latest.wait_for()
            page.get_by_text(IN_BROWSER, exact=True).first.wait_for()  # the latest's partition
            page.get_by_text("Passed", exact=True).first.wait_for()
            page.get_by_text("cannot be executed on its own").first.wait_for()
            execute = page.get_by_role("button", name=re.compile(r"^(execute )?Execute$"))
            assert execute.is_disabled()
            page.screenshot(path=shots / "3-no-failed-files-check.png")
        finally:
            browser.close()


KILL_BOUND_S = 5
"""SIGKILL of a run's process to the end of its transcription step
(``whisper_pipeline.execution.preload``)."""
SLOT_BOUND_S = 45
"""SIGKILL to the gpu slot's release: ``dead_run_sensor`` ticks every 30 s (plus a tick's time)."""


def test_killing_a_ui_launched_run_ends_its_transcription_and_frees_the_slot(dagster_dev):
    # The probe: the run's process dies (the OOM killer's pick) while its transcription step
    # holds the gpu slot. The step must not outlive it, and the slot must be freed well before
    # run monitoring's 120 s poll, so the next run's model never runs beside an orphan's.
    instance = dg.DagsterInstance.from_config(str(dagster_dev.home))
    launched = dagster_dev.launch(
        ASSETS, dagster_dev.checks_of(ASSETS), [{"key": "dagster/partition", "value": KILLED}]
    )
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def transcription_step_pid() -> int | None:
        if run_id not in instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids:
            return None
        steps = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        pids = [e.dagster_event.pid for e in steps if ".transcribe_shards" in e.step_key]
        return pids[0] if pids else None

    deadline = time.monotonic() + RUN_BOUND_S
    while (step_pid := transcription_step_pid()) is None:
        assert dagster_dev.run(run_id)["status"] not in FINISHED, dagster_dev.step_failures(run_id)
        assert time.monotonic() < deadline, "transcribe_shards never held the gpu slot"
        time.sleep(0.2)
    run_pid = int(instance.get_run_by_id(run_id).tags[PID_TAG])
    os.kill(run_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while process_start_ticks(step_pid) is not None:
        assert time.monotonic() - killed_at < KILL_BOUND_S, "transcribe_shards outlived its run"
        time.sleep(0.05)
    while run_id in instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids:
        assert time.monotonic() - killed_at < SLOT_BOUND_S, "the gpu slot is still held"
        time.sleep(0.5)
    sys.stderr.write(f"gpu slot freed {time.monotonic() - killed_at:.1f} s after the kill\n")
    assert dagster_dev.wait_for_run(run_id, SLOT_BOUND_S)["status"] == "FAILURE"
