"""RunConfig in sections (refit_core/sections.py): one table routes each flat setting to its section, config.json
holds one object per section, and a run directory written before the sections still reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.configs import resolve
from orchestrator.configs.flags import FLAGS
from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.sections import SECTION, Hardware, Layouts, RunSettings

DATA = Path(__file__).parent / "data"


def test_each_setting_has_one_section_and_each_flag_goes_through_the_table() -> None:
    """Every flag of a RunConfig setting names a field the table knows; every field but the layouts themselves
    and the link figures' source (set with ceilings) has its flag."""
    flagged = {f.field for f in FLAGS if f.target == "run"}
    assert flagged == set(SECTION) - {"source", "destination", "link_source"}
    assert SECTION["method"] == "run" and SECTION["gpus"] == "hardware" and SECTION["mode"] == "layouts"


def test_of_and_with_changes_route_flat_names_to_their_sections() -> None:
    src, dst = ParallelLayout(tp=2), ParallelLayout(ep=2)
    cfg = RunConfig.of("x", resolve("config-4").model, src, dst, RefitMode.COLLOCATED, method="gloo", gpus=4,
                       use_case="u")
    assert cfg.layouts == Layouts(src, dst, RefitMode.COLLOCATED)
    assert cfg.run == RunSettings(method="gloo") and cfg.hardware == Hardware(gpus=4) and cfg.use_case == "u"
    changed = cfg.with_changes(iterations=7, gpus_per_node=4, source=dst, name="y")
    assert (changed.run.iterations, changed.run.method, changed.hardware.gpus_per_node, changed.hardware.gpus,
            changed.layouts.source, changed.name) == (7, "gloo", 4, 4, dst, "y")
    assert cfg.with_changes(run=RunSettings(), warmup=0).run == RunSettings(warmup=0)  # a whole section, then a field
    with pytest.raises(TypeError):
        cfg.with_changes(methd="nccl")


def test_config_json_is_one_object_per_section() -> None:
    cfg = resolve("config-1")
    d = json.loads(json.dumps(cfg.to_json()))
    assert list(d) == ["name", "model", "layouts", "run", "hardware", "use_case", "description"]
    assert d["layouts"]["mode"] == "non-collocated" and d["layouts"]["source"]["ep"] == 2
    assert d["run"]["method"] == "nvshmem" and d["hardware"]["gpus"] == 8
    assert RunConfig.from_json(d) == cfg


def test_a_flat_config_json_written_before_the_sections_still_reads(tmp_path: Path) -> None:
    """data/config-before-sections.json: config-4 with --refit-method gloo --gpus 4 as main wrote config.json before
    the split (flat; with `fallback_without_gpu`, now a launch decision in devices.json, ignored here)."""
    flat = json.loads((DATA / "config-before-sections.json").read_text())
    assert "method" in flat and "run" not in flat and flat["fallback_without_gpu"] is True
    (tmp_path / "config.json").write_text(json.dumps(flat))
    assert RunConfig.read(tmp_path / "config.json") == resolve("config-4").with_changes(method="gloo", gpus=4)


@pytest.mark.parametrize("cluster, explicit, fallback", [("slurm", False, True), ("slurm", True, False),
                                                         ("local", False, False)])
def test_the_cpu_fallback_on_nodes_is_a_launch_decision_in_devices_json(cluster: str, explicit: bool, fallback: bool,
                                                                       tmp_path: Path) -> None:
    """A config's own GPU method submitted to SLURM may fall back on nodes without CUDA: the spec's DeviceMap says
    so (devices.json, what the ranks read with their GPUs), the config does not."""
    from jobs.refit_job import load_devices
    from orchestrator.submission.clusters import LOCAL, SLURM, Facts
    from orchestrator.submission.runspec import ClusterOptions, make_spec
    from refit_core.errors import RunDirError

    cfg = resolve("config-1")
    spec = make_spec("r", cfg, SLURM if cluster == "slurm" else LOCAL, ClusterOptions(cluster=cluster), {}, explicit,
                     Facts(None if cluster == "slurm" else 8, True, None, 8))
    assert spec.devices is not None and spec.devices.fallback_without_gpu is fallback
    assert "fallback_without_gpu" not in json.dumps(spec.config.to_json())
    (tmp_path / "devices.json").write_text(json.dumps(spec.devices.to_json()))
    assert load_devices(tmp_path) == spec.devices
    assert ("fallback_without_gpu" in spec.devices.to_json()) is fallback  # `plan --json` reads as before
    (tmp_path / "devices.json").write_text(json.dumps({**spec.devices.to_json(), "fallback_without_gpu": "yes"}))
    with pytest.raises(RunDirError, match="fallback_without_gpu must be true or false"):
        load_devices(tmp_path)
