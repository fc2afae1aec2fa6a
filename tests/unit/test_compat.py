"""The compiled modules are the ones in use, one test per compiled module (``agent._compat``).

A normal build must run the compiled extensions: silence here would hide a broken build,
so a missing extension fails the test (it is not skipped). Under
``BT_AGENT_NO_EXTENSIONS=1`` the same test checks that the pure twin is in use instead.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from agent._compat import NO_EXTENSIONS

# (compiled module, its pure twin, the module callers import, the names it takes from the twin)
TWINS = {
    "crc32c": (
        "agent.codec._crc32c_c",
        "agent.codec._crc32c_py",
        "agent.codec.crc32c",
        ("implementation", "masked", "value"),
    ),
    "splitters": (
        "agent.split._splitters_c",
        "agent.split._splitters_py",
        "agent.split",
        ("Body", "Packer", "implementation", "make_splitter"),
    ),
    "dataproc": (
        "agent.dataproc._dataproc_c",
        "agent.dataproc._dataproc_py",
        "agent.dataproc.records",
        ("implementation", "join_pick", "pick_rows"),
    ),
}


@pytest.mark.parametrize("twin", list(TWINS))
def test_the_compiled_module_is_in_use(twin: str) -> None:
    compiled, pure, user, names = TWINS[twin]
    # Fails loudly (ImportError) when the extension was not built and it is expected.
    expected = importlib.import_module(pure if NO_EXTENSIONS else compiled)
    in_use = importlib.import_module(user)
    for name in names:
        assert getattr(in_use, name) is getattr(expected, name), (user, name)
    implementation = in_use.implementation()
    if NO_EXTENSIONS:
        assert implementation == "python"
    else:
        assert implementation in ({"hardware", "table"} if twin == "crc32c" else {"native"})
    # What the packages export about it says the same.
    assert getattr(in_use, "IS_NATIVE", not NO_EXTENSIONS) is not NO_EXTENSIONS
    assert getattr(in_use, "IMPLEMENTATION", implementation) == implementation


def test_the_variable_forces_every_pure_twin() -> None:
    """``BT_AGENT_NO_EXTENSIONS=1`` switches all three, whether or not the extensions are built."""
    users = [user for _, _, user, _ in TWINS.values()]
    code = (
        "import importlib, sys\n"
        f"for name in {users!r}:\n"
        "    print(importlib.import_module(name).implementation())\n"
        "print(sorted(m for m in sys.modules if m.endswith('_c')))\n"
    )
    env = {**os.environ, "BT_AGENT_NO_EXTENSIONS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["python"] * len(users) + ["[]"]
