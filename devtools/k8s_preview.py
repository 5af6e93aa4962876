"""The Kubernetes Jobs of a partition's run, built without a cluster (docs/DEPLOY.md, test_k8s).

``step_job_manifests`` does for every step what dagster-k8s's ``K8sStepHandler`` does, with
dagster-k8s's own merge and ``construct_dagster_k8s_job`` code; nothing here re-implements them.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import dagster as dg
import kubernetes.client
from dagster._config import process_config, resolve_to_config_type
from dagster._core.code_pointer import CodePointer
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.retries import RetryMode
from dagster._core.origin import (
    DEFAULT_DAGSTER_ENTRY_POINT,
    JobPythonOrigin,
    RepositoryPythonOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)
from dagster_k8s.utils import get_deployment_id_label

from whisper_pipeline.defs.jobs import TRANSCRIBE_JOB_NAME
from whisper_pipeline.execution.k8s import K8S_EXECUTOR_CONFIG

DEFAULT_IMAGE = "whisper-pipeline:latest"
"""Image of ``step_job_manifests`` when none is given (the repository's ``Dockerfile``)."""

PREVIEW_RUN_ID = "00000000-0000-4000-8000-000000000000"
"""Run id of ``step_job_manifests``: Job names hash it, so a fixed one gives stable manifests."""

REPRESENTATIVE_SHARD = "shard_00000"
"""Mapping key of the one shard ``step_job_manifests`` resolves (``plan_shards`` names shards
``shard_{index:05d}``)."""

REPRESENTATIVE_GROUP = "group_00000"
"""Mapping key of the one transcription group ``step_job_manifests`` resolves (``plan_shards``
names groups ``group_{index:05d}``)."""

PLAN_SHARDS_STEP = "transcript_tables.plan_shards"
"""Step key of the op whose dynamic output fans a partition out into shards."""

PARTITION_TAG = "dagster/partition"
"""Run tag naming the partition (Dagster's)."""

DEFAULT_RUN_LAUNCHER = {
    "service_account_name": "whisper-pipeline",
    "instance_config_map": "dagster-instance",
    "postgres_password_secret": "dagster-postgresql-secret",
    "job_namespace": "dagster",
}
"""``K8sRunLauncher`` config of ``step_job_manifests`` when none is given: the names the Helm
chart gives them for release ``dagster`` in namespace ``dagster`` with
``deploy/helm/values.yaml``."""


@dataclass(frozen=True)
class RunLauncherSettings:
    """The ``K8sRunLauncher`` attributes dagster-k8s reads when it builds a step's Job.

    ``K8sContainerContext.create_for_run`` and ``K8sContainerContext.get_k8s_job_config`` read
    these attributes of the instance's run launcher. A real ``K8sRunLauncher`` loads a kubeconfig
    (or the in-cluster config) when it is constructed; this holds the same values without one.
    Defaults are ``K8sRunLauncher``'s own.
    """

    service_account_name: str
    instance_config_map: str
    dagster_home: str
    job_namespace: str
    postgres_password_secret: str | None = None
    job_image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: Sequence[Mapping[str, str]] = field(default_factory=list)
    env_config_maps: Sequence[str] = field(default_factory=list)
    env_secrets: Sequence[str] = field(default_factory=list)
    env_vars: Sequence[str] = field(default_factory=list)
    volume_mounts: Sequence[Mapping[str, Any]] = field(default_factory=list)
    volumes: Sequence[Mapping[str, Any]] = field(default_factory=list)
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    scheduler_name: str | None = None
    security_context: Mapping[str, Any] = field(default_factory=dict)
    run_k8s_config: Mapping[str, Any] = field(default_factory=dict)
    only_allow_user_defined_k8s_config_fields: Mapping[str, Any] | None = None
    only_allow_user_defined_env_vars: Sequence[str] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunLauncherSettings":
        """Settings from a ``run_launcher: config:`` block of ``dagster.yaml``.

        The block is validated and completed with defaults by ``K8sRunLauncher``'s own config
        schema, as the instance does when it loads.

        Args:
            config: The ``K8sRunLauncher`` config, snake_case as in ``dagster.yaml``.

        Raises:
            ValueError: The config does not match ``K8sRunLauncher``'s schema.
        """
        result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
        if not result.success:
            raise ValueError(f"invalid K8sRunLauncher config: {result.errors}")
        names = {f.name for f in fields(cls)}
        value = result.value or {}
        return cls(**{k: v for k, v in value.items() if k in names and v is not None})


def step_job_manifests(
    partition_key: str,
    *,
    image: str = DEFAULT_IMAGE,
    run_launcher: Mapping[str, Any] | None = None,
    container_context: Mapping[str, Any] | None = None,
    run_id: str = PREVIEW_RUN_ID,
) -> dict[str, dict[str, Any]]:
    """The Kubernetes Job manifest ``k8s_executor`` creates for each step of a partition's run.

    Builds the run's execution plan and, for each step, does what dagster-k8s's
    ``K8sStepHandler`` does in ``_get_container_context`` and ``launch_step``: the run
    launcher's and code location's container context (``K8sContainerContext.create_for_run``),
    merged with the executor's (``K8sContainerContext`` from ``K8S_EXECUTOR_CONFIG``, as
    ``k8s_job_executor`` builds it), merged with the op's ``dagster-k8s/config`` tag
    (``get_user_defined_k8s_config``), then ``construct_dagster_k8s_job``. Nothing here
    re-implements a merge. Retries (a ``-N`` suffix on the Job name) and owner references are
    left out.

    The plan's shards and transcription groups are dynamic (``plan_shards`` yields one output
    per shard, mapped by ``preprocess_shard``, and one per group, mapped by
    ``transcribe_shards``), so their steps only exist once ``plan_shards`` has run. The plan is
    resolved here as if it had produced one of each (``REPRESENTATIVE_SHARD``,
    ``REPRESENTATIVE_GROUP``): every shard's or group's step gets the same manifest but for the
    mapping key in the step key, Job name and labels, so the static steps plus one step of each
    mapped op cover every distinct pod spec a run creates.

    Args:
        partition_key: A daily partition key, e.g. ``2026-11-20``.
        image: The code location's image (the user deployment's, which steps inherit).
        run_launcher: The instance's ``K8sRunLauncher`` config (``dagster.yaml`` snake_case);
            default ``DEFAULT_RUN_LAUNCHER``.
        container_context: The code location's container context (``{"k8s": {...}}``, what
            the Helm chart passes a user deployment's code server); default none.
        run_id: The run's id; Job names are derived from it and the step key.

    Returns:
        Step key -> the Job as the Kubernetes API receives it (camelCase, no empty fields),
        plus ``metadata.namespace`` (dagster-k8s passes the namespace beside the body).
    """
    job, plan, known_state = partition_plan(partition_key)
    launcher = RunLauncherSettings.from_config(
        DEFAULT_RUN_LAUNCHER if run_launcher is None else run_launcher
    )
    origin = job_origin(job.name, image, container_context)
    tags = {PARTITION_TAG: partition_key}
    run = DagsterRun(job_name=job.name, run_id=run_id, tags=tags, job_code_origin=origin)
    executor_context = executor_container_context(K8S_EXECUTOR_CONFIG)
    run_context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    run_context = run_context.merge(executor_context)
    manifests = {}
    with kubernetes.client.ApiClient() as api_client:
        for step in plan.get_steps_to_execute_in_topo_order():
            step_context = run_context.merge(
                K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step.tags))
            )
            job_config = step_context.get_k8s_job_config(None, launcher)
            if not job_config.job_image:
                job_config = job_config.with_image(origin.repository_origin.container_image)
            args = step_args(origin, run_id, step.key, known_state)
            labels = {"dagster/job": job.name, "dagster/op": step.key, "dagster/run-id": run_id}
            deployment_name = get_deployment_id_label(step_context.run_k8s_config)
            if deployment_name:
                labels["dagster/deployment-name"] = deployment_name
            name = f"dagster-step-{get_k8s_job_name(run_id, step.key)}"
            body = construct_dagster_k8s_job(
                job_config=job_config,
                args=args.get_command_args(skip_serialized_namedtuple=True),
                job_name=name,
                pod_name=name,
                component="step_worker",
                user_defined_k8s_config=step_context.run_k8s_config,
                labels=labels,
                env_vars=[
                    *args.get_command_env(),
                    {"name": "DAGSTER_RUN_JOB_NAME", "value": job.name},
                    {"name": "DAGSTER_RUN_STEP_KEY", "value": step.key},
                ],
            )
            manifest = api_client.sanitize_for_serialization(body)
            manifest["metadata"]["namespace"] = step_context.namespace
            manifests[step.key] = manifest
    return manifests


def executor_container_context(executor_config: Mapping[str, Any]) -> K8sContainerContext:
    """The container context ``k8s_job_executor`` builds from its config for every step.

    The config goes through the executor's own schema first (defaults, ``{"env": ...}``
    sources); the ``K8sContainerContext`` is then made from it field by field as in
    ``dagster_k8s.executor.k8s_job_executor``.

    Args:
        executor_config: Config of ``k8s_job_executor`` (e.g. ``K8S_EXECUTOR_CONFIG``).

    Raises:
        ValueError: The config does not match the executor's schema.
    """
    result = process_config(k8s_job_executor.config_schema.config_type, executor_config)
    if not result.success:
        raise ValueError(f"invalid k8s_job_executor config: {result.errors}")
    cfg = result.value or {}
    return K8sContainerContext(
        image_pull_policy=cfg.get("image_pull_policy"),
        image_pull_secrets=cfg.get("image_pull_secrets"),
        service_account_name=cfg.get("service_account_name"),
        env_config_maps=cfg.get("env_config_maps"),
        env_secrets=cfg.get("env_secrets"),
        env_vars=cfg.get("env_vars"),
        volume_mounts=cfg.get("volume_mounts"),
        volumes=cfg.get("volumes"),
        labels=cfg.get("labels"),
        namespace=cfg.get("job_namespace"),
        resources=cfg.get("resources"),
        scheduler_name=cfg.get("scheduler_name"),
        security_context=cfg.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("step_k8s_config", {})),
    )


def partition_plan(
    partition_key: str,
) -> tuple[dg.JobDefinition, ExecutionPlan, KnownExecutionState]:
    """The execution plan of a partition's run, its shards and groups resolved to one each.

    Args:
        partition_key: A daily partition key.

    Returns:
        The ``transcribe_partition`` job, the plan, and the known state that resolved it.
    """
    from whisper_pipeline.definitions import defs  # deferred: the profile is read at import

    job = defs.resolve_job_def(TRANSCRIBE_JOB_NAME)
    known_state = KnownExecutionState(
        dynamic_mappings={
            PLAN_SHARDS_STEP: {"shards": [REPRESENTATIVE_SHARD], "groups": [REPRESENTATIVE_GROUP]}
        }
    )
    plan = create_execution_plan(job, tags={PARTITION_TAG: partition_key}, known_state=known_state)
    return job, plan, known_state


def job_origin(
    job_name: str, image: str, container_context: Mapping[str, Any] | None
) -> JobPythonOrigin:
    """The code origin a run of this code location carries (what its code server reports).

    Args:
        job_name: The job's name.
        image: The code server's image (``DAGSTER_CURRENT_IMAGE``).
        container_context: The code server's container context, if any.
    """
    return RepositoryPythonOrigin(
        executable_path="python",
        code_pointer=CodePointer.from_module("whisper_pipeline.definitions", "defs", None),
        container_image=image,
        entry_point=DEFAULT_DAGSTER_ENTRY_POINT,
        container_context=container_context,
    ).get_job_origin(job_name)


def step_args(
    origin: JobPythonOrigin, run_id: str, step_key: str, known_state: KnownExecutionState
) -> ExecuteStepArgs:
    """The ``dagster api execute_step`` arguments of one step, as the executor passes them.

    A live run's also carry the instance's reference; they only reach the pod compressed in the
    ``DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS`` variable.
    """
    return ExecuteStepArgs(
        job_origin=origin,
        run_id=run_id,
        step_keys_to_execute=[step_key],
        retry_mode=RetryMode.ENABLED.for_inner_plan(),
        known_state=known_state,
        should_verify_step=True,
    )
