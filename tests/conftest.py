"""Suite-wide plumbing: coroutine tests, the twin fixtures, and the twin tally.

* ``async def`` tests run without a plugin: unit tests once on asyncio's default
  loop and once on uvloop, integration tests (marked ``integration``) on uvloop only,
  the loop production uses.
* Twin fixtures hand a test the compiled module (id ``c``) or its pure-Python twin
  (id ``py``). Under ``BT_AGENT_NO_EXTENSIONS=1`` the ``c`` cases are skipped.
* The terminal summary says how many tests ran against each twin.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from agent._compat import NO_EXTENSIONS

try:
    import uvloop
except ImportError:  # pragma: no cover - non-Linux developer machines
    uvloop = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------- async tests


def _loops_for(item: pytest.Item | pytest.Function) -> list[str]:
    integration = item.get_closest_marker("integration") is not None
    if uvloop is None:
        return ["asyncio"]
    return ["uvloop"] if integration else ["asyncio", "uvloop"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.fixturenames.append("_event_loop_kind")
        metafunc.parametrize("_event_loop_kind", _loops_for(metafunc.definition))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kind = pyfuncitem.callspec.params["_event_loop_kind"]
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if kind == "uvloop":
        factory = uvloop.new_event_loop
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True


# ----------------------------------------------------------------------------- twins

_TWIN_TALLY: Counter[str] = Counter()


def twin_fixture(compiled: str, pure: str) -> Any:
    """A fixture parametrized over a compiled module and its pure twin (ids ``c``, ``py``)."""

    @pytest.fixture(params=["c", "py"])
    def fixture(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
        if request.param == "c" and NO_EXTENSIONS:
            pytest.skip("BT_AGENT_NO_EXTENSIONS=1 forces the pure twin")
        module = importlib.import_module(compiled if request.param == "c" else pure)
        request.node.user_properties.append(("twin", request.param))
        yield module

    return fixture


crc32c_twin = twin_fixture("agent.codec._crc32c_c", "agent.codec._crc32c_py")
splitters_twin = twin_fixture("agent.split._splitters_c", "agent.split._splitters_py")
dataproc_twin = twin_fixture("agent.dataproc._dataproc_c", "agent.dataproc._dataproc_py")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        twins = [value for key, value in report.user_properties if key == "twin"]
        _TWIN_TALLY[twins[0] if twins else "-"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    mode = "pure-Python (BT_AGENT_NO_EXTENSIONS=1)" if NO_EXTENSIONS else "compiled where built"
    terminalreporter.write_line(
        f"twins: {_TWIN_TALLY['c']} passed with the compiled extension, "
        f"{_TWIN_TALLY['py']} with the pure-Python twin, "
        f"{_TWIN_TALLY['-']} twin-independent; modules in use: {mode}"
    )
