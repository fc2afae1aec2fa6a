"""The processor the pipeline calls: InputFilter per record, then per response JoinSource and
OutputFilter, with the one-answer-per-record rule (docs/design.md §2.5).

Decisions where SageMaker is silent: with SplitType None the whole response is the one
answer of the one record sent; with SplitType Line each answer is one line, a final
``\\n`` optional and a ``\\r`` before it dropped, and a response with more or fewer lines
than records sent fails the file, naming the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent._compat import BytesLike
from agent.dataproc.csv import RowError
from agent.dataproc.records import (
    DataProcessingError,
    Rows,
    Side,
    count_lines,
    line_offset,
    reason,
)
from agent.job import Checker, PathMiss, Plan, check_processing, is_default

if TYPE_CHECKING:
    from agent.job import JobSettings


def make_processor(job: JobSettings) -> RecordProcessor | None:
    """The processor for a job, or ``None`` when DataProcessing is all defaults.

    Raises ``DataProcessingError`` for settings validation would have refused.
    """
    if is_default(job.data_processing):
        return None
    check = Checker()
    plan = check_processing(check, job.data_processing, job.input, job.output)
    if plan is None:
        reasons = "; ".join(str(found) for found in check.problems) or "the filters do not parse"
        raise DataProcessingError(f"DataProcessing cannot be used with this job: {reasons}")
    return RecordProcessor(plan)


class RecordProcessor:
    """InputFilter, JoinSource and OutputFilter for one job's records.

    ``filters_input``: InputFilter is not ``$`` (records are re-serialised before they are
    sent). ``processes_output``: JoinSource is Input or OutputFilter is not ``$`` (each
    response is taken apart record by record). ``lines``: SplitType Line.
    """

    __slots__ = ("plan", "lines", "filters_input", "processes_output", "_rows", "_doc", "_out")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lines = plan.lines
        inputs = Side(plan.input_filter, plan.input_csv)
        self._rows = inputs.rows_step()
        self._doc = inputs.document_step()
        self._out = Side(plan.output_filter, plan.output_csv).output_step(plan.join, plan.lines)
        self.filters_input = not plan.input_filter.is_root
        self.processes_output = self._out is not None

    # ------------------------------------------------------------------ input side

    def filter_rows(self, data: bytes, start: int = 0) -> Rows:
        """InputFilter over a run of whole lines (SplitType Line) starting at input ``start``.

        Returns ``(out, sent, read)``: the filtered records, each ending in ``\\n``, and
        where record ``k`` starts in ``out`` (``sent[k]``) and in ``data`` (``read[k]``);
        both lists end with the total length.
        """
        step = self._rows
        if step is None:
            raise ValueError("InputFilter is $: send the records as they are")
        try:
            return step(data)
        except RowError as error:
            at = start + line_offset(data, error.row)
            why = reason(error.cause, "InputFilter", self.plan.input_filter, "it")
            raise DataProcessingError(f"the record at byte {at}: {why}") from None

    def filter_input(self, record: BytesLike, *, offset: int = 0) -> bytes:
        """One record as it is sent: filtered, and ending in ``\\n`` for SplitType Line.

        ``record`` is the record as cut from the input, terminator included; ``offset``,
        its byte offset in the input, goes into error messages.
        """
        raw = record if type(record) is bytes else bytes(record)
        if not self.filters_input:
            return raw
        if self.lines:
            return self.filter_rows(raw, offset)[0]
        assert self._doc is not None
        try:
            return self._doc(raw)
        except RowError as error:
            why = reason(error.cause, "InputFilter", self.plan.input_filter, "it")
            raise DataProcessingError(f"the document: {why}") from None

    # ------------------------------------------------------------------ output side

    def assemble(
        self, inputs: BytesLike, response: BytesLike, *, what: str, start: int | None = None
    ) -> bytes:
        """The output bytes for one batch: JoinSource and OutputFilter applied per record.

        ``inputs``: the batch's records as in the input file, unfiltered (``Batch.inputs``);
        ``response``: the model's answer to the batch. For SplitType Line the result is one
        line per record, each ending in ``\\n``. ``what`` names the batch in errors (file and
        byte range); ``start``, the batch's input offset, lets errors name a record's byte.
        """
        answer = response if type(response) is bytes else bytes(response)
        step = self._out
        if step is None:
            return answer
        raw = inputs if type(inputs) is bytes else bytes(inputs)
        if self.lines:
            sent, got = count_lines(raw), count_lines(answer)
            if got != sent:
                raise DataProcessingError(
                    f"{what}: the model answered {got} line{_s(got)} for {sent} "
                    f"record{_s(sent)} sent; with JoinSource Input or an OutputFilter each "
                    "record needs exactly one line of answer, in order"
                )
        try:
            return step(raw, answer)
        except RowError as error:
            where = ""
            if self.lines:
                where = f"record {error.row + 1} of {count_lines(raw)} in this batch"
                if start is not None:
                    where += f" (input byte {start + line_offset(raw, error.row)})"
                where += ": "
            if isinstance(error.cause, PathMiss):
                whose = "the joined record" if self.plan.join else "the answer"
            else:
                answer_side = error.answer or not self.plan.join  # no join: only answers parsed
                whose = "the model's answer" if answer_side else "the input record"
            why = reason(error.cause, "OutputFilter", self.plan.output_filter, whose)
            raise DataProcessingError(f"{what}: {where}{why}") from None


def _s(count: int) -> str:
    return "" if count == 1 else "s"
