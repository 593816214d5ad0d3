"""Write docs/seed-commands.md: every seed config's command in full, once.

The seed document (8GPU_CONFIGS.md, the specification; docs/architecture.md) spells out five of its ten configs as
`./benchmark_refit_sbatch.sh` commands; the other five exist only as table rows. This script
prints all ten in the seed's flag order, so a user can copy any of them; `refitctl plan`,
`refitctl submit` and `./benchmark_refit_sbatch.sh` take the same flags.
tests/unit/orchestrator/test_seed_commands.py runs each one through `refitctl plan` verbatim and checks that
the five the seed spells out are the seed's own text.

Usage: python scripts/seed_commands.py > docs/seed-commands.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.configs import SWEEPS, builtin_configs  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402

# The configs whose command the seed document writes out, and the heading it uses.
SEED_SPELLED_OUT = {
    "config-1": "Config 1: Test EP Refit (6 GPUs, 2 idle)",
    "config-2": "Config 2: Full 8-GPU Utilization (0 idle)",
    "config-3": "Config 3: Test TP Refit (6 GPUs, 2 idle)",
    "config-4": "Config 4: Minimal Test (3 GPUs, 5 idle)",
    "collocated-1": "Collocated Config: TP↔EP Swap (8 GPUs)",
}


def command_lines(cfg: RunConfig, program: str = "refitctl submit") -> list[str]:
    """The config as the seed writes a command: one flag per line, MoE requirements included."""
    m = cfg.model
    flags = [
        ("--tensor-model-parallel-size", cfg.layouts.source.tp), ("--expert-model-parallel-size", cfg.layouts.source.ep),
        ("--expert-tensor-parallel-size", 1),
        ("--rl-inference-tensor-model-parallel-size", cfg.layouts.destination.tp),
        ("--rl-inference-expert-model-parallel-size", cfg.layouts.destination.ep),
        ("--rl-inference-expert-tensor-model-parallel-size", 1),
        ("--refit-mode", cfg.layouts.mode.value), ("--refit-method", cfg.run.method),
        ("--num-layers", m.num_layers), ("--hidden-size", m.hidden_size),
        ("--num-attention-heads", m.num_attention_heads), ("--seq-length", m.seq_length),
        ("--max-position-embeddings", m.max_position_embeddings), ("--micro-batch-size", 1),
        ("--num-experts", m.num_experts), ("--moe-router-topk", m.moe_router_topk),
        ("--moe-shared-expert-intermediate-size", m.moe_shared_expert_intermediate_size),
        ("--ffn-hidden-size", m.ffn_hidden_size), ("--disable-bias-linear", None),
        ("--num-benchmark-iterations", cfg.run.iterations),
    ]
    body = [f"    {f}" + ("" if v is None else f" {v}") for f, v in flags]
    return [f"{program} \\"] + [line + " \\" for line in body[:-1]] + [body[-1]]


def seed_block(seed_text: str, heading: str) -> list[str]:
    """The command lines of the seed's code block under `### heading`."""
    after = seed_text.split(f"### {heading}\n", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.rstrip("\n").split("\n")


def render(seed_text: str | None) -> str:
    configs = builtin_configs()
    out = [
        "# The seed's commands, in full",
        "",
        "Written by `python scripts/seed_commands.py > docs/seed-commands.md`; "
        "`tests/unit/orchestrator/test_seed_commands.py` runs every command below through `refitctl plan` verbatim.",
        "",
        "The seed document (`8GPU_CONFIGS.md`, from Megatron-LM's RL examples) spells out five of its ten",
        "8-GPU configs as `./benchmark_refit_sbatch.sh` commands; they are quoted here exactly, with the",
        "program's name as the only change. The other five are table rows there; their commands are",
        "written in the same flag order, with the seed's model sizes and the MoE requirements",
        "(`--expert-tensor-parallel-size 1`, `--rl-inference-expert-tensor-model-parallel-size 1`,",
        "`--disable-bias-linear`, which refitctl applies by default too). `refitctl submit NAME` runs",
        "the same thing as the command under NAME; `refitctl plan` takes the same flags to show the plan.",
        "",
    ]
    for name in SWEEPS["8gpu"]:
        cfg = configs[name]
        src, dst = cfg.layouts.source, cfg.layouts.destination
        out.append(f"## {name}: {cfg.use_case}")
        out.append("")
        out.append(f"Source TP={src.tp}, EP={src.ep}; destination TP={dst.tp}, EP={dst.ep}; "
                   f"{cfg.layouts.mode.value}, {cfg.run.method}." + (f" {cfg.description}." if cfg.description else ""))
        out.append("")
        if name in SEED_SPELLED_OUT and seed_text is not None:
            lines = seed_block(seed_text, SEED_SPELLED_OUT[name])
            lines[0] = lines[0].replace("./benchmark_refit_sbatch.sh", "refitctl submit")
            out.append(f"The seed's own command (section \"{SEED_SPELLED_OUT[name]}\"):")
        else:
            lines = command_lines(cfg)
            out.append("Written from the seed's table row:")
        out += ["", "```bash", *lines, "```", ""]
    return "\n".join(out)


def find_seed() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for p in (here.parent / "shared" / "seed" / "8GPU_CONFIGS.md", here / "shared" / "seed" / "8GPU_CONFIGS.md"):
        if p.exists():
            return p
    return None


if __name__ == "__main__":
    seed = find_seed()
    sys.stdout.write(render(seed.read_text() if seed else None))
