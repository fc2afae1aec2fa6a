"""Hostile use, through ``python -m agent`` (issue 10: 6, 9, 11, 12).

* 6: a SIGKILLed agent takes its model command's whole process group with it; a port
  already taken by another process fails the job before the agent starts its own model,
  and nothing is sent to that process.
* 9: a model command that prints its environment leaks no secret into the log, the summary
  or the state prefix, and never gets the agent's AWS credentials.
* 11: a lone surrogate in the job is a usage error (exit 2) before anything is touched.
* 12: a summary that cannot be written at the end goes to stdout; the job's exit code stays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.runjob import model_command, put_objects, run_agent, start_agent, transform_job
from tests.support.servers import (
    HOST,
    REPO_ROOT,
    SeaweedFS,
    free_port,
    group_alive,
    ports_free,
    process_alive,
    wait_until,
)
from tests.support.squatter import squatter as squatting

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

SECRET = "SUPERSECRET123"
AWKWARD = 'pa"ss\\wörd€42'  # a quote, a backslash and non-ASCII: escaped in JSON


def local_job(tmp_path: Path, name: str, port: int, **agent: Any) -> dict[str, Any]:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    (source / "a.csv").write_bytes(b"1,2\n3,4\n")
    return transform_job(
        name,
        f"{source}/",
        str(tmp_path / "out"),
        model_url=f"http://{HOST}:{port}",
        split_type="Line",
        agent=agent,
    )


# ----------------------------------------------------------------------------- 6: orphans

# A model server with a worker of its own, as gunicorn or torchserve have: the example
# server, slowed so the job is still running when the agent is killed.
SERVER_WITH_WORKER = textwrap.dedent(
    """
    import runpy, subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("worker", worker.pid, flush=True)
    port = sys.argv[1]
    sys.argv = ["model_server", "--host", "127.0.0.1", "--port", port, "--delay-ms", "60000"]
    runpy.run_module("examples.model_server", run_name="__main__", alter_sys=True)
    """
)


# The same, deaf to SIGTERM (and its worker too: an ignored signal stays ignored across
# exec): only SIGKILL, after the grace period, ends it.
STUBBORN_SERVER_WITH_WORKER = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("worker", worker.pid, flush=True)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def do_POST(self):
            time.sleep(600)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.mark.parametrize(
    "server",
    [SERVER_WITH_WORKER, STUBBORN_SERVER_WITH_WORKER],
    ids=["polite", "ignores-sigterm"],
)
def test_a_sigkilled_agent_takes_the_whole_model_group_with_it(tmp_path: Path, server: str) -> None:
    port = free_port()
    command = [sys.executable, "-c", server, str(port)]
    job = local_job(tmp_path, "sigkill-orphans", port, ModelCommand=command)
    agent = start_agent(job, tmp_path)
    groups: list[int] = []
    try:
        started = wait_until(lambda: "to transform on this instance" in agent.log(), 60.0)
        assert started, agent.log()
        groups.extend(agent.model_pids())
        assert len(groups) == 1 and group_alive(groups[0]), agent.log()
        os.kill(agent.pid, signal.SIGKILL)  # no handler runs: only the kernel can clean up
        assert wait_until(lambda: not process_alive(agent.pid), 10.0)
        gone = wait_until(lambda: not group_alive(groups[0]), 30.0, interval=0.1)
        assert gone, f"the model's process group {groups[0]} outlived the SIGKILLed agent"
        assert wait_until(lambda: ports_free([port]), 10.0), f"port {port} is still taken"
    finally:
        for group in groups:  # whatever the outcome, leave nothing behind
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        agent.kill()


@pytest.fixture
def squatter() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server already listening on a port: (the port, the requests it got)."""
    with squatting() as found:
        yield found


def test_a_port_already_taken_fails_the_job_and_sends_it_nothing(
    tmp_path: Path, squatter: tuple[int, list[str]]
) -> None:
    port, requests = squatter
    command = model_command("--port", str(port))
    job = local_job(tmp_path, "port-taken", port, ModelCommand=command)

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.summary is not None
    reason = run.summary["FailureReason"]
    assert f"{HOST}:{port}" in reason and "already listening" in reason, reason
    assert requests == [], f"the agent talked to the process on the port: {requests}"
    assert run.model_pids == [] and run.leftovers == []  # its own model was never started
    assert not (tmp_path / "out" / "a.csv.out").exists()


# ----------------------------------------------------------------------------- 9: secrets

# Prints the variables a careless server would (at start-up and again when it dies), dumps
# its whole environment to a file for the test, answers /ping, then dies on the first
# request, so the output tail reaches the failure of every file, the records and the summary;
# with --exit it exits right after printing, before /ping answers.
PRINTS_ITS_ENVIRONMENT = textwrap.dedent(
    """
    import http.server, json, os, sys
    port = int(sys.argv[1])
    with open(os.environ["ENV_DUMP_FILE"], "w") as dump:
        json.dump(dict(os.environ), dump)
    names = ("API_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    shown = {name: os.environ.get(name) for name in names}
    def show():
        print("my environment:", json.dumps(shown), flush=True)
        print("as a dict:", shown, flush=True)
        print("API_TOKEN=" + os.environ.get("API_TOKEN", ""), flush=True)
    show()
    if "--exit" in sys.argv:
        sys.exit(1)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def do_POST(self):
            show()
            os._exit(3)
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def leaks(data: bytes, secrets: list[str]) -> list[str]:
    """The secrets found in ``data``, in any of the forms they may be written in."""
    found = []
    for secret in secrets:
        forms = {secret, json.dumps(secret)[1:-1], orjson.dumps(secret).decode()[1:-1]}
        forms.add(repr(secret)[1:-1])
        if any(form.encode() in data for form in forms):
            found.append(secret)
    return found


@pytest.mark.parametrize(
    ("log_format", "when"),
    [("text", "mid-job"), ("json", "mid-job"), ("text", "at-start-up")],
)
def test_secrets_stay_out_of_the_log_the_summary_and_the_state(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
    log_format: str,
    when: str,
) -> None:
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/a.csv": b"1,2\n", "in/b.csv": b"3,4\n"})
    port = free_port()
    dump = tmp_path / "model-env.json"
    job = transform_job(
        "secrets",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=f"http://{HOST}:{port}",
        split_type="Line",
        agent={"ModelCommand": [sys.executable, "-c", PRINTS_ITS_ENVIRONMENT, str(port)]},
    )
    if when == "at-start-up":  # it prints and exits before /ping ever answers
        job["Agent"]["ModelCommand"].append("--exit")
    job["Environment"] = {
        "API_TOKEN": SECRET,
        "DB_PASSWORD": AWKWARD,
        "ENV_DUMP_FILE": str(dump),
    }
    aws_secret = s3_env["AWS_SECRET_ACCESS_KEY"]

    run = run_agent(job, tmp_path, args=["--log-format", log_format])

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.summary is not None
    assert "[redacted]" in run.summary["FailureReason"], run.summary  # the tail got there
    secrets = [SECRET, AWKWARD, aws_secret]
    assert leaks(run.log.encode(), secrets) == [], run.log
    summary_file = next(tmp_path.glob("*.summary.json"))
    assert leaks(summary_file.read_bytes(), secrets) == []
    state_keys = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/")
    for page in pages:
        state_keys.extend(item["Key"] for item in page.get("Contents", []))
    if when == "mid-job":  # the files failed in the pipeline: records and a job summary
        assert any(key.endswith("summary.json") for key in state_keys), state_keys
        assert any("/done/" in key for key in state_keys), state_keys
    for key in state_keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert leaks(body, secrets) == [], (key, body[:2000])
    # The model got the job's Environment, and none of the agent's credentials.
    seen = json.loads(dump.read_text())
    assert seen["API_TOKEN"] == SECRET and seen["DB_PASSWORD"] == AWKWARD
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(seen), sorted(seen)
    assert aws_secret not in dump.read_text()


# ----------------------------------------------------------------------------- 11: surrogates


def test_a_lone_surrogate_in_the_job_is_exit_2_before_anything_is_touched(tmp_path: Path) -> None:
    port = free_port()
    job = local_job(tmp_path, "surrogate", port, ModelCommand=model_command("--port", str(port)))
    job["Environment"] = {"API_TOKEN": "SECRET\ud800VALUE"}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))  # ensure_ascii: the file holds the escape \ud800
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(tmp_path / "s.json")],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "$.Environment.API_TOKEN" in err and "unpaired surrogate" in err, err
    assert "Traceback" not in err and "SECRET" not in err
    assert not (tmp_path / "out").exists()  # no listing.json, nothing else


# ----------------------------------------------------------------------------- 12: --summary


def test_a_summary_that_cannot_be_written_at_the_end_goes_to_stdout(tmp_path: Path) -> None:
    port = free_port()
    job = local_job(tmp_path, "summary-full", port, ModelCommand=model_command("--port", str(port)))

    run = run_agent(job, tmp_path, args=["--summary", "/dev/full"])  # accepted, then ENOSPC

    assert run.returncode == 0, run.log
    assert "Traceback" not in run.log
    assert "cannot write the summary to --summary /dev/full" in run.log, run.log
    start = run.log.index("{\n")
    summary = json.loads(run.log[start : run.log.index("\n}\n", start) + 2])
    assert summary["TransformJobStatus"] == "Completed"
    assert (tmp_path / "out" / "a.csv.out").read_bytes() == b"1,2\n3,4\n"
