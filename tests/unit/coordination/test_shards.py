"""Which files are cut into shards, where, and how shards take part in the plan and the
records (README "Shards of one big file", docs/design.md §4.10)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.cli.app import main
from agent.cli.status import shard_lines
from agent.coordination.plan import format_plan, static_plan
from agent.coordination.records import FileRecord, _parse
from agent.coordination.shards import shard_files
from agent.coordination.state import StateLayout
from agent.job import DataUri, JobError, JobSettings, parse_job
from agent.storage import InputFile, ObjectInfo, file_id, name_outputs

MIB = 1 << 20
STATE = DataUri("s3", "b", "out/_bt-agent/j/")


def job(**agent: Any) -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "j",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
            "SplitType": agent.pop("split_type", "Line"),
            "CompressionType": agent.pop("compression", "None"),
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out"},
        "Agent": agent,
    }
    return parse_job(document, cwd="/work").settings


def files(*sizes: int) -> list[InputFile]:
    found = [
        InputFile(DataUri("s3", "b", f"in/f{n}"), f"f{n}", ObjectInfo(f"in/f{n}", size, f'"e{n}"'))
        for n, size in enumerate(sizes)
    ]
    name_outputs(found, DataUri("s3", "b", "out"))
    return found


def test_shard_size_mb_is_an_integer_of_zero_or_more() -> None:
    assert job().agent.shard_size_mb == 0
    assert job(ShardSizeMB=64).agent.shard_bytes == 64 * MIB
    with pytest.raises(JobError, match=r"\$\.Agent\.ShardSizeMB"):
        job(ShardSizeMB=-1)
    with pytest.raises(JobError, match=r"\$\.Agent\.ShardSizeMB"):
        job(ShardSizeMB="4")


def test_a_file_over_the_size_is_cut_into_equal_ranges_that_cover_it() -> None:
    listed = files(10 * MIB + 3, 4 * MIB, 1)
    sharding = shard_files(listed, job(ShardSizeMB=4), StateLayout(STATE))
    big = listed[0]
    shards = sharding.shards[big.id]
    assert len(shards) == 3  # ceil(10 MiB + 3 / 4 MiB)
    ranges = [(unit.shard.start, unit.shard.end) for unit in shards if unit.shard]
    assert ranges[0][0] == 0 and ranges[-1][1] == 10 * MIB + 3
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    # The others stay whole: one unit each, in listing order after the shards.
    assert sharding.units == (*shards, listed[1], listed[2])
    assert sharding.files == {big.id: big}
    first = shards[0]
    assert first.id == f"{big.id}.0-{ranges[0][1]}" and first.file == big.id
    assert first.output == STATE.join("shards", big.id, f"0-{ranges[0][1]}.out")
    assert first.weight == ranges[0][1]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"split_type": "None"}, "SplitType None"),
        ({"compression": "Gzip"}, "CompressionType Gzip"),
    ],
)
def test_gzip_and_whole_object_records_are_never_sharded_and_the_log_says_why(
    fields: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    listed = files(50 * MIB)
    with caplog.at_level(logging.INFO, logger="agent.coordinate"):
        sharding = shard_files(listed, job(ShardSizeMB=4, **fields), StateLayout(STATE))
    assert sharding.units == tuple(listed) and not sharding.shards
    assert [r.getMessage() for r in caplog.records if reason in r.getMessage()]


def test_the_static_plan_spreads_one_big_files_shards_over_every_instance() -> None:
    listed = files(48 * MIB, MIB // 2)
    sharding = shard_files(listed, job(ShardSizeMB=4), StateLayout(STATE))
    plan = static_plan(sharding.units, 3)
    assert [len(share.files) for share in plan.shares] == [5, 4, 4]
    assert plan.imbalance < 1.03  # 12 equal shards and a small file over 3
    lines = format_plan(plan)
    assert any("shard 1/12 [0, 4194304)" in line for line in lines), lines


def test_a_shards_record_is_its_own_and_says_where_its_records_began_and_ended() -> None:
    record = FileRecord(
        Input="s3://b/in/f0",
        InputETag='"e"',
        SettingsHash="h",
        Status="Completed",
        RunId="r",
        Instance="i",
        Output="s3://b/out/_bt-agent/j/shards/x/5-9.out",
        Shard="5-9",
        FirstRecordAt=6,
        LastRecordEnd=11,
    )
    assert record.id == f"{file_id('s3://b/in/f0')}.5-9"
    where = STATE.join("done", f"{record.id}.json")
    assert _parse(where.key, record.to_json(), where) == [(record.id, record)]


@pytest.mark.usefixtures("_reset_logging")
def test_bt_agent_plan_lists_each_instances_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(b"row\n" * (3 * MIB // 4))
    (tmp_path / "in" / "small.csv").write_bytes(b"row\n")
    document = {
        "TransformJobName": "local",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "in/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "out/"},
        "Agent": {"ShardSizeMB": 1},
    }
    (tmp_path / "job.json").write_text(json.dumps(document))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--job", "job.json", "--instance-count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("4 files, 3145732 bytes over 2 instance(s)")
    big = f"file://{tmp_path}/in/big.csv"
    shards = [line.split(maxsplit=1)[1] for line in lines if "shard" in line]
    assert sorted(shards) == [
        f"{big} shard 1/3 [0, 1048576)",
        f"{big} shard 2/3 [1048576, 2097152)",
        f"{big} shard 3/3 [2097152, 3145728)",
    ]


def test_bt_agent_status_shows_each_shards_file_range_instance_and_state() -> None:
    listed = files(3 * MIB)
    sharding = shard_files(listed, job(ShardSizeMB=1), StateLayout(STATE))
    first, second, _ = sharding.shards[listed[0].id]
    record = FileRecord(
        Input=str(first.uri),
        InputETag='"e0"',
        SettingsHash="h",
        Status="Completed",
        RunId="r",
        Instance="host:1 (instance 0 of 2)",
        Output=str(first.output),
        Shard=first.shard.name if first.shard else None,
    )
    lease = {"Input": f"{second.uri} [1048576, 2097152)", "Instance": "host:2"}
    lines = shard_lines(sharding, {record.id: record}, [lease], "r")
    assert lines == [
        "  shards of 1 file(s):",
        "    s3://b/in/f0: 3 shards",
        "      1/3 [0, 1048576): Completed by host:1 (instance 0 of 2)",
        "      2/3 [1048576, 2097152): in progress on host:2",
        "      3/3 [2097152, 3145728): to do",
    ]
