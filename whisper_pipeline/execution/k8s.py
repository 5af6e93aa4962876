"""The ``k8s`` profile: one Kubernetes Job per step, through dagster-k8s's ``k8s_job_executor``.

A run starts as a run-worker pod (the instance's ``K8sRunLauncher``, deployed by Dagster's Helm
chart, ``deploy/helm/values.yaml``); its executor, ``k8s_executor`` below, then creates one
Kubernetes Job per step. Each step pod's spec is merged by dagster-k8s from five layers, later
ones winning (``K8sStepHandler._get_container_context``; dicts are merged key by key, lists such
as ``env`` and ``tolerations`` are appended without duplicates, scalars are replaced):

1. the instance's ``K8sRunLauncher`` (Helm ``runLauncher.config.k8sRunLauncher``): namespace,
   service account, ``env_*``, ``resources``, ``run_k8s_config``;
2. the code location's container context (Helm user deployment, ``includeConfigInLaunchedRuns``):
   its env ConfigMap (``WHISPER_PIPELINE_*``), namespace, service account and ``resources``;
3. this executor's config (``K8S_EXECUTOR_CONFIG``): env vars and ``step_k8s_config``
   (a security context);
4. the op's ``dagster-k8s/config`` tag (``whisper_pipeline.execution.placement``): CPU and memory
   requests of CPU steps; one ``nvidia.com/gpu``, the GPU node selector and toleration of
   transcription;
5. the executor's ``per_step_k8s_config`` (unused here).

The step image is the code location's own (``DAGSTER_CURRENT_IMAGE`` of the user deployment, which
the run carries), and the namespace the run launcher's or the code location's, so neither is set
here: the run worker that resolves this config does not have the code server's environment, and
a step in another image than its code server would load other code. AWS credentials are never
configured anywhere: pods take them from their Kubernetes service account's IAM role (IRSA), which
the EKS webhook injects when a pod is admitted (``AWS_ROLE_ARN``,
``AWS_WEB_IDENTITY_TOKEN_FILE``), and s3fs reads them at run time.

``devtools.k8s_preview.step_job_manifests`` builds, without a cluster, the Job manifest
dagster-k8s would create for every step of a partition's run. Importing this module needs no
cluster and no kubeconfig.
"""

from dagster_k8s import k8s_job_executor

from whisper_pipeline.execution.profiles import K8S, PROFILE_ENV
from whisper_pipeline.resources.storage import ROOT_ENV

MAX_CONCURRENT_STEP_PODS = 8
"""Step pods one run may have at once. A run with the default ``max_shards`` (4) has at most 8
busy: four shards preprocessing while four transcribe (when the ``gpu`` pool lets them); four
queued runs (``concurrency.runs``) then ask for at most 32 pods. Raise it with ``max_shards``."""

STEP_SECURITY_CONTEXT = {
    # The image's user is numeric (Dockerfile), which runAsNonRoot needs to be checkable.
    "run_as_non_root": True,
    "allow_privilege_escalation": False,
    "capabilities": {"drop": ["ALL"]},
}
"""Container security context of every step pod (the code server and run pods get the same from
the Helm values)."""

K8S_EXECUTOR_CONFIG = {
    "max_concurrent": MAX_CONCURRENT_STEP_PODS,
    # "NAME=value" is literal; a bare "NAME" is read from the run worker's environment when the
    # executor starts (dagster's parse_env_var), and fails the run at once if it is unset.
    "env_vars": [f"{PROFILE_ENV}={K8S}", ROOT_ENV],
    "step_k8s_config": {"container_config": {"security_context": STEP_SECURITY_CONTEXT}},
}
"""Configuration of ``k8s_executor``; ``retries`` stay enabled (ops carry retry policies).

No ``tag_concurrency_limits``: each transcription pod has a GPU of its own (``nvidia.com/gpu: 1``)
and the ``gpu`` pool, limited to the cluster's GPU count, bounds them across all runs."""

k8s_executor = k8s_job_executor.configured(K8S_EXECUTOR_CONFIG)
"""dagster-k8s's ``k8s_job_executor`` configured for this pipeline (profile ``k8s``). It needs
the instance's run launcher to be a ``K8sRunLauncher`` (Dagster's Helm chart sets one up)."""
