"""The ``k8s`` profile: one Kubernetes Job per step, through dagster-k8s's ``k8s_job_executor``.

Runs start as run-worker pods (the instance's ``K8sRunLauncher``, Dagster's Helm chart); the
executor then creates one Job per step, whose pod spec dagster-k8s merges from the run
launcher, the code location's container context, ``K8S_EXECUTOR_CONFIG`` and the op's
``dagster-k8s/config`` tag (``execution.placement``), later layers winning (docs/DEPLOY.md).
Image and namespace are the code location's; AWS credentials come from the service account's
IAM role. Importing this module needs no cluster and no kubeconfig.
"""

from dagster_k8s import k8s_job_executor

from whisper_pipeline.execution.profiles import K8S, PROFILE_ENV
from whisper_pipeline.resources.storage import ROOT_ENV

MAX_CONCURRENT_STEP_PODS = 17
"""Step pods one run may have at once: the most shards ``plan_shards`` makes by itself
(``MAX_AUTO_SHARDS``, 16) preprocessing while the one transcription step reads them; four
queued runs (``concurrency.runs``) then ask for at most 68 pods. Raise it with ``max_shards``
or ``transcription_steps``."""

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
