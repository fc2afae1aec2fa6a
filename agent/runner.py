"""One instance's run of a job: inputs, the model, the pipeline, the summary, the exit code.

``run(options)`` is what ``bt-agent --job F`` calls. It lists the inputs, starts the
model command if the job has one, waits for ``/ping``, resolves the execution
parameters, transforms every file (``agent.pipeline.file``), and ends with the summary
(docs/design.md §1.10) on stdout or at ``--summary``. SIGTERM and SIGINT cancel the run: uploads
in flight are aborted, the model command is stopped, completed outputs stay, and the
exit code is 143 or 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent import metrics
from agent.coordination.factory import open_coordinator
from agent.coordination.identity import Identity, IdentityError, resolve_identity
from agent.coordination.lease import ConditionalWritesUnsupported, LeaseSettings
from agent.coordination.records import SettingsMismatch
from agent.errors import EXIT_BY_SIGNAL, BtAgentError, ExitCode
from agent.job import JobSettings, ModelDefinition, settings_hash
from agent.jsonstream import document_pieces
from agent.log import LogFormat
from agent.metrics import Metrics
from agent.metrics.serve import MetricsPortError, MetricsServer, Pusher
from agent.model.artifacts import ArtifactError, default_model_dir, fetch_artifacts
from agent.model.client import (
    Invoker,
    ModelError,
    RequestBody,
    format_execution_parameters,
    resolve_execution_parameters,
)
from agent.model.process import ModelCommandError
from agent.model.replicas import ReplicaSet
from agent.pipeline import Pipeline, PipelineSettings
from agent.redact import Redactor, install, secrets_of
from agent.report import JobSummary, Phases, Progress
from agent.results import COMPLETED, FAILED, STOPPED, FileResult
from agent.storage import InputError, InputFile, StorageError, open_stores
from agent.watching import Watched

log = logging.getLogger("agent.run")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything ``run`` needs: the job with flags applied, and per-process choices."""

    settings: JobSettings  # --model-url, --state-uri, --instance-count already applied
    instance_index: int | None  # --instance-index; None: from the orchestrator, else 0
    instance_count: int | None  # --instance-count as given; None: not on the command line
    force: bool  # run although the state prefix holds results of different settings
    summary_path: str | None  # also write the job summary here
    log_format: LogFormat
    model: ModelDefinition | None = None  # --model: the CreateModel definition, if given


def run(options: RunOptions) -> int:
    """Run the job on this instance; return its exit code (``agent.errors.ExitCode``)."""
    # From here on every log line, summary and state object is free of the job's secrets.
    defined = options.model.environment if options.model is not None else {}
    install(Redactor(secrets_of({**defined, **options.settings.environment}, os.environ)))
    summary = JobSummary(options.settings.transform_job_name)
    received: list[signal.Signals] = []
    code = _run_loop(_main(options, summary, received), received)
    if code == ExitCode.USAGE:
        return code  # the job's own problem, found before any data was touched: no summary
    if received:
        code = EXIT_BY_SIGNAL[received[0]]
        if summary.status not in (COMPLETED, FAILED):
            summary.end(STOPPED, f"stopped by {received[0].name}")
    _write_summary(summary, options.summary_path)
    return code


def _run_loop(main: object, received: list[signal.Signals]) -> int:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        task: asyncio.Task[int] = loop.create_task(main)  # type: ignore[arg-type]

        def stop(signum: signal.Signals) -> None:
            if not received:
                log.warning("%s received: stopping; uploads in flight are aborted", signum.name)
            received.append(signum)
            task.cancel()

        for signum in EXIT_BY_SIGNAL:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return runner.run(_wait(task))
        except asyncio.CancelledError:
            return EXIT_BY_SIGNAL[received[0]] if received else ExitCode.FAILED
        finally:
            for signum in EXIT_BY_SIGNAL:
                loop.remove_signal_handler(signum)


async def _wait(task: asyncio.Task[int]) -> int:
    return await task


async def _main(options: RunOptions, summary: JobSummary, received: list[signal.Signals]) -> int:
    """Identity, then the run, watched by ``/metrics`` and the Pushgateway when the job asks
    (their last push follows the run's end: the summary's figures are final by then)."""
    job = options.settings
    try:
        identity = resolve_identity(
            os.environ,
            flag_index=options.instance_index,
            flag_count=options.instance_count,
            job_count=job.instance_count,
        )
    except IdentityError as error:
        return _stop(summary, error)
    log.info("%s", identity)
    if identity.warning:
        log.warning("%s", identity.warning)
    summary.instance = str(identity)
    counts = metrics.install(Metrics())
    agent = job.agent
    try:
        async with contextlib.AsyncExitStack() as watching:
            if agent.metrics_port is not None:
                server = MetricsServer(counts, agent.metrics_address, agent.metrics_port)
                await watching.enter_async_context(server)
            if agent.metrics_pushgateway_url is not None:
                pusher = Pusher(
                    counts,
                    agent.metrics_pushgateway_url,
                    job.transform_job_name,
                    identity.index,
                    agent.metrics_push_interval_seconds,
                )
                await watching.enter_async_context(pusher)
            return await _instance(options, summary, received, identity, counts)
    except MetricsPortError as error:
        return _stop(summary, error)
    finally:
        log.info("where the time went: %s", summary.phases.sentence())


async def _instance(
    options: RunOptions,
    summary: JobSummary,
    received: list[signal.Signals],
    identity: Identity,
    counts: Metrics,
) -> int:
    """This instance's run: listing and the model's start-up side by side, then every file."""
    job = options.settings
    phases = summary.phases
    watched = Watched(summary)
    watched.watch(counts)
    model = options.model
    replicas = ReplicaSet(
        job,
        model_dir=str(default_model_dir(job, model, os.getcwd())),
        model_environment=model.environment if model is not None else None,
        image=model.image if model is not None else None,
    )
    watched.replicas = replicas
    try:
        await replicas.check_ports()
    except ModelCommandError as error:
        return _stop(summary, error)
    async with open_stores() as stores, contextlib.AsyncExitStack() as stack:
        if model is not None and model.model_data_url is not None:
            try:  # before any state is touched: a refused archive exits 2
                directory = await fetch_artifacts(
                    stores, model.model_data_url, Path(replicas.model_dir)
                )
            except (ArtifactError, StorageError) as error:
                return _stop(summary, error)
            replicas.model_dir = str(directory)
        # The model starts while the inputs are listed: a model that takes minutes to load
        # costs its own time, not that plus the listing's.
        phases.model = time.monotonic()
        ready: asyncio.Future[None] | None = None
        startup_error: ModelCommandError | None = None
        try:
            await stack.enter_async_context(replicas)  # starts the model commands, if any
            stack.callback(_replica_summary, summary, replicas)
            ready = asyncio.ensure_future(
                _ready(replicas, job.agent.model_startup_timeout_seconds, phases)
            )
            stack.push_async_callback(_cancelled, ready)
        except ModelCommandError as error:
            startup_error = error
        phases.listing = time.monotonic()
        try:
            coordinator = await stack.enter_async_context(
                await open_coordinator(
                    stores,
                    job,
                    identity,
                    lease_settings=LeaseSettings.for_ttl(job.agent.lease_ttl_seconds),
                    force=options.force,
                )
            )
        except (InputError, ConditionalWritesUnsupported, StorageError) as error:
            return _stop(summary, error)
        phases.listed = time.monotonic()
        inputs = coordinator.listing.files
        if not inputs:
            reason = f"no objects found under {job.input.uri}"
            summary.end(FAILED, reason)
            log.error("%s", reason)
            return ExitCode.FAILED
        try:
            if startup_error is not None:
                raise startup_error
            assert ready is not None
            await ready
            answer = await replicas.execution_parameters()
            params, sources = resolve_execution_parameters(job, answer)
        except (ModelError, ModelCommandError) as error:
            return _fail_all(summary, coordinator.planned, str(error))
        log.info("%s", format_execution_parameters(params, sources))
        job = params.apply(job)
        summary.execution_parameters = {
            "MaxConcurrentTransforms": params.max_concurrent_transforms,
            "MaxPayloadInMB": params.max_payload_mb,
            "BatchStrategy": params.batch_strategy,
        }
        try:
            await coordinator.begin(settings_hash(job))
        except SettingsMismatch as error:
            return _stop(summary, error)  # it says to rerun with --force
        todo = coordinator.todo
        watched.planned = sum(item.shard is None for item in todo)
        total = sum(item.weight for item in todo)
        log.info("%d files (%d bytes) to transform on this instance", len(todo), total)
        progress = Progress(len(todo), total)
        summary.begin_transform()
        client = _Stamped(await replicas.open(job), phases)
        pipeline = Pipeline(PipelineSettings.from_job(job), job, stores, client, progress)
        watched.pipeline = pipeline
        try:
            await pipeline.run(coordinator.files(), summary.files)
        except asyncio.CancelledError:
            reason = f"stopped by {received[0].name}" if received else "stopped"
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    coordinator.finish(
                        stopped=reason, execution_parameters=summary.execution_parameters
                    )
                )
            raise
        finally:
            progress.close()
        final = await coordinator.finish(execution_parameters=summary.execution_parameters)
        if final is not None:
            summary.job_status = str(final.get("TransformJobStatus"))
    failed = [f for f in summary.files if f.status == FAILED]
    if failed:
        summary.end(
            FAILED, f"{len(failed)} of {len(summary.files)} files failed: {failed[0].error}"
        )
        return ExitCode.FAILED
    summary.end(COMPLETED)
    return ExitCode.COMPLETED


async def _ready(replicas: ReplicaSet, timeout_seconds: float, phases: Phases) -> None:
    await replicas.wait_ready(timeout_seconds)
    phases.ready = time.monotonic()


async def _cancelled(task: asyncio.Future[None]) -> None:
    """The model's start-up, waited for no more (the run ended before it mattered)."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


class _Stamped:
    """The model client, noting when the first request went out and the last answer came
    back (``Phases``)."""

    def __init__(self, inner: Invoker, phases: Phases) -> None:
        self.inner = inner
        self.phases = phases

    async def invoke(self, body: RequestBody, *, what: str) -> bytearray:
        self.phases.request_sent()
        try:
            return await self.inner.invoke(body, what=what)
        finally:
            self.phases.answered()


def _replica_summary(summary: JobSummary, replicas: ReplicaSet) -> None:
    """What each replica did, for the summary (when there is more than one)."""
    if len(replicas.replicas) > 1:
        summary.replicas = replicas.summary()


def _stop(summary: JobSummary, error: BtAgentError) -> int:
    """End the run on ``error`` with the exit code its class carries (``agent.errors``).

    A usage error (exit 2, of the job's own making) is logged and no summary follows;
    any other error ends the summary as Failed with its message.
    """
    if error.exit_code != ExitCode.USAGE:
        summary.end(FAILED, str(error))
    log.error("%s", error)
    return error.exit_code


def _fail_all(summary: JobSummary, inputs: Sequence[InputFile], reason: str) -> int:
    """The model never became usable: the files this instance would have done (its share
    of the plan, or all of them under Lease coordination) fail at once with the reason.

    Each is named with the output name it carries (its input URI when that name is refused,
    as the pipeline does).
    """
    log.error("%s", reason)
    for item in inputs:
        result = FileResult(str(item.uri), str(item.output or item.uri))
        result.finish(FAILED, f"{item.uri}: not transformed: {reason}")
        summary.files.append(result)
    summary.end(FAILED, reason)
    return ExitCode.FAILED


def _write_summary(summary: JobSummary, path: str | None) -> None:
    """The summary at ``--summary``, or on stdout: without it, or if it cannot be written.

    Indented JSON, written an entry at a time (a run of a million files never holds every
    entry as a dict, nor the whole text); secrets are out of its free text (agent.redact).
    """
    head = summary.head_json()

    def write(stream: BinaryIO) -> None:
        entries = (f.as_json() for f in summary.files)
        for piece in document_pieces(head, "Files", entries, indent=True):
            stream.write(piece)
        stream.write(b"\n")

    if path is not None:
        try:
            with open(path, "wb") as file:
                write(file)
        except OSError as error:
            log.error(
                "cannot write the summary to --summary %s (%s); it follows on stdout instead",
                path,
                error.strerror or error,
            )
        else:
            log.info("summary written to %s", path)
            return
    write(sys.stdout.buffer)
    sys.stdout.flush()
