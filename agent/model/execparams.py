"""Execution parameters: which MaxConcurrentTransforms, MaxPayloadInMB and BatchStrategy apply.

docs/design.md §1.4: the job file first, then the model's ``GET /execution-parameters``, then
the defaults (README, The job file). A field the job sets is taken as is, whatever the model says,
and the model's value for it is not checked. A field the model supplies must be in range,
or the job fails: guessing would send the model bodies or concurrency it said it cannot
take. Pure functions, no I/O; ``agent.model.client`` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import orjson

from agent.job import (
    DEFAULT_BATCH_STRATEGY,
    DEFAULT_MAX_CONCURRENT_TRANSFORMS,
    DEFAULT_MAX_PAYLOAD_MB,
    MAX_PAYLOAD_MB,
    BatchStrategy,
    JobSettings,
)
from agent.model.policy import ModelError

Source = Literal["job file", "/execution-parameters", "default"]
FIELDS = ("MaxConcurrentTransforms", "MaxPayloadInMB", "BatchStrategy")

# SageMaker containers answer in the environment variables' spelling; accept the API's too.
_STRATEGIES: dict[str, BatchStrategy] = {
    "MULTI_RECORD": "MultiRecord",
    "SINGLE_RECORD": "SingleRecord",
    "MultiRecord": "MultiRecord",
    "SingleRecord": "SingleRecord",
}

_T = TypeVar("_T")


class ExecutionParametersError(ModelError):
    """The model's ``/execution-parameters`` answer holds a value out of range."""


@dataclass(frozen=True, slots=True)
class ResolvedParams:
    """The execution parameters in force for the whole job."""

    max_concurrent_transforms: int  # requests in flight per instance, >= 1
    max_payload_mb: int  # MiB per request body, 0..100; 0: no bound (streamed, chunked)
    batch_strategy: BatchStrategy

    def apply(self, settings: JobSettings) -> JobSettings:
        """``settings`` with these values filled in, as ``output_settings`` wants them."""
        return replace(
            settings,
            max_concurrent_transforms=self.max_concurrent_transforms,
            max_payload_mb=self.max_payload_mb,
            batch_strategy=self.batch_strategy,
        )


DEFAULTS = ResolvedParams(
    max_concurrent_transforms=DEFAULT_MAX_CONCURRENT_TRANSFORMS,
    max_payload_mb=DEFAULT_MAX_PAYLOAD_MB,
    batch_strategy=DEFAULT_BATCH_STRATEGY,
)


def parse_concurrency(value: object) -> int | None:
    """``MaxConcurrentTransforms`` from the model: an integer >= 0; 0 means unset."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer of 1 or more (0 means unset)")
    return value or None


def parse_payload_mb(value: object) -> int | None:
    """``MaxPayloadInMB`` from the model: an integer 0-100; 0 means no bound."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PAYLOAD_MB:
        raise ValueError(f"expected an integer from 0 to {MAX_PAYLOAD_MB} (0: no bound)")
    return value


def parse_batch_strategy(value: object) -> BatchStrategy | None:
    """``BatchStrategy`` from the model, in either spelling."""
    if not isinstance(value, str) or value not in _STRATEGIES:
        raise ValueError("expected MULTI_RECORD, SINGLE_RECORD, MultiRecord or SingleRecord")
    return _STRATEGIES[value]


def parse_execution_parameters(body: bytes) -> dict[str, object] | None:
    """The decoded answer of ``/execution-parameters``, or ``None`` when it is not a JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def resolve_execution_parameters(
    settings: JobSettings, answer: Mapping[str, object] | None
) -> tuple[ResolvedParams, dict[str, Source]]:
    """The values in force and, per SageMaker field name, where each came from.

    ``answer`` is the model's decoded ``/execution-parameters`` object, ``None`` when it
    had none. A ``null`` value counts as absent. Raises ``ExecutionParametersError``
    naming every out-of-range value the job would have used.
    """
    found = answer or {}
    sources: dict[str, Source] = {}
    problems: list[str] = []

    def pick(name: str, mine: _T | None, parse: Callable[[object], _T | None], default: _T) -> _T:
        if mine is not None:
            sources[name] = "job file"
            return mine
        raw = found.get(name)
        if raw is not None:
            try:
                value = parse(raw)
            except ValueError as error:
                problems.append(f"{name} = {orjson.dumps(raw).decode()} ({error})")
            else:
                if value is not None:
                    sources[name] = "/execution-parameters"
                    return value
        sources[name] = "default"
        return default

    params = ResolvedParams(
        max_concurrent_transforms=pick(
            FIELDS[0],
            settings.max_concurrent_transforms,
            parse_concurrency,
            DEFAULTS.max_concurrent_transforms,
        ),
        max_payload_mb=pick(
            FIELDS[1], settings.max_payload_mb, parse_payload_mb, DEFAULTS.max_payload_mb
        ),
        batch_strategy=pick(
            FIELDS[2], settings.batch_strategy, parse_batch_strategy, DEFAULTS.batch_strategy
        ),
    )
    if problems:
        raise ExecutionParametersError(
            "the model server's /execution-parameters answer is out of range: "
            + "; ".join(problems)
            + ". Set these fields in the job file to override the model, or fix its answer."
        )
    return params, sources


def format_execution_parameters(params: ResolvedParams, sources: Mapping[str, Source]) -> str:
    """One log line: ``execution parameters: MaxConcurrentTransforms=4 (job file), …``."""
    values = (params.max_concurrent_transforms, params.max_payload_mb, params.batch_strategy)
    shown = ", ".join(
        f"{name}={value} ({sources.get(name, 'default')})"
        for name, value in zip(FIELDS, values, strict=True)
    )
    return f"execution parameters: {shown}"
