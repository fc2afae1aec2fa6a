"""A Pushgateway stand-in: takes ``PUT /metrics/job/<job>/instance/<instance>`` as the real
one does and keeps every body it was sent, parsed, for the test to read."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.threaded_model import ThreadedModel


@dataclass(frozen=True)
class Push:
    job: str
    instance: str
    content_type: str
    families: dict[str, Metric]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with ``labels`` (0 when absent)."""
        return sample(self.families, name, **labels)


def parse(text: str) -> dict[str, Metric]:
    """The metric families of a Prometheus text exposition, by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels``; 0 when none has."""
    for family in families.values():
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


class PushgatewayStandIn(ThreadedModel):
    """Start with ``start``; ``url`` is what ``Agent.MetricsPushgatewayUrl`` names."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._pushes: list[Push] = []

    @property
    def pushes(self) -> list[Push]:
        with self._lock:
            return list(self._pushes)

    def _routes(self, app: web.Application) -> None:
        app.router.add_put("/metrics/job/{job}/instance/{instance}", self._push)

    async def _push(self, request: web.Request) -> web.Response:
        text = (await request.read()).decode()
        push = Push(
            request.match_info["job"],
            request.match_info["instance"],
            request.headers.get("Content-Type", ""),
            parse(text),
        )
        with self._lock:
            self._pushes.append(push)
        return web.Response(status=200)
