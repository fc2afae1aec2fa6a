"""Replay the hostile-input corpus (``bench/corpus/*.json``): each case must end in its clear error.

Issue 16 item 3: the hostile inputs of issue 10, and the other bad inputs the README promises
a clear error for, kept as data. Each case is one JSON file (see ``bench/corpus/README.md``
for the format): a description, the job document with placeholders, the input objects
(inline or made by a named generator of this module), the model it runs against, and the
expectation. ``replay`` runs ``python -m agent`` on it as a user would and checks:

* the exit code, the job status, each file's status;
* the error text: substrings of the log, the summary's ``FailureReason`` or a file's;
* the outputs, byte for byte, and that nothing else was written: the whole bucket and the
  case's local directory are listed before and after, and every new or changed object
  outside the agent's state prefix must be an expected output; inputs must be unchanged;
* the state prefix holds only ``listing.json``, ``summary.json`` and ``done/`` records (no
  upload, probe, shard or lease object left behind); no local temporary file; no open
  multipart upload in the bucket;
* the secrets the case names appear nowhere: log, summary, any object or file written.

For the soak (``bench.soak``) and other callers::

    from bench.corpus_replay import replay_all
    verdicts = replay_all(s3, work_dir)          # s3: a started tests.support SeaweedFS
    assert all(v.ok for v in verdicts), "\\n".join(v.explain() for v in verdicts)

``replay_all(s3, work_dir, cases_dir=None, *, ids=None)`` creates one bucket per case on
``s3`` (deleted afterwards), runs every case (or those in ``ids``) one after the other, and
returns a ``Verdict`` per case: ``ok`` (the case held, or it is a recorded known defect that
still fails as recorded), ``held``, ``seconds``, ``problems`` (what differed, one sentence
each). ``replay(case, env)`` runs one case in a ``ReplayEnv`` (server, an empty bucket of the
case's own, a work directory). ``python -m bench.corpus_replay`` starts SeaweedFS itself,
prints a table (case, verdict, seconds) and exits 0 only when every case is ``ok``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import signal
import struct
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import crc32c

if TYPE_CHECKING:
    from tests.support.seaweedfs import SeaweedFS

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
HOST = "127.0.0.1"
NOBODY_URL = "http://127.0.0.1:9"  # the discard port: nothing answers there
RUN_TIMEOUT_SECONDS = 60.0
STATE_MARK = "/_bt-agent/"  # docs/design.md §5: the default StateUri lies under the output
STATE_ALLOWED = re.compile(r"(^|/)(listing\.json|summary\.json|done/[^/]+\.json)$")
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = frozenset(
    {"root", "local", "bucket", "model_url", "model_port", "python", "model_script", "run"}
)
# The agent's own placeholders of Agent.ModelCommand (README "Replicas"): left as they are.
AGENT_PLACEHOLDERS = frozenset({"port", "replica", "device", "model_dir"})
MODEL_KINDS = frozenset({"none", "example", "command", "record", "hostile", "squatter", "script"})
MAX_CASE_FILE_BYTES = 8 << 10
_numbers = itertools.count(1)


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One corpus case, as read from ``bench/corpus/<id>.json`` (see the corpus README)."""

    id: str
    path: Path
    doc: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.doc["description"])

    @property
    def storage(self) -> str:
        return str(self.doc.get("storage", "s3"))

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.doc.get("model", {"kind": "none"}))

    @property
    def expect(self) -> dict[str, Any]:
        return dict(self.doc["expect"])

    @property
    def known_defect(self) -> str | None:
        value = self.doc.get("known_defect")
        return None if value is None else str(value)

    def placeholders(self) -> set[str]:
        """Every ``{name}`` used anywhere in the case."""
        found: set[str] = set()
        _walk_strings(self.doc, lambda text: found.update(PLACEHOLDER.findall(text)))
        return found


def _walk_strings(value: Any, visit: Callable[[str], None]) -> None:
    if isinstance(value, str):
        visit(value)
    elif isinstance(value, list):
        for item in value:
            _walk_strings(item, visit)
    elif isinstance(value, dict):
        for key, item in value.items():
            visit(key)
            _walk_strings(item, visit)


class CaseError(ValueError):
    """A corpus file that is not a valid case; the message names the file and the field."""


def load_cases(directory: Path | None = None) -> list[Case]:
    """Every ``*.json`` case under ``directory`` (default ``bench/corpus``), sorted by id."""
    directory = directory or CORPUS_DIR
    cases = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CaseError(f"{path}: not a JSON document: {error}") from None
        case = Case(path.stem, path, doc)
        check_case(case)
        cases.append(case)
    return cases


def check_case(case: Case) -> None:
    """Raise ``CaseError`` naming what is wrong with a case's shape."""
    doc, where = case.doc, str(case.path)
    problems = []
    if not isinstance(doc, dict):
        raise CaseError(f"{where}: a case is a JSON object")
    for name in ("description", "expect"):
        if name not in doc:
            problems.append(f"no {name!r}")
    if ("job" in doc) == ("job_text" in doc):
        problems.append("exactly one of 'job' and 'job_text'")
    if case.storage not in ("s3", "local"):
        problems.append("'storage' is 's3' or 'local'")
    kind = case.model.get("kind")
    if kind not in MODEL_KINDS:
        problems.append(f"model kind {kind!r} is not one of {sorted(MODEL_KINDS)}")
    if kind == "script" and case.model.get("name") not in MODEL_SCRIPTS:
        name = case.model.get("name")
        problems.append(f"model script {name!r} is not one of {sorted(MODEL_SCRIPTS)}")
    unknown = case.placeholders() - PLACEHOLDERS - AGENT_PLACEHOLDERS
    if unknown:
        problems.append(f"unknown placeholders {sorted(unknown)}")
    expect = doc.get("expect", {})
    if not isinstance(expect.get("exit"), int):
        problems.append("expect.exit must be an integer")
    for blobs in (doc.get("objects", {}), doc.get("local_files", {}), expect.get("outputs", {})):
        for name, spec in blobs.items():
            if (
                not isinstance(spec, dict)
                or not {"text", "base64", "json", "generator", "same_as", "symlink"} & spec.keys()
            ):
                problems.append(f"{name!r}: a blob is text, base64, json, generator or same_as")
            elif "generator" in spec and spec["generator"] not in GENERATORS:
                problems.append(f"{name!r}: unknown generator {spec['generator']!r}")
    if case.path.exists() and case.path.stat().st_size > MAX_CASE_FILE_BYTES:
        problems.append(f"the file is over {MAX_CASE_FILE_BYTES} bytes")
    if problems:
        raise CaseError(f"{where}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- generators
# Named generators make the inputs a case names (files stay small and readable). Each takes
# the keyword arguments of the case's "args" and returns bytes.

RECORDIO_MAGIC = 0xCED7230A


def _recordio_frame(payload: bytes, magic: int = RECORDIO_MAGIC, cflag: int = 0) -> bytes:
    header = struct.pack("<II", magic, cflag << 29 | len(payload))
    return header + payload + b"\0" * (-len(payload) % 4)


def gen_lines(count: int, prefix: str = "row", width: int = 0) -> bytes:
    """``count`` CSV lines ``<prefix><n>,<n*n>`` (padded with ``x`` to ``width`` if given)."""
    out = []
    for n in range(count):
        line = f"{prefix}{n},{n * n}"
        out.append(line.ljust(width, "x") + "\n")
    return "".join(out).encode()


def gen_recordio(
    payloads: list[str],
    bad_magic_at: int | None = None,
    cut: int = 0,
    cflags: list[int] | None = None,
) -> bytes:
    """RecordIO frames, one per payload (``cflags``: each frame's continuation flag, 0 for a
    whole record); the frame ``bad_magic_at`` gets a wrong magic; ``cut`` bytes dropped from
    the end."""
    flags = cflags or [0] * len(payloads)
    data = b"".join(
        _recordio_frame(p.encode(), 0xDEADBEEF if n == bad_magic_at else RECORDIO_MAGIC, flag)
        for n, (p, flag) in enumerate(zip(payloads, flags, strict=True))
    )
    return data[: len(data) - cut] if cut else data


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c.crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def gen_tfrecord(
    payloads: list[str],
    bad_data_crc_at: int | None = None,
    bad_length_crc_at: int | None = None,
    huge_length_at: int | None = None,
) -> bytes:
    """TFRecord frames; one may carry a wrong payload CRC, a wrong length CRC, or announce
    2^60 payload bytes (with a correct length CRC)."""
    out = []
    for n, text in enumerate(payloads):
        payload = text.encode()
        length = struct.pack("<Q", 1 << 60 if n == huge_length_at else len(payload))
        length_crc = _masked_crc(length)
        data_crc = _masked_crc(payload)
        if n == bad_length_crc_at:
            length_crc = bytes(b ^ 0xFF for b in length_crc)
        if n == bad_data_crc_at:
            data_crc = bytes(b ^ 0xFF for b in data_crc)
        out.append(length + length_crc + payload + data_crc)
    return b"".join(out)


def gen_gzip(text: str, cut: int = 0, trailing: str = "") -> bytes:
    """``text`` gzip-compressed (mtime 0, so the bytes never change); ``cut`` bytes dropped
    from the end (a truncated stream); ``trailing`` bytes after the member."""
    data = gzip.compress(text.encode(), mtime=0)
    return (data[: len(data) - cut] if cut else data) + trailing.encode()


def gen_repeat(size: int, byte: str = "a", newline: bool = False) -> bytes:
    """One record of ``size`` bytes of ``byte`` (and a ``\\n`` if asked)."""
    return byte.encode() * size + (b"\n" if newline else b"")


def gen_tar_gz(members: list[dict[str, Any]]) -> bytes:
    """A .tar.gz of ``members``: ``{"name", "type": file|dir|symlink|hardlink, "text",
    "target"}``, written as given (hostile names included)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member["name"])
            info.mtime = 0
            kind = member.get("type", "file")
            data = member.get("text", "").encode()
            if kind == "file":
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            info.linkname = member.get("target", "")
            tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def gen_deep_json(depth: int) -> bytes:
    """A job-file-shaped text nested ``depth`` arrays deep."""
    return b'{"TransformJobName": ' + b"[" * depth + b"]" * depth + b"}"


GENERATORS: dict[str, Callable[..., bytes]] = {
    "lines": gen_lines,
    "recordio": gen_recordio,
    "tfrecord": gen_tfrecord,
    "gzip": gen_gzip,
    "repeat": gen_repeat,
    "tar_gz": gen_tar_gz,
    "deep_json": gen_deep_json,
}


# ----------------------------------------------------------------------------- models
# What "model" of a case names. Servers started here are stopped when the case ends.

MODEL_SCRIPTS = {
    # Issue 10, defect 9: a model command that prints its environment (where a careless
    # server would), answers /ping, then dies on the first request, so its output tail
    # reaches every file's failure, the completion records and the summary.
    "prints-environment": (
        "import http.server, json, os, sys\n"
        "port = int(sys.argv[1])\n"
        "names = ('API_TOKEN', 'DB_PASSWORD', 'AWS_SECRET_ACCESS_KEY', 'AWS_ACCESS_KEY_ID')\n"
        "shown = {name: os.environ.get(name) for name in names}\n"
        "def show():\n"
        "    print('my environment:', json.dumps(shown), flush=True)\n"
        "    print('as a dict:', shown, flush=True)\n"
        "    print('API_TOKEN=' + os.environ.get('API_TOKEN', ''), flush=True)\n"
        "show()\n"
        "class Handler(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/ping' else 404)\n"
        "        self.send_header('Content-Length', '0')\n"
        "        self.end_headers()\n"
        "    def do_POST(self):\n"
        "        show()\n"
        "        os._exit(3)\n"
        "    def log_message(self, *args):\n"
        "        pass\n"
        "http.server.HTTPServer(('127.0.0.1', port), Handler).serve_forever()\n"
    ),
}


@dataclass
class RunningModel:
    url: str
    port: int
    requests: Callable[[], int]


class ModelPool:
    """Example model servers kept from case to case, one per argument list, each reset
    (start-up settings, empty log) before it serves a case: a case costs one interpreter
    start (the agent's), not two. ``close`` stops them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: dict[tuple[str, ...], Any] = {}

    def example(self, args: list[str]) -> Any:
        from tests.support.modelserver import ModelServer

        key = tuple(args)
        server = self.servers.get(key)
        if server is None or not server.running():
            if server is not None:
                server.stop(grace_seconds=0)
            self.directory.mkdir(parents=True, exist_ok=True)
            log = self.directory / f"model-server-{len(self.servers)}-{next(_numbers)}.log"
            server = self.servers[key] = ModelServer(log, *args)
            server.start()
        server.reset()
        return server

    def close(self) -> None:
        for server in self.servers.values():
            server.stop(grace_seconds=0)
        self.servers.clear()


@contextlib.contextmanager
def start_model(
    spec: Mapping[str, Any], run_dir: Path, pool: ModelPool | None = None
) -> Iterator[RunningModel]:
    """Start what ``spec`` names (an example server from ``pool`` when given); yields where it
    listens and a count of the invocations it got in this case."""
    kind = spec["kind"]
    if kind in ("none",):
        yield RunningModel(NOBODY_URL, 9, lambda: 0)
    elif kind in ("command", "script"):  # the agent starts it (Agent.ModelCommand)
        from tests.support.processes import free_port

        port = free_port()
        yield RunningModel(f"http://{HOST}:{port}", port, lambda: 0)
    elif kind == "example" and pool is not None:
        shared = pool.example(list(spec.get("args", [])))
        yield RunningModel(shared.url, shared.port, lambda: len(shared.requests()))
    elif kind == "example":
        from tests.support.modelserver import ModelServer

        server = ModelServer(run_dir / "model_server.log", *spec.get("args", []))
        server.start()
        try:
            assert server.port is not None
            yield RunningModel(server.url, server.port, lambda: len(server.requests()))
        finally:
            server.stop(grace_seconds=0)
    elif kind == "record":
        from tests.support.record_model import RecordModel

        model = RecordModel()
        model.set_bad(spec.get("bad", []))
        model.refuse_over = int(spec.get("refuse_over", 0))
        model.short = frozenset(spec.get("short", []))
        model.server_error = frozenset(spec.get("server_error", []))
        model.start()
        try:
            yield RunningModel(model.url, model.port, lambda: model.requests)
        finally:
            model.stop()
    elif kind == "hostile":
        from bench.answer_size import Answer, HostileModel

        answers = {
            path: Answer(**{**fields, "prefix": str(fields.get("prefix", "")).encode()})
            for path, fields in spec["answers"].items()
        }
        with HostileModel(answers) as hostile:
            yield RunningModel(hostile.url, hostile.port, lambda: hostile.requests["/invocations"])
    elif kind == "squatter":
        from tests.support.squatter import squatter

        with squatter() as (port, seen):
            yield RunningModel(f"http://{HOST}:{port}", port, lambda: len(seen))
    else:
        raise CaseError(f"unknown model kind {kind!r}")


# ----------------------------------------------------------------------------- replay


@dataclass
class ReplayEnv:
    """Where a case runs: the server, a bucket of the case's own, a work directory."""

    s3: SeaweedFS
    bucket: str
    work_dir: Path
    models: ModelPool | None = None  # example model servers shared between cases
    agent_root: Path = REPO_ROOT  # whose ``agent`` package runs (another checkout: before/after)


@dataclass
class Verdict:
    """How one case ended. ``held``: every expectation was met. ``ok``: held, or a recorded
    known defect that still does not hold (a known defect that now holds is not ok: the
    record is stale)."""

    case_id: str
    held: bool
    seconds: float
    problems: list[str] = field(default_factory=list)
    known_defect: str | None = None
    exit_code: int | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.held != (self.known_defect is not None)

    @property
    def label(self) -> str:
        if self.known_defect is None:
            return "holds" if self.held else "FAILS"
        return "known defect" if not self.held else "FIXED? (known_defect is stale)"

    def explain(self) -> str:
        lines = [f"{self.case_id}: {self.label} (exit {self.exit_code}, {self.seconds:.1f} s)"]
        if self.known_defect:
            lines.append(f"  known defect: {self.known_defect}")
        lines += [f"  - {problem}" for problem in self.problems]
        if self.problems and self.log_tail:
            lines.append("  log tail:\n    " + self.log_tail.replace("\n", "\n    "))
        return "\n".join(lines)


class Context:
    """The values of the placeholders of one replay."""

    def __init__(self, case: Case, bucket: str, model: RunningModel, run_dir: Path) -> None:
        self.local = run_dir / "data"
        self.values = {
            "root": f"s3://{bucket}" if case.storage == "s3" else str(self.local),
            "local": str(self.local),
            "bucket": bucket,
            "model_url": model.url,
            "model_port": str(model.port),
            "python": sys.executable,
            "model_script": str(run_dir / "model_script.py"),
            "run": str(run_dir),
        }

    def text(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(1), m.group(0)), text)

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.fill(item) for item in value]
        if isinstance(value, dict):
            return {self.text(key): self.fill(item) for key, item in value.items()}
        return value


def blob(spec: Mapping[str, Any], ctx: Context, inputs: Mapping[str, bytes] | None = None) -> bytes:
    """The bytes a blob spec names (text, base64, json with placeholders, generator, same_as)."""
    if "text" in spec:
        text = str(spec["text"])
        return (ctx.text(text) if spec.get("template") else text).encode()
    if "base64" in spec:
        return base64.b64decode(spec["base64"])
    if "json" in spec:
        return json.dumps(ctx.fill(spec["json"])).encode()
    if "generator" in spec:
        return GENERATORS[spec["generator"]](**ctx.fill(spec.get("args", {})))
    if "same_as" in spec:
        assert inputs is not None
        return inputs[spec["same_as"]]
    raise CaseError(f"not a blob: {spec}")


def _s3_listing(client: Any, bucket: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["ETag"]
    return found


def _local_listing(root: Path) -> dict[str, str]:
    """Absolute path → sha256 of each file (``link:<target>`` for a symbolic link)."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if path.is_symlink():
            found[str(path)] = f"link:{os.readlink(path)}"
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _secret_forms(secret: str) -> set[bytes]:
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms.add(repr(secret)[1:-1])
    return {form.encode() for form in forms}


def _short(data: bytes, limit: int = 120) -> str:
    text = repr(data[:limit])
    return text + ("…" if len(data) > limit else "")


def _run_agent(
    job_path: Path,
    summary_path: Path,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str],
    args: list[str],
    stop: Mapping[str, Any] | None = None,
) -> int:
    """``python -m agent --job F --summary S ARGS`` to its end; returns its exit code.

    ``stop``: ``{"after_log": text, "signal": "SIGKILL"}`` sends the signal once the log
    holds the text (the prelude of a crash case)."""
    from tests.support.processes import ServerProcess, wait_until

    argv = [sys.executable, "-m", "agent", "--job", str(job_path), "--summary", str(summary_path)]
    process = ServerProcess("bt-agent", argv + args, log_path=log_path, cwd=cwd, env=dict(env))
    process.launch()
    try:
        if stop is not None:
            text = stop["after_log"]
            seen = wait_until(
                lambda: text in log_path.read_text(errors="replace"), RUN_TIMEOUT_SECONDS
            )
            if not seen:
                raise AssertionError(f"the prelude never logged {text!r}")
            os.kill(process.pid, getattr(signal, stop.get("signal", "SIGKILL")))
        assert process.popen is not None
        return process.popen.wait(RUN_TIMEOUT_SECONDS)
    finally:
        process.stop(grace_seconds=0)


def replay(case: Case, env: ReplayEnv) -> Verdict:
    """Run one case against ``env`` and check its expectation; never raises for a mismatch."""
    started = time.monotonic()
    run_dir = env.work_dir / f"{case.id}-{os.getpid()}-{next(_numbers)}"
    (run_dir / "data").mkdir(parents=True)
    problems: list[str] = []
    exit_code: int | None = None
    log = ""
    with start_model(case.model, run_dir, env.models) as model:
        ctx = Context(case, env.bucket, model, run_dir)
        client = env.s3.sync_client()
        try:
            exit_code, log = _replay(case, env, ctx, model, client, run_dir, problems)
        finally:
            client.close()
    return Verdict(
        case.id,
        not problems,
        time.monotonic() - started,
        problems,
        case.known_defect,
        exit_code,
        "\n".join(log.splitlines()[-25:]),
    )


def _replay(
    case: Case,
    env: ReplayEnv,
    ctx: Context,
    model: RunningModel,
    client: Any,
    run_dir: Path,
    problems: list[str],
) -> tuple[int, str]:
    doc, expect = case.doc, case.expect
    local = ctx.local
    # The inputs.
    inputs: dict[str, bytes] = {}
    for name, spec in doc.get("objects", {}).items():
        target = ctx.text(name)
        if "symlink" in spec:
            if case.storage != "local":
                raise CaseError(f"{case.path}: a symlink object needs local storage")
            path = local / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(spec["symlink"])
            continue
        data = blob(spec, ctx)
        inputs[target] = data
        if case.storage == "s3":
            client.put_object(Bucket=env.bucket, Key=target, Body=data)
        else:
            (local / target).parent.mkdir(parents=True, exist_ok=True)
            (local / target).write_bytes(data)
    for name, spec in doc.get("local_files", {}).items():
        path = local / ctx.text(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob(spec, ctx))
    if case.model["kind"] == "script":
        Path(ctx.values["model_script"]).write_text(MODEL_SCRIPTS[case.model["name"]])
    # The job (written with the standard library: a lone surrogate stays an escape).
    if "job" in doc:
        job_text = json.dumps(ctx.fill(doc["job"]), indent=1)
    else:
        job_text = blob(doc["job_text"], ctx).decode()
    agent_env = {**os.environ, **env.s3.env(), "PYTHONUNBUFFERED": "1"}
    agent_env["PYTHONPATH"] = os.pathsep.join(
        [str(env.agent_root), str(REPO_ROOT)]  # the agent's tree first, then examples/
    )
    agent_env["AWS_EC2_METADATA_DISABLED"] = "true"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        agent_env.pop(name, None)
    agent_env["AWS_CONFIG_FILE"] = agent_env["AWS_SHARED_CREDENTIALS_FILE"] = str(
        run_dir / "no-aws-config"
    )
    args = [str(a) for a in ctx.fill(doc.get("args", []))]
    if "model_file" in doc:
        model_path = run_dir / "model.json"
        model_path.write_text(json.dumps(ctx.fill(doc["model_file"]), indent=1))
        args += ["--model", str(model_path)]
    # A prelude: earlier runs of the case (a crash to recover from).
    for n, step in enumerate(doc.get("prelude", [])):
        path = run_dir / f"prelude-{n}.json"
        path.write_text(json.dumps(ctx.fill(step["job"]), indent=1))
        _run_agent(
            path,
            run_dir / f"prelude-{n}.summary.json",
            run_dir / f"prelude-{n}.log",
            local,
            agent_env,
            [],
            step.get("stop"),
        )
    before_s3 = _s3_listing(client, env.bucket)
    before_local = _local_listing(local)
    job_path = run_dir / "job.json"
    job_path.write_text(job_text)
    summary_path = run_dir / "summary.json"
    log_path = run_dir / "agent.log"
    try:
        exit_code = _run_agent(job_path, summary_path, log_path, local, agent_env, args)
    except Exception as error:  # a hang: say so as the verdict
        problems.append(f"the agent did not finish within {RUN_TIMEOUT_SECONDS:.0f} s: {error}")
        exit_code = -1
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    summary: dict[str, Any] | None = None
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_bytes())
        except ValueError:
            problems.append("the --summary file is not JSON")
    _check(case, ctx, expect, exit_code, log, summary, problems, inputs)
    # Everything written: the bucket and the local tree, before and after.
    after_s3 = _s3_listing(client, env.bucket)
    after_local = _local_listing(local)
    root = ctx.values["root"]
    written: dict[str, Callable[[], bytes]] = {}
    for key, etag in after_s3.items():
        if before_s3.get(key) != etag:
            written[f"s3://{env.bucket}/{key}"] = lambda k=key: client.get_object(
                Bucket=env.bucket, Key=k
            )["Body"].read()
    for key in before_s3.keys() - after_s3.keys():
        problems.append(f"s3://{env.bucket}/{key} was there before the run and is gone")
    for path, digest in after_local.items():
        if before_local.get(path) != digest:
            written[path] = lambda p=path: Path(p).read_bytes()
    for path in before_local.keys() - after_local.keys():
        problems.append(f"{path} was there before the run and is gone")
    for name in inputs:
        uri = f"{root}/{name}"
        if uri in written:
            problems.append(f"the input {uri} was changed")
    expected = {ctx.text(name): spec for name, spec in expect.get("outputs", {}).items()}
    for uri, read in sorted(written.items()):
        if STATE_MARK in uri:
            rest = uri.split(STATE_MARK, 1)[1]
            if not STATE_ALLOWED.search(rest):
                problems.append(f"a state object left behind: {uri}")
            continue
        if ".bt-agent-tmp" in uri:
            problems.append(f"a temporary file left behind: {uri}")
            continue
        if uri not in expected:
            problems.append(f"written where nothing belongs: {uri} ({_short(read())})")
            continue
        want = blob(expected[uri], ctx, {f"{root}/{k}": v for k, v in inputs.items()} | inputs)
        got = read()
        if got != want:
            problems.append(f"{uri} is {_short(got)}, expected {_short(want)}")
    for uri in sorted(expected.keys() - written.keys()):
        problems.append(f"the expected output {uri} was not written")
    uploads = client.list_multipart_uploads(Bucket=env.bucket).get("Uploads", [])
    if uploads:
        problems.append(f"open multipart uploads: {[u['Key'] for u in uploads]}")
    secrets = [str(s) for s in expect.get("secrets_absent", [])]
    if secrets:
        secrets.append(env.s3.env()["AWS_SECRET_ACCESS_KEY"])  # the agent's own credential
        places: dict[str, bytes] = {"the log": log.encode()}
        if summary_path.exists():
            places["the summary"] = summary_path.read_bytes()
        for uri, read in written.items():
            places[uri] = read()
        for secret in secrets:
            forms = _secret_forms(secret)
            for place, data in places.items():
                if any(form in data for form in forms):
                    problems.append(f"the secret {secret[:3]}… appears in {place}")
    if "model_requests" in expect and model.requests() != expect["model_requests"]:
        problems.append(
            f"the model got {model.requests()} invocations, expected {expect['model_requests']}"
        )
    return exit_code, log


def _check(
    case: Case,
    ctx: Context,
    expect: Mapping[str, Any],
    exit_code: int,
    log: str,
    summary: dict[str, Any] | None,
    problems: list[str],
    inputs: Mapping[str, bytes],
) -> None:
    if exit_code != expect["exit"]:
        problems.append(f"exit code {exit_code}, expected {expect['exit']}")
    if "Traceback" in log:
        problems.append("the log holds a traceback")
    status = expect.get("status")
    if status is not None:
        if summary is None:
            problems.append(f"no summary was written (expected status {status})")
        elif summary.get("TransformJobStatus") != status:
            problems.append(f"status {summary.get('TransformJobStatus')}, expected {status}")
    files = {} if summary is None else {e["Input"]: e for e in summary.get("Files", [])}
    for uri, want in ctx.fill(expect.get("files", {})).items():
        got = files.get(uri, {}).get("Status")
        if got != want:
            problems.append(f"{uri}: status {got}, expected {want}")
    for error in expect.get("errors", []):
        where = error.get("in", "log")
        if where == "log":
            text, place = log, "the log"
        elif where == "summary":
            text = "" if summary is None else str(summary.get("FailureReason"))
            place = "the summary's FailureReason"
        else:  # an input's URI: that file's FailureReason
            uri = ctx.text(where)
            text = str(files.get(uri, {}).get("FailureReason"))
            place = f"the FailureReason of {uri}"
        for needle in ctx.fill(error["contains"]):
            if needle not in text:
                problems.append(f"{place} does not say {needle!r}: {text[-400:]!r}")
    for needle in ctx.fill(expect.get("log_lacks", [])):
        if needle in log:
            problems.append(f"the log says {needle!r}, which it must not")


# ----------------------------------------------------------------------------- all of them


def replay_all(
    s3: SeaweedFS,
    work_dir: Path,
    cases_dir: Path | None = None,
    *,
    ids: list[str] | None = None,
    progress: Callable[[Verdict], None] | None = None,
    agent_root: Path = REPO_ROOT,
) -> list[Verdict]:
    """Replay every case (or those in ``ids``), each in a bucket of its own, in order."""
    client = s3.sync_client()
    verdicts = []
    pool = ModelPool(work_dir / "models")
    try:
        for case in load_cases(cases_dir):
            if ids and case.id not in ids:
                continue
            bucket = f"corpus-{os.getpid()}-{next(_numbers)}"
            client.create_bucket(Bucket=bucket)
            try:
                verdict = replay(case, ReplayEnv(s3, bucket, work_dir, pool, agent_root))
            finally:
                with contextlib.suppress(Exception):
                    client.delete_bucket(Bucket=bucket)
            verdicts.append(verdict)
            if progress is not None:
                progress(verdict)
    finally:
        pool.close()
        client.close()
    return verdicts


def print_table(verdicts: list[Verdict]) -> None:
    width = max([len(v.case_id) for v in verdicts] + [4])
    print(f"{'case':<{width}}  {'verdict':<14}  seconds")
    for v in verdicts:
        print(f"{v.case_id:<{width}}  {v.label:<14}  {v.seconds:7.1f}")
    held = sum(v.held for v in verdicts)
    known = sum(v.ok and not v.held for v in verdicts)
    total = sum(v.seconds for v in verdicts)
    print(
        f"{len(verdicts)} cases: {held} hold, {known} known defects, "
        f"{len(verdicts) - held - known} fail; {total:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus_replay",
        description="Replay the hostile-input corpus against a SeaweedFS started here.",
    )
    parser.add_argument("ids", nargs="*", help="case ids to replay (default: all)")
    parser.add_argument("--cases", type=Path, default=None, help="the corpus directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--agent-root",
        type=Path,
        default=REPO_ROOT,
        help="run the agent of another checkout (e.g. one before a fix: its cases should fail)",
    )
    options = parser.parse_args(argv)
    from tests.support.seaweedfs import SeaweedFS

    work = Path(tempfile.mkdtemp(prefix="bt-corpus-"))
    server = SeaweedFS(work / "seaweedfs")
    server.start()
    try:
        verdicts = replay_all(
            server,
            work,
            options.cases,
            ids=options.ids or None,
            agent_root=options.agent_root.resolve(),
            progress=lambda v: print(
                v.explain() if not v.ok else f"{v.case_id}: {v.label}", file=sys.stderr, flush=True
            ),
        )
    finally:
        server.stop(grace_seconds=0)
    print_table(verdicts)
    if options.keep:
        print(f"work directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdicts and all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
