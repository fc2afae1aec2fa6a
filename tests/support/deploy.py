"""The deploy/ recipes, read as their engines read them, for tests/unit/deploy and the
integration tests that run the agent the way each recipe would.

* ``yaml_documents``, ``json_file``: the recipe files as data (YAML through PyYAML's safe
  loader, every document of a multi-document file; JSON through orjson, which is strict:
  no comments, no trailing commas).
* ``kubernetes_problems``: a strict check of one Kubernetes object against the API's own
  models in the ``kubernetes`` client (``kubernetes.client.models``): every key, at every
  depth, must be a field of its model (``attribute_map``) holding the JSON type that
  ``openapi_types`` names, and every required field must be present. Each problem names
  its path (``spec.template.spec.containers[0].args``). The client's own ``from_dict``
  drops unknown keys without a word, which is why this exists.
* ``unit_directives``: a systemd unit file as (section, key) → every value, in order.
* ``run_command`` and friends: the agent run with a recipe's own arguments, its container
  paths moved under a temporary root, the orchestrator's variables set.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tests.support.multirun import IDENTITY_VARIABLES, records
from tests.support.runjob import MIB, AgentRun, assembled, request_bodies
from tests.support.servers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


# ----------------------------------------------------------------------------- files


def yaml_documents(path: Path) -> list[Any]:
    """Every YAML document in ``path`` (empty documents left out)."""
    import yaml

    with path.open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def json_file(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


# ----------------------------------------------------------------------------- Kubernetes


def kubernetes_model(api_version: str, kind: str) -> type[Any] | None:
    """The client's model class for ``apiVersion``/``kind`` (``batch/v1`` ``Job`` → V1Job)."""
    from kubernetes.client import models

    version = api_version.rsplit("/", 1)[-1]
    return getattr(models, version[:1].upper() + version[1:] + kind, None)


def kubernetes_problems(document: Any, path: str = "") -> list[str]:
    """Every way ``document`` is not a valid Kubernetes object of its apiVersion and kind."""
    if not isinstance(document, dict):
        return [f"{path or '(document)'}: a Kubernetes object is a mapping, not {_kind(document)}"]
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"{path or '(document)'}: apiVersion and kind must both be strings"]
    model = kubernetes_model(api_version, kind)
    if model is None:
        return [f"{path or '(document)'}: no model for apiVersion {api_version} kind {kind}"]
    problems: list[str] = []
    _check_model(document, model, path, problems)
    return problems


_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),  # RFC 3339 text on the wire
    "date": (str,),
    "bytes": (str,),  # base64 text on the wire
}


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _check_model(value: Any, model: type[Any], path: str, problems: list[str]) -> None:
    where = path or "(document)"
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping ({model.__name__}), not {_kind(value)}")
        return
    attributes = {wire: name for name, wire in model.attribute_map.items()}
    for key in value:
        if key not in attributes:
            close = difflib.get_close_matches(str(key), list(attributes), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{_join(path, str(key))}: not a field of {model.__name__}{hint} "
                f"(its fields: {', '.join(sorted(attributes))})"
            )
    for name, wire in model.attribute_map.items():
        field = _field(model, name, wire)
        if wire not in value:
            if field.is_required():
                problems.append(f"{_join(path, wire)}: required by {model.__name__}, missing")
            continue
        _check(
            value[wire], model.openapi_types[name], field.annotation, _join(path, wire), problems
        )


def _field(model: type[Any], name: str, wire: str) -> Any:
    """The pydantic field behind ``attribute_map``'s ``name``: the same name, except for
    names Python keeps (``exec`` is ``_exec`` in attribute_map and ``var_exec`` here)."""
    if name in model.model_fields:
        return model.model_fields[name]
    for field in model.model_fields.values():
        choices = getattr(field.validation_alias, "choices", ())
        if wire in choices:
            return field
    raise LookupError(f"{model.__name__} has no field for {wire!r}")


def _check(value: Any, type_name: str, annotation: Any, path: str, problems: list[str]) -> None:
    if value is None:
        problems.append(f"{path}: null (leave the key out instead)")
        return
    if type_name.startswith("List["):
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list ({type_name}), not {_kind(value)}")
            return
        for index, item in enumerate(value):
            _check(item, type_name[5:-1], None, f"{path}[{index}]", problems)
        return
    if type_name.startswith("Dict[str, "):
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping ({type_name}), not {_kind(value)}")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} must be a string")
            _check(item, type_name[10:-1], None, _join(path, str(key)), problems)
        return
    if type_name == "object":
        allowed = _object_types(annotation)
        if allowed is not None and not _is(value, allowed):
            names = " or ".join(_kind(t()) for t in allowed)
            problems.append(f"{path}: must be {names}, not {_kind(value)}")
        return
    if type_name in _PRIMITIVES:
        if not _is(value, _PRIMITIVES[type_name]):
            problems.append(f"{path}: must be {type_name}, not {_kind(value)} ({value!r})")
        return
    from kubernetes.client import models

    model = getattr(models, type_name, None)
    if model is None:
        problems.append(f"{path}: the checker does not know the type {type_name!r}")
        return
    _check_model(value, model, path, problems)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """A JSON type test: a boolean is not an integer here, as it is not in JSON."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _object_types(annotation: Any) -> tuple[type, ...] | None:
    """An ``object`` field's JSON types: (int, str) for int-or-string; None for any value."""
    found: list[type] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        origin = typing.get_origin(item)
        if origin is typing.Annotated:
            stack.append(typing.get_args(item)[0])
        elif origin is typing.Union:
            stack.extend(typing.get_args(item))
        elif item in (int, str, float, bool):
            found.append(item)
        elif item is type(None):
            continue
        else:
            return None  # Any, a dict, a model: any JSON value
    return tuple(sorted(set(found), key=lambda t: t.__name__)) or None


def pod_spec(job: Mapping[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


# ----------------------------------------------------------------------------- systemd


def unit_directives(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) → its values in order, from a systemd unit file.

    systemd's syntax: ``#``/``;`` comments, ``[Section]`` headers, ``Key=value`` lines, a
    trailing backslash joins the next line; a key may repeat (an empty value resets the
    list, which is kept here as an empty string, as systemd reads it in order).
    """
    directives: dict[tuple[str, str], list[str]] = {}
    section = ""
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        text = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not text or text[0] in "#;":
            continue
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        if text.startswith("[") and text.endswith("]"):
            section = text[1:-1]
            continue
        key, separator, value = text.partition("=")
        if not separator:
            raise ValueError(f"{path}: not Key=value in [{section}]: {text!r}")
        directives.setdefault((section, key.strip()), []).append(value.strip())
    return directives


def directive(directives: Mapping[tuple[str, str], list[str]], section: str, key: str) -> str:
    """The one value of ``key`` in ``section`` (the test fails when it is absent or repeated)."""
    values = directives.get((section, key))
    assert values is not None, f"[{section}] has no {key}="
    assert len(values) == 1, f"[{section}] {key}= is given {len(values)} times: {values}"
    return values[0]


# ----------------------------------------------------------------------------- agent runs


def in_root(argument: str, mount: str, root: Path) -> str:
    """``argument`` with the container path ``mount`` (absolute) moved under ``root``: the
    one change the integration tests make to a recipe's command line."""
    if argument == mount or argument.startswith(mount.rstrip("/") + "/"):
        return str(root) + argument
    return argument


def orchestrated_env(variables: Mapping[str, str]) -> dict[str, str]:
    """This process's environment (the S3 variables ``s3_env`` set among them) with no
    orchestrator's identity variables but ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in IDENTITY_VARIABLES}
    return {**env, **variables, "PYTHONUNBUFFERED": "1"}


def run_command(args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0) -> AgentRun:
    """``python -m agent ARGS`` (the tree's agent, as ``bt-agent ARGS`` in an image) to its
    end; the summary is read from stdout, where the agent prints it without ``--summary``."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        timeout=timeout,
    )
    log = done.stderr.decode(errors="replace")
    summary = None
    if done.stdout.strip():
        try:
            summary = orjson.loads(done.stdout)
        except orjson.JSONDecodeError:
            raise AssertionError(
                f"stdout is not the summary:\n{done.stdout[-2000:]!r}\nlog:\n{log[-4000:]}"
            ) from None
    return AgentRun(done.returncode, summary, log, time.monotonic() - started)


def expected_outputs(
    files: Mapping[str, bytes], source: str, output: str, payload_mb: int
) -> dict[str, bytes]:
    """Output key → bytes for an echo model, SplitType Line, MultiRecord, AssembleWith Line."""
    return {
        output + key.removeprefix(source) + ".out": assembled(
            request_bodies(records(data), "MultiRecord", payload_mb * MIB), "Line"
        )
        for key, data in files.items()
    }
