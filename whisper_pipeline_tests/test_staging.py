"""The staging area: shards read back in waves of bounded memory; stale run folders removed."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from whisper_pipeline.core.staging import (
    CHUNKS_FILE,
    FEATURES_FILE,
    RUN_ACTIVE,
    RUN_ENDED,
    RUN_UNKNOWN,
    SHARD_CHUNKS,
    chunk_waves,
    remove_stale_runs,
)
from whisper_pipeline.core.storage import Storage

N_MELS, N_FRAMES = 80, 3000


def stage_shard(store: Storage, shard_dir: str, lengths: list[int]) -> np.ndarray:
    """Write a shard of chunks with the given frame counts; chunk i's frames all equal i."""
    os.makedirs(shard_dir, exist_ok=True)
    rows, offset = [], 0
    with open(os.path.join(shard_dir, FEATURES_FILE), "wb") as out:
        for index, length in enumerate(lengths):
            out.write(np.full((length, N_MELS), index, np.float32).tobytes())
            rows.append(
                {
                    "content_sha256": f"{index:064x}",
                    "chunk_index": 0,
                    "frame_offset": offset,
                    "n_frames": length,
                    "speech_starts": [0],
                    "speech_ends": [length * 160],
                }
            )
            offset += length
    store.write_parquet(
        os.path.join(shard_dir, CHUNKS_FILE), pa.Table.from_pylist(rows, SHARD_CHUNKS)
    )


def test_waves_hold_every_chunk_once_longest_first(tmp_path):
    store = Storage(str(tmp_path))
    lengths = [100, 3000, 50, 2000, 700, 1200, 10]
    stage_shard(store, store.path("shard"), lengths)
    waves = list(chunk_waves(store, store.path("shard"), N_MELS, 3, str(tmp_path)))
    assert [len(w) for w in waves] == [3, 3, 1]
    chunks = [chunk for wave in waves for chunk in wave]
    assert [c.features.shape for c in chunks] == [
        (N_MELS, n) for n in sorted(lengths, reverse=True)
    ]
    for chunk in chunks:
        index = int(chunk.key[0], 16)
        assert chunk.features.shape[1] == lengths[index]
        assert np.all(chunk.features == index)


def test_wave_size_must_be_positive(tmp_path):
    store = Storage(str(tmp_path))
    stage_shard(store, store.path("shard"), [10])
    with pytest.raises(ValueError, match="wave_size must be positive"):
        list(chunk_waves(store, store.path("shard"), N_MELS, 0, str(tmp_path)))


MEMORY_SCRIPT = """
import json, sys
from whisper_pipeline.core.staging import chunk_waves
from whisper_pipeline.core.storage import Storage
from whisper_pipeline_tests.doubles import FakeTranscriber
from whisper_pipeline_tests.test_staging import N_MELS

root, wave = sys.argv[1], int(sys.argv[2])
store = Storage(root)
transcriber = FakeTranscriber([])
results = []
for batch in chunk_waves(store, store.path("shard"), N_MELS, wave, root):
    results += transcriber.transcribe(batch)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"peak_mib": int(status) / 1024, "chunks": transcriber.chunks_seen}))
"""


def peak_rss_mib(root, chunks: int, wave: int) -> float:
    """Peak RSS of a fresh process transcribing a staged shard with the test double."""
    store = Storage(str(root))
    stage_shard(store, store.path("shard"), [N_FRAMES] * chunks)
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(root), str(wave)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    assert measured["chunks"] == chunks
    return measured["peak_mib"]


@pytest.mark.slow  # three processes over 400 MB of staged features
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_transcription_memory_is_bounded_by_the_wave_not_the_shard(tmp_path):
    # The probe: a transcription step's memory grew with the chunks of its shard (the whole
    # features file stayed mapped). 400 chunks of 30 s are 384 MB of features.
    from whisper_pipeline.assets.transcription import wave_size
    from whisper_pipeline_tests.doubles import FakeTranscriberResource

    wave = wave_size(FakeTranscriberResource())
    small = peak_rss_mib(tmp_path / "small", 40, wave)
    large = peak_rss_mib(tmp_path / "large", 400, wave)
    assert large <= 1.2 * small, (small, large)
    # What the step did before waves: every chunk at once.
    unbounded = peak_rss_mib(tmp_path / "unbounded", 400, 400)
    assert unbounded > 1.2 * small, (small, unbounded)


def test_stale_run_folders_are_removed_and_active_ones_kept(tmp_path):
    store = Storage(str(tmp_path))
    states = {"active": RUN_ACTIVE, "ended": RUN_ENDED, "mine": RUN_ENDED}
    for run_id in ("active", "ended", "mine", "unknown-old", "unknown-new"):
        folder = tmp_path / "staging" / "2026-11-20" / run_id / "shard-00000"
        folder.mkdir(parents=True)
        (folder / FEATURES_FILE).write_bytes(b"x" * 10)
    old = time.time() - 2 * 86400
    for path in (tmp_path / "staging" / "2026-11-20" / "unknown-old").rglob("*"):
        os.utime(path, (old, old))
    manifest = tmp_path / "staging" / "audio_manifest" / "date=2026-11-20"
    manifest.mkdir(parents=True)
    (manifest / "part-0.parquet").write_bytes(b"keep")

    removed = remove_stale_runs(store, lambda run_id: states.get(run_id, RUN_UNKNOWN), "mine")
    assert sorted(os.path.basename(p) for p in removed) == ["ended", "unknown-old"]
    left = sorted(p.name for p in (tmp_path / "staging" / "2026-11-20").iterdir())
    assert left == ["active", "mine", "unknown-new"]
    assert (manifest / "part-0.parquet").read_bytes() == b"keep"
