"""Reading a decoded job document section by section into ``JobSettings``.

The shape (in :mod:`agent.job.schema`) is SageMaker's CreateTransformJob request, field names and
enums spelled exactly as SageMaker does, plus the ``Agent`` object. Fields that SageMaker defines
but this agent has no use for are accepted and their JSON paths returned, so a
described job replays unchanged; any other key is an error.

The module is a little over 400 lines: one function per section of the job file, kept
together so that the whole grammar reads in one place.
"""

from __future__ import annotations

import os

from agent.job.isolation import check_isolation
from agent.job.monitoring import read_monitoring
from agent.job.processing import check_processing, filter_problem, processing_notes
from agent.job.schema import (
    AGENT,
    CLIENT,
    ENV_KEY,
    ENV_MAX_ENTRIES,
    ENV_VALUE_MAX_CHARS,
    FILTER_MAX_CHARS,
    HEADER_VALUE,
    HOME,
    INPUT,
    JOB_NAME,
    KMS_KEY,
    MAX_INSTANCE_COUNT,
    MAX_PAYLOAD_MB,
    MAX_RESPONSE_MB,
    MAX_SHARD_MB,
    MISSING_HINTS,
    MODEL_NAME,
    NAME_RULE,
    OUTPUT,
    PLACEHOLDER_MAX_CHARS,
    PROCESSING,
    REQUIRED,
    RESOURCES,
    RESOURCES_IGNORED,
    TOP,
    TOP_IGNORED,
    Checker,
    JobError,
    Problem,
    child,
    control_character,
    lone_surrogates,
    quote,
    type_name,
)
from agent.job.serving import read_serving
from agent.job.types import (
    ASSEMBLY_TYPES,
    BATCH_STRATEGIES,
    COMPRESSION_TYPES,
    COORDINATIONS,
    JOIN_SOURCES,
    S3_DATA_TYPES,
    SPLIT_TYPES,
    URI_MAX_CHARS,
    AgentConfig,
    DataProcessing,
    DataUri,
    JobSettings,
    LoadedJob,
    ModelClientConfig,
    S3DataType,
    TransformInput,
    TransformOutput,
    parse_data_uri,
)


def parse_job(document: object, *, cwd: str | None = None) -> LoadedJob:
    """Validate a decoded job document; raise ``JobError`` listing every problem found."""
    if not isinstance(document, dict):
        message = (
            "the job file must hold one JSON object (a CreateTransformJob request), "
            f"found {type_name(document)}"
        )
        raise JobError([Problem("$", message)])
    unencodable = lone_surrogates(document)
    if unencodable:  # before any reader: none of them can use such a string
        raise JobError(unencodable)
    check = Checker(MISSING_HINTS)
    here = os.getcwd() if cwd is None else cwd
    top = check.obj(
        document,
        "$",
        fields=TOP,
        required=("TransformJobName", "TransformInput", "TransformOutput"),
        ignored=TOP_IGNORED,
        elsewhere=HOME,
    )
    assert top is not None  # document is a dict
    name = check.pattern(
        top,
        "TransformJobName",
        "$",
        regex=JOB_NAME,
        max_chars=63,
        allowed=NAME_RULE,
    )
    model_name = check.pattern(
        top,
        "ModelName",
        "$",
        regex=MODEL_NAME,
        max_chars=63,
        allowed=NAME_RULE,
    )
    concurrency = check.integer(top, "MaxConcurrentTransforms", "$", minimum=0)
    payload_mb = check.integer(top, "MaxPayloadInMB", "$", minimum=0, maximum=MAX_PAYLOAD_MB)
    strategy = check.enum(top, "BatchStrategy", "$", BATCH_STRATEGIES)
    client = _model_client(check, top)
    environment = read_environment(check, top, "$")
    transform_input = _transform_input(check, top, here)
    transform_output = _transform_output(check, top, here)
    instance_count = _instance_count(check, top)
    processing = _data_processing(check, top)
    plan = check_processing(check, processing, transform_input, transform_output)
    agent = _agent(check, top, here)
    check_isolation(check, agent, payload_mb, strategy, transform_input, transform_output, plan)
    if agent.require_line_per_record and transform_output is not None:
        if transform_output.assemble_with != "Line":
            check.problem(
                "$.Agent.RequireLinePerRecord",
                "true is not allowed with $.TransformOutput.AssembleWith "
                f"{transform_output.assemble_with}: the rule counts the lines of each answer, "
                'which only AssembleWith "Line" defines; set AssembleWith to "Line" or remove '
                "RequireLinePerRecord",
            )
    if transform_input is not None and transform_output is not None:
        if transform_input.uri.same_place(transform_output.uri):
            check.problem(
                "$.TransformOutput.S3OutputPath",
                "the output path equals the input prefix; outputs would be read back as inputs "
                "on the next run, so choose a different prefix",
            )
    if check.problems:
        raise JobError(check.problems)
    assert name is not None and transform_input is not None and transform_output is not None
    settings = JobSettings(
        transform_job_name=name,
        input=transform_input,
        output=transform_output,
        model_name=model_name,
        max_concurrent_transforms=concurrency or None,  # 0 means absent
        max_payload_mb=payload_mb,
        batch_strategy=strategy,
        environment=environment,
        model_client=client,
        instance_count=instance_count,
        data_processing=processing,
        agent=agent,
    )
    return LoadedJob(settings, tuple(check.ignored), _warnings(settings))


# ---------------------------------------------------------------------- sections


def _model_client(check: Checker, top: dict[str, object]) -> ModelClientConfig:
    path = "$.ModelClientConfig"
    fields = _section(check, top, "ModelClientConfig", CLIENT)
    timeout = check.integer(fields, "InvocationsTimeoutInSeconds", path, minimum=1, maximum=3600)
    retries = check.integer(fields, "InvocationsMaxRetries", path, minimum=0, maximum=3)
    default = ModelClientConfig()
    return ModelClientConfig(
        invocations_timeout_seconds=timeout or default.invocations_timeout_seconds,
        invocations_max_retries=default.invocations_max_retries if retries is None else retries,
    )


def read_environment(
    check: Checker, fields: dict[str, object], parent: str, *, max_entries: int = ENV_MAX_ENTRIES
) -> dict[str, str]:
    """The ``Environment`` map under ``parent`` (the job's, or a model container's, which
    SageMaker allows more entries). No message here may show a value: values may be secrets."""
    path = child(parent, "Environment")
    value = fields.get("Environment", {})
    if not isinstance(value, dict):
        check.wrong_type(path, "an object mapping variable names to string values", value)
        return {}
    check.duplicates(value, path)
    if len(value) > max_entries:
        check.problem(path, f"has {len(value)} entries; at most {max_entries} are allowed")
    result: dict[str, str] = {}
    for key, item in value.items():
        where = child(path, key)
        if not ENV_KEY.fullmatch(key):
            check.problem(
                where,
                "this variable name is not allowed; use letters, digits and underscores, "
                "not starting with a digit, at most 1024 characters",
            )
        if not isinstance(item, str):
            check.problem(where, f"expected a string value, found {type_name(item)}")
        elif len(item) > ENV_VALUE_MAX_CHARS:
            check.problem(
                where,
                f"the value is {len(item)} characters long; "
                f"at most {ENV_VALUE_MAX_CHARS} are allowed",
            )
        elif "\x00" in item:
            check.problem(where, "the value contains a NUL character, which no environment holds")
        else:
            result[key] = item
    return result


def _transform_input(check: Checker, top: dict[str, object], cwd: str) -> TransformInput | None:
    path = "$.TransformInput"
    fields = _nested(check, top, "TransformInput", "$", INPUT)
    if fields is None:
        return None
    content_type = _header(check, fields, "ContentType", path)
    compression = check.enum(fields, "CompressionType", path, COMPRESSION_TYPES)
    split_type = check.enum(fields, "SplitType", path, SPLIT_TYPES)
    source_path = child(path, "DataSource")
    s3_path = child(source_path, "S3DataSource")
    source = _nested(check, fields, "DataSource", path, ("S3DataSource",))
    s3 = _nested(check, source, "S3DataSource", source_path, ("S3DataType", "S3Uri"))
    if s3 is None:
        return None
    data_type = _data_type(check, s3, s3_path)
    uri = _location(check, s3, "S3Uri", s3_path, cwd)
    if data_type is None or uri is None:
        return None
    if data_type == "ManifestFile" and (not uri.key or uri.key.endswith("/")):
        check.problem(
            child(s3_path, "S3Uri"),
            f"{quote(str(uri))} is a prefix, but with ManifestFile the S3Uri names the manifest "
            "object itself, as in s3://bucket/manifests/input.manifest",
        )
        return None
    return TransformInput(
        data_type=data_type,
        uri=uri,
        content_type=content_type,
        compression=compression or "None",
        split_type=split_type or "None",
    )


def _data_type(check: Checker, fields: dict[str, object], path: str) -> S3DataType | None:
    value = fields.get("S3DataType")
    if value in ("AugmentedManifestFile", "Converse"):
        check.problem(
            child(path, "S3DataType"),
            f"{value} is not allowed: SageMaker does not accept it for transform jobs; "
            "use S3Prefix or ManifestFile",
        )
        return None
    return check.enum(fields, "S3DataType", path, S3_DATA_TYPES)


def _transform_output(check: Checker, top: dict[str, object], cwd: str) -> TransformOutput | None:
    path = "$.TransformOutput"
    fields = _nested(check, top, "TransformOutput", "$", OUTPUT)
    if fields is None:
        return None
    accept = _header(check, fields, "Accept", path)
    assemble_with = check.enum(fields, "AssembleWith", path, ASSEMBLY_TYPES)
    kms_key_id = None
    if fields.get("KmsKeyId") != "":  # DescribeTransformJob shows "" for "no key"
        kms_key_id = check.pattern(
            fields,
            "KmsKeyId",
            path,
            regex=KMS_KEY,
            max_chars=2048,
            allowed="give a KMS key ID, key ARN, alias name or alias ARN",
        )
    uri = _location(check, fields, "S3OutputPath", path, cwd)
    if uri is None:
        return None
    return TransformOutput(
        uri=uri, accept=accept, assemble_with=assemble_with or "None", kms_key_id=kms_key_id
    )


def _instance_count(check: Checker, top: dict[str, object]) -> int:
    fields = _section(check, top, "TransformResources", RESOURCES, RESOURCES_IGNORED)
    count = check.integer(
        fields, "InstanceCount", "$.TransformResources", minimum=1, maximum=MAX_INSTANCE_COUNT
    )
    return 1 if count is None else count


def _data_processing(check: Checker, top: dict[str, object]) -> DataProcessing:
    path = "$.DataProcessing"
    fields = _section(check, top, "DataProcessing", PROCESSING)
    filters: dict[str, str] = {}
    for key in ("InputFilter", "OutputFilter"):
        value = check.string(fields, key, path, max_chars=FILTER_MAX_CHARS)
        reason = None if value is None else filter_problem(value)
        if reason is not None:
            check.problem(child(path, key), reason)
        filters[key] = value or "$"
    join_source = check.enum(fields, "JoinSource", path, JOIN_SOURCES)
    return DataProcessing(filters["InputFilter"], filters["OutputFilter"], join_source or "None")


def _agent(check: Checker, top: dict[str, object], cwd: str) -> AgentConfig:
    path = "$.Agent"
    fields = _section(check, top, "Agent", AGENT)
    default = AgentConfig()
    serving = read_serving(check, fields, path)
    watching = read_monitoring(check, fields, path)
    urls = serving.model_urls or (default.model_url,)
    startup = check.integer(fields, "ModelStartupTimeoutSeconds", path, minimum=1)
    buffer_mb = check.integer(fields, "ReorderBufferMB", path, minimum=1)
    # Renewals come every TTL/6 and must fit before the holder's stop at TTL*3/4; below
    # 2 s a slow PUT would cost a lease, above a day a dead instance's files would wait.
    lease_ttl = check.integer(fields, "LeaseTTLSeconds", path, minimum=2, maximum=86_400)
    # Memory for answers is up to MaxConcurrentTransforms × MaxResponseMB per instance.
    response_mb = check.integer(fields, "MaxResponseMB", path, minimum=1, maximum=MAX_RESPONSE_MB)
    # MultiRecord bodies hold at most this many records as well as MaxPayloadInMB of bytes.
    max_records = check.integer(fields, "MaxRecordsPerRequest", path, minimum=1)
    # Failed records an instance may meet before the run fails; -1: no limit.
    max_failed = check.integer(fields, "MaxFailedRecords", path, minimum=-1)
    # MiB per shard of one big file; 0 (the default) turns sharding off.
    shard_mb = check.integer(fields, "ShardSizeMB", path, minimum=0, maximum=MAX_SHARD_MB)
    placeholder = check.string(
        fields, "FailedRecordPlaceholder", path, max_chars=PLACEHOLDER_MAX_CHARS
    )
    if placeholder is not None and ("\n" in placeholder or "\r" in placeholder):
        check.problem(
            child(path, "FailedRecordPlaceholder"),
            "holds a line break; the placeholder stands for one line of output, so use a "
            "string without \\n or \\r",
        )
        placeholder = None
    return AgentConfig(
        model_url=urls[0],
        model_servers=urls if isinstance(fields.get("ModelUrl"), list) else (),
        model_replicas=serving.replicas or len(urls),
        replica_devices=serving.devices,
        replica_restarts=default.replica_restarts if serving.restarts is None else serving.restarts,
        model_dir=serving.model_dir,
        container_runtime=serving.container_runtime,
        model_command=_model_command(check, fields, path),
        model_startup_timeout_seconds=startup or default.model_startup_timeout_seconds,
        state_uri=_location(check, fields, "StateUri", path, cwd),
        coordination=check.enum(fields, "Coordination", path, COORDINATIONS) or "Static",
        reorder_buffer_mb=buffer_mb or default.reorder_buffer_mb,
        lease_ttl_seconds=lease_ttl or default.lease_ttl_seconds,
        max_response_mb=response_mb,
        max_records_per_request=max_records,
        require_line_per_record=bool(check.boolean(fields, "RequireLinePerRecord", path)),
        max_failed_records=max_failed,
        failed_record_placeholder=placeholder,
        shard_size_mb=shard_mb or 0,
        metrics_port=watching.port,
        metrics_address=watching.address or default.metrics_address,
        metrics_pushgateway_url=watching.pushgateway_url,
        metrics_push_interval_seconds=(
            watching.push_interval_seconds or default.metrics_push_interval_seconds
        ),
    )


def _model_command(check: Checker, fields: dict[str, object], path: str) -> tuple[str, ...] | None:
    if "ModelCommand" not in fields:
        return None
    value, where = fields["ModelCommand"], child(path, "ModelCommand")
    allowed = 'a non-empty array of strings, as in ["python", "-m", "my_server"]'
    if not isinstance(value, list) or not value:
        found = "an empty array" if value == [] else type_name(value)
        check.problem(where, f"expected {allowed}, found {found}")
        return None
    ok = True
    for index, item in enumerate(value):
        if not isinstance(item, str):
            check.problem(child(where, index), f"expected a string, found {type_name(item)}")
            ok = False
        elif "\x00" in item or (index == 0 and not item):
            problem = "an empty program name" if not item else "a NUL character"
            check.problem(child(where, index), f"cannot run a command with {problem}")
            ok = False
        elif index == 0 and (control := control_character(item)) is not None:
            check.problem(child(where, index), f"the program name {control}")  # it is logged
            ok = False
    return tuple(value) if ok else None


# ---------------------------------------------------------------------- helpers


def _section(
    check: Checker,
    top: dict[str, object],
    key: str,
    fields: tuple[str, ...],
    ignored: tuple[str, ...] = (),
) -> dict[str, object]:
    """An optional object under the top level; absent or invalid gives ``{}`` (defaults)."""
    if key not in top:
        return {}
    found = check.obj(top[key], child("$", key), fields=fields, ignored=ignored, elsewhere=HOME)
    return found or {}


def _nested(
    check: Checker,
    parent: dict[str, object] | None,
    key: str,
    path: str,
    fields: tuple[str, ...],
) -> dict[str, object] | None:
    """The known fields of a required object, with its own required fields checked.

    ``None`` when the parent is unusable, or the object is absent (the parent's check
    reported that) or not an object.
    """
    if parent is None or key not in parent:
        return None
    need = REQUIRED.get(key, ())
    return check.obj(parent[key], child(path, key), fields=fields, required=need, elsewhere=HOME)


def _header(check: Checker, fields: dict[str, object], key: str, path: str) -> str | None:
    """A MIME type sent as an HTTP header; an empty string means "send no header"."""
    value = check.string(fields, key, path, max_chars=256)
    if value is not None and not HEADER_VALUE.fullmatch(value):
        check.problem(
            child(path, key),
            "an HTTP header value must be printable ASCII without line breaks, "
            "as in text/csv or application/jsonlines",
        )
        return None
    return value or None


def _location(
    check: Checker, fields: dict[str, object], key: str, path: str, cwd: str
) -> DataUri | None:
    text = check.string(fields, key, path, max_chars=URI_MAX_CHARS)
    if text is None:
        return None
    try:
        return parse_data_uri(text, cwd)
    except ValueError as exc:
        check.problem(child(path, key), str(exc))
        return None


def _warnings(settings: JobSettings) -> tuple[str, ...]:
    found: list[str] = []
    concurrency, payload_mb = settings.max_concurrent_transforms, settings.max_payload_mb
    if concurrency and payload_mb and concurrency * payload_mb > 100:
        found.append(
            f"MaxConcurrentTransforms × MaxPayloadInMB = {concurrency * payload_mb} MB, above "
            "the 100 MB SageMaker allows; this agent runs it, but request bodies in flight "
            f"may hold up to about {concurrency * payload_mb} MiB of memory per instance"
        )
    if settings.batch_strategy is not None and settings.input.split_type == "None":
        found.append(
            f"BatchStrategy {settings.batch_strategy} has no effect with SplitType None: "
            "each input object is sent whole, in one request"
        )
    cap = settings.agent.max_records_per_request
    if cap is not None and settings.input.split_type == "None":
        found.append(
            f"Agent.MaxRecordsPerRequest {cap} has no effect with SplitType None: each input "
            "object is one record, sent in one request"
        )
    elif cap is not None and settings.batch_strategy == "SingleRecord":
        found.append(
            f"Agent.MaxRecordsPerRequest {cap} has no effect with BatchStrategy SingleRecord: "
            "each request holds one record"
        )
    found.extend(processing_notes(settings.data_processing, settings.input, settings.output))
    return tuple(found)
