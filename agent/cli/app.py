"""The ``bt-agent`` command: argument parsing and exit codes (``agent.errors``, docs/design.md
§6), nothing else.

``bt-agent --job job.json`` runs a job (``run`` may be written out); ``validate``,
``split``, ``status`` and ``plan`` are subcommands. ``main`` returns the exit code
instead of exiting, so tests call it directly and the console script does
``sys.exit(main())``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli.validate import (
    error,
    load,
    load_model_file,
    log_notes,
    matches,
    print_problems,
    validate,
)
from agent.errors import EXIT_CODE_LABELS, ExitCode
from agent.job import (
    BATCH_STRATEGIES,
    MAX_INSTANCE_COUNT,
    MAX_PAYLOAD_MB,
    SPLIT_TYPES,
    JobError,
    JobSettings,
    with_overrides,
)
from agent.log import LOG_FORMATS, setup_logging

if TYPE_CHECKING:
    from agent.runner import RunOptions

COMMANDS = ("run", "validate", "split", "status", "plan")

log = logging.getLogger("agent.cli")

_USAGE = """bt-agent [run] --job JOB [options]
       bt-agent {validate,split,status,plan} ..."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bt-agent`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args.insert(0, "run")  # bt-agent --job F means bt-agent run --job F
    try:
        namespace = parser.parse_args(args)
        handler: Callable[[argparse.Namespace], int] = namespace.handler
        return handler(namespace)
    except SystemExit as exc:  # argparse after --help, --version or a usage error
        if exc.code is None:
            return ExitCode.COMPLETED
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.SIGINT


# ---------------------------------------------------------------------- commands


def _run(namespace: argparse.Namespace) -> int:
    setup_logging(namespace.log_format)
    loaded = load(namespace.job)
    model = None if namespace.model is None else load_model_file(namespace.model)
    if loaded is None or (namespace.model is not None and model is None):
        return ExitCode.USAGE
    if model is not None and not matches(loaded, model, namespace.model):
        return ExitCode.USAGE
    try:
        settings = with_overrides(
            loaded.settings,
            model_url=namespace.model_url,
            state_uri=namespace.state_uri,
            instance_count=namespace.instance_count,
            metrics_port=namespace.metrics_port,
            metrics_address=namespace.metrics_address,
        )
    except JobError as exc:
        print_problems("the command line", exc)
        return exc.exit_code
    index, count = namespace.instance_index, settings.instance_count
    if index is not None and index >= count:
        error(
            f"--instance-index {index} is out of range: the job has {count} instance(s), "
            f"numbered 0 to {count - 1}; set --instance-count or TransformResources.InstanceCount"
        )
        return ExitCode.USAGE
    problem = summary_path_problem(namespace.summary)
    if problem is not None:
        error(f"--summary {namespace.summary}: {problem}")
        return ExitCode.USAGE
    log_notes(loaded, model)
    from agent.runner import RunOptions  # imported here: validate and split need none of it

    options = RunOptions(
        settings=settings,
        instance_index=index,
        instance_count=namespace.instance_count,
        force=namespace.force,
        summary_path=namespace.summary,
        log_format=namespace.log_format,
        model=None if model is None else model.model,
    )
    return _start(options)


def summary_path_problem(path: str | None) -> str | None:
    """Why the summary could not be written at ``path``, checked before any data is touched.

    The file need not exist, but its directory must, and one or the other must be writable.
    """
    if path is None:
        return None
    if not path:
        return "the path is empty; give a file name"
    if os.path.isdir(path):
        return "is a directory; give a file name, as in --summary out/summary.json"
    if os.path.lexists(path) and not os.path.exists(path):
        directory = os.path.dirname(os.path.realpath(path)) or "."  # a link to a new file
    elif os.path.exists(path):
        if not os.access(path, os.W_OK):
            return "the file exists and is not writable by this user"
        return None
    else:
        directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        return f"its directory {directory} does not exist; create it first"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its directory {directory} is not writable by this user"
    return None


def _start(options: RunOptions) -> int:
    """Hand a validated job to the data plane."""
    from agent.runner import run  # imported here: validate and split need none of it

    return run(options)


def _split(namespace: argparse.Namespace) -> int:
    from agent.cli.split import run_split  # imported here: the other commands need none of it

    return int(
        run_split(
            namespace.file,
            split_type=namespace.split_type,
            batch_strategy=namespace.batch_strategy,
            max_payload_mb=namespace.max_payload_mb,
            max_records=namespace.max_records_per_request,
            compression=namespace.compression,
            output_dir=namespace.output_dir,
            out=sys.stdout,
        )
    )


def _state_settings(namespace: argparse.Namespace) -> JobSettings | None:
    """The job with ``--state-uri`` (and ``--instance-count``) applied, or ``None`` (exit 2)."""
    setup_logging(namespace.log_format)
    loaded = load(namespace.job)
    if loaded is None:
        return None
    try:
        return with_overrides(
            loaded.settings,
            state_uri=namespace.state_uri,
            instance_count=getattr(namespace, "instance_count", None),
        )
    except JobError as exc:
        print_problems("the command line", exc)
        return None


def _status(namespace: argparse.Namespace) -> int:
    from agent.cli.status import run_status

    settings = _state_settings(namespace)
    return ExitCode.USAGE if settings is None else run_status(settings, sys.stdout)


def _plan(namespace: argparse.Namespace) -> int:
    from agent.cli.status import run_plan

    settings = _state_settings(namespace)
    if settings is None:
        return ExitCode.USAGE
    return run_plan(settings, settings.instance_count, sys.stdout)


def _bounded_int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {bound}")
        return value

    return parse


def exit_codes_help() -> str:
    """The exit codes as ``--help`` lists them, from the one table (``agent.errors``)."""
    codes = ", ".join(f"{int(code)} {EXIT_CODE_LABELS[code]}" for code in ExitCode)
    return f"Exit codes: {codes}."


def _model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="MODEL",
        help="the model's CreateModel request (or DescribeModel output) JSON file",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand has its own ``--help``."""
    parser = argparse.ArgumentParser(
        prog="bt-agent",
        usage=_USAGE,
        description="Run SageMaker Batch Transform jobs on any host: read every input "
        "object, send its records to a model server, write one .out object per input.",
        epilog=exit_codes_help(),
    )
    parser.add_argument("--version", action="version", version=f"bt-agent {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", prog="bt-agent")

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument(
        "--job", required=True, metavar="JOB", help="the CreateTransformJob request JSON file"
    )
    job.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="format of the log lines on stderr (default: text)",
    )

    run = commands.add_parser(
        "run",
        parents=[job],
        help="run a job (the default: 'bt-agent --job JOB' is 'bt-agent run --job JOB')",
        description="Run a transform job. Flags override the job file.",
    )
    run.add_argument("--instance-index", type=_bounded_int(0), metavar="N", help="this instance")
    run.add_argument(
        "--instance-count",
        type=_bounded_int(1, MAX_INSTANCE_COUNT),
        metavar="N",
        help="how many instances share the job (overrides TransformResources.InstanceCount)",
    )
    run.add_argument("--model-url", metavar="URL", help="overrides Agent.ModelUrl")
    _model_flag(run)
    run.add_argument("--state-uri", metavar="URI", help="overrides Agent.StateUri")
    run.add_argument(
        "--force",
        action="store_true",
        help="run although the state prefix holds results made with different settings",
    )
    run.add_argument("--summary", metavar="PATH", help="also write the job summary JSON here")
    run.add_argument(
        "--metrics-port",
        type=_bounded_int(0, 65_535),
        metavar="PORT",
        help="serve Prometheus metrics at /metrics on this port while the run lasts "
        "(overrides Agent.MetricsPort; 0: any free port, logged)",
    )
    run.add_argument(
        "--metrics-address",
        metavar="ADDRESS",
        help="the address /metrics listens on (overrides Agent.MetricsAddress; default 0.0.0.0)",
    )
    run.set_defaults(handler=_run)

    validate_parser = commands.add_parser(
        "validate",
        parents=[job],
        help="check a job file and summarise it",
        description="Check a job file: exit 0 and print a summary, or exit 2 and print "
        "every problem with its JSON path. Environment values are never printed.",
    )
    _model_flag(validate_parser)
    validate_parser.set_defaults(handler=validate)

    split = commands.add_parser(
        "split",
        help="show how a local file would be cut into request bodies",
        description="Show how a local file would be batched: record and batch counts, and "
        "with --output-dir each request body as DIR/000000.bin, 000001.bin, ...",
    )
    split.add_argument("file", metavar="FILE", help="a local input file")
    split.add_argument("--split-type", required=True, choices=SPLIT_TYPES)
    split.add_argument("--batch-strategy", required=True, choices=BATCH_STRATEGIES)
    split.add_argument(
        "--max-payload-mb",
        required=True,
        type=_bounded_int(0, MAX_PAYLOAD_MB),
        metavar="M",
        help=f"body bound in MiB, 0 to {MAX_PAYLOAD_MB}; 0 means no bound",
    )
    split.add_argument(
        "--max-records-per-request",
        type=_bounded_int(1),
        metavar="N",
        help="MultiRecord: at most N records a body (Agent.MaxRecordsPerRequest); default: no cap",
    )
    split.add_argument("--compression", choices=("None", "Gzip"), default="None")
    split.add_argument("--output-dir", metavar="DIR", help="write each request body here")
    split.set_defaults(handler=_split)

    for name, summary, handler in (
        ("status", "print the job summary, or progress while the job runs", _status),
        ("plan", "show which instance gets which file", _plan),
    ):
        sub = commands.add_parser(
            name, parents=[job], help=summary, description=f"{summary[0].upper()}{summary[1:]}."
        )
        sub.add_argument("--state-uri", metavar="URI", help="overrides Agent.StateUri")
        if name == "plan":
            sub.add_argument(
                "--instance-count",
                type=_bounded_int(1, MAX_INSTANCE_COUNT),
                metavar="N",
                help="plan for N instances (overrides TransformResources.InstanceCount)",
            )
        sub.set_defaults(handler=handler)
    return parser


if __name__ == "__main__":
    sys.exit(main())
