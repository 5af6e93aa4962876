"""The staging area: shards written in parts and read back while written, in waves of bounded
memory; stale run folders removed."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from whisper_pipeline.core.chunking import SpeechChunk
from whisper_pipeline.core.preprocess import PreprocessedFile
from whisper_pipeline.core.staging import (
    CHUNKS_FILE,
    FILES_FILE,
    RUN_ACTIVE,
    RUN_ENDED,
    RUN_UNKNOWN,
    ShardWriter,
    remove_stale_runs,
)
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.core.streaming import StagedChunks

N_MELS, N_FRAMES = 80, 3000


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sha(index: int) -> str:
    return f"{index:064x}"


def add_content(writer: ShardWriter, index: int, length: int) -> None:
    """One content of one chunk of ``length`` frames, every frame equal to ``index``."""
    chunk = SpeechChunk(0, np.zeros(length * 160, np.float32), (0,), (length * 160,))
    writer.add_chunk(sha(index), chunk, np.full((N_MELS, length), index, np.float32))
    writer.add_file(sha(index), PreprocessedFile(length / 100, length / 100, 1, "ok", ""))


def stage_shard(store: Storage, shard_dir: str, lengths: list[int], **writer_args) -> None:
    """Write a shard of one-chunk contents with the given frame counts (``add_content``)."""
    with ShardWriter(store, shard_dir, clock=Clock(), **writer_args) as writer:
        for index, length in enumerate(lengths):
            add_content(writer, index, length)


def read_all(store: Storage, shard_dirs: dict, wave_frames: int, local_dir, **args) -> list:
    """Every non-empty wave of a reader of finished shards."""
    staged = StagedChunks(store, shard_dirs, N_MELS, wave_frames, str(local_dir), **args)
    return [wave for wave in staged.waves() if wave]


def test_waves_hold_every_chunk_once_longest_first(tmp_path):
    store = Storage(str(tmp_path))
    lengths = [100, 3000, 50, 2000, 700, 1200, 10]
    stage_shard(store, store.path("shard"), lengths, part_frames=2500)  # several parts
    waves = read_all(store, {0: store.path("shard")}, 3200, tmp_path)
    # At most 3200 frames a wave, longest first: 3000 | 2000 + 1200 | 700 + 100 + 50 + 10.
    assert [[c.features.shape[1] for c in wave] for wave in waves] == [
        [3000],
        [2000, 1200],
        [700, 100, 50, 10],
    ]
    chunks = [chunk for wave in waves for chunk in wave]
    for chunk in chunks:  # each chunk reads back its own frames, not a neighbour's
        index = int(chunk.key[0], 16)
        assert chunk.features.shape == (N_MELS, lengths[index])
        assert np.all(chunk.features == index)
    # A chunk longer than the budget makes a wave of its own; none is lost.
    waves = read_all(store, {0: store.path("shard")}, 2500, tmp_path)
    assert [len(wave) for wave in waves] == [1, 1, 5]
    assert sorted(c.key for wave in waves for c in wave) == sorted(c.key for c in chunks)


def test_wave_frames_must_be_positive(tmp_path):
    store = Storage(str(tmp_path))
    with pytest.raises(ValueError, match="wave_frames must be positive"):
        StagedChunks(store, {0: store.path("shard")}, N_MELS, 0, str(tmp_path))


def test_chunks_reach_the_reader_while_their_shard_is_still_written(tmp_path):
    # The probe: a transcription step could start only once its shard was preprocessed
    # entirely, so the first batch waited for the whole shard (issue 29).
    store = Storage(str(tmp_path))
    clock, reader_clock = Clock(), Clock()
    staged = StagedChunks(
        store, {0: store.path("shard")}, N_MELS, 10**6, str(tmp_path), clock=reader_clock
    )
    waves = staged.waves()
    assert next(waves) == []  # nothing staged yet
    with ShardWriter(store, store.path("shard"), part_age_s=1.0, clock=clock) as writer:
        add_content(writer, 0, 300)
        reader_clock.now += 1
        assert next(waves) == []  # the part is not committed before it is a second old
        clock.now += 1.0
        add_content(writer, 1, 200)  # commits the part holding both
        assert writer.parts == 1
        assert next(waves) == []  # listed at most every POLL_S
        reader_clock.now += 1
        assert [c.key[0] for c in next(waves)] == [sha(0), sha(1)]
        add_content(writer, 2, 100)
        reader_clock.now += 1
        assert next(waves) == []  # not committed yet, and the shard is not finished
        assert not staged.done
    reader_clock.now += 1
    assert [c.key[0] for c in next(waves)] == [sha(2)]  # the last part, at the clean exit
    assert next(waves, None) is None and staged.done
    assert set(staged.files) == {sha(0), sha(1), sha(2)}
    assert staged.frames == {(sha(0), 0): 300, (sha(1), 0): 200, (sha(2), 0): 100}


def test_a_retried_shard_gives_each_chunk_once(tmp_path):
    store = Storage(str(tmp_path))
    shard_dir = store.path("shard")
    with pytest.raises(RuntimeError), ShardWriter(store, shard_dir, part_frames=1) as writer:
        add_content(writer, 0, 300)  # committed: part_frames is 1
        raise RuntimeError("the step process died")
    assert not os.path.exists(os.path.join(shard_dir, FILES_FILE))
    stage_shard(store, shard_dir, [300, 200])  # the retry, in a folder of its own
    chunks = [c for wave in read_all(store, {0: shard_dir}, 10**6, tmp_path) for c in wave]
    assert sorted(c.key for c in chunks) == [(sha(0), 0), (sha(1), 0)]


def test_a_shard_whose_step_failed_is_given_up_after_its_committed_parts(tmp_path):
    store = Storage(str(tmp_path))
    with pytest.raises(RuntimeError), ShardWriter(store, store.path("a"), part_frames=1) as w:
        add_content(w, 0, 300)
        raise RuntimeError("decoder crashed")
    with ShardWriter(store, store.path("b")) as writer:
        add_content(writer, 1, 100)
    staged = StagedChunks(
        store,
        {0: store.path("a"), 1: store.path("b")},
        N_MELS,
        10**6,
        str(tmp_path),
        failed_shards=lambda: {0},
    )
    keys = sorted(c.key for wave in staged.waves() for c in wave)
    assert keys == [(sha(0), 0), (sha(1), 0)]
    assert staged.given_up == {0} and staged.done


def test_skipped_contents_are_not_read(tmp_path):
    store = Storage(str(tmp_path))
    stage_shard(store, store.path("shard"), [300, 200, 100])
    waves = read_all(store, {0: store.path("shard")}, 10**6, tmp_path, skip={sha(1)})
    assert sorted(c.key[0] for wave in waves for c in wave) == [sha(0), sha(2)]


MEMORY_SCRIPT = """
import json, sys
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.core.streaming import StagedChunks
from whisper_pipeline_tests.doubles import FakeTranscriber
from whisper_pipeline_tests.test_staging import N_MELS

root, wave_frames = sys.argv[1], int(sys.argv[2])
store = Storage(root)
transcriber = FakeTranscriber([])
results = []
staged = StagedChunks(store, {0: store.path("shard")}, N_MELS, wave_frames, root)
for batch in transcriber.transcribe_waves(staged.waves()):
    results += batch
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"peak_mib": int(status) / 1024, "chunks": transcriber.chunks_seen}))
"""


def peak_rss_mib(root, chunks: int, wave_frames: int) -> float:
    """Peak RSS of a fresh process transcribing a staged shard with the test double."""
    store = Storage(str(root))
    stage_shard(store, store.path("shard"), [N_FRAMES] * chunks)
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(root), str(wave_frames)],
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
    from whisper_pipeline.defs.assets.transcription import wave_frames
    from whisper_pipeline_tests.doubles import FakeTranscriberResource

    wave = wave_frames(FakeTranscriberResource())
    small = peak_rss_mib(tmp_path / "small", 40, wave)
    large = peak_rss_mib(tmp_path / "large", 400, wave)
    assert large <= 1.2 * small, (small, large)
    # What the step did before waves: every chunk at once.
    unbounded = peak_rss_mib(tmp_path / "unbounded", 400, 400 * N_FRAMES)
    assert unbounded > 1.2 * small, (small, unbounded)


def test_stale_run_folders_are_removed_and_active_ones_kept(tmp_path):
    store = Storage(str(tmp_path))
    states = {"active": RUN_ACTIVE, "ended": RUN_ENDED, "mine": RUN_ENDED}
    for run_id in ("active", "ended", "mine", "unknown-old", "unknown-new"):
        folder = tmp_path / "staging" / "2026-11-20" / run_id / "shard-00000"
        folder.mkdir(parents=True)
        (folder / CHUNKS_FILE).write_bytes(b"x" * 10)
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
    # A partition folder with no run left in it goes too; the staged manifest stays.
    states["active"] = RUN_ENDED
    remove_stale_runs(store, lambda run_id: states.get(run_id, RUN_ENDED))
    assert not (tmp_path / "staging" / "2026-11-20").exists()
    assert (manifest / "part-0.parquet").read_bytes() == b"keep"


def test_shard_writer_round_trips_through_the_reader(tmp_path):
    store = Storage(str(tmp_path))
    shard_dir = store.path("staging", "shard-00000")
    lengths = {("a" * 64, 0): 300, ("a" * 64, 1): 120, ("b" * 64, 0): 3000}
    with ShardWriter(store, shard_dir) as writer:
        assert not os.path.exists(writer.spool_path)  # a scratch path, created by the caller
        spool_dir = os.path.dirname(writer.spool_path)
        for (content, index), frames in lengths.items():
            chunk = SpeechChunk(index, np.zeros(frames * 160, np.float32), (index,), (index + 1,))
            features = np.full((N_MELS, frames), len(writer.chunks), np.float32)
            writer.add_chunk(content, chunk, features)
        writer.add_file("a" * 64, PreprocessedFile(20.0, 4.2, 2, "ok", ""))
        writer.add_file("b" * 64, PreprocessedFile(30.0, 30.0, 1, "ok", ""))
        writer.add_file("c" * 64, PreprocessedFile(None, 0.0, 0, "failed", "not audio"))
    assert not os.path.exists(spool_dir)
    assert writer.audio_s == 50.0
    files = store.read_parquet(os.path.join(shard_dir, FILES_FILE)).to_pylist()
    assert [(f["status"], f["error"], f["chunks"]) for f in files] == [
        ("ok", "", 2),
        ("ok", "", 1),
        ("failed", "not audio", 0),
    ]
    staged = StagedChunks(store, {0: shard_dir}, N_MELS, 2, str(tmp_path))
    chunks = [c for wave in staged.waves() for c in wave]
    assert {c.key: c.features.shape[1] for c in chunks} == lengths
    order = list(lengths)
    for chunk in chunks:  # each chunk reads back its own frames, not a neighbour's
        assert np.all(chunk.features == order.index(chunk.key))
        assert chunk.speech_starts == (chunk.key[1],)
    assert {k: (r["status"], r["chunks"]) for k, r in staged.files.items()} == {
        "a" * 64: ("ok", 2),
        "b" * 64: ("ok", 1),
        "c" * 64: ("failed", 0),
    }


def test_shard_writer_leaves_no_manifests_when_preprocessing_fails(tmp_path):
    store = Storage(str(tmp_path))
    shard_dir = store.path("shard")
    with pytest.raises(RuntimeError), ShardWriter(store, shard_dir):
        raise RuntimeError("decoder crashed")
    assert not os.path.exists(os.path.join(shard_dir, CHUNKS_FILE))
    assert not os.path.exists(os.path.join(shard_dir, FILES_FILE))


def test_results_go_to_the_cache_and_failures_stay_with_the_run(tmp_path):
    from whisper_pipeline.core.results import ContentResult
    from whisper_pipeline.core.staging import read_results, write_results

    store = Storage(str(tmp_path))
    run_dir = store.staging_dir("2026-11-20", "run-1")
    ok = ContentResult("a" * 64, "ok", duration_s=3.0, segments=[{"text": "hello"}])
    failed = ContentResult("b" * 64, "failed", error="model error")
    write_results(store, run_dir, "key1", [ok, failed])
    assert store.cached_contents("key1") == {"a" * 64}  # failures are never cached
    found = read_results(store, run_dir, "key1", ["a" * 64, "b" * 64, "c" * 64])
    assert found == {"a" * 64: ok, "b" * 64: failed}
    # Another run sees the cached result but not this run's failure, so it tries again.
    other = read_results(store, store.staging_dir("2026-11-20", "run-2"), "key1", ["b" * 64])
    assert other == {}
    # A failure of this run wins over an older cached result of the same content.
    write_results(store, run_dir, "key1", [ContentResult("a" * 64, "failed", error="oom")])
    assert read_results(store, run_dir, "key1", ["a" * 64])["a" * 64].status == "failed"


@pytest.mark.slow  # a moto S3 server, one listing per poll
def test_parts_committed_after_a_poll_are_seen_on_s3(s3_server, monkeypatch, tmp_path):
    # The probe: s3fs caches folder listings, so a reader that listed a shard's folder before
    # another process committed its parts kept seeing none and waited for the shard forever.
    import uuid

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = f"staging-{uuid.uuid4().hex[:12]}"
    s3_server.put_objects(bucket, {"root/.keep": b""})
    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    # Writer and reader in processes of their own: two file systems, two listing caches.
    writes, reads = (
        Storage(f"s3://{bucket}/root", {**options, "skip_instance_cache": True}) for _ in "wr"
    )
    shard_dir = reads.path("shard")
    reader_clock = Clock()
    staged = StagedChunks(reads, {0: shard_dir}, N_MELS, 10**6, str(tmp_path), clock=reader_clock)
    waves = staged.waves()
    assert next(waves) == []  # listed before anything is staged
    reader_clock.now += 1
    with ShardWriter(writes, shard_dir, part_frames=1, clock=Clock()) as writer:
        add_content(writer, 0, 300)
        assert [c.key[0] for c in next(waves)] == [sha(0)]  # the shard's folder is listed
        add_content(writer, 1, 200)
        reader_clock.now += 1
        assert [c.key[0] for c in next(waves)] == [sha(1)]  # a part committed since
    reader_clock.now += 1
    assert next(waves, None) is None and staged.done
