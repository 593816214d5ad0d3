"""Pre-flight against `sinfo`: what the cluster can never run is named before submission."""

from __future__ import annotations

import pytest

from orchestrator.submission.slurm_fit import NodeInfo, Request, misfit, parse_sinfo, parse_time_limit

SINFO = """node1|debug*|8|gpu:4|infinite|up|idle
node2|debug*|8|gpu:4|infinite|up|mixed
node3|long|64|gpu:h100:8(S:0-1)|2-00:00:00|up|idle
node4|long|64|gpu:h100:8(S:0-1)|2-00:00:00|up|drained
"""


def test_parse_sinfo_reads_partitions_gpus_limits_and_state() -> None:
    nodes = parse_sinfo(SINFO)
    assert nodes[0] == NodeInfo("node1", "debug", True, 8, 4, None, True, True)
    assert nodes[2].gpus == 8 and nodes[2].time_limit_s == 2 * 86400 and not nodes[2].default
    assert not nodes[3].usable


@pytest.mark.parametrize("text, secs", [("infinite", None), ("30", 1800), ("1:00:00", 3600), ("1-02:00:00", 93600),
                                        ("10:30", 630)])
def test_time_limits(text: str, secs: int | None) -> None:
    assert parse_time_limit(text) == secs


@pytest.mark.parametrize("req, reason", [
    (Request(1, 8, 1, 4, 600, None), None),
    (Request(2, 4, 1, 4, 600, None), None),
    (Request(1, 8, 1, 8, 600, None), "partition 'debug' cannot hold 8 GPUs per node (its nodes have at most 4)"),
    (Request(16, 8, 1, 8, 600, "long"), "partition 'long' cannot hold 16 nodes with 8 GPUs and 8 CPUs each (it has 1 usable)"),
    (Request(1, 16, 1, 0, 600, None), "partition 'debug' cannot hold 16 CPUs per node for 16 tasks (its nodes have at most 8)"),
    (Request(1, 8, 1, 8, 3 * 86400, "long"), "time limit 4320 min exceeds partition 'long''s 2880 min: pass a shorter --time"),
    (Request(1, 1, 1, 0, 60, "gpu"), "partition 'gpu' does not exist (partitions: debug, long)"),
])
def test_misfit_names_what_is_missing(req: Request, reason: str | None) -> None:
    assert misfit(req, parse_sinfo(SINFO)) == reason


def test_pending_reasons_say_what_to_change() -> None:
    from orchestrator.state.jobstate import pending_reason

    assert pending_reason("PartitionConfig").startswith("PartitionConfig: the partition cannot run this job")
    assert pending_reason("Resources") == ("Resources: waiting for nodes to free up: the job fits the partition, "
                                           "the nodes are busy")
    assert pending_reason("SomethingNew") == "SomethingNew"
