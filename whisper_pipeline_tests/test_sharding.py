import random

import pytest

from whisper_pipeline.core.sharding import PendingFile, balance_shards


def pending(durations: list[float]) -> list[PendingFile]:
    return [PendingFile(f"{i:064x}", f"/landing/{i}.wav", d, d) for i, d in enumerate(durations)]


DURATION_TABLES = {
    "one_file": [42.0],
    "equal": [60.0] * 8,
    "one_long_many_short": [3600.0] + [10.0] * 50,
    "graham_worst_case": [5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0],  # LPT 11 against the optimum 9
    "random": [round(random.Random(7).uniform(1, 900), 1) for _ in range(40)],
    "zero_durations": [0.0] * 5,
}


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("name", sorted(DURATION_TABLES))
def test_balance_shards(name, shards):
    files = pending(DURATION_TABLES[name])
    groups = balance_shards(files, shards)
    assert len(groups) == min(shards, len(files))
    assert all(groups), "no empty shards"
    placed = [f for group in groups for f in group]
    assert sorted(placed, key=lambda f: f.content_sha256) == files, "every file exactly once"
    # Graham's LPT bound: makespan <= (4/3 - 1/(3m)) * optimum, and the optimum is at least
    # the mean load and the longest file.
    loads = [sum(f.balance_s for f in group) for group in groups]
    total = sum(f.balance_s for f in files)
    lower = max(total / shards, max(f.balance_s for f in files))
    assert max(loads) <= (4 / 3 - 1 / (3 * shards)) * lower + 1e-9


def test_longest_files_go_first_and_ties_keep_their_order():
    files = pending([10.0, 30.0, 10.0, 20.0])
    groups = balance_shards(files, 2)
    # 30 -> A, 20 -> B, the first 10 -> B (20 < 30), the second 10 -> A (a tie: the first group).
    assert [[f.balance_s for f in g] for g in groups] == [[30.0, 10.0], [20.0, 10.0]]
    assert (groups[0][1].path, groups[1][1].path) == ("/landing/2.wav", "/landing/0.wav")


def test_the_declared_duration_is_carried_unchanged():
    unknown = PendingFile("a" * 64, "/landing/raw.aac", None, 125.0)
    assert balance_shards([unknown], 4) == [[unknown]]


def test_pending_files_skip_failed_duplicate_and_cached_contents():
    from whisper_pipeline.core.sharding import ESTIMATED_BYTES_PER_S, pending_files

    def row(sha, status="ok", duration=10.0, size=1000):
        uri = f"file:///landing/{sha}.wav"
        return {"content_sha256": sha, "source_uri": uri, "status": status,
                "duration_s": duration, "size_bytes": size}  # fmt: skip

    manifest = [
        row("a"),
        row("a"),  # the same content under another name: transcribed once
        row("b", status="failed"),
        row("c"),
        row("c"),
        row("d", duration=None, size=32000),  # raw AAC: no declared duration
    ]
    pending, skipped = pending_files(manifest, {"c"}, lambda uri: uri.removeprefix("file://"))
    assert [f.content_sha256 for f in pending] == ["a", "d"]
    assert skipped == 1
    assert pending[0].path == "/landing/a.wav"
    assert (pending[1].duration_s, pending[1].balance_s) == (None, 32000 / ESTIMATED_BYTES_PER_S)


@pytest.mark.parametrize(
    ("total_s", "per_shard_s", "max_shards", "expected"),
    [(0.0, 300.0, 4, 1), (299.0, 300.0, 4, 1), (301.0, 300.0, 4, 2), (1e6, 300.0, 4, 4)],
)
def test_shard_count_is_one_per_share_of_audio_within_bounds(
    total_s, per_shard_s, max_shards, expected
):
    from whisper_pipeline.core.sharding import shard_count

    assert shard_count(total_s, per_shard_s, max_shards) == expected
