"""deploy/systemd/bt-agent@.service: its directives, ``systemd-analyze verify`` where systemd
is installed, and its ExecStart run as systemd would run it against jobs that end in 0, 1, 2
and 143, each checked against what the unit's restart policy then does (README, "Exit
codes"; systemd.service(5) for Restart=on-failure).

No systemd manager runs here. The command line is the unit's own, expanded as systemd
expands it (``%i``, ``${CONFIGURATION_DIRECTORY}``, ``${STATE_DIRECTORY}``) with those
directories under a temporary root; only the program, /usr/local/bin/bt-agent, becomes
``python -m agent`` from this tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.deploy import DEPLOY, directive, unit_directives
from tests.support.runjob import model_command
from tests.support.servers import REPO_ROOT, free_port, wait_until

UNIT = DEPLOY / "systemd" / "bt-agent@.service"


def directives() -> dict[tuple[str, str], list[str]]:
    return unit_directives(UNIT)


def exit_statuses(text: str) -> set[int]:
    return {int(word) for word in text.split()}


def restarts(exit_code: int) -> bool:
    """Whether systemd restarts the unit after its process exited with ``exit_code`` by
    itself (never after `systemctl stop`), by the unit's Restart=on-failure,
    RestartPreventExitStatus= and SuccessExitStatus= (systemd.service(5))."""
    found = directives()
    assert directive(found, "Service", "Restart") == "on-failure"
    if exit_code in exit_statuses(directive(found, "Service", "RestartPreventExitStatus")):
        return False
    clean = {0} | exit_statuses(directive(found, "Service", "SuccessExitStatus"))
    return exit_code not in clean


def test_the_unit_says_what_it_does_with_each_exit_code() -> None:
    found = directives()
    expected = {
        ("Unit", "StartLimitIntervalSec"): "infinity",
        ("Unit", "StartLimitBurst"): "4",
        ("Service", "Type"): "exec",
        ("Service", "ConfigurationDirectory"): "bt-agent",
        ("Service", "StateDirectory"): "bt-agent",
        ("Service", "WorkingDirectory"): "%S/bt-agent",
        ("Service", "EnvironmentFile"): "-/etc/bt-agent/%i.env",
        ("Service", "Restart"): "on-failure",
        ("Service", "RestartSec"): "30s",
        ("Service", "RestartPreventExitStatus"): "2 130",
        ("Service", "SuccessExitStatus"): "143",
        ("Service", "KillSignal"): "SIGTERM",
        ("Service", "KillMode"): "mixed",
        ("Service", "TimeoutStopSec"): "90s",
        ("Install", "WantedBy"): "multi-user.target",
    }
    assert {key: directive(found, *key) for key in expected} == expected
    assert directive(found, "Service", "ExecStart") == (
        "/usr/local/bin/bt-agent --job ${CONFIGURATION_DIRECTORY}/%i.json "
        "--summary ${STATE_DIRECTORY}/%i.summary.json"
    )
    assert {code: restarts(code) for code in (0, 1, 2, 130, 143, 137, 3)} == {
        0: False,
        1: True,
        2: False,
        130: False,
        143: False,
        137: True,
        3: True,
    }


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed, so the unit is not verified by systemd here; "
            "its directives are still checked one by one (install systemd to verify it)"
        )
    program = tmp_path / "bt-agent"  # verify wants ExecStart's program to exist
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    instance = tmp_path / "bt-agent@demo.service"  # a template is verified as an instance
    instance.write_text(unit_text.replace("/usr/local/bin/bt-agent", str(program)))
    return subprocess.run(
        [analyze, "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    verified = _verify(UNIT.read_text(), tmp_path)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def test_systemd_analyze_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("StartLimitBurst=", "StartLimitBurts=")
    verified = _verify(broken, tmp_path)
    assert "Unknown key 'StartLimitBurts' in section [Unit]" in verified.stderr


# ----------------------------------------------------------------------------- ExecStart


def exec_start(instance: str, configuration: Path, state: Path) -> list[str]:
    """The unit's ExecStart as systemd would run it for ``bt-agent@<instance>.service``."""
    words = shlex.split(directive(directives(), "Service", "ExecStart"))
    variables = {"CONFIGURATION_DIRECTORY": str(configuration), "STATE_DIRECTORY": str(state)}

    def expand(word: str) -> str:
        word = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], word)
        return word.replace("%i", instance)

    program, *args = [expand(word) for word in words]
    assert Path(program).name == "bt-agent"
    return [sys.executable, "-m", "agent", *args]


class Host:
    """/etc/bt-agent and /var/lib/bt-agent of a host under ``root``, and local data."""

    def __init__(self, root: Path) -> None:
        self.configuration = root / "etc" / "bt-agent"
        self.state = root / "var" / "lib" / "bt-agent"
        self.data = root / "data"
        for directory in (self.configuration, self.state, self.data / "in"):
            directory.mkdir(parents=True)
        (self.data / "in" / "a.csv").write_bytes(b"1,2\n3,4\n")
        (self.data / "in" / "b.csv").write_bytes(b"5,6\n")

    def job(self, name: str, *model_args: str) -> dict[str, Any]:
        port = free_port()
        return {
            "TransformJobName": name,
            "ModelClientConfig": {"InvocationsMaxRetries": 0},
            "TransformInput": {
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(self.data / "in")}
                },
                "SplitType": "Line",
            },
            "TransformOutput": {"S3OutputPath": str(self.data / name), "AssembleWith": "Line"},
            "Agent": {
                "ModelUrl": f"http://127.0.0.1:{port}",
                "ModelCommand": model_command("--port", str(port), *model_args),
            },
        }

    def start(self, name: str, job: Any) -> tuple[subprocess.Popen[bytes], Path]:
        """``systemctl start bt-agent@<name>``: the job file in place, ExecStart started in
        WorkingDirectory; the log (stderr, the journal's part) goes to a file."""
        (self.configuration / f"{name}.json").write_bytes(orjson.dumps(job))
        log = self.state / f"{name}.log"
        with log.open("wb") as stream:
            process = subprocess.Popen(
                exec_start(name, self.configuration, self.state),
                cwd=self.state,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
                stdout=stream,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def run(self, name: str, job: Any) -> tuple[int, str]:
        process, log = self.start(name, job)
        try:
            code = process.wait(120)
        finally:
            process.kill()
            process.wait()
        return code, log.read_text(errors="replace")


@pytest.mark.integration
@pytest.mark.twin_free
def test_exec_start_runs_a_job_and_the_exit_code_meets_the_restart_policy(tmp_path: Path) -> None:
    host = Host(tmp_path)

    code, log = host.run("good", host.job("good"))
    assert code == 0, log
    assert not restarts(code)
    summary = orjson.loads((host.state / "good.summary.json").read_bytes())
    assert summary["TransformJobStatus"] == "Completed"
    assert (host.data / "good" / "a.csv.out").read_bytes() == b"1,2\n3,4\n"

    code, log = host.run("invalid", {"TransformJobName": "invalid"})
    assert code == 2, log
    assert not restarts(code)  # RestartPreventExitStatus: a usage error never fixes itself
    assert not (host.state / "invalid.summary.json").exists()

    code, log = host.run("failing", host.job("failing", "--fault", "status", "--status", "500"))
    assert code == 1, log
    assert restarts(code)  # the rerun resumes: only the files not completed are redone
    failing = orjson.loads((host.state / "failing.summary.json").read_bytes())
    assert failing["TransformJobStatus"] == "Failed"


@pytest.mark.integration
@pytest.mark.twin_free
def test_a_stop_sigterm_exits_143_which_the_unit_counts_as_clean(tmp_path: Path) -> None:
    host = Host(tmp_path)
    process, log = host.start("stopped", host.job("stopped", "--delay-ms", "60000"))
    try:
        assert wait_until(lambda: "to transform on this instance" in log.read_text(), 60), (
            log.read_text()
        )
        process.send_signal(signal.Signals[directive(directives(), "Service", "KillSignal")])
        code = process.wait(90)  # TimeoutStopSec
    finally:
        process.kill()
        process.wait()
    assert code == 143, log.read_text()
    assert not restarts(code)  # SuccessExitStatus=143: a stop leaves the unit inactive
