"""DataProcessing (docs/design.md §2.5): InputFilter → model → JoinSource → OutputFilter per record.

Usage in the per-file pipeline, one processor per job and one batcher per input object::

    processor = make_processor(job)        # None: DataProcessing is all defaults,
                                           # keep the plain splitter path untouched
    batcher = RecordBatcher(processor, batch_strategy, max_payload_bytes)
    async for chunk in stream:             # uncompressed chunks, cut anywhere
        for batch in batcher.feed(chunk):
            send(batch)
    for batch in batcher.finish():
        send(batch)

    # send(batch): POST batch.data, then, in input order:
    what = f"{uri} bytes [{batch.start}, {batch.end})"
    output = processor.assemble(batch.inputs, response, what=what, start=batch.start)
    assembler.add(output)                  # AssembleWith as usual

* :class:`Batch` has the ``Body`` fields (``data``, ``start``, ``end``, ``records``,
  ``first``/``last`` always true): ``data`` is the filtered body, never over the bound;
  ``inputs`` the batch's unfiltered input bytes ``[start, end)``.
* ``assemble`` returns the response unchanged when ``processor.processes_output`` is
  false (no JoinSource, OutputFilter ``$``). Otherwise, for SplitType Line it returns one
  line per record, each ending in ``\\n`` — so AssembleWith Line adds nothing and
  AssembleWith None gives the same bytes; for SplitType None, one JSON document without
  a newline (AssembleWith Line then adds one).
* Errors are :class:`DataProcessingError` (a ``ValueError``) naming the record: by input
  byte offset on the input side (the caller prefixes the file), by batch (``what``) and
  record number on the output side; a record too large is the splitters'
  ``RecordTooLargeError``. Either fails the file.

Lower-level pieces: ``RecordProcessor.filter_rows`` filters a run of whole lines and
``filter_input`` one record; :func:`parse_path` parses a filter; :mod:`agent.dataproc.csv`
reads and writes rows; :mod:`agent.job.processing` holds the validation the job parser
calls. CSV work runs in the compiled ``_dataproc_c`` when it is built (``IMPLEMENTATION``
says ``native``), else in its pure twin ``_dataproc_py``; ``BT_AGENT_NO_EXTENSIONS=1``
forces the twin.
"""

from __future__ import annotations

from agent.dataproc.batching import Batch, RecordBatcher
from agent.dataproc.csv import CsvError, format_row, parse_row
from agent.dataproc.processor import RecordProcessor, make_processor
from agent.dataproc.records import IMPLEMENTATION, DataProcessingError
from agent.job import JsonPath, PathMiss, PathSyntaxError, parse_path

__all__ = [
    "IMPLEMENTATION",
    "Batch",
    "CsvError",
    "DataProcessingError",
    "JsonPath",
    "PathMiss",
    "PathSyntaxError",
    "RecordBatcher",
    "RecordProcessor",
    "format_row",
    "make_processor",
    "parse_path",
    "parse_row",
]
