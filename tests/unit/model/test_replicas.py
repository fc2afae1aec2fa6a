"""The pieces of ``agent.model.replicas`` that need no server: ModelCommand placeholders
and the latency statistics of the summary."""

from __future__ import annotations

from agent.model.replicas import LATENCY_SAMPLES, ReplicaStats, command_for


def test_placeholders_are_filled_and_other_braces_left() -> None:
    argv = ["serve", "--port={port}", "--gpu", "{device}", "{replica}", "{model_dir}/m", "{x}"]
    filled = command_for(argv, port=8081, replica=1, device="1", model_dir="/opt/m")
    assert filled == ["serve", "--port=8081", "--gpu", "1", "1", "/opt/m/m", "{x}"]


def test_p99_and_the_sample_stays_bounded() -> None:
    stats = ReplicaStats()
    for n in range(10_000):
        stats.add(0.001 * (n % 100), 10, 5)
    assert stats.requests == 10_000 and len(stats.sample) == LATENCY_SAMPLES
    assert (stats.bytes_sent, stats.bytes_received) == (100_000, 50_000)
    assert 0.09 <= stats.p99() <= 0.099
    assert ReplicaStats().p99() == 0.0
