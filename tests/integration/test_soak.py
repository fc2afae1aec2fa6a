"""The chaos soak at its CI scale (``python -m bench.soak --scale ci``, issue 16 item 1).

One round with a fixed seed: 3 Lease instances on a Line job, then 2 Static instances on
each of a RecordIO (manifest) and a TFRecord (gzip) job, every kind of fault injected at
least once while they run, and the verdict of ``bench/soak_check.py`` over the outputs,
the state prefixes and the summaries. It starts a SeaweedFS of its own, since it kills
and restarts it.

It runs in the compiled pass only: the soak checks coordination, commits and fault
handling, which have no pure-Python twin, and the suite's two passes share one budget
(the twins are compared by the split and property tests in both passes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import main

pytestmark = [
    pytest.mark.integration,
    pytest.mark.soak,
    pytest.mark.skipif(
        os.environ.get("BT_AGENT_NO_EXTENSIONS") == "1",
        reason="the soak runs in the compiled pass only (it tests coordination and faults, "
        "which have no pure-Python twin); run python -m bench.soak --scale ci to try it here",
    ),
]

SEED = 16


def test_the_ci_scale_soak_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["--seed", str(SEED), "--scale", "ci", "--work", str(tmp_path)])

    printed = capsys.readouterr().out
    assert printed.startswith(f"soak seed {SEED} ")
    assert code == 0, printed
    assert "0 lost / 0 duplicated / 0 reordered / 0 partial" in printed
