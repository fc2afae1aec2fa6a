"""deploy/grafana/bt-agent.json: a Grafana dashboard whose every panel queries the agent's
metrics, on the dashboard's Prometheus data source, job and instance.

``METRICS`` is the agent's metric families, read from a run's registry (their names as
registered, a histogram by its family name). ``metric_names`` reads the metric names out
of a PromQL expression; the tests compare them with ``METRICS`` both ways: no panel asks
for a metric the agent does not have, and no metric of the agent lacks a panel.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.metrics import Metrics
from agent.report import JobSummary
from agent.watching import Watched
from tests.support.deploy import DEPLOY, json_file

DASHBOARD = DEPLOY / "grafana" / "bt-agent.json"


def _registered() -> dict[str, str]:
    """The agent's own metric families and their types, from a run's registry with every
    view of the runner registered (a counter by its sample name, ``…_total``)."""
    counts = Metrics()
    Watched(JobSummary("dashboard")).watch(counts)
    found = {}
    for metric in counts.registry.collect():
        if metric.name.startswith("bt_agent_"):
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            found[name] = metric.type
    return found


# family name -> type
METRICS = _registered()

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (series names, ``_bucket`` and all)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.+-]*", "", text)  # numbers, durations (5m, 1e3)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def family(name: str) -> str:
    """The metric family a series name belongs to (``…_seconds_bucket`` → ``…_seconds``)."""
    for suffix in _HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base) == "histogram":
            return base
    return name


def dashboard() -> dict[str, Any]:
    return json_file(DASHBOARD)


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in panels() for target in panel["targets"]]


def panels() -> list[dict[str, Any]]:
    return dashboard()["panels"]


def test_the_dashboard_has_its_variables() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["job"]["query"]["query"] == "label_values(bt_agent_requests_in_flight, job)"
    assert variables["instance"]["query"]["query"] == (
        'label_values(bt_agent_requests_in_flight{job=~"$job"}, instance)'
    )
    for name in ("job", "instance"):
        assert (variables[name]["multi"], variables[name]["includeAll"]) == (True, True)
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert dashboard()["uid"] == "bt-agent"


def test_every_panel_queries_prometheus_on_the_selected_job_and_instance() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)) == 12
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    for title, target in targets():
        expr = target["expr"]
        assert expr.strip(), f"panel {title!r} has an empty query"
        assert target["datasource"]["uid"] == "${datasource}"
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors, f"panel {title!r}: {expr}"
        for selector in selectors:
            assert selector == 'job=~"$job", instance=~"$instance"', (title, expr)
        if "rate(" in expr or "increase(" in expr:
            assert "[$__rate_interval]" in expr, (title, expr)


def test_the_panels_ask_for_the_agents_metrics_and_every_one_of_them() -> None:
    used = {name for _, target in targets() for name in metric_names(target["expr"])}
    assert {family(name) for name in used} == set(METRICS)
    for name in used:
        assert name.startswith("bt_agent_")
        if METRICS.get(family(name)) == "counter":
            assert name.endswith("_total")
    latency = [t["expr"] for title, t in targets() if title == "Request latency"]
    assert [re.findall(r"histogram_quantile\((0\.\d+),", expr) for expr in latency] == [
        ["0.5"],
        ["0.95"],
        ["0.99"],
    ]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (code) (rate(bt_agent_requests_total{job=~"$job"}[$__rate_interval]))',
            {"bt_agent_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(bt_agent_request_duration_seconds_bucket"
            "[5m])))",
            {"bt_agent_request_duration_seconds_bucket"},
        ),
        (
            "bt_agent_files / ignoring(status) group_left bt_agent_filez",
            {"bt_agent_files", "bt_agent_filez"},
        ),
        (
            'max by (phase) (bt_agent_phase_seconds{phase="listing"}) offset 5m',
            {"bt_agent_phase_seconds"},
        ),
        ("rate(bt_agent_records_totl[1m]) > bool 0", {"bt_agent_records_totl"}),
        ("bt_agent_output_bytes_total * 1e3 + 2.5", {"bt_agent_output_bytes_total"}),
    ],
)
def test_metric_names_reads_what_a_query_selects(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelt_metric_in_a_panel_is_seen_both_ways() -> None:
    broken = dashboard()
    target = broken["panels"][0]["targets"][0]
    target["expr"] = target["expr"].replace("bt_agent_records_total", "bt_agent_record_total")
    used = {
        family(name)
        for panel in broken["panels"]
        for t in panel["targets"]
        for name in metric_names(t["expr"])
    }
    assert used - set(METRICS) == {"bt_agent_record_total"}
    assert set(METRICS) - used == {"bt_agent_records_total"}
