"""The model command's environment: the job's ``Environment``, the ``SAGEMAKER_*``
execution variables, and only the few of the agent's own variables a program needs to run
(never a credential)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.job import JobSettings
from agent.redact import is_credential_name

# Set from the job file only; copies inherited from the agent's own environment are dropped
# so the model never sees a value the agent does not act on.
EXECUTION_VARIABLES = (
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "SAGEMAKER_BATCH_STRATEGY",
)
# The agent's own variables the model gets: what a program needs to run, find its files and
# its accelerators. Anything else it needs goes in the job's Environment.
PASSED_VARIABLES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
PASSED_PREFIXES = (
    "LC_",
    "CUDA_",
    "NVIDIA_",
    "HIP_",
    "ROCR_",
    "NEURON_RT_",
    "SAGEMAKER_",
    "SM_",
)
_STRATEGY_VALUES = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}


def model_environment(
    settings: JobSettings,
    base: Mapping[str, str] | None = None,
    *,
    defined: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The model command's environment, and nothing else of the agent's.

    From ``base`` (default ``os.environ``), the agent's own environment: only the variables
    of ``PASSED_VARIABLES`` and those starting with one of ``PASSED_PREFIXES``, none whose
    name says it holds a credential. Then ``defined`` (the model file's ``Environment``,
    with ``--model``), the job's ``Environment`` over it, ``SAGEMAKER_BATCH=true``, and the
    execution variables the job sets.
    """
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if (name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES))
        and name not in EXECUTION_VARIABLES
        and not is_credential_name(name)
    }
    env.update(defined or {})
    env.update(settings.environment)
    env["SAGEMAKER_BATCH"] = "true"
    if settings.max_concurrent_transforms is not None:
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(settings.max_concurrent_transforms)
    if settings.max_payload_mb is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(settings.max_payload_mb)
    if settings.batch_strategy is not None:
        env["SAGEMAKER_BATCH_STRATEGY"] = _STRATEGY_VALUES[settings.batch_strategy]
    return env
