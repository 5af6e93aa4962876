"""Page faults and CPU of CTranslate2's Whisper encoder with and without huge pages for malloc.

Usage (from the repository root)::

    python benchmarks/page_faults.py [--rounds 2] [--encodes 6] [--batch 8]

Each measurement is a fresh process started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` (small
pages, glibc's default) or ``=1`` (what the executor gives its step processes,
``whisper_pipeline.core.memory.hugepage_malloc_tunables``), in rounds that alternate the two. The
process loads the pipeline's default model (``WhisperModelResource``: bundled tiny.en, int8 on
CPU), builds one batch of 30 s log-mel windows from the shared corpus's long recordings, encodes
it once to warm up, then ``--encodes`` times, and reports the encoder's wall, user and system CPU
seconds and minor page faults (``getrusage``), then the same for three beam-5 ``generate`` calls on
the last encoder output. Prints a Markdown table and the ratios of the means.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from whisper_pipeline.core.memory import GLIBC_TUNABLES, HUGEPAGE_TUNABLE
from whisper_pipeline.defs.metrics import cpu_usage

REPOSITORY = Path(__file__).resolve().parents[1]
MODES = {"small pages": "0", "huge pages": "1"}


def measure(encodes: int, batch: int) -> dict:
    """Worker: encode and decode one batch of real speech windows; returns the counters."""
    import ctranslate2
    from faster_whisper.audio import decode_audio

    from whisper_pipeline.core.batching import pad_features
    from whisper_pipeline.resources.whisper import WhisperModelResource

    model = WhisperModelResource().load()
    corpus = Path(
        os.environ.get("WHISPER_PIPELINE_CORPUS", REPOSITORY.parent / "shared" / "corpus")
    )
    window = 30 * 16000
    windows = []
    for path in sorted((corpus / "long").iterdir()):
        samples = decode_audio(str(path))
        for start in range(0, len(samples) - window, window):
            windows.append(model.feature_extractor(samples[start : start + window])[:, :3000])
            if len(windows) == batch:
                break
        if len(windows) == batch:
            break
    features = pad_features(windows)
    output = model.encode(features)  # warm-up (faster-whisper's encode: a StorageView)
    user, system, faults = cpu_usage()
    started = time.perf_counter()
    for _ in range(encodes):
        output = model.encode(features)
    encode_user, encode_system, encode_faults = cpu_usage()
    encode_wall = time.perf_counter() - started
    prompt = [model.hf_tokenizer.token_to_id("<|startoftranscript|>")]
    started = time.perf_counter()
    for _ in range(3):
        model.model.generate(output, [prompt] * len(windows), beam_size=5, max_length=100)
    decode_faults = cpu_usage()[2]
    return {
        "encode_wall_s": encode_wall / encodes,
        "encode_user_s": (encode_user - user) / encodes,
        "encode_sys_s": (encode_system - system) / encodes,
        "encode_faults": (encode_faults - faults) / encodes,
        "generate_wall_s": (time.perf_counter() - started) / 3,
        "generate_faults": (decode_faults - encode_faults) / 3,
        "tunables": os.environ.get(GLIBC_TUNABLES, ""),
        "ctranslate2": ctranslate2.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--encodes", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.encodes, args.batch)))
        return 0
    rows = []
    for _ in range(args.rounds):
        for mode, value in MODES.items():
            env = dict(os.environ, **{GLIBC_TUNABLES: f"{HUGEPAGE_TUNABLE}={value}"})
            command = [sys.executable, __file__, "--worker", "--encodes", str(args.encodes)]
            command += ["--batch", str(args.batch)]
            completed = subprocess.run(
                command, env=env, cwd=REPOSITORY, capture_output=True, text=True, check=False
            )
            if completed.returncode:
                print(completed.stderr[-3000:], file=sys.stderr)
                return completed.returncode
            rows.append({"mode": mode, **json.loads(completed.stdout.strip().splitlines()[-1])})
    print(f"Batch of {args.batch} windows of 30 s; per call, means over {args.encodes} encodes.\n")
    print("| malloc | encode wall s | user s | system s | page faults | generate wall s |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in rows:
        cells = [r["mode"], f"{r['encode_wall_s']:.2f}", f"{r['encode_user_s']:.2f}"]
        cells += [f"{r['encode_sys_s']:.2f}", f"{r['encode_faults']:,.0f}"]
        cells += [f"{r['generate_wall_s']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    means = {
        mode: {
            key: statistics.mean(r[key] for r in rows if r["mode"] == mode)
            for key in ("encode_wall_s", "encode_faults", "generate_wall_s")
        }
        for mode in MODES
    }
    small, huge = means["small pages"], means["huge pages"]
    print(
        f"\nhuge pages against small: encode {small['encode_wall_s'] / huge['encode_wall_s']:.2f}x"
        f" faster, {small['encode_faults'] / max(huge['encode_faults'], 1):.0f}x fewer faults;"
        f" generate {small['generate_wall_s'] / huge['generate_wall_s']:.2f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
