"""Runs whose process died: marked failed and their pool slots freed, so they never block a pool.

``record_orchestrator`` (called by the run's first step) tags a run with its orchestrating
process's host, pid namespace, pid and start time when that process is the step's own or an
ancestor. ``dead_run_sensor`` (run by the daemon) fails in-progress runs tagged for its host whose
orchestrator is gone and none of whose step processes is alive, and frees the slots still held
by ended runs of its host with no step alive. Runs of other hosts or pid namespaces are left to
their launchers' run monitoring; without a daemon nothing watches. Why, and the time bound:
docs/ARCHITECTURE.md, section "defs/dead_runs.py".
"""

import os
import socket
import sys
from collections.abc import Iterator

import dagster as dg

HOST_TAG = "whisper_pipeline/orchestrator_host"
"""Run tag: ``socket.gethostname()`` of the host the run's orchestrating process runs on."""

PID_NAMESPACE_TAG = "whisper_pipeline/orchestrator_pid_namespace"
"""Run tag: the orchestrator's pid namespace (``/proc/self/ns/pid``), so a container sharing
the host's name but not its processes never judges the host's pids."""

PID_TAG = "whisper_pipeline/orchestrator_pid"
"""Run tag: pid of the run's orchestrating process (its ``RUN_START`` event's pid)."""

START_TAG = "whisper_pipeline/orchestrator_start"
"""Run tag: that process's start time, clock ticks after boot (``/proc/<pid>/stat`` field 22),
so a reused pid is not taken for the orchestrator."""

DEAD_RUN_SENSOR_INTERVAL_S = 30
"""Seconds between the sensor's ticks: the bound on how long a dead run holds its slots."""

IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
"""Run statuses in which a run may be holding pool slots and have an orchestrator."""

STEP_START_SLACK_S = 2.0
"""A live process counts as a step's only if it started no later than the step's ``STEP_START``
event plus this (``/proc/stat`` boot time is whole seconds and drifts with clock steps)."""


def _on_linux() -> bool:
    return sys.platform.startswith("linux")


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat``; ``None`` when there is no such live process.

    Zombies (state ``Z``, ``X``) count as gone: they have finished and hold nothing.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks after boot; ``None`` when it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0  # field 4


def _lineage(pid: int) -> Iterator[int]:
    """``pid``, its parent, its parent's parent... up to (not including) pid 0."""
    seen: set[int] = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        yield pid
        pid = _parent(pid)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _boot_time() -> float:
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _orchestrator_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid in the run's latest ``RUN_START`` event: the process orchestrating the run."""
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    if not starts or starts[-1].dagster_event is None:
        return None
    return starts[-1].dagster_event.pid


def record_orchestrator(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> bool:
    """Tag the run with its orchestrator's host, pid and start time, for ``dead_run_sensor``.

    Call it at the start of the run's first step. It tags only when the orchestrator (the pid of
    the run's ``RUN_START`` event) is this step's process or one of its ancestors, so both run
    on this host; otherwise (a step on another node, no ``RUN_START`` yet, not Linux) it does
    nothing, and the sensor leaves the run to its launcher's run monitoring.

    Args:
        context: The step's execution context.

    Returns:
        Whether the run was tagged.
    """
    if not _on_linux():
        return False
    instance, run_id = context.instance, context.run.run_id
    pid = _orchestrator_pid(instance, run_id)
    if pid is None or pid not in _lineage(os.getpid()):
        return False
    start = process_start_ticks(pid)
    if start is None:
        return False
    tags = {
        HOST_TAG: socket.gethostname(),
        PID_NAMESPACE_TAG: _pid_namespace(),
        PID_TAG: str(pid),
        START_TAG: str(start),
    }
    if any(context.run.tags.get(key) != value for key, value in tags.items()):
        instance.add_run_tags(run_id, tags)
    return True


def _live_step_pids(instance: dg.DagsterInstance, run_id: str) -> set[int]:
    """Pids of the run's step processes (``STEP_START`` events) that are still alive.

    A live pid counts only if its process started before the step did; a later one is a reused
    pid. A step outliving its orchestrator (killed alone) may still be using the accelerator.
    """
    boot = _boot_time()
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    alive = set()
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
        pid = entry.dagster_event.pid if entry.dagster_event else None
        start = process_start_ticks(pid) if pid else None
        if start is not None and boot + start / ticks_per_s <= entry.timestamp + STEP_START_SLACK_S:
            alive.add(pid)
    return alive


def _dead_run_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why ``run`` (tagged for this host) is dead, or ``None`` when it is or may be alive."""
    try:
        pid, start = int(run.tags[PID_TAG]), int(run.tags[START_TAG])
    except (KeyError, ValueError):
        return None
    if _orchestrator_pid(instance, run.run_id) != pid:
        return None  # tags copied from a parent run (re-execution): not this run's orchestrator
    if process_start_ticks(pid) == start:
        return None
    if _live_step_pids(instance, run.run_id):
        return None  # orchestrator gone, but a step still runs: it ends, then the run is failed
    return f"process {pid} on {run.tags[HOST_TAG]} is gone; marked failed by dead_run_sensor"


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the in-progress runs whose processes on this host are gone; free their slots.

    Args:
        instance: The Dagster instance to look for runs in.

    Returns:
        The ids of the runs marked failed.
    """
    if not _on_linux():
        return []
    host, namespace = socket.gethostname(), _pid_namespace()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: host}))
    failed = []
    for run in runs:
        if run.tags.get(PID_NAMESPACE_TAG) != namespace:
            continue
        reason = _dead_run_reason(instance, run)
        current = instance.get_run_by_id(run.run_id) if reason else None
        if current is None or current.status not in IN_PROGRESS:
            continue  # alive, or it ended on its own since the query
        instance.report_run_failed(current, message=reason)
        # Nothing of the run is left to release its slots. Run monitoring would free them only
        # free_slots_after_run_end_seconds after the failure, at its next poll (120 s default).
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[str]:
    """Free the pool slots still held by ended runs of this host none of whose steps is alive.

    A run failed by someone else (run monitoring, say) otherwise keeps its slots until run
    monitoring's ``free_slots_after_run_end_seconds``. A slot is freed only when the run has
    ended, ran on this host (``record_orchestrator``'s tags) and no process of its steps is
    alive, so a step still decoding keeps its slot.

    Args:
        instance: The Dagster instance whose pools are checked.

    Returns:
        The ids of the runs whose slots were freed.
    """
    storage = instance.event_log_storage
    if not _on_linux() or not storage.supports_global_concurrency_limits:
        return []
    host, namespace = socket.gethostname(), _pid_namespace()
    holding = set()
    for pool in storage.get_concurrency_keys():
        holding |= storage.get_concurrency_info(pool).active_run_ids
    freed = []
    for run_id in sorted(holding):
        run = instance.get_run_by_id(run_id)
        if run is None or not run.is_finished:
            continue
        if run.tags.get(HOST_TAG) != host or run.tags.get(PID_NAMESPACE_TAG) != namespace:
            continue
        if _live_step_pids(instance, run_id):
            continue
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(run_id)
    return freed


@dg.sensor(
    minimum_interval_seconds=DEAD_RUN_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Fail runs whose orchestrating process on this host died, and free their pool slots.

    Requests no runs (it has no target); it only acts on the instance (rules in this module's
    docstring).
    """
    if not _on_linux():
        return dg.SkipReason("dead_run_sensor needs /proc (Linux); runs are left alone")
    failed = fail_dead_runs(context.instance)
    for run_id in failed:
        context.log.warning("run %s: orchestrating process gone; marked failed", run_id)
    freed = free_slots_of_ended_runs(context.instance)
    for run_id in freed:
        context.log.warning("run %s: ended with no step alive; its pool slots freed", run_id)
    reasons = []
    if failed:
        reasons.append(f"marked {len(failed)} dead runs failed: {', '.join(failed)}")
    if freed:
        reasons.append(f"freed the slots of {len(freed)} ended runs: {', '.join(freed)}")
    return dg.SkipReason("; ".join(reasons) or f"no dead runs on {socket.gethostname()}")
