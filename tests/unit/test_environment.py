"""One settings channel: the environment is read in one module (refit_core/environment.py), run settings become
RunConfig fields where the run is resolved, and a task's place reaches it as one typed TaskEnv."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from orchestrator.configs import resolve
from refit_core import environment
from refit_core.config import ENV_OVERRIDES
from refit_core.environment import SAFE_ENV, SETTINGS, TaskEnv, apply_safe_defaults, task_env
from refit_core.errors import ConfigError

_READS = re.compile(r"\bos\.environ\b|\bgetenv\(|\bputenv\(")


def test_the_environment_is_touched_in_one_module() -> None:
    files = [p for d in ("refit_core", "orchestrator", "jobs") for p in (ROOT / d).rglob("*.py")]
    touching = sorted(str(p.relative_to(ROOT)) for p in files if _READS.search(p.read_text()))
    assert touching == ["refit_core/environment.py"]


def test_every_run_setting_variable_is_a_named_setting() -> None:
    assert set(ENV_OVERRIDES.values()) <= set(SETTINGS)
    assert all(name.startswith("REFITCTL_") for name in SETTINGS)


def test_safe_defaults_apply_once_and_the_users_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in SAFE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    apply_safe_defaults()
    assert environment.get("NCCL_NVLS_ENABLE") == "1"
    assert environment.get("NVSHMEM_DISABLE_NVLS") == "1" and environment.get("TORCH_SYMM_MEM_DISABLE_MULTICAST") == "1"


def test_a_tasks_place_from_torchrun_or_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST",
              "SLURM_RESTART_COUNT", "REFITCTL_FAULT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    t = task_env()
    assert (t.rank, t.world_size, t.local_rank, t.local_world_size) == (5, 8, 1, 4)
    assert (t.master_addr, t.master_port, t.restarts, t.fault) == ("127.0.0.1", 20000 + 123456 % 20000, 2, "")
    monkeypatch.setenv("RANK", "3")  # torchrun's names win over srun's
    monkeypatch.setenv("MASTER_ADDR", "node7")
    monkeypatch.setenv("MASTER_PORT", "29400")
    monkeypatch.setenv("REFITCTL_FAULT", "hang:rank=3")
    assert task_env() == TaskEnv(3, 8, 1, "node7", 29400, 4, 2, "hang:rank=3", t.visible_devices)


def test_run_settings_from_variables_become_config_fields() -> None:
    cfg = resolve("config-4")
    got = cfg.with_environment({"REFITCTL_STAGED_ZERO_COPY": "off", "REFITCTL_STAGED_DIRECT_MIN_BYTES": "1024",
                                "REFITCTL_NVSHMEM_SYNC": "host", "REFITCTL_MEGATRON_UNPATCHED": "1",
                                "REFITCTL_NVSHMEM_PLACEMENT": ""})  # empty: not set
    assert (got.run.staged_zero_copy, got.run.staged_direct_min_bytes, got.run.nvshmem_sync, got.run.megatron_unpatched,
            got.run.nvshmem_placement) == (False, 1024, "host", True, cfg.run.nvshmem_placement)
    assert cfg.with_environment({}) is cfg
    with pytest.raises(ConfigError, match=r"^REFITCTL_STAGED_ZERO_COPY='maybe': use 1 or 0 \(on or off\)$"):
        cfg.with_environment({"REFITCTL_STAGED_ZERO_COPY": "maybe"})
    with pytest.raises(ConfigError, match=r"^REFITCTL_STAGED_DIRECT_MIN_BYTES='4M': give a whole number of bytes"):
        cfg.with_environment({"REFITCTL_STAGED_DIRECT_MIN_BYTES": "4M"})
