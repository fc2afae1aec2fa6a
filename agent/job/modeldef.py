"""The model file (``--model``): a SageMaker CreateModel request, or a DescribeModel output.

Read with the same standard as the job file (docs/design.md §1.4, README "From SageMaker: the
model file"): every problem at once, each with its JSON path and what is allowed. Used: the
``ModelName``, and of the one container (``PrimaryContainer``, or ``Containers`` with exactly
one entry) its ``Image``, ``ModelDataUrl``, ``Environment`` and ``Mode``. The other fields
SageMaker defines are accepted and their JSON paths returned, so a described model replays
unchanged; any other key is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.job.parse import read_environment
from agent.job.schema import (
    MODEL_NAME,
    NAME_RULE,
    Checker,
    JobError,
    Problem,
    child,
    control_character,
    lone_surrogates,
    type_name,
)
from agent.job.types import URI_MAX_CHARS, DataUri, JobSettings, parse_data_uri

MODEL_TOP = ("ModelName", "PrimaryContainer", "Containers")
# The rest of CreateModel, what DescribeModel adds, and boto3's ResponseMetadata.
MODEL_TOP_IGNORED = (
    "ExecutionRoleArn", "Tags", "VpcConfig", "EnableNetworkIsolation",
    "InferenceExecutionConfig", "ModelArn", "CreationTime", "DeploymentRecommendation",
    "ResponseMetadata",
)  # fmt: skip
CONTAINER = ("Image", "ModelDataUrl", "Environment", "Mode")
# Container fields with no effect on one host: a DNS name, how the registry is reached,
# the cache setting of multi-model containers, which spec of a model package was used.
CONTAINER_IGNORED = (
    "ContainerHostname", "ImageConfig", "MultiModelConfig", "InferenceSpecificationName",
)  # fmt: skip
# Container fields naming model data this agent cannot fetch: an error, not a silent drop.
CONTAINER_UNSUPPORTED = {
    "ModelPackageName": "model packages are not supported (SageMaker resolves them itself); "
    "give Image and ModelDataUrl instead (DescribeModelPackage shows both)",
    "ModelDataSource": "uncompressed model data is not supported; give ModelDataUrl naming a "
    "model.tar.gz",
    "AdditionalModelDataSources": "additional model data sources are not supported; put "
    "everything the model needs in the one ModelDataUrl archive",
}
MODES = ("SingleModel",)
IMAGE_MAX_CHARS = 255  # SageMaker's limit on ContainerDefinition.Image
CONTAINER_ENV_MAX_ENTRIES = 100  # SageMaker's limit on ContainerDefinition.Environment
ARCHIVE_SUFFIX = ".tar.gz"


@dataclass(frozen=True, slots=True)
class ModelDefinition:
    """One validated model: what bt-agent needs to fetch and start it."""

    name: str | None  # ModelName
    image: str | None  # the container's Image; None: only ModelCommand can start it
    model_data_url: DataUri | None  # a model.tar.gz, s3:// or local; None: no artifacts
    # Values may be secrets: kept out of repr, and never put in a message or a log line.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    mode: str = "SingleModel"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A parsed model file: the definition and the ignored fields' JSON paths."""

    model: ModelDefinition
    ignored: tuple[str, ...] = ()


def parse_model(document: object, *, cwd: str | None = None) -> LoadedModel:
    """Validate a decoded model document; raise ``JobError`` listing every problem found."""
    if not isinstance(document, dict):
        message = (
            "the model file must hold one JSON object (a CreateModel request or a "
            f"DescribeModel output), found {type_name(document)}"
        )
        raise JobError([Problem("$", message)])
    unencodable = lone_surrogates(document)
    if unencodable:
        raise JobError(unencodable)
    check = Checker()
    here = os.getcwd() if cwd is None else cwd
    top = check.obj(document, "$", fields=MODEL_TOP, ignored=MODEL_TOP_IGNORED)
    assert top is not None  # document is a dict
    name = check.pattern(top, "ModelName", "$", regex=MODEL_NAME, max_chars=63, allowed=NAME_RULE)
    container, path = _the_container(check, top)
    image = model_data_url = None
    environment: dict[str, str] = {}
    mode = "SingleModel"
    if container is not None:
        image = _image(check, container, path)
        model_data_url = _model_data_url(check, container, path, here)
        environment = read_environment(
            check, container, path, max_entries=CONTAINER_ENV_MAX_ENTRIES
        )
        mode = _mode(check, container, path)
    if check.problems:
        raise JobError(check.problems)
    definition = ModelDefinition(name, image, model_data_url, environment, mode)
    return LoadedModel(definition, tuple(check.ignored))


def model_name_problem(job: JobSettings, model: ModelDefinition) -> str | None:
    """Why the job and the model file do not go together, or ``None`` when they do."""
    if job.model_name is None or model.name is None or job.model_name == model.name:
        return None
    return (
        f'the job\'s ModelName is "{job.model_name}" but the model file defines '
        f'"{model.name}"; make them equal, or remove ModelName from the job file'
    )


# ---------------------------------------------------------------------- sections


def _the_container(check: Checker, top: dict[str, object]) -> tuple[dict[str, object] | None, str]:
    """The one container's known fields and its JSON path (``None`` after a problem)."""
    if "PrimaryContainer" in top and "Containers" in top:
        check.problem(
            "$.Containers",
            "give either PrimaryContainer or Containers, not both (SageMaker refuses both too)",
        )
        return None, "$"
    if "PrimaryContainer" in top:
        return _container(check, top["PrimaryContainer"], "$.PrimaryContainer"), (
            "$.PrimaryContainer"
        )
    if "Containers" not in top:
        check.problem(
            "$.PrimaryContainer",
            'this required field is missing; give {"Image": "...", "ModelDataUrl": '
            '"s3://bucket/model.tar.gz"}',
        )
        return None, "$"
    listed = top["Containers"]
    if not isinstance(listed, list):
        check.wrong_type("$.Containers", "an array of one container definition", listed)
        return None, "$"
    if len(listed) != 1:
        found = "is empty" if not listed else f"lists {len(listed)} containers"
        check.problem(
            "$.Containers",
            f"{found}: an inference pipeline (several containers, each feeding the next) is "
            "not supported; give exactly one container, or use PrimaryContainer",
        )
        return None, "$"
    return _container(check, listed[0], "$.Containers[0]"), "$.Containers[0]"


def _container(check: Checker, value: object, path: str) -> dict[str, object] | None:
    fields = check.obj(
        value,
        path,
        fields=(*CONTAINER, *CONTAINER_UNSUPPORTED),
        ignored=CONTAINER_IGNORED,
    )
    if fields is None:
        return None
    for key, why in CONTAINER_UNSUPPORTED.items():
        if key in fields:
            check.problem(child(path, key), why)
    return fields


def _image(check: Checker, fields: dict[str, object], path: str) -> str | None:
    image = check.string(fields, "Image", path, max_chars=IMAGE_MAX_CHARS, min_chars=1)
    if image is None:
        return None
    if (where := control_character(image)) is not None or any(c.isspace() for c in image):
        check.problem(
            child(path, "Image"),
            f"the image name {where or 'holds a space'}; give a name such as "
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-model:latest",
        )
        return None
    if image.startswith("-"):
        check.problem(
            child(path, "Image"),
            "an image name cannot start with '-' (the container runtime would read it as an "
            "option); give a name such as my-model:latest",
        )
        return None
    return image


def _model_data_url(
    check: Checker, fields: dict[str, object], path: str, cwd: str
) -> DataUri | None:
    text = check.string(fields, "ModelDataUrl", path, max_chars=URI_MAX_CHARS)
    if text is None:
        return None
    where = child(path, "ModelDataUrl")
    try:
        uri = parse_data_uri(text, cwd)
    except ValueError as exc:
        check.problem(where, str(exc))
        return None
    if not uri.key.endswith(ARCHIVE_SUFFIX) or uri.key.endswith("/" + ARCHIVE_SUFFIX):
        check.problem(
            where,
            f"{uri} does not name a {ARCHIVE_SUFFIX} archive; give the model artifacts as one "
            "gzip-compressed tar file, as in s3://bucket/model/model.tar.gz",
        )
        return None
    return uri


def _mode(check: Checker, fields: dict[str, object], path: str) -> str:
    value = fields.get("Mode")
    if value == "MultiModel":
        check.problem(
            child(path, "Mode"),
            '"MultiModel" (many models behind one container, chosen per request) is not '
            'supported; a batch transform runs one model: use "SingleModel" or remove Mode',
        )
        return "SingleModel"
    return check.enum(fields, "Mode", path, MODES) or "SingleModel"
