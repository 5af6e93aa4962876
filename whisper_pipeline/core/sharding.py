"""Split a partition's pending files into shards of about equal audio duration."""

from dataclasses import dataclass


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
