"""Ranks on GPUs (refit_core/planning/devices.py): what each rank gets, what is refused before launch, what is shown."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.submission import executor
from orchestrator.cli import main
from refit_core.planning.devices import assign_devices, shares_gpus
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout


def _world(mode: str, src: int, dst: int, idle: int):  # type: ignore[no-untyped-def]
    s, d = ParallelLayout(tp=src), ParallelLayout(tp=dst)
    need = src + dst if mode == "non-collocated" else max(src, dst)
    return world_layout(RefitMode(mode), s, d, need + idle)


def test_config_4_on_two_gpus() -> None:
    w = _world("non-collocated", 2, 1, 5)
    nv = assign_devices(w, "nvshmem", 8, 2)
    assert nv.devices == (0, 0, 0, None, None, None, None, None)
    assert nv.note == "3 NVSHMEM PEs on 1 of 2 GPUs: uneven PEs per GPU hang NVSHMEM init"
    assert nv.describe(w) == "GPU 0: ranks 0-2 (source, destination)  idle: 3-7 (no GPU)"
    nccl = assign_devices(w, "nccl", 8, 4)
    assert nccl.devices[:3] == (0, 1, 2) and nccl.note == ""
    assert nccl.describe(w) == "GPU 0: rank 0 (source)  GPU 1: rank 1 (source)  GPU 2: rank 2 (destination)  " \
                               "idle: 3-7 (no GPU)"
    with pytest.raises(ConfigError, match=r"^--refit-method nccl needs 3 GPUs on the node \(one per active rank: "
                                          r"NCCL refuses two ranks on one GPU\) but found 2: "):
        assign_devices(w, "nccl", 8, 2)
    assert assign_devices(w, "gloo", 8, 2).describe(w) == "no GPU: ranks 0-2 run on the CPU  idle: 3-7 (no GPU)"


def test_eight_pes_share_two_gpus_round_robin_and_nodes_are_named() -> None:
    w = _world("non-collocated", 4, 4, 0)
    assert assign_devices(w, "nvshmem", 8, 2).devices == (0, 1, 0, 1, 0, 1, 0, 1)
    two_nodes = assign_devices(w, "nccl", 4, 4)
    assert two_nodes.devices == (0, 1, 2, 3, 0, 1, 2, 3)
    assert two_nodes.describe(w).startswith("node 0 GPU 0: rank 0 (source)  ") and "node 1 GPU 3: rank 7 (destination)" \
        in two_nodes.describe(w)
    assert not shares_gpus(two_nodes.devices, list(range(8)), 4)
    assert shares_gpus(assign_devices(w, "nvshmem", 8, 2).devices, list(range(8)), 8)


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(["non-collocated", "collocated"]), src=st.integers(1, 12), dst=st.integers(1, 12),
       idle=st.integers(0, 6), per_node=st.integers(1, 24), gpus=st.integers(0, 9),
       method=st.sampled_from(["nccl", "nvshmem", "naive", "gloo"]))
def test_every_layout_and_gpu_count(mode: str, src: int, dst: int, idle: int, per_node: int, gpus: int,
                                    method: str) -> None:
    w = _world(mode, src, dst, idle)
    active = list(range(w.gpus_used))
    nodes: dict[int, list[int]] = {}
    for r in active:
        nodes.setdefault(r // per_node, []).append(r)
    cannot = method != "gloo" and (gpus == 0 or (method == "nccl" and max(map(len, nodes.values())) > gpus))
    if cannot:
        with pytest.raises(ConfigError) as e:
            assign_devices(w, method, per_node, gpus)
        assert "\n" not in str(e.value) and ("found" in str(e.value) or "has none" in str(e.value))
        return
    m = assign_devices(w, method, per_node, gpus)
    assert all(m.device(r) is None for r in w.idle_ranks)  # idle ranks never take a GPU
    if method == "gloo":
        assert set(m.devices) == {None}
        return
    underused = False
    for ranks in nodes.values():
        on = [m.device(r) for r in ranks]
        assert all(d is not None and 0 <= d < gpus for d in on)  # every active rank gets a GPU of its node
        counts = [on.count(g) for g in sorted(set(on))]
        if method == "nccl":
            assert counts == [1] * len(ranks)  # never shared
        else:
            assert len(set(counts)) == 1  # even: uneven PEs per GPU hang NVSHMEM init
            underused |= len(set(on)) < min(len(ranks), gpus)
    assert underused == (m.note != "")  # fewer GPUs than it could use: said in the note


def test_plan_shows_the_map_and_refuses_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "config-4", "--local-gpus", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[4] == "GPUs: GPU 0: ranks 0-2 (source, destination)  idle: 3-7 (no GPU)"
    assert out[5] == "note: 3 NVSHMEM PEs on 1 of 2 GPUs: uneven PEs per GPU hang NVSHMEM init"
    assert main(["plan", "config-2", "--local-gpus", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"]["devices"] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert main(["plan", "collocated-4", "--local-gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refitctl: error: --refit-method nccl needs 4 GPUs on the node (one per active rank") \
        and "but found 2: " in err and "--refit-method nvshmem" in err and err.count("\n") == 1


def test_submit_refuses_before_launching(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """collocated-4 (NCCL, 4 active ranks) on a machine with 2 GPUs: one line, exit 2, no run directory."""
    monkeypatch.setattr(executor, "local_gpu_count", lambda: 2)
    monkeypatch.setattr(executor, "submit_local", lambda *a, **k: pytest.fail("submitted"))
    assert main(["submit", "collocated-4", "--cluster", "local", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refitctl: error: --refit-method nccl needs 4 GPUs on the node") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
