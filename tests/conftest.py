"""Suite-wide plumbing: coroutine tests, the twin fixtures, and the twin tally.

* ``async def`` tests run without a plugin: unit tests once on asyncio's default
  loop and once on uvloop, integration tests (marked ``integration``) on uvloop only,
  the loop production uses.
* Twin fixtures (session-scoped) hand a test the compiled module (id ``c``) or its
  pure-Python twin (id ``py``). The ``c`` cases carry the ``compiled_only`` mark, as do
  tests that import a compiled module themselves; under ``BT_AGENT_NO_EXTENSIONS=1``
  every ``compiled_only`` case is skipped, and so is every ``twin_free`` test
  (coordination across instances, the model process and replicas, faults and retries,
  deploy recipes, metrics, the image: what decides them has no twin; the unit twin tests,
  the property tests and the data-path integration tests run the twins end to end).
* The terminal summary says how many tests ran against each twin (a ``compiled_only``
  test outside the twin fixtures counts as run with the compiled extension).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections import Counter
from collections.abc import Callable
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
_TWIN_FIXTURES: set[str] = set()


def twin_fixture(name: str, compiled: str, pure: str) -> Any:
    """A session fixture ``name`` over a compiled module and its pure twin (ids ``c``, ``py``)."""
    _TWIN_FIXTURES.add(name)

    @pytest.fixture(
        scope="session",
        name=name,
        params=[pytest.param("c", marks=pytest.mark.compiled_only), "py"],
    )
    def fixture(request: pytest.FixtureRequest) -> ModuleType:
        return importlib.import_module(compiled if request.param == "c" else pure)

    return fixture


crc32c_twin = twin_fixture("crc32c_twin", "agent.codec._crc32c_c", "agent.codec._crc32c_py")
splitters_twin = twin_fixture(
    "splitters_twin", "agent.split._splitters_c", "agent.split._splitters_py"
)
dataproc_twin = twin_fixture(
    "dataproc_twin", "agent.dataproc._dataproc_c", "agent.dataproc._dataproc_py"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the compiled-only cases under ``BT_AGENT_NO_EXTENSIONS=1``; label each twin case."""
    skip = pytest.mark.skip(reason="BT_AGENT_NO_EXTENSIONS=1 forces the pure twins")
    twin_free = pytest.mark.skip(
        reason="no code with a compiled twin decides this test's outcome; the compiled pass runs it"
    )
    for item in items:
        compiled_only = item.get_closest_marker("compiled_only") is not None
        if compiled_only and NO_EXTENSIONS:
            item.add_marker(skip)
        elif NO_EXTENSIONS and item.get_closest_marker("twin_free") is not None:
            item.add_marker(twin_free)
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        twins = [params[name] for name in sorted(_TWIN_FIXTURES) if name in params]
        if twins or compiled_only:
            item.user_properties.append(("twin", twins[0] if twins else "c"))


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
