"""How a run is watched (README "Watching a run"): ``Agent.MetricsPort``,
``Agent.MetricsAddress``, ``Agent.MetricsPushgatewayUrl`` and
``Agent.MetricsPushIntervalSeconds``, checked like the rest of the job file, and the
``--metrics-port``/``--metrics-address`` flags that override the first two."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent.job.schema import Checker, child, quote
from agent.job.types import check_model_url

URL_MAX_CHARS = 2048
MAX_PUSH_INTERVAL_SECONDS = 3600
# A host name as a resolver takes it (letters, digits, dots, hyphens), or an IP address.
HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


@dataclass(frozen=True, slots=True)
class Monitoring:
    """The metrics fields as read; ``None`` where absent."""

    port: int | None
    address: str | None
    pushgateway_url: str | None
    push_interval_seconds: int | None


def read_monitoring(check: Checker, fields: dict[str, object], path: str) -> Monitoring:
    """The metrics fields of the ``Agent`` object, every problem recorded in ``check``."""
    # 0 asks for any free port (logged): for tests and for runs of several agents per host.
    port = check.integer(fields, "MetricsPort", path, minimum=0, maximum=65_535)
    address = check.string(fields, "MetricsAddress", path, max_chars=253, min_chars=1)
    if address is not None and (problem := address_problem(address)) is not None:
        check.problem(child(path, "MetricsAddress"), problem)
        address = None
    url = check.string(fields, "MetricsPushgatewayUrl", path, max_chars=URL_MAX_CHARS)
    if url is not None:
        try:
            url = check_model_url(url)
        except ValueError as error:
            check.problem(child(path, "MetricsPushgatewayUrl"), str(error))
            url = None
    interval = check.integer(
        fields,
        "MetricsPushIntervalSeconds",
        path,
        minimum=1,
        maximum=MAX_PUSH_INTERVAL_SECONDS,
    )
    return Monitoring(port, address, url, interval)


def address_problem(text: str) -> str | None:
    """Why ``text`` cannot be an address to listen on; ``None`` when it can."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if HOST_NAME.fullmatch(text) is None:
            return (
                f"{quote(text)} is neither an IP address nor a host name; use 0.0.0.0 "
                "(every interface), 127.0.0.1 (this host only) or a host name"
            )
    return None
