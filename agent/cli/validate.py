"""``bt-agent validate``: the job (and the ``--model`` file) loaded and checked, their problems
printed with their JSON paths, and a short overview of a valid job (Environment values never
shown)."""

from __future__ import annotations

import argparse
import logging
import sys

from agent.coordination.shards import why_not_sharded
from agent.errors import ExitCode
from agent.job import (
    JobError,
    JobSettings,
    LoadedJob,
    LoadedModel,
    load_job,
    load_model,
    model_name_problem,
)

log = logging.getLogger("agent.cli")


def validate(namespace: argparse.Namespace) -> int:
    loaded = load(namespace.job)
    model = None if namespace.model is None else load_model_file(namespace.model)
    if loaded is None or (namespace.model is not None and model is None):
        return ExitCode.USAGE
    if model is not None and not matches(loaded, model, namespace.model):
        return ExitCode.USAGE
    for line in overview(loaded, namespace.job):
        print(line)
    if model is not None:
        for line in model_overview(model, namespace.model):
            print(line)
    return ExitCode.COMPLETED


def load(path: str) -> LoadedJob | None:
    """The validated job, or ``None`` after printing every problem to stderr."""
    try:
        return load_job(path)
    except JobError as exc:
        print_problems(path, exc)
        return None


def load_model_file(path: str) -> LoadedModel | None:
    """The validated model file, or ``None`` after printing every problem to stderr."""
    try:
        return load_model(path)
    except JobError as exc:
        print_problems(path, exc, kind="model file")
        return None


def matches(loaded: LoadedJob, model: LoadedModel, source: str) -> bool:
    """Whether the job and the model file name the same model; says why not on stderr."""
    problem = model_name_problem(loaded.settings, model.model)
    if problem is not None:
        error(f"{source}: {problem}")
    return problem is None


def print_problems(source: str, exc: JobError, *, kind: str = "job") -> None:
    if len(exc.problems) == 1 and not exc.problems[0].path:
        error(exc.problems[0].message)  # the file as a whole: unreadable, not JSON
        return
    count = len(exc.problems)
    error(f"{source} is not a valid {kind} ({count} problem{'s' if count != 1 else ''}):")
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def error(message: str) -> None:
    print(f"bt-agent: {message}", file=sys.stderr)


def log_notes(loaded: LoadedJob, model: LoadedModel | None = None) -> None:
    if loaded.ignored:
        log.info(
            "accepted and ignored (SageMaker fields with no effect here): %s",
            ", ".join(loaded.ignored),
        )
    if model is not None and model.ignored:
        log.info(
            "model file: accepted and ignored (SageMaker fields with no effect here): %s",
            ", ".join(model.ignored),
        )
    for warning in loaded.warnings:
        log.warning("%s", warning)


def model_overview(loaded: LoadedModel, source: str) -> list[str]:
    """A short human summary of a valid model file. Environment values are never shown."""
    model = loaded.model
    env = sorted(model.environment)
    rows = [
        ("image", model.image or "(none: Agent.ModelCommand must start the model)"),
        ("artifacts", str(model.model_data_url) if model.model_data_url else "(none)"),
        ("environment", f"{', '.join(env)} (values not shown)" if env else "none"),
        ("mode", model.mode),
    ]
    if loaded.ignored:
        rows.append(("ignored", f"{', '.join(loaded.ignored)} (no effect here)"))
    lines = [f"{source}: valid model {model.name or '(no ModelName)'}"]
    lines.extend(f"  {label:<12} {text}" for label, text in rows)
    return lines


def overview(loaded: LoadedJob, source: str) -> list[str]:
    """A short human summary of a valid job. Environment values are never shown."""
    job = loaded.settings
    unset = "resolved from the model at start"
    command = job.agent.model_command
    started = (
        f", started by the agent ({command[0]} with {len(command) - 1} arguments)"
        if command
        else ", expected to be running already"
    )
    env = sorted(job.environment)
    lease = job.agent.coordination == "Lease"
    rows = [
        ("model", f"{job.model_name or '(no ModelName)'} at {job.agent.model_url}{started}"),
        ("replicas", _replicas(job)),
        (
            "input",
            f"{job.input.uri} ({job.input.data_type}), SplitType {job.input.split_type}, "
            f"CompressionType {job.input.compression}, "
            f"Content-Type {job.input.content_type or '(not sent)'}",
        ),
        (
            "output",
            f"{job.output.uri}, AssembleWith {job.output.assemble_with}, "
            f"Accept {job.output.accept or '(not sent)'}, "
            f"KMS key {job.output.kms_key_id or '(none)'}",
        ),
        (
            "batching",
            f"BatchStrategy {job.batch_strategy or unset}, "
            f"MaxPayloadInMB {_or(job.max_payload_mb, unset)}, "
            f"MaxRecordsPerRequest {_or(job.agent.max_records_per_request, 'no cap')}, "
            f"MaxConcurrentTransforms {_or(job.max_concurrent_transforms, unset)}",
        ),
        (
            "requests",
            f"timeout {job.model_client.invocations_timeout_seconds} s, "
            f"up to {job.model_client.invocations_max_retries} retries, answers up to "
            + (
                f"{job.agent.max_response_mb} MiB"
                if job.agent.max_response_mb is not None
                else "max(64, 4 × MaxPayloadInMB) MiB"
            ),
        ),
        (
            "answers",
            "one line per record required (RequireLinePerRecord)"
            if job.agent.require_line_per_record
            else "not checked (RequireLinePerRecord false)",
        ),
        ("failed records", _isolation(job)),
        ("shards", _shards(job)),
        ("metrics", _metrics(job)),
        ("environment", f"{', '.join(env)} (values not shown)" if env else "none"),
        (
            "processing",
            f"InputFilter {job.data_processing.input_filter}, JoinSource "
            f"{job.data_processing.join_source}, OutputFilter {job.data_processing.output_filter}",
        ),
        (
            "instances",
            f"{job.instance_count}, coordination {job.agent.coordination}"
            + (f" (lease TTL {job.agent.lease_ttl_seconds} s)" if lease else "")
            + f", reorder buffer {job.agent.reorder_buffer_mb} MiB",
        ),
        ("state", str(job.state_uri)),
    ]
    if loaded.ignored:
        rows.append(("ignored", f"{', '.join(loaded.ignored)} (no effect here)"))
    rows.extend(("warning", warning) for warning in loaded.warnings)
    lines = [f"{source}: valid transform job {job.transform_job_name}"]
    lines.extend(f"  {label:<12} {text}" for label, text in rows)
    return lines


def _or(value: int | None, unset: str) -> str:
    return unset if value is None else str(value)


# ---------------------------------------------------------------------- parser


def _isolation(job: JobSettings) -> str:
    """The validate line for Agent.MaxFailedRecords and Agent.FailedRecordPlaceholder."""
    limit = job.agent.max_failed_records
    if limit is None:
        return "a failed request fails its file (MaxFailedRecords not set); 413s are cut"
    allowed = "no limit" if limit < 0 else f"at most {limit} an instance"
    placeholder = job.agent.failed_record_placeholder
    stands = "nothing" if placeholder is None else repr(placeholder)
    return (
        f"isolated to <name>.errors.jsonl, {allowed} (MaxFailedRecords {limit}); "
        f"{stands} in their place in the output"
    )


def _shards(job: JobSettings) -> str:
    """The validate line for Agent.ShardSizeMB (README "Shards of one big file")."""
    size = job.agent.shard_size_mb
    if not size:
        return "off: each file is one unit of work (ShardSizeMB 0)"
    reason = why_not_sharded(job)
    if reason is not None:
        return f"none: {reason}"
    return f"files over {size} MiB are cut into shards of about {size} MiB (ShardSizeMB)"


def _metrics(job: JobSettings) -> str:
    """The validate line for Agent.MetricsPort and Agent.MetricsPushgatewayUrl."""
    agent = job.agent
    served = (
        "not served (MetricsPort or --metrics-port to serve /metrics)"
        if agent.metrics_port is None
        else f"/metrics on {agent.metrics_address}:{agent.metrics_port or 'any free port'}"
    )
    if agent.metrics_pushgateway_url is None:
        return served
    return (
        f"{served}; pushed to {agent.metrics_pushgateway_url} every "
        f"{agent.metrics_push_interval_seconds} s and at the end"
    )


def _replicas(job: JobSettings) -> str:
    """The validate line for the model's replicas (README "Replicas")."""
    agent = job.agent
    urls = agent.replica_urls
    if len(urls) == 1:
        return "1 (Agent.ModelReplicas to start more, or list servers in Agent.ModelUrl)"
    where = ", ".join(urls)
    devices = (
        "" if agent.replica_devices is None else f"; devices {', '.join(agent.replica_devices)}"
    )
    kind = "servers already running" if agent.model_servers else "started"
    return (
        f"{len(urls)} {kind} at {where}{devices}; up to {agent.replica_restarts} restart(s) "
        "each; MaxConcurrentTransforms applies to each"
    )
