"""refitctl submit / sweep / status / results / cancel / runs / render with the local executor (no SLURM).

Jobs run through `refitctl` as a user types it, as local processes on gloo, with small models and
few ranks so the whole file stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import SMALL, only_run, only_run_or_sweep, refitctl, run_json
from orchestrator.submission import executor
from orchestrator.state.jobstate import job_state
from orchestrator.state.runfiles import JobRecord, read_run_info
from refit_core.numbers import human_bytes
from refit_core.records import load_rank_record, rank_files
from orchestrator.submission.clusters import LOCAL, SLURM
from orchestrator.submission.runspec import ClusterOptions, effective_config, job_env, parse_env, parse_time
from refit_core.errors import ConfigError

NO_GPU = executor.local_gpu_count() == 0
# The seed's Config 4 command (8GPU_CONFIGS.md), verbatim.
SEED_CONFIG_4 = """--tensor-model-parallel-size 2 --expert-model-parallel-size 1
    --rl-inference-tensor-model-parallel-size 1 --rl-inference-expert-model-parallel-size 1
    --refit-mode non-collocated --refit-method nvshmem --num-layers 2 --hidden-size 512 --num-attention-heads 4
    --seq-length 256 --max-position-embeddings 256 --micro-batch-size 1 --num-experts 8 --moe-router-topk 2
    --moe-shared-expert-intermediate-size 256 --ffn-hidden-size 1344 --num-benchmark-iterations 2""".split()


# ----------------------------------------------------------------------------- pure parts

def test_time_limits_use_slurm_syntax() -> None:
    assert parse_time("30") == 1800
    assert parse_time("0:20") == 20
    assert parse_time("1:00:00") == 3600
    assert parse_time("2-0") == 2 * 86400
    assert parse_time("1-2:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    for bad in ("", "abc", "0", "1:2:3:4"):
        with pytest.raises(ConfigError):
            parse_time(bad)


def test_resources_follow_gpus_per_node() -> None:
    opts = ClusterOptions(cluster="slurm")
    assert SLURM.resources(8, 8, opts).nodes == 1
    r = SLURM.resources(8, 4, opts)
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node) == (2, 4, 4)
    assert SLURM.resources(128, 8, opts).nodes == 16
    assert SLURM.resources(3, 4, opts).tasks_per_node == 3
    assert SLURM.resources(8, 8, ClusterOptions(nodes=2)).tasks_per_node == 4
    assert SLURM.resources(8, 8, ClusterOptions(request_gpus=False)).gpus_per_node == 0
    with pytest.raises(ConfigError, match="world is 8 ranks"):
        SLURM.resources(8, 8, ClusterOptions(nodes=3, tasks_per_node=2))
    with pytest.raises(ConfigError, match="local executor"):
        LOCAL.resources(8, 8, ClusterOptions(nodes=2))
    assert LOCAL.resources(8, 4, ClusterOptions()).tasks_per_node == 8


def test_job_environment_keeps_the_users_transport_settings() -> None:
    env = dict(job_env({"NCCL_NVLS_ENABLE": "1", "NVSHMEM_DEBUG": "INFO", "HOME": "/root", "REFITCTL_CLUSTER": "x"},
                       parse_env(["REFITCTL_FAULT=raise:rank=1:iteration=0"]), cpus_per_task=4))
    assert env["NCCL_NVLS_ENABLE"] == "1"  # the user's value is carried (and wins over the task's safe default)
    assert "NVSHMEM_DISABLE_NVLS" not in env  # the safe defaults are applied by each task, in one place
    assert env["NVSHMEM_DEBUG"] == "INFO" and env["OMP_NUM_THREADS"] == "4"
    assert env["REFITCTL_FAULT"] == "raise:rank=1:iteration=0"
    assert "HOME" not in env and "REFITCTL_CLUSTER" not in env
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_env(["NOEQUALS"])
    with pytest.raises(ConfigError, match="--sbatch-arg"):
        ClusterOptions(sbatch_args=("constraint=h100",))


def test_gpu_methods_fall_back_to_gloo_only_when_not_asked_for() -> None:
    from orchestrator.configs import resolve

    cfg = resolve("config-1")
    same, note = effective_config(cfg, method_explicit=False, gpus_available=True)
    assert same.run.method == "nvshmem" and note is None
    cpu, note = effective_config(cfg, method_explicit=False, gpus_available=False)
    assert cpu.run.method == "gloo" and "gloo" in note and "nvshmem" in note
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        effective_config(cfg, method_explicit=True, gpus_available=False)


def test_lost_state_is_a_plain_message(tmp_path: Path) -> None:
    """A run whose scheduler forgot it (unknown job id, vanished controller) reads UNKNOWN with a reason."""
    slurm = JobRecord("slurm", "987654321", "", 0.0, None)
    st = job_state(tmp_path, slurm)
    assert st.state == "UNKNOWN" and "987654321" in st.detail and st.final
    local = JobRecord("local", "1", "", 0.0, 999999999)
    st = job_state(tmp_path, local)
    assert st.state == "UNKNOWN" and "controller" in st.detail


def test_user_configs_in_the_example_file_are_valid() -> None:
    from orchestrator.configs import load_user_configs

    cfgs = load_user_configs(ROOT / "examples" / "my-configs.toml")
    assert set(cfgs) == {"tp-ep-swap-4gpu", "ep-refit-minimal", "deep-narrow"}
    for cfg in cfgs.values():
        cfg.validate()
    assert cfgs["tp-ep-swap-4gpu"].layouts.source.tp == 4 and cfgs["tp-ep-swap-4gpu"].layouts.destination.ep == 4
    assert cfgs["deep-narrow"].model.num_layers == 16 and cfgs["deep-narrow"].run.method == "nccl"


def test_render_writes_a_standalone_sbatch_script(tmp_path: Path) -> None:
    p = refitctl("render", "config-1", "--gpus-per-node", "4", "--partition", "debug", "--account", "acct",
                 "--qos", "high", "--time", "10", "--exclusive", "--sbatch-arg=--constraint=h100",
                 "--srun-arg=--cpu-bind=none", "--env", "NCCL_DEBUG=WARN", "--python", "python3",
                 runs=tmp_path, check=0)
    text = p.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=debug", "#SBATCH --account=acct", "#SBATCH --qos=high", "#SBATCH --time=10",
                 "#SBATCH --exclusive", "#SBATCH --constraint=h100", "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
                 "PYTHON=python3", "RUN_DIR=\"$SLURM_SUBMIT_DIR\"/runs/config-1-\"$SLURM_JOB_ID\""):
        assert line in text, line
    assert 'srun --kill-on-bad-exit=1 --output="$RUN_DIR/logs/rank-%5t.log" --cpu-bind=none "$PYTHON" ' \
           '-m jobs.refit_job "$RUN_DIR"' in text
    cfg = json.loads(text.split("<<'REFITCTL_CONFIG'\n")[1].split("\nREFITCTL_CONFIG")[0])
    assert cfg["name"] == "config-1" and cfg["run"]["method"] == "nvshmem" and cfg["hardware"]["gpus"] == 8
    run = json.loads(text.split("<<'REFITCTL_RUN'\n")[1].split("\nREFITCTL_RUN")[0])
    assert run["job"]["job_id"] == "@SLURM_JOB_ID@" and run["active_ranks"] == 6
    out = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name,extra", [("config-1", []), ("collocated-1", []), ("kimi-k2", ["--time", "1:00:00"])])
def test_example_scripts_are_current(name: str, extra: list[str], tmp_path: Path) -> None:
    """templates/examples/*.sbatch are what `make templates` renders today."""
    from orchestrator.configs import builtin_configs

    if name not in builtin_configs():
        pytest.skip(f"{name} is not in the registry")
    out = tmp_path / f"{name}.sbatch"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", "render", name,
           "--python", "python3", "--exclusive", *extra, "-o", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=120)
    checked_in = (ROOT / "templates" / "examples" / f"{name}.sbatch").read_text()
    fresh = out.read_text().replace(str(out), f"templates/examples/{name}.sbatch")
    # The script around the embedded JSON must match; the JSON only has to still describe the same run
    # (a field added to RunConfig later does not make the example wrong).
    assert _without_json(fresh) == _without_json(checked_in), "templates/examples are stale: run `make templates`"
    from refit_core.config import RunConfig

    old_cfg = RunConfig.from_json(json.loads(_heredoc(checked_in, "REFITCTL_CONFIG")))
    new_cfg = RunConfig.from_json(json.loads(_heredoc(fresh, "REFITCTL_CONFIG")))
    assert old_cfg == new_cfg, "templates/examples are stale: run `make templates`"


def _heredoc(text: str, tag: str) -> str:
    return text.split(f"<<'{tag}'\n")[1].split(f"\n{tag}")[0]


def _without_json(text: str) -> str:
    for tag in ("REFITCTL_CONFIG", "REFITCTL_RUN"):
        text = text.replace(_heredoc(text, tag), "...")
    return text


# ----------------------------------------------------------------------------- runs

def test_embedded_default_config_1_verifies_locally(tmp_path: Path) -> None:
    """The README's command: the seed's config-1 (full size), local processes, gloo without a GPU."""
    t = time.monotonic()
    p = refitctl("submit", "config-1", "--cluster", "local", "--poll", "0.5", runs=tmp_path, check=0)
    took = time.monotonic() - t
    print(f"refitctl submit config-1 --cluster local: {took:.1f} s")
    assert "World size: 8 (using 6 GPUs)" in p.stdout and "Idle ranks: 6-7" in p.stdout
    if NO_GPU:
        assert "running config-1 with gloo on the CPU instead of nvshmem" in p.stdout
    assert "COMPLETED" in p.stdout and "verified" in p.stdout
    assert took < 120  # the goal is under a minute on 2 cores; this bounds a loaded CI machine


def test_submit_writes_a_complete_run_directory(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--poll", "0.5", *SMALL,
                 runs=tmp_path, check=0)
    d = only_run(tmp_path)
    assert d.name.startswith("config-4-")
    for f in ("config.json", "layout.txt", "plan.json", "run.json", "results.json", "iterations.csv",
              "rank-iterations.csv", "job-state.json"):
        assert (d / f).is_file(), f
    assert sorted(x.name for x in (d / "logs").iterdir()) == [f"rank-{r:05d}.log" for r in range(3)]
    info = run_json(d)
    assert info["job"]["cluster"] == "local" and info["job"]["job_id"]
    assert info["final"]["state"] == "COMPLETED" and info["spec"]["resources"]["tasks_per_node"] == 3
    res = json.loads((d / "results.json").read_text())
    assert res["verified"] and res["timed_iterations"] == 2
    assert "Source ranks: 0-1 (TP=2, PP=1, EP=1)" in (d / "layout.txt").read_text()
    csv_lines = (d / "iterations.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,config,method,iteration,warmup,time_ms,GBps") and len(csv_lines) == 4
    assert "per-iteration timings" in p.stdout and "verified" in p.stdout
    # gloo on one host: off the sockets, reading the senders' shards (cma.py) or staged in rounds (shared.py)
    assert res["transport"]["shared_memory"] is True and (res["transport"]["cross_memory"] or res["transport"]["rounds"])
    assert f"memory beyond the shards: {human_bytes(res['extra_bytes_max'])} per rank, as allocated" in p.stdout

    out = refitctl("results", d.name, "--csv", runs=tmp_path, check=0).stdout
    assert out == (d / "iterations.csv").read_text()
    data = json.loads(refitctl("results", "config-4", "--json", runs=tmp_path, check=0).stdout)
    assert data["state"] == "COMPLETED" and data["verified"] and len(data["iterations"]) == 3
    status = refitctl("status", runs=tmp_path, check=0).stdout
    assert "COMPLETED" in status and d.name in status
    listing = refitctl("runs", runs=tmp_path, check=0).stdout
    assert d.name in listing and "COMPLETED" in listing


def test_seed_command_is_accepted_verbatim(tmp_path: Path) -> None:
    """`refitctl submit <the seed's flags>` is the seed's config-4; on CPU the explicit nvshmem is refused
    before anything is submitted, and with --refit-method gloo it runs and verifies."""
    a = json.loads(refitctl("plan", *SEED_CONFIG_4, "--json", runs=tmp_path, check=0).stdout)
    b = json.loads(refitctl("plan", "config-4", "--json", runs=tmp_path, check=0).stdout)
    assert {k: v for k, v in a.items() if k != "config"} == {k: v for k, v in b.items() if k != "config"}
    if NO_GPU:
        p = refitctl("submit", *SEED_CONFIG_4, "--cluster", "local", runs=tmp_path, check=2)
        assert "needs CUDA GPUs" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert not any(tmp_path.iterdir())
    p = refitctl("submit", *SEED_CONFIG_4, "--refit-method", "gloo", "--gpus", "3", "--cluster", "local",
                 "--poll", "0.5", runs=tmp_path, check=0)
    assert "COMPLETED" in p.stdout


def test_collocated_config_runs_locally(tmp_path: Path) -> None:
    refitctl("submit", "collocated-4", "--cluster", "local", "--refit-method", "gloo", "--poll", "0.5", *SMALL,
             runs=tmp_path, check=0)
    d = only_run(tmp_path)
    info = run_json(d)
    assert info["mode"] == "collocated" and info["active_ranks"] == 4
    roles = {load_rank_record(p).role for p in rank_files(d)}
    assert "source+destination" in roles


def test_a_failing_rank_fails_the_job_and_shows_its_error(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
                 "--env", "REFITCTL_FAULT=raise:rank=1:iteration=0", *SMALL, runs=tmp_path, check=1)
    assert "FAILED" in p.stdout
    assert "first failure: rank 1 (source): RuntimeError: injected fault: rank 1 raised at iteration 0" in p.stdout
    d = only_run(tmp_path)
    assert run_json(d)["final"]["state"] == "FAILED"
    status = refitctl("status", d.name, runs=tmp_path, check=0).stdout
    assert "FAILED" in status and "rank 1" in status and "injected fault" in status
    data = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert data["state"] == "FAILED" and not data["verified"] and "injected fault" in data["errors"]["1"]


def test_a_job_past_its_time_limit_ends_timeout(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
                 "--time", "0:12", "--env", "REFITCTL_FAULT=hang:rank=0:iteration=0", *SMALL, runs=tmp_path, check=1)
    assert "TIMEOUT" in p.stdout
    d = only_run(tmp_path)
    assert run_json(d)["final"]["state"] == "TIMEOUT"
    assert json.loads((d / "job-state.json").read_text())["state"] == "TIMEOUT"


def test_ctrl_c_detaches_and_status_reattaches(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", "submit",
           "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
           "--num-benchmark-iterations", "60", *SMALL]
    env = {**os.environ, "REFITCTL_RUNS_DIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob("*/run.json")) or run_json(only_run(tmp_path)).get("job") is None:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Detached" in out and "refitctl status" in out and "refitctl cancel" in out
    d = only_run(tmp_path)
    assert job_state(d, read_run_info(d).job).state in ("PENDING", "RUNNING", "SUBMITTED")
    p = refitctl("status", d.name, "--watch", "--poll", "0.5", runs=tmp_path, check=0)
    assert "COMPLETED" in p.stdout and "verified" in p.stdout


def test_cancel_stops_a_local_run(tmp_path: Path) -> None:
    refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--detach",
             "--env", "REFITCTL_FAULT=hang:rank=0:iteration=0", *SMALL, runs=tmp_path, check=0)
    d = only_run(tmp_path)
    pid = run_json(d)["job"]["controller_pid"]
    out = refitctl("cancel", d.name, runs=tmp_path, check=0).stdout
    assert "cancel requested" in out
    p = refitctl("status", d.name, "--watch", "--poll", "0.5", runs=tmp_path, check=0)
    assert "CANCELLED" in p.stdout
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the local controller outlived its cancelled run"
        time.sleep(0.2)
    assert "already CANCELLED" in refitctl("cancel", d.name, runs=tmp_path, check=0).stdout


def test_sweep_runs_one_after_another_compares_and_resumes(tmp_path: Path) -> None:
    """Three configs as a local array; the fault hits only the one with an active rank 3, --resume reruns it."""
    names = "config-4,tp-ep-swap-4gpu,ep-refit-minimal"
    p = refitctl("sweep", names, "--config-file", str(ROOT / "examples" / "my-configs.toml"), "--cluster", "local",
                 "--gpus", "4", "--refit-method", "gloo", "--poll", "0.5",
                 "--env", "REFITCTL_FAULT=raise:rank=3:iteration=0", *SMALL, runs=tmp_path, timeout=400, check=1)
    sweep = only_run_or_sweep(tmp_path)
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["configs"] == names.split(",") and len(data["jobs"]) == 1
    ids = [run_json(sweep / data["runs"][n][0])["job"]["job_id"] for n in data["configs"]]
    assert ids == [f"{data['jobs'][0]}_{i}" for i in range(3)]
    assert "by method" in p.stdout and "by refit" in p.stdout and "TP refit" in p.stdout and "EP refit" in p.stdout
    rows = (sweep / "comparison.csv").read_text().splitlines()
    assert len(rows) == 4 and "tp-ep-swap-4gpu" in rows[2] and ",FAILED," in rows[2] and ",COMPLETED," in rows[1]

    p = refitctl("sweep", "--resume", str(sweep), "--env", "REFITCTL_FAULT=", "--poll", "0.5", runs=tmp_path,
                 timeout=300, check=0)
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["runs"]["tp-ep-swap-4gpu"] == ["tp-ep-swap-4gpu", "tp-ep-swap-4gpu.2"]
    assert data["runs"]["config-4"] == ["config-4"]  # verified: not rerun
    assert (sweep / "comparison.csv").read_text().count(",COMPLETED,") == 3
    p = refitctl("sweep", "custom", "--resume", "--poll", "0.5", runs=tmp_path, check=0)
    assert "nothing to rerun" in p.stdout
    out = refitctl("results", sweep.name, "--csv", runs=tmp_path, check=0).stdout
    assert out.splitlines()[0].startswith("config,mode,method,requested_method")
