"""How record isolation (``Agent.MaxFailedRecords``, ``Agent.FailedRecordPlaceholder``)
meets the rest of a job: the combinations that cannot work, each named by its JSON path."""

from __future__ import annotations

import orjson

from agent.job.processing import Plan
from agent.job.schema import Checker, quote
from agent.job.types import AgentConfig, TransformInput, TransformOutput


def check_isolation(
    check: Checker,
    agent: AgentConfig,
    payload_mb: int | None,
    strategy: str | None,
    transform_input: TransformInput | None,
    transform_output: TransformOutput | None,
    plan: Plan | None,
) -> None:
    """How ``Agent.MaxFailedRecords`` and ``Agent.FailedRecordPlaceholder`` meet the job."""
    placeholder = agent.failed_record_placeholder
    where = "$.Agent.FailedRecordPlaceholder"
    if agent.max_failed_records is not None and payload_mb == 0:
        check.problem(
            "$.Agent.MaxFailedRecords",
            "isolating failed records needs MaxPayloadInMB above 0: with 0 each body is "
            "streamed as it is read and never held, so it can be neither cut in halves nor "
            "written to the errors file; set MaxPayloadInMB (6 is SageMaker's default)",
        )
    if placeholder is None:
        return
    if agent.max_failed_records is None:
        check.problem(
            where,
            "is set without $.Agent.MaxFailedRecords: a placeholder stands for a failed "
            "record, and records only fail alone when MaxFailedRecords is set",
        )
    if transform_output is not None and transform_output.assemble_with != "Line":
        check.problem(
            where,
            "needs $.TransformOutput.AssembleWith Line: the placeholder is written as the "
            "failed record's line of output, and only Line output has lines",
        )
    elif plan is not None and (plan.join or not plan.output_filter.is_root) and not plan.output_csv:
        try:
            orjson.loads(placeholder)
        except orjson.JSONDecodeError as error:
            check.problem(
                where,
                f"{quote(placeholder)} is not JSON ({error}); with DataProcessing it is joined "
                "and filtered as the model's answer would be, so it must parse as one",
            )
