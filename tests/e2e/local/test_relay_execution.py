"""Relayed plans executed (issue 26): gloo refits whose second hop (relays forwarding over the node) runs as
its own phase, every destination byte verified bitwise, on two-node layouts this machine runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.local import run_locally
from test_execution_gloo import ranks, small

# (config, GPUs per node): kimi-k2-small's destinations (TP=1, EP=4) on one node of 4, sharing every dense
# weight; config-5's destinations (TP=4) on two nodes of 2, sharing the experts (expert TP 1)
TWO_NODE = [("kimi-k2-small", 4), ("config-5", 2)]


@pytest.mark.parametrize("name,per_node", TWO_NODE)
def test_relayed_plan_verifies_with_the_relay_hop_timed(name: str, per_node: int, tmp_path: Path) -> None:
    cfg = small(name, gpus_per_node=per_node)
    choice = cfg.relay_choice()
    assert choice.uses_relays and choice.relayed is not None and choice.relayed.time_s < choice.direct.time_s
    plan = choice.plan
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"]
    recs = ranks(tmp_path)
    forwarding = {t.src for t in plan.transfers if t.hop} | {t.dst for t in plan.transfers if t.hop}
    assert forwarding and forwarding <= set(cfg.world().destination.ranks)
    for r in forwarding:
        timed = [it for it in recs[r].iterations if not it.warmup]
        assert recs[r].verified and timed and all("relay" in it.phases_ms for it in timed), r
        # the memory fit counts bucket_bytes of buffers per GPU: a relay forwards from its own shard and hop 1
        # stages through hop 0's first set, so its buffers stay within the bucket
        assert recs[r].transport["relay_rounds"] >= 0 and 0 < recs[r].extra_bytes <= cfg.run.bucket_bytes, r
    for r in cfg.world().source.ranks:
        assert all("relay" not in it.phases_ms for it in recs[r].iterations), r


def test_relay_off_sends_every_byte_from_a_source(tmp_path: Path) -> None:
    cfg = small("kimi-k2-small", gpus_per_node=4, relay="off")
    assert cfg.plan().relayed_bytes == 0 and cfg.relay_choice().relayed is None
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus and res["verified"]
    assert all("relay" not in it.phases_ms for rec in ranks(tmp_path).values() for it in rec.iterations)
