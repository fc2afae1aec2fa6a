"""Hypothesis settings for the property tests (issue 16): a ``ci`` and a ``dev`` profile.

Loaded by this folder's ``conftest.py`` before any test module; the modules import
``examples`` from here to scale their counts.

``ci`` is chosen when the environment says ``CI=true``: derandomized, so a CI run draws the
same examples every time and a red build can be repeated as it was, with ``max_examples``
small enough that the folder takes well under a minute per pass on two cores under
``pytest -n 3``. ``dev`` (the default) draws new examples each run, and more of them. Both
run without a deadline: the machines are shared and noisy, and a slow example is no bug.
``HYPOTHESIS_PROFILE`` names a profile explicitly (``HYPOTHESIS_PROFILE=ci pytest ...``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Each test may scale its own count with settings(max_examples=...) relative to these.
CI_EXAMPLES = 60
DEV_EXAMPLES = 300

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=CI_EXAMPLES,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=DEV_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def profile_name() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").lower() == "true" else "dev"


settings.load_profile(profile_name())


def examples(share: float) -> int:
    """``share`` of the profile's examples (at least 10): for tests dearer than the rest."""
    return max(10, round(settings().max_examples * share))
