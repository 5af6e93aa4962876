"""Where each op runs: the tags every executor of every profile reads, in one place.

Executors ignore the tags they do not know, so every op carries all of them:
``whisper_pipeline/accelerator`` (the multiprocess executor holds ``gpu`` to one step per run),
``dagster-celery/queue`` (``cpu`` or ``gpu`` workers) and ``dagster-k8s/config`` (pod resources;
one ``nvidia.com/gpu`` for transcription). The ``gpu`` pool (``GPU_POOL``, limit in the
instance's ``concurrency.pools``) holds transcription to one step across runs everywhere.
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
    # Memory: preprocessing's peak RSS streaming a 2-hour file (benchmarks/RESULTS.md,
    # "Memory") with room for the interpreter and PyAV's buffers. Ephemeral storage: the local
    # 16-bit PCM spool of the file being decoded (16,000 Hz x 2 bytes x 3600 s per hour).
    "requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
    "limits": {"memory": "2Gi"},
}
"""Kubernetes resources of a CPU step's container."""

GPU_STEP_RESOURCES = {
    # Host memory: the transcription step's peak with tiny.en on CPU (benchmarks/RESULTS.md,
    # "Memory"), and large models hold their weights in host memory while loading.
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
    # After the preprocessing steps it reads while they run (core.streaming): an in-process
    # executor runs one step at a time, in priority order, so the shards are ready when it
    # starts; the multiprocess executor has a slot for it beside every shard (max_concurrent).
    "dagster/priority": "-1",
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
