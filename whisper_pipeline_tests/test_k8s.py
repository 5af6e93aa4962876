"""The k8s profile without a cluster: its step Jobs, validated, and the Helm values behind them.

The manifests are built by ``whisper_pipeline.execution.k8s.step_job_manifests`` from what the
Helm chart makes of ``deploy/helm/values.yaml`` (the run launcher section of the instance's
dagster.yaml and
the user deployment's container context, rendered below the way the chart's templates do) and
checked against the Kubernetes API schema of a pinned version (``kubernetes-validate``), against
``whisper_pipeline.execution.placement``, and against what dagster-k8s's own
``K8sStepHandler.launch_step`` sends to the API for the same steps.
"""

import os
import subprocess
import sys
import textwrap

import dagster as dg
import kubernetes.client
import kubernetes_validate
import pytest
import yaml
from dagster._config import process_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import k8s_job_executor
from kubernetes.utils import parse_quantity

from devtools.instance import BASE_INSTANCE
from devtools.k8s_preview import (
    PREVIEW_RUN_ID,
    REPRESENTATIVE_GROUP,
    REPRESENTATIVE_SHARD,
    job_origin,
    partition_plan,
    step_args,
    step_job_manifests,
)
from whisper_pipeline.definitions import defs
from whisper_pipeline.execution.k8s import K8S_EXECUTOR_CONFIG, k8s_executor
from whisper_pipeline.execution.multiprocess import EXECUTOR_CONFIG, build_executor
from whisper_pipeline.execution.placement import (
    CPU_STEP_RESOURCES,
    GPU_NODE_LABEL,
    GPU_POOL,
    GPU_STEP_RESOURCES,
)
from whisper_pipeline.execution.profiles import K8S, PROFILE_ENV
from whisper_pipeline.resources.storage import ROOT_ENV
from whisper_pipeline_tests.conftest import REPOSITORY

K8S_VERSION = "1.33"
"""Kubernetes API version the manifests are validated against (one kubernetes-validate ships;
a current EKS/GKE release)."""

PARTITION = "2026-11-20"
VALUES_PATH = REPOSITORY / "deploy" / "helm" / "values.yaml"

RELEASE_NAMESPACE = "dagster"
"""Namespace of the Helm release (``helm --namespace dagster``)."""

FULLNAME = "dagster"
"""The chart's ``dagster.fullname`` for release ``dagster``: the release name contains the chart
name, so the release name alone."""

CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"
"""The chart's default ``global.dagsterHome``."""

TRANSCRIBE_STEP = f"transcript_tables.transcribe_shards[{REPRESENTATIVE_GROUP}]"
GPU_RESOURCE = "nvidia.com/gpu"
AWS_CREDENTIAL_ENVS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
}
"""Variables that would carry AWS credentials (IRSA injects a role and a token file instead)."""


class RecordingClient:
    """Stands in for dagster-k8s's API client: records the Jobs it is asked to create."""

    def __init__(self):
        self.created = []

    def create_namespaced_job_with_retries(self, body, namespace):
        self.created.append((body, namespace))


def load_values() -> dict:
    return yaml.safe_load(VALUES_PATH.read_text())


def user_deployment(values: dict) -> dict:
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


def helm_run_launcher(values: dict) -> dict:
    """The ``run_launcher.config`` the chart writes into dagster.yaml for a K8sRunLauncher.

    After ``templates/helpers/instance/_run-launcher.tpl`` (``dagsterYaml.runLauncher.k8s``).
    """
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    glob = values.get("global", {})
    config = {
        "load_incluster_config": launcher.get("loadInclusterConfig", True),
        "job_namespace": launcher.get("jobNamespace") or RELEASE_NAMESPACE,
        "image_pull_policy": launcher.get("imagePullPolicy", "Always"),
        "service_account_name": glob.get("serviceAccountName")
        or values.get("serviceAccount", {}).get("name")
        or FULLNAME,
        "dagster_home": glob.get("dagsterHome", CHART_DAGSTER_HOME),
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": glob.get("postgresqlSecretName")
        or f"{FULLNAME}-postgresql-secret",
    }
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = values["imagePullSecrets"]
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        names = [source["name"] for source in launcher.get(key, []) if "name" in source]
        if names:
            config[name] = names
    for key, name in (
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
        ("schedulerName", "scheduler_name"),
        ("securityContext", "security_context"),
    ):
        if launcher.get(key):
            config[name] = launcher[key]
    run_k8s_config = launcher.get("runK8sConfig") or {}
    if run_k8s_config:
        config["run_k8s_config"] = {
            snake: run_k8s_config[camel]
            for camel, snake in (
                ("containerConfig", "container_config"),
                ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"),
                ("jobMetadata", "job_metadata"),
            )
            if run_k8s_config.get(camel)
        }
    return config


def helm_container_context(values: dict) -> dict:
    """The container context the chart gives the user deployment's code server (and its runs).

    After ``charts/dagster-user-deployments/templates/helpers/_helpers.tpl``
    (``dagsterUserDeployments.k8sContainerContext``); a dict ``env`` goes to the deployment's
    ``<fullname>-<name>-user-env`` ConfigMap, which the context names.
    """
    deployment = user_deployment(values)
    subchart = values["dagster-user-deployments"]
    glob = values.get("global", {})
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{FULLNAME}-{deployment['name']}-user-env",
            *(c["name"] for c in deployment.get("envConfigMaps", []) if "name" in c),
        ],
        "namespace": RELEASE_NAMESPACE,
        "service_account_name": glob.get("serviceAccountName")
        or subchart.get("serviceAccount", {}).get("name")
        or f"{FULLNAME}-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if subchart.get("imagePullSecrets"):
        k8s["image_pull_secrets"] = subchart["imagePullSecrets"]
    secrets = [s["name"] for s in deployment.get("envSecrets", []) if "name" in s]
    if secrets:
        k8s["env_secrets"] = secrets
    for key, name in (
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
        ("schedulerName", "scheduler_name"),
    ):
        if deployment.get(key):
            k8s[name] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    if deployment.get("annotations"):
        k8s["run_k8s_config"]["pod_template_spec_metadata"] = {
            "annotations": deployment["annotations"]
        }
    return {"k8s": k8s}


def image_of(values: dict) -> str:
    image = user_deployment(values)["image"]
    return f"{image['repository']}:{image['tag']}"


@pytest.fixture(scope="module")
def values() -> dict:
    return load_values()


@pytest.fixture(scope="module")
def root(values) -> str:
    return user_deployment(values)["env"][ROOT_ENV]


@pytest.fixture(scope="module")
def manifests(values, root) -> dict[str, dict]:
    # The executor copies WHISPER_PIPELINE_ROOT from the run worker's environment, which the
    # user deployment's ConfigMap provides in the cluster.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_ENV, root)
        return step_job_manifests(
            PARTITION,
            image=image_of(values),
            run_launcher=helm_run_launcher(values),
            container_context=helm_container_context(values),
        )


def pod_spec(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict) -> dict:
    [only] = pod_spec(manifest)["containers"]
    return only


def test_the_plan_has_the_static_steps_and_one_step_of_each_mapped_op(manifests):
    assert list(manifests) == [
        "audio_manifest",
        "transcript_tables.plan_shards",
        f"transcript_tables.preprocess_shard[{REPRESENTATIVE_SHARD}]",
        TRANSCRIBE_STEP,
        "transcript_tables.write_tables",
        "subtitle_files",
    ]


def test_every_step_job_is_valid_against_the_kubernetes_schema(manifests):
    assert K8S_VERSION in {
        ".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()
    }
    for key, manifest in manifests.items():
        # strict: no property that the API schema does not define (a misspelt key fails).
        assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) == K8S_VERSION, key


def test_only_the_transcription_step_asks_for_a_gpu(manifests):
    for key, manifest in manifests.items():
        resources = container(manifest)["resources"]
        spec = pod_spec(manifest)
        gpu_tolerations = [t for t in spec.get("tolerations", []) if t["key"] == GPU_RESOURCE]
        if key == TRANSCRIBE_STEP:
            assert resources == GPU_STEP_RESOURCES
            assert resources["limits"][GPU_RESOURCE] == "1"
            assert spec["nodeSelector"] == {GPU_NODE_LABEL: "true"}
            assert gpu_tolerations == [
                {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
            ]
        else:
            assert resources == CPU_STEP_RESOURCES, key
            assert GPU_RESOURCE not in resources.get("limits", {}), key
            assert GPU_RESOURCE not in resources.get("requests", {}), key
            assert GPU_NODE_LABEL not in spec.get("nodeSelector", {}), key
            assert gpu_tolerations == [], key


def test_every_step_requests_cpu_and_memory_within_its_limits(manifests):
    for key, manifest in manifests.items():
        resources = container(manifest)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), key
        for name, limit in resources.get("limits", {}).items():
            request = resources["requests"].get(name)
            if request is not None:
                # The API rejects a pod whose request exceeds its limit; the code server's
                # resources (Helm) are merged under the ops', so this catches a bad inherited one.
                assert parse_quantity(request) <= parse_quantity(limit), (key, name)


def test_no_aws_credentials_in_any_step_job_or_in_the_helm_values(manifests, values):
    for key, manifest in manifests.items():
        names = {env["name"] for env in container(manifest)["env"]}
        assert not names & AWS_CREDENTIAL_ENVS, key
        assert "AWS_ROLE_ARN" not in names  # the IRSA webhook injects it at admission
    text = VALUES_PATH.read_text()
    assert not any(name in text for name in AWS_CREDENTIAL_ENVS)
    # Credentials come from the service account's IAM role (IRSA), used by every pod.
    assert values["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
    service_account = values["global"]["serviceAccountName"]
    for manifest in manifests.values():
        assert pod_spec(manifest)["serviceAccountName"] == service_account


def test_step_pods_get_the_profile_the_root_and_the_code_locations_env(manifests, values, root):
    for key, manifest in manifests.items():
        env = {e["name"]: e.get("value") for e in container(manifest)["env"]}
        assert env[PROFILE_ENV] == K8S, key
        assert env[ROOT_ENV] == root, key
        assert env["DAGSTER_PG_PASSWORD"] is None  # from the secret, never a literal
        env_from = container(manifest)["envFrom"]
        assert {"configMapRef": {"name": "dagster-whisper-pipeline-user-env"}} in env_from
        assert manifest["metadata"]["namespace"] == RELEASE_NAMESPACE
        assert container(manifest)["image"] == image_of(values)  # the code server's image
        assert container(manifest)["securityContext"]["runAsNonRoot"] is True


def test_manifests_are_what_dagster_k8s_creates(tmp_path, values, root, manifests, monkeypatch):
    """dagster-k8s's K8sStepHandler.launch_step, with the API call recorded, gives the same Jobs.

    A kubeconfig with an unreachable server stands in for the cluster: the run launcher and the
    step handler load it when constructed, and nothing is ever sent.
    """
    monkeypatch.setenv(ROOT_ENV, root)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: Config
            clusters: [{name: offline, cluster: {server: "https://127.0.0.1:1"}}]
            users: [{name: offline, user: {token: offline}}]
            contexts: [{name: offline, context: {cluster: offline, user: offline}}]
            current-context: offline
            """
        )
    )
    offline = {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = {**helm_run_launcher(values), **offline}
    overrides = {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher}
    }
    job, plan, known_state = partition_plan(PARTITION)
    origin = job_origin(job.name, image_of(values), helm_container_context(values))
    run = DagsterRun(
        job_name=job.name,
        run_id=PREVIEW_RUN_ID,
        tags={"dagster/partition": PARTITION},
        job_code_origin=origin,
    )
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        executor_config = process_config(
            k8s_job_executor.config_schema.config_type, {**K8S_EXECUTOR_CONFIG, **offline}
        )
        assert executor_config.success, executor_config.errors
        executor = k8s_job_executor.executor_creation_fn(
            InitExecutorContext(
                job=InMemoryJob(job),
                executor_def=k8s_job_executor,
                executor_config=executor_config.value,
                instance=instance,
            )
        )
        handler = executor._step_handler

        recorder = RecordingClient()
        handler._api_client = recorder  # the one object that would talk to the cluster
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(
                job=InMemoryJob(job),
                dagster_run=run,
                instance=instance,
                execution_plan=plan,
                raise_on_error=True,
                retry_mode=RetryMode.ENABLED,
            ),
            log_manager=create_context_free_log_manager(instance, run),
            executor=executor,
            output_capture=None,
        )
        for step in plan.get_steps_to_execute_in_topo_order():
            context = StepHandlerContext(
                instance=instance,
                plan_context=plan_context,
                steps=[step],
                execute_step_args=step_args(origin, run.run_id, step.key, known_state),
                dagster_run=run,
            )
            list(handler.launch_step(context))
    created = recorder.created
    assert len(created) == len(manifests)
    with kubernetes.client.ApiClient() as api_client:
        for (body, namespace), (key, manifest) in zip(created, manifests.items(), strict=True):
            expected = api_client.sanitize_for_serialization(body)
            expected["metadata"]["namespace"] = namespace
            assert expected == manifest, key


def test_executor_is_dagster_k8s_and_leaves_gpu_exclusivity_to_the_pool():
    assert build_executor(K8S) is k8s_executor
    assert k8s_executor.name == "k8s"
    from whisper_pipeline.defs.assets.transcription import MAX_AUTO_SHARDS

    # Every shard plan_shards makes by itself, and the transcription step reading them.
    assert K8S_EXECUTOR_CONFIG["max_concurrent"] == MAX_AUTO_SHARDS + 1
    # Across runs the gpu pool holds transcription to one step per GPU; within a run each step
    # has a GPU of its own, so no per-run tag limit (the multiprocess executor's is per host).
    assert "tag_concurrency_limits" not in K8S_EXECUTOR_CONFIG
    assert EXECUTOR_CONFIG["tag_concurrency_limits"]
    job = defs.resolve_job_def("transcribe_partition")
    pools = {
        node.name: node.pool for node in job.all_node_defs if isinstance(node, dg.OpDefinition)
    }
    assert {name for name, pool in pools.items() if pool} == {"transcribe_shards"}
    assert pools["transcribe_shards"] == GPU_POOL


def test_definitions_load_with_the_k8s_profile_without_a_cluster(tmp_path):
    code = textwrap.dedent(
        """
        import dagster as dg
        from whisper_pipeline.definitions import PROFILE, defs
        from whisper_pipeline.execution.k8s import k8s_executor

        dg.Definitions.validate_loadable(defs)
        assert PROFILE == "k8s", PROFILE
        assert defs.resolve_job_def("transcribe_partition").executor_def is k8s_executor
        """
    )
    env = {
        **os.environ,
        PROFILE_ENV: K8S,
        ROOT_ENV: "s3://bucket/prefix",
        # No kubeconfig anywhere: importing the definitions must not look for a cluster.
        "KUBECONFIG": str(tmp_path / "absent"),
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_helm_values_pods_are_valid_kubernetes(values):
    deployment = user_deployment(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    code_server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "code-server", "annotations": values["serviceAccount"]["annotations"]},
        "spec": {
            "serviceAccountName": values["global"]["serviceAccountName"],
            "securityContext": deployment["podSecurityContext"],
            "containers": [
                {
                    "name": "dagster",
                    "image": image_of(values),
                    "imagePullPolicy": deployment["image"]["pullPolicy"],
                    "args": ["dagster", "api", "grpc", *deployment["dagsterApiGrpcArgs"]],
                    "ports": [{"containerPort": deployment["port"]}],
                    "env": [{"name": k, "value": v} for k, v in deployment["env"].items()],
                    "resources": deployment["resources"],
                    "securityContext": deployment["securityContext"],
                },
                {
                    # The run launcher's security context, as run pods get it.
                    "name": "run",
                    "image": image_of(values),
                    "imagePullPolicy": launcher["imagePullPolicy"],
                    "securityContext": launcher["securityContext"],
                },
            ],
        },
    }
    assert kubernetes_validate.validate(code_server, K8S_VERSION, strict=True) == K8S_VERSION
    assert all(isinstance(v, str) for v in deployment["env"].values())  # a ConfigMap's data
    assert "cpu" not in deployment["resources"].get("limits", {})


def test_helm_instance_settings_match_dagster_yaml_and_load(tmp_path, values):
    """The instance settings the chart renders from the values are dagster.yaml's, and load.

    The chart's ``dagsterYaml.runCoordinator.queued`` writes ``max_concurrent_runs: -1`` as soon
    as any ``queuedRunCoordinator`` field has a value; Dagster rejects that beside
    ``concurrency``, so the values must leave all of them empty.
    """
    base = yaml.safe_load(BASE_INSTANCE.read_text())
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["enabled"] is True
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    run_coordinator = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    if any(value not in (None, [], {}, False, 0, "") for value in queued.values()):
        run_coordinator["config"] = {"max_concurrent_runs": queued.get("maxConcurrentRuns") or -1}
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    rendered = {
        "run_coordinator": run_coordinator,
        "concurrency": {
            "pools": {
                "default_limit": concurrency["pools"]["defaultLimit"],
                "granularity": concurrency["pools"]["granularity"],
            },
            "runs": {
                "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
            },
        },
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "max_resume_run_attempts": daemon["runMonitoring"]["maxResumeRunAttempts"],
            "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": daemon["runMonitoring"][
                "freeSlotsAfterRunEndSeconds"
            ],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    assert rendered["concurrency"]["runs"] == base["concurrency"]["runs"]
    assert (
        rendered["concurrency"]["pools"]["granularity"]
        == base["concurrency"]["pools"]["granularity"]
    )
    assert rendered["concurrency"]["pools"]["default_limit"] >= 1  # one slot per GPU
    assert (
        rendered["run_monitoring"]["free_slots_after_run_end_seconds"]
        == base["run_monitoring"]["free_slots_after_run_end_seconds"]
    )
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    dagster_instance_config(str(tmp_path))  # raises on a schema error or conflicting queues
