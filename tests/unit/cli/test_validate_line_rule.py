"""``bt-agent validate`` shows ``Agent.RequireLinePerRecord`` in its overview."""

from __future__ import annotations

import pytest

from agent.cli.validate import overview
from tests.unit.job.test_line_per_record import job, parse


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "one line per record required (RequireLinePerRecord)"),
        (False, "not checked (RequireLinePerRecord false)"),
    ],
)
def test_validate_overview_shows_it(value: bool, shown: str) -> None:
    lines = overview(parse(job(RequireLinePerRecord=value)), "job.json")
    assert any(line.split()[0] == "answers" and line.endswith(shown) for line in lines[1:]), lines
