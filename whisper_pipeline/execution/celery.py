"""The ``celery`` profile: the Celery app its workers run and the executor that sends them steps.

Each step is one Celery task (dagster-celery's ``execute_plan``) on the queue its op's
``dagster-celery/queue`` tag names (``execution.placement``): ``gpu`` workers run one step at a
time (``--concurrency 1``, ``task_acks_late``, ``worker_prefetch_multiplier=1``). A pool process
that dies fails its step, which is retried under its op's ``RetryPolicy``
(``StepFailureAwareCeleryExecutor``). Workers and runs read ``WHISPER_PIPELINE_CELERY_*``
(docs/DEPLOY.md); importing this module needs neither a broker nor the environment, and a
missing or wrong setting fails with a ``CeleryConfigError`` that names the variable.
"""

import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import celery
import dagster as dg
from celery.exceptions import TaskRevokedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.retries import RetryMode
from dagster._serdes import serialize_value
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster_celery.config import dict_wrapper
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.defaults import broker_transport_options
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

# Private, but it is the whole of dagster-celery's step submission; pinned below 0.30.
from dagster_celery.executor import _submit_task as submit_step_task
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from whisper_pipeline.execution.profiles import CELERY, PROFILE_ENV, current_profile

BROKER_ENV = "WHISPER_PIPELINE_CELERY_BROKER"
"""Environment variable naming the broker URL (required)."""

BACKEND_ENV = "WHISPER_PIPELINE_CELERY_BACKEND"
"""Environment variable naming the result backend URL; unset means the broker's URL."""

VISIBILITY_TIMEOUT_ENV = "WHISPER_PIPELINE_CELERY_VISIBILITY_TIMEOUT"
"""Environment variable: seconds before an unacknowledged task is handed to another worker."""

KNOWN_ENVS = (BROKER_ENV, BACKEND_ENV, VISIBILITY_TIMEOUT_ENV)
"""Every ``WHISPER_PIPELINE_CELERY_*`` variable; any other with that prefix is a typo."""

DEFAULT_VISIBILITY_TIMEOUT_S = 3600
"""kombu's own default for Redis: one hour."""

BROKER_SCHEMES = frozenset(
    {"redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "sqs", "memory", "filesystem"}
)
"""Broker URL schemes accepted (kombu transports that dagster-celery can use)."""

BACKEND_SCHEMES = frozenset({"redis", "rediss", "sentinel", "rpc", "db", "database", "s3", "file"})
"""Result backend URL schemes accepted (``db+postgresql://...`` counts as ``db``)."""


class CeleryConfigError(ValueError):
    """The Celery environment variables are missing or malformed."""


@dataclass(frozen=True)
class CelerySettings:
    """Broker, backend and redelivery settings of the ``celery`` profile.

    Attributes:
        broker: Broker URL.
        backend: Result backend URL.
        backend_env: The variable ``backend`` came from (``BROKER_ENV`` when defaulted).
        visibility_timeout_s: Seconds before an unacknowledged task is redelivered.
    """

    broker: str
    backend: str
    backend_env: str
    visibility_timeout_s: int

    def config_source(self) -> dict:
        """Celery settings shared by the workers' app and the executor's.

        Returns:
            Lowercase Celery settings (``celery.Celery(config_source=...)``).
        """
        return {
            # Acknowledge when the step ends: a task whose worker died is delivered again.
            "task_acks_late": True,
            # A pool process killed alone fails its task instead of requeueing it, so a step
            # that always kills its process (out of memory) cannot loop forever.
            "task_reject_on_worker_lost": False,
            # One task reserved per pool process: a gpu worker never holds a second step.
            "worker_prefetch_multiplier": 1,
            "broker_transport_options": {
                **broker_transport_options,  # dagster-celery's publish retries
                "visibility_timeout": self.visibility_timeout_s,
            },
            "broker_connection_retry_on_startup": True,
        }


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def _check_url(name: str, url: str, schemes: frozenset) -> None:
    scheme = _scheme(url)
    if "://" not in url or scheme not in schemes:
        raise CeleryConfigError(
            f"{name}={url!r} is not a URL Celery can use; expected one of "
            f"{', '.join(s + '://' for s in sorted(schemes))} (e.g. redis://127.0.0.1:6379/0)"
        )


def celery_settings(environ: Mapping[str, str] | None = None) -> CelerySettings:
    """The ``celery`` profile's settings from the environment, checked.

    Args:
        environ: Environment to read; default ``os.environ``.

    Returns:
        The settings.

    Raises:
        CeleryConfigError: The broker variable is missing, a URL has no known scheme, the
            timeout is not a positive integer, or a ``WHISPER_PIPELINE_CELERY_*`` variable
            is not one of ``KNOWN_ENVS`` (a misspelt name would otherwise be ignored).
    """
    environ = os.environ if environ is None else environ
    prefix = BROKER_ENV.rsplit("_", 1)[0] + "_"
    unknown = sorted(k for k in environ if k.startswith(prefix) and k not in KNOWN_ENVS)
    if unknown:
        hints = [
            f"{name} (did you mean {match[0]}?)"
            if (match := difflib.get_close_matches(name, KNOWN_ENVS, n=1))
            else name
            for name in unknown
        ]
        raise CeleryConfigError(
            f"unknown variable {', '.join(hints)}; the celery profile reads {', '.join(KNOWN_ENVS)}"
        )
    broker = environ.get(BROKER_ENV, "").strip()
    if not broker:
        raise CeleryConfigError(
            f"{BROKER_ENV} is not set: the celery profile needs the broker URL "
            "(e.g. redis://127.0.0.1:6379/0) in the run's and every worker's environment"
        )
    _check_url(BROKER_ENV, broker, BROKER_SCHEMES)
    backend_env = BACKEND_ENV if environ.get(BACKEND_ENV, "").strip() else BROKER_ENV
    backend = environ[backend_env].strip()
    _check_url(backend_env, backend, BACKEND_SCHEMES)
    raw_timeout = environ.get(VISIBILITY_TIMEOUT_ENV, "").strip()
    try:
        timeout = int(raw_timeout) if raw_timeout else DEFAULT_VISIBILITY_TIMEOUT_S
    except ValueError:
        timeout = 0
    if timeout <= 0:
        raise CeleryConfigError(
            f"{VISIBILITY_TIMEOUT_ENV}={raw_timeout!r} is not a positive number of seconds"
        )
    return CelerySettings(broker, backend, backend_env, timeout)


def make_worker_app(environ: Mapping[str, str] | None = None) -> celery.Celery:
    """The workers' Celery app: dagster-celery's app and ``execute_plan`` task, our settings.

    A worker's steps load ``whisper_pipeline.definitions`` with the worker's environment, so the
    worker must be in the ``celery`` profile too: under ``local`` a step that finds no storage
    root would fall back to ``./data`` of the worker's working directory instead of failing.

    Args:
        environ: Environment to read (``celery_settings``); default ``os.environ``.

    Returns:
        The app; nothing connects to the broker until a worker or a client uses it.

    Raises:
        CeleryConfigError: ``celery_settings`` refused the environment, or
            ``WHISPER_PIPELINE_PROFILE`` is not ``celery``.
    """
    environ = os.environ if environ is None else environ
    settings = celery_settings(environ)
    profile = current_profile(environ)
    if profile != CELERY:
        raise CeleryConfigError(
            f"{PROFILE_ENV}={environ.get(PROFILE_ENV, '')!r} (profile {profile!r}): a worker of "
            f"whisper_pipeline.execution.celery must run with {PROFILE_ENV}={CELERY}, like the"
            " runs it serves"
        )
    app = make_app(
        {
            "broker": settings.broker,
            "backend": settings.backend,
            "include": [],
            "config_source": dict_wrapper(settings.config_source()),
        }
    )
    create_task(app)
    return app


class _StepTaskResult:
    """A step's Celery ``AsyncResult`` whose failure outside the step becomes a step event.

    dagster-celery's execution loop (0.29) records a task that raised in the worker outside
    Dagster's step handling (``WorkerLostError`` when the pool process running the step was
    killed, an error before the step could start) as an error and then submits nothing more.
    Steps still waiting (other shards, or ones waiting for the ``gpu`` pool) are then never run
    nor skipped: the run's process loops without sleeping, never ends, and keeps the dead step's
    ``gpu`` slot, blocking transcription in every other run. Here such a failure is instead
    reported as the multiprocess executor reports a crashed step process: a ``STEP_FAILURE``, or
    ``STEP_UP_FOR_RETRY`` under the op's ``RetryPolicy``. Either ends the step (freeing its pool
    slot) and the run goes on or fails as usual.
    """

    def __init__(self, result, executor, plan_context, step, known_state):
        self._result = result
        self._executor = executor
        self._plan_context = plan_context
        self._step = step
        self._known_state = known_state

    def ready(self) -> bool:
        return self._result.ready()

    def revoke(self) -> None:
        self._result.revoke()

    def get(self) -> list:
        try:
            return self._result.get()
        except TaskRevokedError:
            raise  # the loop's own handling: the run was terminated
        except Exception:
            error = serializable_error_info_from_exc_info(sys.exc_info())
            step_context = self._plan_context.for_step(self._step)
            DagsterEvent.engine_event(
                step_context,
                f'Celery task of step "{self._step.key}" failed outside the step: '
                f"{error.message.strip()}",
                EngineEventData.engine_error(error),
            )
            event = self._executor.log_failure_or_retry_event_after_error(
                step_context, error, self._known_state
            )
            return [serialize_value(event)]


class StepFailureAwareCeleryExecutor(CeleryExecutor):
    """dagster-celery's ``CeleryExecutor``; a task lost outside its step fails or retries the step.

    See ``_StepTaskResult``. Everything else (submission, queues, priorities, the ``gpu`` pool's
    claims) is dagster-celery's own loop.
    """

    def execute(self, plan_context, execution_plan):
        """Run the plan with dagster-celery's loop, wrapping each step's task result."""

        def submit(app, context, step, queue, priority, known_state):
            result = submit_step_task(app, context, step, queue, priority, known_state)
            return _StepTaskResult(result, self, context, step, known_state)

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)


@dg.executor(
    name="celery",
    config_schema=CELERY_CONFIG,
    requirements=dg.multiple_process_executor_requirements(),
)
def step_failure_aware_celery_executor(init_context: dg.InitExecutorContext):
    """dagster-celery's ``celery_executor`` (same config), making our executor class.

    Args:
        init_context: The executor's init context (its resolved config).

    Returns:
        The executor.
    """
    config = init_context.executor_config
    return StepFailureAwareCeleryExecutor(
        broker=config.get("broker"),
        backend=config.get("backend"),
        config_source=config.get("config_source"),
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
    )


def _executor_config(_config: dict) -> dict:
    """dagster-celery's executor config, resolved when a run starts (not at import).

    The URLs are ``{"env": ...}`` sources, so Dagster reads them in the run's process and never
    copies them (with any password) into the run's stored config.
    """
    settings = celery_settings()
    return {
        "broker": {"env": BROKER_ENV},
        "backend": {"env": settings.backend_env},
        "config_source": settings.config_source(),
    }


celery_executor = step_failure_aware_celery_executor.configured(_executor_config, config_schema={})
"""The ``celery`` profile's executor: dagster-celery's, with this module's broker, backend and
settings, and lost tasks reported as step failures (``StepFailureAwareCeleryExecutor``).

It takes no ``tag_concurrency_limits`` (dagster-celery's loop has none): under Celery one
transcription step at a time comes from the ``gpu`` pool, whose slot the run claims before it
sends the step to the broker and frees when the step ends, and from the ``gpu`` queue's single
worker of concurrency 1."""

_worker_app: celery.Celery | None = None


def __getattr__(name: str) -> celery.Celery:
    """``app``, which ``celery -A whisper_pipeline.execution.celery`` looks up (built lazily)."""
    global _worker_app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _worker_app is None:
        _worker_app = make_worker_app()
    return _worker_app
