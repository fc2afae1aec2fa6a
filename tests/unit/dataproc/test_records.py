"""InputFilter, JoinSource and OutputFilter per record (docs/design.md §2.5) via ``make_processor``.

Each documented SageMaker example has a test here; the job settings go through the job
parser, so every combination used is one validation accepts.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agent.dataproc import DataProcessingError, RecordProcessor, make_processor
from agent.job import parse_job

WHAT = "s3://bkt/in/data.csv bytes [0, 64)"


def processor(
    content_type: str | None = "text/csv",
    *,
    split: str = "Line",
    accept: str | None = "same",
    **processing: str,
) -> RecordProcessor:
    transform_input: dict[str, Any] = {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
        "SplitType": split,
    }
    transform_output: dict[str, Any] = {"S3OutputPath": "s3://bkt/out/", "AssembleWith": "Line"}
    if content_type is not None:
        transform_input["ContentType"] = content_type
    accept = content_type if accept == "same" else accept
    if accept is not None:
        transform_output["Accept"] = accept
    document = {
        "TransformJobName": "dp",
        "TransformInput": transform_input,
        "TransformOutput": transform_output,
        "DataProcessing": processing,
    }
    made = make_processor(parse_job(document, cwd="/").settings)
    assert made is not None
    return made


def test_defaults_give_no_processor() -> None:
    document = {
        "TransformJobName": "dp",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        "DataProcessing": {"InputFilter": "$", "OutputFilter": "$", "JoinSource": "None"},
    }
    assert make_processor(parse_job(document, cwd="/").settings) is None


# ----------------------------------------------------------------------------- CSV


def test_csv_input_filter_drops_the_id_column() -> None:
    p = processor(InputFilter="$[1:]")
    assert p.filters_input and not p.processes_output
    assert p.filter_input(b"id-1,0.5,1.5,2.5\n") == b"0.5,1.5,2.5\n"
    assert p.filter_input(b'id-2,"a,b",3\r\n') == b'"a,b",3\n'
    assert p.filter_input(b"id-3,7") == b"7\n"  # the last line of a file, no newline
    # Without a join or an OutputFilter, answers are written as they come.
    assert p.assemble(b"id-1,0.5\n", b"0.91\n0.3", what=WHAT) == b"0.91\n0.3"


def test_csv_index_list_with_open_slice() -> None:
    p = processor(InputFilter="$[0,5:]")
    assert p.filter_input(b"c0,c1,c2,c3,c4,c5,c6\n") == b"c0,c5,c6\n"


def test_csv_input_filter_passes_dollar_untouched() -> None:
    p = processor(JoinSource="Input")
    assert not p.filters_input and p.processes_output
    assert p.filter_input(b'"quoted",x\r\n') == b'"quoted",x\r\n'


def test_csv_join_appends_output_columns_to_the_unfiltered_row() -> None:
    p = processor(InputFilter="$[1:]", JoinSource="Input")
    inputs = b'id-1,0.5,1.5\nid-2,"a,b",3\r\nid-3,9'
    response = b"0.91,yes\n0.12,no\r\n0.5,no"
    assert p.assemble(inputs, response, what=WHAT) == (
        b'id-1,0.5,1.5,0.91,yes\nid-2,"a,b",3,0.12,no\nid-3,9,0.5,no\n'
    )


def test_csv_output_filter_keeps_the_id_and_the_prediction() -> None:
    # The guide's example: drop the ID before the model, then keep it next to the answer.
    p = processor(InputFilter="$[1:]", JoinSource="Input", OutputFilter="$[0,-1]")
    inputs = b"id-1,0.5,1.5,2.5\nid-2,3.5,4.5,5.5\n"
    sent = [p.filter_input(line + b"\n") for line in inputs.splitlines()]
    assert sent == [b"0.5,1.5,2.5\n", b"3.5,4.5,5.5\n"]
    assert p.assemble(inputs, b"0.91\n0.12\n", what=WHAT) == b"id-1,0.91\nid-2,0.12\n"


def test_csv_output_filter_without_join_filters_the_answer() -> None:
    p = processor(OutputFilter="$[1]")
    assert p.assemble(b"a\nb\n", b"x,0.9,y\nz,0.1,w\n", what=WHAT) == b"0.9\n0.1\n"


def test_csv_quoted_fields_survive_join_and_filter() -> None:
    p = processor(JoinSource="Input", OutputFilter="$[1:]")
    out = p.assemble(b'1,"Smith, J","say ""hi"""\n', b'"label, long"\n', what=WHAT)
    assert out == b'"Smith, J","say ""hi""","label, long"\n'


# ----------------------------------------------------------------------------- JSON


def test_json_lines_input_filter_selects_features() -> None:
    p = processor("application/jsonlines", InputFilter="$.features")
    assert p.filter_input(b'{"id": 1, "features": [1, 2.5, "x"]}\n') == b'[1,2.5,"x"]\n'


def test_json_join_adds_sagemaker_output_to_objects() -> None:
    p = processor("application/jsonlines", InputFilter="$.features", JoinSource="Input")
    inputs = b'{"id":1,"features":[1,2]}\n{"id":2,"features":[3,4]}\n'
    out = p.assemble(inputs, b'{"label":1}\n{"label":0}\n', what=WHAT)
    assert [orjson.loads(line) for line in out.splitlines()] == [
        {"id": 1, "features": [1, 2], "SageMakerOutput": {"label": 1}},
        {"id": 2, "features": [3, 4], "SageMakerOutput": {"label": 0}},
    ]
    assert out.endswith(b"\n") and b" " not in out  # compact, one line per record


def test_json_join_wraps_other_values() -> None:
    p = processor("application/jsonlines", JoinSource="Input")
    out = p.assemble(b'[1,2,3]\n"text"\n7\n', b"0.5\n[1]\nnull\n", what=WHAT)
    assert out.splitlines() == [
        b'{"SageMakerInput":[1,2,3],"SageMakerOutput":0.5}',
        b'{"SageMakerInput":"text","SageMakerOutput":[1]}',
        b'{"SageMakerInput":7,"SageMakerOutput":null}',
    ]


def test_json_output_filter_keeps_id_and_output() -> None:
    p = processor(
        "application/jsonlines",
        InputFilter="$.features",
        JoinSource="Input",
        OutputFilter="$['id','SageMakerOutput']",
    )
    inputs = b'{"id":"a","features":[1],"extra":true}\n{"id":"b","features":[2]}\n'
    out = p.assemble(inputs, b'{"score":0.9}\n{"score":0.1}\n', what=WHAT)
    assert out.splitlines() == [
        b'{"id":"a","SageMakerOutput":{"score":0.9}}',
        b'{"id":"b","SageMakerOutput":{"score":0.1}}',
    ]


def test_json_document_with_split_none_is_one_record() -> None:
    p = processor("application/json", split="None", InputFilter="$.instances", JoinSource="Input")
    document = b'{\n  "id": 9,\n  "instances": [[1, 2], [3, 4]]\n}\n'
    assert p.filter_input(document) == b"[[1,2],[3,4]]"
    out = p.assemble(document, b'{"predictions": [0.1, 0.9]}', what=WHAT)
    assert orjson.loads(out) == {
        "id": 9,
        "instances": [[1, 2], [3, 4]],
        "SageMakerOutput": {"predictions": [0.1, 0.9]},
    }


def test_application_json_with_split_line_reads_one_value_per_line() -> None:
    p = processor("application/json", OutputFilter="$.label")
    assert p.assemble(b"{}\n{}\n", b'{"label":1}\n{"label":2}\n', what=WHAT) == b"1\n2\n"


def test_long_integers_are_kept_exactly() -> None:
    p = processor("application/jsonlines", InputFilter="$.id", JoinSource="Input")
    record = b'{"id": 123456789012345678901234567890, "x": 1}\n'
    assert p.filter_input(record) == b"123456789012345678901234567890\n"
    out = p.assemble(record, b"1\n", what=WHAT)
    assert out == b'{"id":123456789012345678901234567890,"x":1,"SageMakerOutput":1}\n'


# ----------------------------------------------------------------------------- errors


def test_fewer_answer_lines_than_records_fail_naming_the_batch() -> None:
    p = processor(InputFilter="$[1:]", JoinSource="Input")
    with pytest.raises(DataProcessingError) as caught:
        p.assemble(b"a,1\nb,2\nc,3\n", b"0.1\n0.2\n", what=WHAT)
    message = str(caught.value)
    assert message.startswith(WHAT + ": ")
    assert "the model answered 2 lines for 3 records sent" in message
    with pytest.raises(DataProcessingError, match="answered 4 lines for 3 records"):
        p.assemble(b"a,1\nb,2\nc,3\n", b"1\n2\n3\n4\n", what=WHAT)
    q = processor(OutputFilter="$[0]")  # the rule holds without a join, too
    with pytest.raises(DataProcessingError, match="answered 1 line for 2 records"):
        q.assemble(b"a\nb", b"0.1\n", what=WHAT)


def test_output_filter_index_out_of_range_names_the_record() -> None:
    p = processor(JoinSource="Input", OutputFilter="$[0,4]")
    with pytest.raises(DataProcessingError) as caught:
        p.assemble(b"a,1,2,3\nb,1\n", b"0.1\n0.2\n", what=WHAT, start=100)
    message = str(caught.value)
    assert message.startswith(WHAT + ": record 2 of 2 in this batch (input byte 108)")
    assert "OutputFilter $[0,4] does not fit the joined record" in message
    assert "asks for index 4, but there are only 3 columns" in message


def test_input_filter_misses_name_the_record_offset() -> None:
    p = processor(InputFilter="$[3]")
    with pytest.raises(DataProcessingError, match=r"record at byte 40: InputFilter \$\[3\]"):
        p.filter_input(b"a,b\n", offset=40)
    j = processor("application/jsonlines", InputFilter="$.features")
    with pytest.raises(DataProcessingError, match="no key 'features'"):
        j.filter_input(b'{"id": 1}\n')
    with pytest.raises(DataProcessingError, match="not valid JSON"):
        j.filter_input(b"{oops\n")


def test_bad_answers_are_blamed_on_the_model() -> None:
    p = processor("application/jsonlines", JoinSource="Input")
    with pytest.raises(
        DataProcessingError, match="record 2 of 2 .*the model's answer is not valid"
    ):
        p.assemble(b"{}\n{}\n", b"1\nnot json\n", what=WHAT)
    with pytest.raises(DataProcessingError, match="record 1 of 1 .*the input record is not valid"):
        p.assemble(b"{oops\n", b"1\n", what=WHAT)
    c = processor(JoinSource="Input", OutputFilter="$[0]")
    with pytest.raises(DataProcessingError, match="answer is not an RFC 4180 CSV row"):
        c.assemble(b"a\n", b'"open\n', what=WHAT)
    with pytest.raises(DataProcessingError, match="input record is not an RFC 4180 CSV row"):
        c.assemble(b'"open\n', b"1\n", what=WHAT)
    d = processor(OutputFilter="$[0]")
    with pytest.raises(DataProcessingError, match="the model's answer is not an RFC 4180"):
        d.assemble(b"a\n", b'"open\n', what=WHAT)
    j = processor("application/json", split="None", OutputFilter="$.label")
    with pytest.raises(DataProcessingError, match="the model's answer is not valid JSON"):
        j.assemble(b"{}", b"", what=WHAT)
    with pytest.raises(DataProcessingError, match=r"OutputFilter \$.label does not fit the answer"):
        j.assemble(b"{}", b"[1]", what=WHAT)
