"""Where each op runs: the tags every executor of every profile reads, in one place.

Tags an executor does not know are ignored, so the same ops carry all of them:

- ``whisper_pipeline/accelerator``: the multiprocess executor's ``tag_concurrency_limits``
  (``execution.multiprocess.EXECUTOR_CONFIG``) hold the ``gpu`` value to one step at a time per run.
- ``dagster-celery/queue``: the Celery queue a step is sent to (``celery`` profile). CPU steps
  go to ``cpu``, transcription to ``gpu``, served by one worker process per GPU.
- ``dagster-k8s/config``: the pod of a step's Kubernetes Job (``k8s`` profile): CPU and memory
  requests for CPU steps, one ``nvidia.com/gpu`` plus a GPU node selector and toleration for
  transcription.

The ``gpu`` pool (``GPU_POOL``, limit in the instance's ``concurrency.pools``) holds
transcription to one step across runs under every executor.
"""

ACCELERATOR_TAG_KEY = "whisper_pipeline/accelerator"
"""Op tag the executor's ``tag_concurrency_limits`` holds to one step at a time per run."""

GPU_POOL = "gpu"
"""Dagster pool of the transcription op; the instance limits it (one slot per GPU)."""

CELERY_QUEUE_TAG = "dagster-celery/queue"
"""dagster-celery's op tag naming the queue a step is sent to (default queue: ``dagster``)."""

CPU_QUEUE = "cpu"
"""Celery queue of every step but transcription
(``celery -A whisper_pipeline.execution.celery worker --queues cpu``)."""

GPU_QUEUE = "gpu"
"""Celery queue of transcription steps, served by one worker of concurrency 1 per GPU."""

K8S_CONFIG_TAG = "dagster-k8s/config"
"""dagster-k8s's op tag: container and pod spec of the step's Kubernetes Job."""

GPU_NODE_LABEL = "nvidia.com/gpu.present"
"""Node label NVIDIA's GPU operator (GPU feature discovery) sets on GPU nodes."""

CPU_STEP_RESOURCES = {
    # Preprocessing peaks near 360 MiB of RSS (streaming decode and VAD of a 2-hour file,
    # benchmarks/RESULTS.md); 1 GiB leaves room for the interpreter and PyAV's buffers.
    # Ephemeral storage: the local 16-bit PCM spool of the file being decoded (115 MB per
    # hour of audio).
    "requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
    "limits": {"memory": "2Gi"},
}
"""Kubernetes resources of a CPU step's container."""

GPU_STEP_RESOURCES = {
    # Host memory: the transcription step peaked at 1.8 GiB with tiny.en on CPU
    # (benchmarks/RESULTS.md); large models hold their weights in host memory while loading.
    # Ephemeral storage: a hub model downloaded into HF_HOME (about 3 GB for large-v3).
    "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "8Gi"},
    "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
}
"""Kubernetes resources of a transcription step's container: one GPU."""

CPU_OP_TAGS = {
    ACCELERATOR_TAG_KEY: "cpu",
    CELERY_QUEUE_TAG: CPU_QUEUE,
    K8S_CONFIG_TAG: {"container_config": {"resources": CPU_STEP_RESOURCES}},
}
"""Tags of every op but transcription (staging, preprocessing, publishing, checks)."""

GPU_OP_TAGS = {
    ACCELERATOR_TAG_KEY: "gpu",
    CELERY_QUEUE_TAG: GPU_QUEUE,
    # Ahead of waiting preprocessing steps, so the accelerator is kept busy.
    "dagster/priority": "10",
    K8S_CONFIG_TAG: {
        "container_config": {"resources": GPU_STEP_RESOURCES},
        "pod_spec_config": {
            "node_selector": {GPU_NODE_LABEL: "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    },
}
"""Tags of the transcription op."""
