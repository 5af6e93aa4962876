from datetime import datetime

import dagster as dg
import yaml

from devtools.instance import BASE_INSTANCE
from whisper_pipeline.definitions import defs
from whisper_pipeline.defs.schedules import nightly_transcription_schedule
from whisper_pipeline.execution.multiprocess import EXECUTOR_CONFIG, executor
from whisper_pipeline.execution.placement import ACCELERATOR_TAG_KEY, GPU_POOL
from whisper_pipeline.resources import StorageResource


def test_definitions_load_and_resolve():
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("transcribe_partition")
    assert job.partitions_def.get_partition_keys()[0] == "2024-01-01"
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "audio_manifest",
        "audio_files",
        "transcripts",
        "transcript_segments",
        "transcript_words",
        "subtitle_files",
    }


def test_transcription_op_is_pooled_and_tagged():
    job = defs.resolve_job_def("transcribe_partition")
    ops = {op.name: op for op in job.all_node_defs}
    assert ops["transcribe_shards"].pool == GPU_POOL
    assert ops["transcribe_shards"].tags[ACCELERATOR_TAG_KEY] == "gpu"
    assert ops["preprocess_shard"].pool is None


def test_executor_limits_the_gpu_tag_to_one_step():
    job = defs.resolve_job_def("transcribe_partition")
    assert job.executor_def is executor
    assert EXECUTOR_CONFIG["tag_concurrency_limits"] == [
        {"key": ACCELERATOR_TAG_KEY, "value": "gpu", "limit": 1}
    ]


def test_dagster_yaml_limits_pools_to_one_and_frees_crashed_slots():
    config = yaml.safe_load(BASE_INSTANCE.read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_nightly_schedule_requests_yesterdays_partition(tmp_path):
    instance = dg.DagsterInstance.local_temp(str(tmp_path))  # schedules need a persistent one
    (tmp_path / "raw" / "2026-11-20").mkdir(parents=True)  # its landing folder exists
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 21, 2, 0),
        resources={"storage": StorageResource(root=str(tmp_path))},
        repository_def=defs.get_repository_def(),
    )
    schedule = defs.resolve_schedule_def(nightly_transcription_schedule.name)
    requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-11-20"]


def test_storage_touching_steps_retry_with_backoff():
    job = defs.resolve_job_def("transcribe_partition")
    ops = {op.name: op for op in job.all_node_defs}
    for name in (
        "plan_shards",
        "preprocess_shard",
        "transcribe_shards",
        "write_tables",
        "subtitle_files",
    ):
        policy = ops[name].retry_policy
        assert policy.max_retries >= 3 and policy.backoff == dg.Backoff.EXPONENTIAL, name


def test_shards_follow_the_cores_and_a_transcription_step_has_a_slot_beside_them():
    from whisper_pipeline.core.sharding import usable_cores
    from whisper_pipeline.defs.assets.transcription import MAX_AUTO_SHARDS, PlanShardsConfig

    assert PlanShardsConfig().shard_limit() == min(usable_cores(), MAX_AUTO_SHARDS)
    assert PlanShardsConfig(max_shards=3).shard_limit() == 3
    # Every shard's preprocessing step and the transcription step reading them run at once.
    assert EXECUTOR_CONFIG["max_concurrent"] == usable_cores() + 1


def test_transcription_comes_after_preprocessing_when_steps_run_one_at_a_time():
    # An in-process executor runs steps one at a time in priority order: a transcription step
    # first would wait for shards that are never preprocessed.
    job = defs.resolve_job_def("transcribe_partition")
    ops = {op.name: op for op in job.all_node_defs}
    priority = {name: int(op.tags.get("dagster/priority", 0)) for name, op in ops.items()}
    assert priority["transcribe_shards"] < priority["preprocess_shard"]


def test_each_published_table_describes_itself_in_the_ui():
    import dagster as dg

    from whisper_pipeline.core.schema import TABLE_SCHEMAS
    from whisper_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    descriptions = set()
    for name, schema in TABLE_SCHEMAS.items():
        node = graph.get(dg.AssetKey(name))
        descriptions.add(node.description)
        columns = node.metadata["dagster/column_schema"].columns
        assert [c.name for c in columns] == schema.names
        assert all(c.description for c in columns)
    assert len(descriptions) == len(TABLE_SCHEMAS)


def test_profile_defaults_to_local_and_a_typo_fails_loudly():
    import pytest

    from whisper_pipeline.execution.profiles import PROFILE_ENV, PROFILES, current_profile

    assert current_profile({}) == "local"
    assert current_profile({PROFILE_ENV: " Production "}) == "production"
    assert set(PROFILES) == {"local", "production", "celery", "k8s"}
    with pytest.raises(ValueError, match="'prod' is not a profile; use one of local"):
        current_profile({PROFILE_ENV: "prod"})


def test_production_storage_never_falls_back_to_a_local_folder(monkeypatch, tmp_path):
    import pytest

    from whisper_pipeline.definitions import build_resources
    from whisper_pipeline.resources.storage import ROOT_ENV

    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert StorageResource().resolved_root() == str(tmp_path / "data")
    partial = build_resources(profile="production")["storage"]
    with pytest.raises(dg.Failure, match="no storage root: set WHISPER_PIPELINE_ROOT"):
        StorageResource(**partial.data).resolved_root()
    monkeypatch.setenv(ROOT_ENV, "s3://bucket/prefix")
    assert StorageResource(**partial.data).resolved_root() == "s3://bucket/prefix"


def test_endpoint_comes_from_the_aws_sdk_variables(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert StorageResource().resolved_endpoint_url() == ""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert StorageResource().resolved_endpoint_url() == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert StorageResource().resolved_endpoint_url() == "http://127.0.0.1:2"
    configured = StorageResource(endpoint_url="http://127.0.0.1:3")
    assert configured.resolved_endpoint_url() == "http://127.0.0.1:3"


def test_word_time_violations_name_each_bad_word():
    from whisper_pipeline.defs.checks import word_time_violations

    def word(file_id, index, start, end):
        return {"file_id": file_id, "word_index": index, "word": f"w{index}", "start_s": start,
                "end_s": end}  # fmt: skip

    good = [word("a", 0, 0.0, 0.5), word("a", 1, 0.5, 1.0), word("b", 0, 0.2, 0.4)]
    assert word_time_violations(good, {"a": 1.0, "b": 0.4}) == []
    bad = [word("a", 0, 0.9, 1.0), word("a", 1, 0.4, 0.6), word("a", 2, 0.7, 0.6)]
    bad += [word("b", 0, 0.2, 2.5)]
    assert word_time_violations(bad, {"a": 1.0, "b": 2.0}) == [
        "a: word 1 'w1' starts at 0.40 s, before the previous word",
        "a: word 2 'w2' spans 0.70 to 0.60 s",
        "b: word 0 'w0' ends at 2.50 s > 2.00 s",
    ]
