"""Files still to transcribe, split into shards of equal audio, spread over transcription steps."""

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from whisper_pipeline.core.schema import STATUS_OK

T = TypeVar("T")

ESTIMATED_BYTES_PER_S = 16000
"""Bytes per second assumed for a file whose duration is unknown (raw ADTS AAC declares none):
128 kbit/s, a common AAC rate. Used for balancing shards only."""


@dataclass(frozen=True)
class PendingFile:
    """A distinct content still to transcribe.

    Attributes:
        content_sha256: SHA-256 hex digest of the file's bytes.
        path: Where the file is, in storage.
        duration_s: Duration its header declares, or ``None`` when unknown (raw AAC).
        balance_s: Duration used for balancing shards: the declared one, else an estimate.
    """

    content_sha256: str
    path: str
    duration_s: float | None
    balance_s: float


def balance_shards(files: list[PendingFile], shards: int) -> list[list[PendingFile]]:
    """Split files into ``shards`` groups of about equal audio duration (``balance_s``).

    Longest-processing-time-first greedy (Graham 1969): each file, longest first, goes to the
    group with the least audio so far; within 4/3 of the optimum makespan.

    Args:
        files: The files to split.
        shards: Number of groups (>= 1).

    Returns:
        The non-empty groups, each file in exactly one.
    """
    groups: list[list[PendingFile]] = [[] for _ in range(shards)]
    loads = [0.0] * shards
    for file in sorted(files, key=lambda f: f.balance_s, reverse=True):
        target = loads.index(min(loads))
        groups[target].append(file)
        loads[target] += max(file.balance_s, 1e-3)
    return [group for group in groups if group]


def pending_files(
    manifest: Iterable[dict], cached: set[str], path_of: Callable[[str], str]
) -> tuple[list[PendingFile], int]:
    """The distinct readable contents of a manifest that have no cached result.

    Args:
        manifest: ``audio_manifest`` rows (``content_sha256``, ``source_uri``, ``status``,
            ``duration_s``, ``size_bytes``).
        cached: Contents with a cached result for the model and options (skipped).
        path_of: Storage path of a ``source_uri`` (``Storage.path_of``).

    Returns:
        ``(pending, skipped)``: one ``PendingFile`` per distinct content to transcribe, in
        manifest order, and how many distinct contents were skipped as cached.
    """
    pending: dict[str, PendingFile] = {}
    skipped = set()
    for row in manifest:
        sha = row["content_sha256"]
        if row["status"] != STATUS_OK or sha in pending or sha in skipped:
            continue
        if sha in cached:
            skipped.add(sha)
            continue
        balance = row["duration_s"] or row["size_bytes"] / ESTIMATED_BYTES_PER_S
        pending[sha] = PendingFile(sha, path_of(row["source_uri"]), row["duration_s"], balance)
    return list(pending.values()), len(skipped)


def shard_count(total_s: float, per_shard_s: float, max_shards: int) -> int:
    """Shards for ``total_s`` seconds of audio: one per ``per_shard_s``, 1 to ``max_shards``."""
    return max(1, min(max_shards, math.ceil(total_s / per_shard_s)))


def group_shards(shards: list[T], steps: int) -> list[list[T]]:
    """Spread shards over at most ``steps`` transcription steps, round robin.

    ``balance_shards`` already made the shards of about equal audio, so round robin gives each
    step about the same. No step is left without a shard.

    Args:
        shards: The shards, in index order.
        steps: Transcription steps wanted (>= 1).

    Returns:
        The non-empty groups, each shard in exactly one, in index order within a group.
    """
    count = max(1, min(steps, len(shards)))
    return [group for group in (shards[start::count] for start in range(count)) if group]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
