"""The job file: a CreateTransformJob request body plus an optional ``Agent`` object.

``load_job`` reads and validates a file; ``parse_job`` validates an already decoded
document. Both return a ``LoadedJob``: the frozen ``JobSettings`` with defaults applied,
the JSON paths of fields accepted for compatibility but ignored, and warnings. Every
problem found is raised together in one ``JobError``. Nothing here touches data, the
network or the model; the only I/O is reading the job file.

``load_model`` and ``parse_model`` do the same for the model file (``--model``: a
CreateModel request or a DescribeModel output) and return a ``LoadedModel``;
``model_name_problem`` says when a job and a model file do not go together.

``MaxConcurrentTransforms``, ``MaxPayloadInMB`` and ``BatchStrategy`` stay ``None`` when
the file leaves them out: they are resolved against the model's /execution-parameters at
start (docs/design.md §1.4). A ``MaxConcurrentTransforms`` of 0 means "absent", as in SageMaker.

The work is split over modules behind this facade: ``types`` (the dataclasses and
locations), ``parse`` (the sections of the document), ``schema`` (the problem-collecting
readers and the limits), ``processing`` (which DataProcessing settings combine),
``jsonpath`` (the filter language) and ``modeldef`` (the model file). Import everything
from here: ``make lint`` refuses an import of those modules from outside ``agent.job``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

from agent._compat import MIB  # re-exported: job sizes are in MiB
from agent.job.jsonpath import JsonPath, PathMiss, PathSyntaxError, parse_path
from agent.job.modeldef import LoadedModel, ModelDefinition, model_name_problem, parse_model
from agent.job.monitoring import address_problem
from agent.job.parse import parse_job
from agent.job.processing import Plan, check_processing, is_default
from agent.job.schema import (
    MAX_INSTANCE_COUNT,
    MAX_PAYLOAD_MB,
    Checker,
    JobError,
    Problem,
    json_object,
)
from agent.job.types import (
    BATCH_STRATEGIES,
    DEFAULT_BATCH_STRATEGY,
    DEFAULT_MAX_CONCURRENT_TRANSFORMS,
    DEFAULT_MAX_PAYLOAD_MB,
    DEFAULT_MODEL_URL,
    SPLIT_TYPES,
    AgentConfig,
    AssemblyType,
    BatchStrategy,
    CompressionType,
    Coordination,
    DataProcessing,
    DataUri,
    JobSettings,
    JoinSource,
    LoadedJob,
    ModelClientConfig,
    S3DataType,
    SplitType,
    TransformInput,
    TransformOutput,
    check_model_url,
    parse_data_uri,
)

__all__ = [
    "MAX_INSTANCE_COUNT",
    "Checker",
    "JsonPath",
    "PathMiss",
    "PathSyntaxError",
    "Plan",
    "check_processing",
    "is_default",
    "parse_path",
    "BATCH_STRATEGIES",
    "DEFAULT_BATCH_STRATEGY",
    "DEFAULT_MAX_CONCURRENT_TRANSFORMS",
    "DEFAULT_MAX_PAYLOAD_MB",
    "DEFAULT_MODEL_URL",
    "MAX_PAYLOAD_MB",
    "MIB",
    "SPLIT_TYPES",
    "AgentConfig",
    "AssemblyType",
    "BatchStrategy",
    "CompressionType",
    "Coordination",
    "JoinSource",
    "S3DataType",
    "SplitType",
    "check_model_url",
    "parse_data_uri",
    "DataProcessing",
    "DataUri",
    "JobError",
    "JobSettings",
    "LoadedJob",
    "LoadedModel",
    "ModelDefinition",
    "load_model",
    "model_name_problem",
    "parse_model",
    "ModelClientConfig",
    "Problem",
    "TransformInput",
    "TransformOutput",
    "load_job",
    "output_settings",
    "parse_job",
    "settings_hash",
    "with_overrides",
]


def load_job(path: str | os.PathLike[str], *, cwd: str | None = None) -> LoadedJob:
    """Read, decode and validate a job file; raise ``JobError`` listing every problem.

    Relative local paths in the file are taken relative to ``cwd`` (default: the
    current directory), as a shell user expects.
    """
    return parse_job(_read_json(path, "job file"), cwd=cwd)


def load_model(path: str | os.PathLike[str], *, cwd: str | None = None) -> LoadedModel:
    """Read, decode and validate a model file (``--model``: a CreateModel request or a
    DescribeModel output); raise ``JobError`` listing every problem."""
    return parse_model(_read_json(path, "model file"), cwd=cwd)


def _read_json(path: str | os.PathLike[str], kind: str) -> object:
    """The decoded JSON document of the file at ``path``; ``JobError`` if it is none."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise JobError(
            [Problem("", f"cannot read the {kind} {name}: {exc.strerror or exc}")]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"{name} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        raise JobError([Problem("", message)]) from None
    try:
        return json.loads(text, object_pairs_hook=json_object, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise JobError([Problem("", f"{name} is not valid JSON: {exc.msg} at {where}")]) from None
    except ValueError as exc:  # from _no_constant
        raise JobError([Problem("", f"{name} is not valid JSON: {exc}")]) from None
    except RecursionError:
        raise JobError([Problem("", f"{name} is nested too deeply to be a {kind}")]) from None


def _no_constant(token: str) -> object:
    raise ValueError(f"{token} is not a JSON value; write a number or a string")


def with_overrides(
    settings: JobSettings,
    *,
    model_url: str | None = None,
    state_uri: str | None = None,
    instance_count: int | None = None,
    metrics_port: int | None = None,
    metrics_address: str | None = None,
    cwd: str | None = None,
) -> JobSettings:
    """A copy of ``settings`` with command-line values in place of the file's.

    Raises ``JobError`` whose problem paths are the flag names (``--model-url``).
    """
    problems: list[Problem] = []
    agent = settings.agent
    if model_url is not None:
        try:
            agent = replace(agent, model_url=check_model_url(model_url), model_servers=())
        except ValueError as exc:
            problems.append(Problem("--model-url", str(exc)))
    if state_uri is not None:
        try:
            here = os.getcwd() if cwd is None else cwd
            agent = replace(agent, state_uri=parse_data_uri(state_uri, here))
        except ValueError as exc:
            problems.append(Problem("--state-uri", str(exc)))
    if metrics_port is not None:
        if 0 <= metrics_port <= 65_535:
            agent = replace(agent, metrics_port=metrics_port)
        else:
            problems.append(
                Problem("--metrics-port", f"{metrics_port} is not a port; use 0 to 65535")
            )
    if metrics_address is not None:
        if (problem := address_problem(metrics_address)) is None:
            agent = replace(agent, metrics_address=metrics_address)
        else:
            problems.append(Problem("--metrics-address", problem))
    count = settings.instance_count
    if instance_count is not None:
        if not 1 <= instance_count <= MAX_INSTANCE_COUNT:
            problems.append(
                Problem(
                    "--instance-count",
                    f"{instance_count} is out of range; use 1 to {MAX_INSTANCE_COUNT}",
                )
            )
        count = instance_count
    if problems:
        raise JobError(problems)
    return replace(settings, agent=agent, instance_count=count)


def output_settings(settings: JobSettings) -> dict[str, object]:
    """Every setting that shapes the bytes of an ``.out`` object, as a JSON-ready dict.

    Call it on settings whose execution parameters are resolved (``dataclasses.replace``
    them in first) so the hash of a run is final. Environment values appear only as a
    digest, never in the clear.
    """
    environment = json.dumps(sorted(settings.environment.items()), ensure_ascii=False)
    shaping: dict[str, object] = {
        "ModelName": settings.model_name,
        "BatchStrategy": settings.batch_strategy,
        "MaxPayloadInMB": settings.max_payload_mb,
        "EnvironmentSha256": hashlib.sha256(environment.encode()).hexdigest(),
        "ContentType": settings.input.content_type,
        "CompressionType": settings.input.compression,
        "SplitType": settings.input.split_type,
        "Accept": settings.output.accept,
        "AssembleWith": settings.output.assemble_with,
        "InputFilter": settings.data_processing.input_filter,
        "OutputFilter": settings.data_processing.output_filter,
        "JoinSource": settings.data_processing.join_source,
    }
    # Only where it can bind (SingleRecord and SplitType None send a record a body anyway),
    # so a job without it, or where it changes nothing, keeps the hash it had before.
    if settings.records_cap is not None:
        shaping["MaxRecordsPerRequest"] = settings.records_cap
    return shaping


def settings_hash(settings: JobSettings) -> str:
    """A stable hex digest of ``output_settings``: equal iff outputs would be shaped alike."""
    canonical = json.dumps(output_settings(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
