"""Hostile names and values (issue 15, items 1-3 and 10-14): nothing runs but the refit, every error is one line.

Scripts are written the two ways refitctl writes them: by `submit --cluster slurm` (through submitit, to a
fake `sbatch` on PATH that saves the script and prints a job id) and by `render`. Each script is then run
with bash in a sandbox where `srun` is a stub that records its arguments and runs nothing; the hostile values
try to `touch` a marker file, and the test asserts the marker never appears and srun was called once, with
exactly the refit's command.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator.submission import executor
from orchestrator.configs import resolve
from orchestrator.submission.clusters import LOCAL, SLURM, Facts
from orchestrator.submission.runspec import ClusterOptions, HostMemory, job_env, make_spec
from refit_core.errors import ConfigError
from refit_core.numbers import GIB

STUBS = {
    # saves the script it is given (its last argument) and answers like sbatch
    "sbatch": 'n=$(ls "$SAVED" | wc -l); cp "${@: -1}" "$SAVED/job-$n.sh"; echo "Submitted batch job 4242"',
    # records its arguments (NUL-separated) and the environment the task would get; runs nothing
    "srun": 'printf "%s\\0" "$@" >> "$SRUN_LOG"; printf "\\n" >> "$SRUN_LOG"; env -0 > "$SRUN_LOG.env"',
    **{tool: "exit 1" for tool in ("squeue", "sacct", "scontrol", "sinfo", "scancel")},
}
SECRET = "hunter2-not-for-scripts"


@pytest.fixture()
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """Stub tools on PATH, a folder for saved scripts, a marker file that must never appear."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in STUBS.items():
        (bin_dir / tool).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "saved").mkdir()
    return {"root": tmp_path, "bin": bin_dir, "saved": tmp_path / "saved", "mark": tmp_path / "pwned",
            "runs": tmp_path / "runs"}


def refitctl(sb: dict[str, Path], *args: str, env: dict[str, str] | None = None,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PATH": f"{sb['bin']}:{os.environ['PATH']}", "SAVED": str(sb["saved"]),
            "REFITCTL_RUNS_DIR": str(sb["runs"]), "COLUMNS": "160", "PYTHONPATH": str(ROOT),
            "REFITCTL_SECRET": SECRET, **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=full, cwd=sb["root"], timeout=120, input=stdin)


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refitctl: error: "), p.stderr
    return lines[0]


def run_script(sb: dict[str, Path], script: Path, submit_dir: Path) -> list[list[str]]:
    """Run a batch script with bash as SLURM would (job id 4242), srun stubbed; the srun calls' arguments."""
    log = sb["root"] / "srun.log"
    log.unlink(missing_ok=True)
    submit_dir.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{sb['bin']}:/usr/bin:/bin", "HOME": str(sb["root"]), "SRUN_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(submit_dir),
           # what sbatch exports from the submitting shell: the script must not take these
           "PYTHON": f"/bin/sh -c 'touch {sb['mark']}'", "RUN_DIR": str(sb["root"] / "evil-run-dir")}
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=submit_dir, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not sb["mark"].exists(), f"{script} ran an injected command"
    assert not (sb["root"] / "evil-run-dir").exists()
    calls = [c.split("\0") for c in log.read_text().split("\0\n") if c] if log.exists() else []
    return [[a for a in c if a] for c in calls]


def hostile_config(sb: dict[str, Path]) -> Path:
    """A config file whose free text (use case, description) holds shell and markup syntax."""
    mark = sb["mark"]
    path = sb["root"] / "hostile.toml"
    use_case = f"x`touch {mark}`; $(touch {mark}) # [/] [bold]"
    path.write_text(f'[configs.hostile]\nfrom = "config-4"\nuse_case = {json.dumps(use_case)}\n'
                    f'description = "it\'s \\"quoted\\" [/]"\n')
    return path


# ----------------------------------------------------------------------------- refused before anything is written

NEWLINE_NAME = "x\ntouch {mark} #"


@pytest.mark.parametrize("args", [
    ["submit", "config-4", "--cluster", "slurm", "--no-gpu-request", "--detach", "--name", NEWLINE_NAME],  # item 1
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--name", "[/]"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--name", "a" * 300],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--name", "../escape"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--job-name", "j\n#SBATCH --x"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--partition", "p\ntouch {mark}"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--time", "30\n"],  # item 3, through submit
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--env", "A=1\ntouch {mark}"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--env", "A\n=1"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--sbatch-arg=--comment=a\ntouch {mark}"],
    ["submit", "config-4", "--cluster", "slurm", "--detach", "--runs-dir", "{root}/r\ntouch {mark}"],
    ["render", "config-4", "--python", "/usr/bin/python3\ntouch {mark} #", "-o", "{root}/r.sbatch"],  # item 2
    ["render", "config-4", "--run-dir", "/tmp/x\ntouch {mark}", "-o", "{root}/r.sbatch"],
    ["render", "config-4", "--time", "30\n", "-o", "{root}/r.sbatch"],  # item 3
    ["render", "config-4", "--time", " 30", "-o", "{root}/r.sbatch"],
])
def test_hostile_values_are_refused_before_anything_is_written(sandbox: dict[str, Path], args: list[str]) -> None:
    args = [a.format(mark=sandbox["mark"], root=sandbox["root"]) for a in args]
    one_error_line(refitctl(sandbox, *args))
    assert not list(sandbox["saved"].iterdir()), "sbatch was called"
    assert not sandbox["runs"].exists() or not list(sandbox["runs"].iterdir()), "a run directory was left"
    assert not (sandbox["root"] / "r.sbatch").exists()
    assert not sandbox["mark"].exists()


# ----------------------------------------------------------------------------- accepted, and quoted

def test_submit_writes_hostile_values_as_data(sandbox: dict[str, Path]) -> None:
    """submit through submitit: a runs directory, srun/sbatch args and config text full of shell syntax
    (item 1); the saved script runs nothing but `srun ... python -m submitit.core._submit FOLDER`."""
    mark = sandbox["mark"]
    runs = sandbox["root"] / f"runs $(touch {mark}); `touch {mark}` [/] it's"
    p = refitctl(sandbox, "submit", "hostile", "--config-file", str(hostile_config(sandbox)), "--cluster", "slurm",
                 "--no-gpu-request", "--detach", "--runs-dir", str(runs), f"--srun-arg=--comment=$(touch {mark})",
                 f"--sbatch-arg=--comment=$(touch {mark})", "--env", f"A=$(touch {mark})",
                 env={"NCCL_DEBUG": "WARN"})
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "[/]" in p.stdout  # item 11: markup shown as written
    (script,) = sandbox["saved"].iterdir()
    text = script.read_text()
    assert "#SBATCH --job-name=refit-hostile\n" in text
    (run_dir,) = [d for d in runs.iterdir() if (d / "run.json").exists()]
    info = json.loads((run_dir / "run.json").read_text())
    assert SECRET not in text and SECRET not in json.dumps(info)  # item 14
    assert "REFITCTL_SECRET" not in info["spec"]["env"] and info["spec"]["env"]["NCCL_DEBUG"] == "WARN"
    (call,) = run_script(sandbox, script, sandbox["root"] / "submit")
    folder = str((run_dir / "submitit").resolve())
    assert call[-5:] == [sys.executable, "-u", "-m", "submitit.core._submit", folder]
    assert f"--comment=$(touch {mark})" in call  # the srun arg, as one literal word


@pytest.mark.parametrize("case", ["quoted-python", "braces", "command-substitution", "sed-and-json", "default"])
def test_render_writes_hostile_values_as_data(sandbox: dict[str, Path], case: str) -> None:
    """render (item 2): --python and --run-dir with shell syntax, env values with quotes and braces; the script
    passes `bash -n`, and run with bash it calls srun twice (the plan, then the tasks) with the literal values and writes a valid run.json
    naming its run directory (escaped for sed and JSON). $PYTHON/$RUN_DIR of the job's environment are ignored
    (item 14)."""
    root, mark = sandbox["root"], sandbox["mark"]
    python = f"/usr/bin/python3; touch {mark} #" if case == "quoted-python" else "python3"
    run_dir = {"braces": f"{root}/x}}; touch {mark}; #", "command-substitution": f"{root}/$(touch {mark})",
               "sed-and-json": f'{root}/a|b&c\\d"e\'f [/] @RUN_DIR@', "quoted-python": f"{root}/plain"}.get(case)
    submit_dir = root / (f'sub $(touch {mark}) |&\\"' if case == "default" else "sub")
    out = root / "job.sbatch"
    args = ["render", "hostile", "--config-file", str(hostile_config(sandbox)), "--python", python, "-o", str(out),
            "--env", f"A=$(touch {mark})", "--env", "B=it's } ${HOME} `x`", f"--srun-arg=--comment=`touch {mark}`",
            f"--sbatch-arg=--comment=$(touch {mark})"]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    p = refitctl(sandbox, *args)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0
    assert SECRET not in text and "REFITCTL_SECRET" not in text
    (prepare, call) = run_script(sandbox, out, submit_dir)
    expect_dir = run_dir if run_dir is not None else f"{submit_dir}/runs/hostile-4242"
    assert prepare == ["--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", f"--comment=`touch {mark}`",
                       python, "-m", "jobs.refit_job", "--prepare", expect_dir]  # the plan, once
    assert call == ["--kill-on-bad-exit=1", f"--output={expect_dir}/logs/rank-%5t.log", f"--comment=`touch {mark}`",
                    python, "-m", "jobs.refit_job", expect_dir]
    task_env = dict(kv.split("=", 1) for kv in (root / "srun.log.env").read_text().split("\0") if "=" in kv)
    assert task_env["A"] == f"$(touch {mark})" and task_env["B"] == "it's } ${HOME} `x`"
    info = json.loads((Path(expect_dir) / "run.json").read_text())
    assert info["run_dir"] == expect_dir and info["job"]["job_id"] == "4242" and info["job"]["folder"] == expect_dir
    assert json.loads((Path(expect_dir) / "config.json").read_text())["use_case"].startswith("x`touch")


def test_rendered_comment_lines_stay_comments(sandbox: dict[str, Path]) -> None:
    """The `# Written by ...` line holds the command line; whatever it quotes, it is one line."""
    mark = sandbox["mark"]
    p = refitctl(sandbox, "render", "config-4", "--python", "python3", "--run-dir", f"/x'\"; touch {mark}")
    assert p.returncode == 0, p.stderr
    head = p.stdout.splitlines()[:4]
    assert head[0] == "#!/bin/bash" and all(ln.startswith("# ") for ln in head[1:])


# ----------------------------------------------------------------------------- display (item 11)

def test_markup_in_names_and_paths_is_shown_as_written(sandbox: dict[str, Path]) -> None:
    cfg = str(hostile_config(sandbox))
    runs = str(sandbox["root"] / "runs [/] [bold]")
    p = refitctl(sandbox, "list", "--config-file", cfg)
    assert p.returncode == 0 and "[/]" in p.stdout, p.stderr
    p = refitctl(sandbox, "plan", "hostile", "--config-file", cfg)
    assert p.returncode == 0, p.stderr
    p = refitctl(sandbox, "submit", "hostile", "--config-file", cfg, "--cluster", "slurm", "--no-gpu-request",
                 "--detach", "--runs-dir", runs)
    assert p.returncode == 0 and "runs [/] [bold]" in p.stdout, p.stderr
    for args in (["status"], ["runs"], ["results", "hostile"], ["cancel", "hostile"], ["status", "--watch"]):
        p = refitctl(sandbox, *args, "--runs-dir", runs)
        assert "Traceback" not in p.stderr and "MarkupError" not in p.stderr, (args, p.stderr)
        assert p.returncode in (0, 1) or len(p.stderr.splitlines()) == 1, (args, p.stderr)


# ----------------------------------------------------------------------------- one line, exit 2 (items 12, 13)

@pytest.mark.parametrize("args,says", [
    (["plan", "x", "--config-file", "{root}/binary.toml"], "is not UTF-8 text"),
    (["plan", "x", "--config-file", "{root}"], "is a folder"),
    (["plan", "x", "--config-file", "/dev/zero"], "is not a regular file"),
    (["list", "--config-file", "{root}/deep.toml"], "nests arrays or tables too deeply"),
    (["render", "config-4", "-o", "{root}/missing/x.sbatch"], "the folder {root}/missing does not exist"),
    (["render", "config-4", "-o", "{root}"], "is a folder"),
    (["plan", "config-4", "--png", "{root}/binary.toml/x.png"], "is a file, not a folder"),
    (["runs", "--runs-dir", "{root}/binary.toml"], "is a file, not a folder"),
    (["submit", "config-4", "--cluster", "local", "--runs-dir", "{root}/binary.toml/x"], "is a file, not a folder"),
    (["submit", "config-4", "--cluster", "local", "--name", "n" * 300], "is not a valid name: use 1 to 64"),
    (["status", "--watch", "--poll", "-1"], "--poll '-1': give seconds from 0.1 to 3600"),
    (["status", "--watch", "--poll", "0"], "--poll '0': give seconds from 0.1 to 3600"),
    (["status", "--watch", "--poll", "nan"], "--poll 'nan': give seconds from 0.1 to 3600"),
    (["plan", "config-4", "--num-lay", "3"], "unrecognized arguments: --num-lay (did you mean --num-layers?) 3"),
    (["submit", "config-4", "--na", "x"], "unrecognized arguments: --na (did you mean --name?) x"),
    (["runs", "--last", "0"], "--last '0': give a whole number from 1 to 1,000,000"),
    (["runs", "--last", "-5"], "--last '-5': give a whole number from 1 to 1,000,000"),
])
def test_bad_input_is_one_line(sandbox: dict[str, Path], args: list[str], says: str) -> None:
    root = sandbox["root"]
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "deep.toml").write_text("a = " + "[" * 50_000 + "\n")
    line = one_error_line(refitctl(sandbox, *[a.format(root=root) for a in args]))
    assert says.format(root=root) in line


@pytest.mark.parametrize("flag", ["--num-layers", "--tensor-model-parallel-size", "--gpus", "--refit-timeout",
                                  "--gpu-memory-gb", "--num-benchmark-iterations", "--refit-bucket-size"])
def test_one_range_message_per_flag(sandbox: dict[str, Path], flag: str) -> None:
    """-1, 0 and a huge value of one flag read the same (item 13)."""
    texts = set()
    for value in ("-1", "0", str(2 ** 50), str(10 ** 30)):
        line = one_error_line(refitctl(sandbox, "plan", "config-4", f"{flag}={value}"))
        texts.add(line.split(", got")[0])
    assert len(texts) == 1, texts


def test_plan_into_a_closed_pipe_exits_quietly(sandbox: dict[str, Path]) -> None:
    cmd = f"{shlex.quote(sys.executable)} -m orchestrator plan config-1 --json | head -1; exit ${{PIPESTATUS[0]}}"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "{\n", "")


# ----------------------------------------------------------------------------- environment (item 14), memory (item 10)

def test_refitctl_variables_are_forwarded_by_allow_list_only() -> None:
    env = dict(job_env({"REFITCTL_SECRET": SECRET, "REFITCTL_TOKEN": "t", "REFITCTL_FAULT": "raise:rank=0:iteration=0",
                        "REFITCTL_NVSHMEM_SYNC": "host", "NCCL_DEBUG": "INFO", "PYTHON": "/evil"}, (), None))
    assert {k for k in env if k.startswith("REFITCTL_")} == {"REFITCTL_FAULT"}  # run settings travel in config.json
    assert env["NCCL_DEBUG"] == "INFO" and "PYTHON" not in env


def test_local_cpu_runs_are_checked_against_the_host_memory() -> None:
    """Item 10: a local gloo run needs its ranks' shards and buffers together in this machine's memory, whatever
    --gpu-memory-gb says; a GPU-sized limit does not apply to it."""
    cfg = resolve("config-4").with_changes(method="gloo", gpus=3, bucket_bytes=20 * GIB)  # 3 x 20 GiB of buffers
    opts = ClusterOptions(cluster="local")
    with pytest.raises(ConfigError, match=r"the 3 ranks of this local gloo run need 60\.\d\d GiB .* this machine has "
                                          r"23\.00 GiB available \(24\.00 GiB in all\)"):
        make_spec("c", cfg, LOCAL, opts, {}, True, Facts(0, False, HostMemory(23 * GIB, 24 * GIB), 1))
    make_spec("c", cfg, LOCAL, opts, {}, True, Facts(0, False, HostMemory(100 * GIB, 128 * GIB), 1))
    big = cfg.with_changes(bucket_bytes=90 * GIB)  # more than an 80 GiB "GPU", less than this host
    make_spec("c", big, LOCAL, opts, {}, True, Facts(0, False, HostMemory(400 * GIB, 512 * GIB), 1))
    with pytest.raises(ConfigError, match="--gpu-memory-gb is 80 GiB"):  # on SLURM the GPU's memory counts
        make_spec("c", big, SLURM, opts, {}, True, Facts(None, True, None, 1))


def test_submit_refuses_a_local_run_larger_than_this_machine(sandbox: dict[str, Path]) -> None:
    host = executor.host_memory()
    bucket_gib = 79  # fits an 80 GiB GPU; three ranks need 3 x 79 GiB of this machine
    if 3 * bucket_gib * GIB <= host.available:
        pytest.skip("this machine has more than 237 GiB available")
    line = one_error_line(refitctl(sandbox, "submit", "config-4", "--cluster", "local", "--refit-method", "gloo",
                                   "--gpus", "3", "--refit-bucket-size", f"{bucket_gib}GiB"))
    assert "the 3 ranks of this local gloo run need" in line and "this machine has" in line
    assert not sandbox["runs"].exists() or not list(sandbox["runs"].iterdir())
