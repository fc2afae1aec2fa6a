"""How the model is served (README "Replicas"): ``Agent.ModelUrl`` as one URL or a list
of running servers, ``Agent.ModelReplicas``, ``Agent.ReplicaDevices``,
``Agent.ReplicaRestarts``, ``Agent.ModelDir`` and ``Agent.ContainerRuntime``, each checked
like the rest of the job file (JSON path, allowed range)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.job.schema import Checker, child, quote
from agent.job.types import check_model_url

URL_MAX_CHARS = 2048
MAX_REPLICAS = 64  # far above the accelerators of any one host
MAX_RESTARTS = 100
CONTAINER_RUNTIMES = ("docker", "podman")
# A device as CUDA_VISIBLE_DEVICES and the runtimes' GPU flags name one: an index, a UUID
# (GPU-…, MIG-…), or several joined by commas.
DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*(,[A-Za-z0-9][A-Za-z0-9:._-]*)*")
DEVICE_MAX_CHARS = 256
PLACEHOLDERS = ("{port}", "{replica}", "{device}", "{model_dir}")


@dataclass(frozen=True, slots=True)
class Serving:
    """The serving fields as read; ``None`` where absent."""

    model_urls: tuple[str, ...] | None  # ModelUrl, one or many
    replicas: int | None
    devices: tuple[str, ...] | None
    restarts: int | None
    model_dir: str | None
    container_runtime: str | None


def read_serving(check: Checker, fields: dict[str, object], path: str) -> Serving:
    """The serving fields of the ``Agent`` object, every problem recorded in ``check``."""
    urls = _urls(check, fields, path)
    replicas = check.integer(fields, "ModelReplicas", path, minimum=1, maximum=MAX_REPLICAS)
    devices = _devices(check, fields, path)
    restarts = check.integer(fields, "ReplicaRestarts", path, minimum=0, maximum=MAX_RESTARTS)
    model_dir = check.string(fields, "ModelDir", path, max_chars=4096, min_chars=1)
    runtime = check.enum(fields, "ContainerRuntime", path, CONTAINER_RUNTIMES)
    if urls is not None and len(urls) > 1:
        if replicas is not None and replicas != len(urls):
            check.problem(
                child(path, "ModelReplicas"),
                f"is {replicas}, but $.Agent.ModelUrl lists {len(urls)} servers: with a list "
                "each server is one replica; remove ModelReplicas or make them agree",
            )
        if "ModelCommand" in fields:
            check.problem(
                child(path, "ModelUrl"),
                "a list of servers means servers already running, which bt-agent does not "
                "start; remove $.Agent.ModelCommand, or give one URL and ModelReplicas",
            )
    count = replicas if replicas is not None else (len(urls) if urls else 1)
    if devices is not None and replicas is None and not (urls and len(urls) > 1):
        count = replicas = len(devices)  # one replica a device
    if devices is not None and len(devices) != count:
        check.problem(
            child(path, "ReplicaDevices"),
            f"lists {len(devices)} device(s) for {count} replica(s); give one entry per "
            "replica (entry i is replica i's CUDA_VISIBLE_DEVICES)",
        )
    return Serving(urls, replicas, devices, restarts, model_dir, runtime)


def _urls(check: Checker, fields: dict[str, object], path: str) -> tuple[str, ...] | None:
    if "ModelUrl" not in fields:
        return None
    raw, where = fields["ModelUrl"], child(path, "ModelUrl")
    items = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) and not raw:
        check.problem(where, "is an empty list; give one URL or a list of running servers")
        return None
    found: list[str] = []
    for index, item in enumerate(items):
        at = f"{where}[{index}]" if isinstance(raw, list) else where
        if not isinstance(item, str):
            check.wrong_type(
                at, "a URL string" + (" or a list of them" if at == where else ""), item
            )
            continue
        if len(item) > URL_MAX_CHARS:  # said without quoting: it may hold a secret
            check.problem(
                at,
                f"the URL is {len(item)} characters long; use at most {URL_MAX_CHARS} characters",
            )
            continue
        if not item:
            check.problem(at, f'"" is 0 characters long; use 1 to {URL_MAX_CHARS} characters')
            continue
        try:
            url = check_model_url(item)
        except ValueError as error:
            check.problem(at, str(error))
            continue
        if url in found:
            check.problem(at, f"repeats {quote(url)}; each server is one replica")
            continue
        found.append(url)
    return tuple(found) if len(found) == len(items) else None


def _devices(check: Checker, fields: dict[str, object], path: str) -> tuple[str, ...] | None:
    if "ReplicaDevices" not in fields:
        return None
    raw, where = fields["ReplicaDevices"], child(path, "ReplicaDevices")
    if not isinstance(raw, list) or not raw:
        check.problem(where, 'expected a non-empty list of device ids, as in ["0", "1"]')
        return None
    found: list[str] = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            item = str(item)
        if not isinstance(item, str) or len(item) > DEVICE_MAX_CHARS or not DEVICE.fullmatch(item):
            check.problem(
                at,
                f"{quote(str(item)) if isinstance(item, str) else item!r} is not a device id: "
                'use an index ("0"), a UUID ("GPU-…"), or several joined by commas ("0,1")',
            )
            continue
        found.append(item)
    return tuple(found) if len(found) == len(raw) else None
