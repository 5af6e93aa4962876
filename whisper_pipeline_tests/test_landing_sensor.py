"""Landing folders observed: the sensor and the nightly schedule request exactly the stale days."""

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from whisper_pipeline.core.storage import EMPTY_LISTING_FINGERPRINT, Storage
from whisper_pipeline.definitions import build_resources, defs
from whisper_pipeline.defs.landing import (
    FINGERPRINT_METADATA_KEY,
    LANDING_FINGERPRINT_TAG,
    LOOKBACK_ENV,
    landing_zone_sensor,
    lookback_window,
)
from whisper_pipeline.defs.schedules import nightly_transcription_schedule
from whisper_pipeline.resources import StorageResource
from whisper_pipeline_tests.doubles import FakeTranscriberResource
from whisper_pipeline_tests.inprocess import materialize, storage_config

CLIPS = ("short/lj001_0002.wav", "short/lj001_0008.wav", "short/librivox_ss_0880.wav")
"""Three short real recordings (each under 100 kB): fast to stage and transcribe."""


@pytest.fixture
def instance(tmp_path: Path) -> dg.DagsterInstance:
    """A persistent SQLite instance (schedule contexts need one) in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        yield instance


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    return root


@pytest.fixture(autouse=True)
def default_lookback(monkeypatch):
    monkeypatch.delenv(LOOKBACK_ENV, raising=False)


def days_now() -> list[str]:
    """The sensor's window now (7 days, yesterday last)."""
    return lookback_window(datetime.now(UTC), 7)


def land(root: Path, day: str, corpus: Path, clip: str, name: str | None = None) -> Path:
    """Copy a corpus clip into the day's landing folder (writable, fresh modification time)."""
    target = root / "raw" / day / (name or Path(clip).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus / clip, target)
    return target


def tick(
    instance: dg.DagsterInstance, root: Path, cursor: str | None = None
) -> tuple[dict[str, dg.RunRequest], str | None]:
    """Evaluate the sensor once: requests by partition key, and the new cursor."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": StorageResource(root=str(root))},
        repository_def=defs.get_repository_def(),
    )
    result = landing_zone_sensor.evaluate_tick(context)
    requests = {request.partition_key: request for request in result.run_requests or []}
    assert len(requests) == len(result.run_requests or [])
    return requests, result.cursor


def built(root: Path, day: str, instance: dg.DagsterInstance) -> None:
    result = materialize(root, day, instance=instance)
    assert result.success


# --- the fingerprint --------------------------------------------------------------------------


def test_fingerprint_follows_the_listing_not_hidden_files(tmp_path, corpus):
    storage = Storage(str(tmp_path))
    assert storage.listing_fingerprint("2026-11-20") is None
    (tmp_path / "raw" / "2026-11-20").mkdir(parents=True)
    assert storage.listing_fingerprint("2026-11-20") == EMPTY_LISTING_FINGERPRINT
    clip = land(tmp_path, "2026-11-20", corpus, CLIPS[0], "sub/a.wav")
    first = storage.listing_fingerprint("2026-11-20")
    assert first != EMPTY_LISTING_FINGERPRINT
    (tmp_path / "raw" / "2026-11-20" / ".partial-upload.wav").write_bytes(b"half")
    assert storage.listing_fingerprint("2026-11-20") == first
    os.utime(clip, (1_000_000_000, 1_000_000_000))  # same bytes, touched: another version
    assert storage.listing_fingerprint("2026-11-20") != first


# --- the sensor -------------------------------------------------------------------------------


def test_new_folder_is_requested_once_and_missing_or_empty_folders_never(instance, root, corpus):
    days = days_now()
    (root / "raw" / days[-2]).mkdir()  # empty, never materialized: nothing to publish
    land(root, days[-3], corpus, CLIPS[0])
    land(root, "2024-01-01", corpus, CLIPS[0])  # outside the window

    requests, cursor = tick(instance, root)
    assert list(requests) == [days[-3]]
    fingerprint = Storage(str(root)).listing_fingerprint(days[-3])
    assert requests[days[-3]].run_key == f"{days[-3]}:{fingerprint}:0"
    assert requests[days[-3]].tags[LANDING_FINGERPRINT_TAG] == fingerprint
    assert json.loads(cursor) == {days[-3]: fingerprint}

    again, cursor_again = tick(instance, root, cursor)
    assert again == {} and cursor_again == cursor

    # A second file before the run: another listing, requested again.
    land(root, days[-3], corpus, CLIPS[1])
    requests, _ = tick(instance, root, cursor)
    assert list(requests) == [days[-3]]


def test_late_deleted_and_replaced_files_request_a_materialized_day(instance, root, corpus):
    day = days_now()[-2]
    first = land(root, day, corpus, CLIPS[0])
    second = land(root, day, corpus, CLIPS[1], "nested/b.wav")
    built(root, day, instance)
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey("audio_manifest"), asset_partitions=[day]), limit=1
    ).records[0]
    recorded = record.asset_materialization.metadata[FINGERPRINT_METADATA_KEY].value
    assert recorded == Storage(str(root)).listing_fingerprint(day)

    assert tick(instance, root)[0] == {}

    late = land(root, day, corpus, CLIPS[2], "late.wav")
    requests, cursor = tick(instance, root)
    assert list(requests) == [day]
    assert requests[day].run_key.endswith(f":{record.storage_id}")
    assert tick(instance, root, cursor)[0] == {}
    late.unlink()  # back to what the tables were built from
    assert tick(instance, root, cursor)[0] == {}

    aside = root / "aside.wav"
    os.replace(second, aside)  # deleted
    assert list(tick(instance, root)[0]) == [day]
    os.replace(aside, second)  # back, same modification time
    assert tick(instance, root)[0] == {}

    shutil.copyfile(corpus / CLIPS[2], first)  # replaced with other bytes
    assert list(tick(instance, root)[0]) == [day]

    built(root, day, instance)  # rebuilt from the folder: up to date again
    assert tick(instance, root)[0] == {}


def test_a_day_staged_but_not_published_stays_stale(instance, root, corpus):
    from whisper_pipeline.defs.assets.manifest import audio_manifest

    day = days_now()[-4]
    land(root, day, corpus, CLIPS[0])
    result = dg.materialize(
        [audio_manifest],
        partition_key=day,
        resources=build_resources(FakeTranscriberResource()),
        run_config={"resources": storage_config(root)},
        instance=instance,
    )
    assert result.success  # the manifest holds the fingerprint, but no table was published
    assert list(tick(instance, root)[0]) == [day]


def test_a_pending_run_for_the_same_listing_is_not_requested_again(instance, root, corpus):
    day = days_now()[-1]
    land(root, day, corpus, CLIPS[0])
    fingerprint = Storage(str(root)).listing_fingerprint(day)
    tags = {"dagster/partition": day, LANDING_FINGERPRINT_TAG: fingerprint}
    run = instance.add_run(
        dg.DagsterRun(
            job_name="transcribe_partition", tags=tags, status=dg.DagsterRunStatus.STARTED
        )
    )
    assert tick(instance, root)[0] == {}
    instance.report_run_failed(run)
    assert list(tick(instance, root)[0]) == [day]


def test_lookback_is_read_at_evaluation(instance, root, corpus, monkeypatch):
    days = days_now()
    land(root, days[0], corpus, CLIPS[0])
    assert list(tick(instance, root)[0]) == [days[0]]
    monkeypatch.setenv(LOOKBACK_ENV, "3")
    assert tick(instance, root)[0] == {}
    monkeypatch.setenv(LOOKBACK_ENV, "a week")
    with pytest.raises(Exception, match=LOOKBACK_ENV):
        tick(instance, root)


# --- the nightly schedule ---------------------------------------------------------------------


def nightly(instance: dg.DagsterInstance, root: Path, at: datetime) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at,
        resources={"storage": StorageResource(root=str(root))},
        repository_def=defs.get_repository_def(),
    )
    return nightly_transcription_schedule.evaluate_tick(context).run_requests or []


def test_nightly_requests_yesterday_and_the_stale_days_of_the_window(instance, root, corpus):
    at = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    days = lookback_window(at, 7)
    up_to_date, late, never = days[-3], days[-4], days[-5]
    for day in (up_to_date, late):
        land(root, day, corpus, CLIPS[0])
        built(root, day, instance)
    land(root, late, corpus, CLIPS[1], "late.wav")
    land(root, never, corpus, CLIPS[2])
    (root / "raw" / days[-6]).mkdir()  # empty and never materialized
    land(root, "2024-01-01", corpus, CLIPS[0])  # outside the window

    requests = nightly(instance, root, at)
    assert [r.partition_key for r in requests] == [never, late]  # yesterday: no folder
    assert all(r.tags["dagster/schedule_name"] == "transcribe_partition_schedule" for r in requests)
    assert [r.run_key for r in nightly(instance, root, at)] == [r.run_key for r in requests]


def test_nightly_skips_a_day_with_no_folder_and_names_it(instance, root, corpus):
    at = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    days = lookback_window(at, 7)
    land(root, days[-2], corpus, CLIPS[0])
    built(root, days[-2], instance)  # the day before: published and up to date
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at,
        resources={"storage": StorageResource(root=str(root))},
        repository_def=defs.get_repository_def(),
    )
    result = nightly_transcription_schedule.evaluate_tick(context)
    assert not result.run_requests
    assert f"{days[-1]}: no landing folder" in result.skip_message

    (root / "raw" / days[-1]).mkdir()  # an empty folder is a day without audio: published
    assert [r.partition_key for r in nightly(instance, root, at)] == [days[-1]]


def test_nightly_still_requests_a_published_day_whose_folder_vanished(instance, root, corpus):
    at = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    yesterday = lookback_window(at, 7)[-1]
    land(root, yesterday, corpus, CLIPS[0])
    built(root, yesterday, instance)
    shutil.rmtree(root / "raw" / yesterday)  # an unmounted volume: audio_manifest must fail loudly
    assert [r.partition_key for r in nightly(instance, root, at)] == [yesterday]


def test_misnamed_landing_folders_are_named_in_the_sensor_tick(instance, root, corpus):
    for name in ("2026-02-30", "2026-1-5", "20261105", "2023-12-31", ".uploads"):
        land(root, name, corpus, CLIPS[0])
    (root / "raw" / days_now()[-1]).mkdir()  # a real (empty) day beside them
    context = dg.build_sensor_context(
        instance=instance,
        resources={"storage": StorageResource(root=str(root))},
        repository_def=defs.get_repository_def(),
    )
    result = landing_zone_sensor.evaluate_tick(context)
    assert not result.run_requests
    # In the tick's skip reason (the UI's sensor page); its log has the same as a warning.
    misnamed = "4 misnamed landing folders never read: ['2023-12-31', '2026-02-30', '2026-1-5',"
    assert misnamed + " '20261105']" in result.skip_message
