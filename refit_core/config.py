"""A refit run, fully resolved: the model, then its sections (refit_core/sections.py): `layouts` (both layouts and
the mode: what is refit where), `run` (method, iterations and the other settings: how it is carried out) and
`hardware` (GPUs, their memory, GPUs per node and the link figures its prediction uses: what it is given).

`RunConfig` is what a user asked for: it crosses every boundary (CLI -> orchestrator -> job) as a frozen value
and as plain JSON (config.json, one object per section), and every setting of a run is a field of one section,
with its flag (orchestrator/configs/flags.py). A setting keeps its flat name where users write it
(`RunConfig.of(..., method="nccl")`, `with_changes(gpus=64)`, a TOML table, a variable): `SECTION` routes it.
Variables that override a setting are applied once, where the run is resolved (`with_environment`). What is
decided at launch (each rank's GPU, the CPU fallback on nodes without one) is the run's spec, not its config
(devices.json). It imports planning only: `validate()` raises the one-line errors users see before anything is
submitted, and `inventory()`, `world()`, `plan()` and `memory_fit()` are the pure planning functions of its
fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from refit_core.errors import ConfigError, RunDirError
from refit_core.jsonfile import read_json
from refit_core.numbers import GIB
from refit_core.planning import methods
from refit_core.planning.ceilings import LinkFigures
from refit_core.planning.layout import MAX_WORLD, ParallelLayout, RefitMode, WorldLayout, world_layout
from refit_core.planning.memory import MemoryFit, check_memory, memory_fit
from refit_core.planning.model import MAX_PARAMETERS, Inventory, ModelSpec, inventory
from refit_core.planning.nodes import NodeMap
from refit_core.planning.placement import DIRECTIONS
from refit_core.planning.plan import Plan, plan_choices, plan_transfers
from refit_core.planning.precision import check_precision, destination_slot_sizes
from refit_core.planning.sharding import check_divisible
from refit_core.planning.timemodel import DEFAULT_SOURCE, LinkModel, RelayChoice, choose_relay
from refit_core.sections import (SECTIONS, Hardware, Layouts, RunSettings, route, section_from_json,
                                 section_json)
from refit_core.sections import default as default_of

METHODS = tuple(methods.METHODS)  # every --refit-method (refit_core/execution/transports/registry.py)
SYNC_MODES = ("auto", "host", "device")  # --nvshmem-sync
RELAY_MODES = ("auto", "off")  # --relay
SHARED_MEMORY_MODES = ("auto", "read", "staged", "off")  # --gloo-shared-memory
PAYLOADS = ("synthetic", "megatron")  # --payload: refitctl's deterministic shards, or real Megatron-Core models
# Run settings a variable may override (refit_core/environment.py SETTINGS): read once, where a run is resolved
ENV_OVERRIDES = {"nvshmem_placement": "REFITCTL_NVSHMEM_PLACEMENT", "nvshmem_sync": "REFITCTL_NVSHMEM_SYNC",
                 "staged_zero_copy": "REFITCTL_STAGED_ZERO_COPY",
                 "staged_direct_min_bytes": "REFITCTL_STAGED_DIRECT_MIN_BYTES",
                 "megatron_unpatched": "REFITCTL_MEGATRON_UNPATCHED"}
_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
MAX_ITERATIONS = 1_000_000
MAX_BUCKET = 1 << 48  # bytes
MAX_GIB = 1_000_000  # --gpu-memory-gb
MAX_GBPS = 1_000_000  # --intra/inter-node-gbps


@dataclass(frozen=True)
class RunConfig:
    """One refit run as the user asked for it, in sections (refit_core/sections.py): the model, what is refit
    where (`layouts`), how the run is carried out (`run`) and what it is given (`hardware`). Build one with
    `RunConfig.of` (flat settings, each routed to its section by `SECTION`); read `cfg.run.method`,
    `cfg.hardware.gpus`, `cfg.layouts.source.tp`."""

    name: str
    model: ModelSpec
    layouts: Layouts
    run: RunSettings = RunSettings()
    hardware: Hardware = Hardware()
    use_case: str = ""
    description: str = ""

    @classmethod
    def of(cls, name: str, model: ModelSpec, source: ParallelLayout, destination: ParallelLayout,
           mode: RefitMode = RefitMode.NON_COLLOCATED, **settings: Any) -> "RunConfig":
        """The config of `model` refit from `source` to `destination`, with flat `settings` (`method="nccl",
        gpus=64`, `use_case=...`) put in their sections; a name that is no setting is a TypeError."""
        return cls(name, model, Layouts(source, destination, mode)).with_changes(**settings)

    def validate(self, gpu_memory: bool = True) -> None:
        """Raise ConfigError for anything the seed says cannot work, before submission.

        Scalars first (cheap, and they bound what follows: the world's size, the model's), then the
        layouts against the model, then memory per GPU (`gpu_memory=False`: a run on the CPU, whose
        memory the orchestrator checks against the host's instead)."""
        run, hw, src, dst = self.run, self.hardware, self.layouts.source, self.layouts.destination
        refusal = methods.method(run.method).refusal
        if refusal:
            raise ConfigError(refusal)
        for flag, value, low, high in (("--num-benchmark-iterations", run.iterations, 1, MAX_ITERATIONS),
                                       ("--num-warmup-iterations", run.warmup, 0, MAX_ITERATIONS),
                                       ("--gpus", hw.gpus, 1, MAX_WORLD),
                                       ("--gpus-per-node", hw.gpus_per_node, 1, MAX_WORLD)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{flag} must be an integer {low}..{high:,}, got {value!r}")
        for flag, value, allowed in (("--nvshmem-placement", run.nvshmem_placement, DIRECTIONS),
                                     ("--nvshmem-sync", run.nvshmem_sync, SYNC_MODES),
                                     ("--relay", run.relay, RELAY_MODES),
                                     ("--gloo-shared-memory", run.gloo_shared_memory, SHARED_MEMORY_MODES)):
            if value not in allowed:
                raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(run.staged_direct_min_bytes, int) or not 0 <= run.staged_direct_min_bytes <= MAX_BUCKET:
            raise ConfigError(f"--staged-direct-min-bytes must be 0..{MAX_BUCKET} bytes, got {run.staged_direct_min_bytes!r}")
        if not 1 <= run.timeout_s <= 86400:  # NaN fails too
            raise ConfigError(f"--refit-timeout must be 1..86400 seconds, got {run.timeout_s}")
        if not isinstance(run.bucket_bytes, int) or not 1 << 20 <= run.bucket_bytes <= MAX_BUCKET:
            raise ConfigError(f"--refit-bucket-size must be from 1 MiB to 256 TiB, got {run.bucket_bytes} bytes")
        if self.model.is_moe:
            if src.etp != 1 or dst.etp != 1:
                raise ConfigError(
                    "MoE needs --expert-tensor-parallel-size 1 and --rl-inference-expert-tensor-model-parallel-size 1 "
                    f"(got {src.etp} and {dst.etp}): set both to 1"
                )
            if not self.model.disable_bias_linear:
                raise ConfigError("MoE refit needs --disable-bias-linear (the seed's requirement): add the flag")
        # one range, and one message, per flag: every value outside it (negative, zero, huge) reads the same
        if not 0 < hw.gpu_memory_gb <= MAX_GIB:
            raise ConfigError(f"--gpu-memory-gb must be more than 0 and at most {MAX_GIB:,} GiB, got {hw.gpu_memory_gb}")
        for flag, value in (("--intra-node-gbps", hw.intra_node_gbps), ("--inter-node-gbps", hw.inter_node_gbps),
                            ("--local-copy-gbps", hw.local_copy_gbps), ("--quantise-gbps", hw.quantise_gbps),
                            ("--amax-gbps", hw.amax_gbps),
                            ("--intra-node-both-gbps", 1.0 if hw.intra_node_both_gbps is None else hw.intra_node_both_gbps)):
            if not 0 < value <= MAX_GBPS:
                raise ConfigError(f"{flag} must be more than 0 and at most {MAX_GBPS:,} GB/s (per GPU per direction), "
                                  f"got {value}")
        check_precision(run.inference_precision)
        check_payload(self)
        world = self.world()
        inv = self.inventory()
        if inv.numel > MAX_PARAMETERS:
            raise ConfigError(f"the model has {inv.numel:.3g} parameters, more than {MAX_PARAMETERS:.0e} "
                              "(Kimi K2 has 1.03e12): check --hidden-size, --ffn-hidden-size and the vocabulary")
        check_divisible(self.model, inv, src, "source")
        check_divisible(self.model, inv, dst, "destination")
        if gpu_memory:
            check_memory(self.memory_fit(inv, world), hw.gpu_memory_gb, run.method)

    def world(self) -> WorldLayout:
        return world_layout(self.layouts.mode, self.layouts.source, self.layouts.destination, self.hardware.gpus)

    def inventory(self) -> Inventory:
        return inventory(self.model, (self.layouts.source.tp, self.layouts.destination.tp))

    def memory_fit(self, inv: Inventory | None = None, world: WorldLayout | None = None) -> MemoryFit:
        """Per-GPU bytes of this refit (shards + the transport's buffers) against --gpu-memory-gb."""
        inv = inv or self.inventory()
        return memory_fit(inv, world or self.world(), self.run.method, self.run.bucket_bytes,
                          int(self.hardware.gpu_memory_gb * GIB), self.hardware.gpus_per_node,
                          destination_slot_sizes(inv, self.layouts.destination, self.run.inference_precision),
                          self.run.nvshmem_placement,
                          # FP8: a one-sided sender writes a whole send image; a two-sided one quantises
                          # each bucket as it packs it (refit_core/execution/fp8_source.py): none
                          None if methods.method(self.run.method).two_sided else
                          destination_slot_sizes(inv, self.layouts.source, self.run.inference_precision))

    def node_map(self) -> NodeMap:
        """Ranks on nodes of --gpus-per-node GPUs, in rank order: what node-aware plans are made for."""
        return NodeMap(self.hardware.gpus_per_node)

    def plan(self, inv: Inventory | None = None, world: WorldLayout | None = None) -> Plan:
        """The node-aware transfer plan of this refit (refit_core/planning/plan.py), relayed where `relay_choice`
        says so."""
        return self.relay_choice(inv, world).plan

    def relay_choice(self, inv: Inventory | None = None, world: WorldLayout | None = None) -> RelayChoice:
        """The plan with and without relays, and the one kept: relays are weighed only with --relay auto, a
        method that forwards (methods.Method.relays) and a world on several nodes; kept when predicted faster."""
        inv, world = inv or self.inventory(), world or self.world()
        run = self.run
        if run.relay == "off" or not methods.method(run.method).relays or world.world_size <= self.hardware.gpus_per_node:
            return choose_relay(plan_transfers(inv, world, self.node_map(), self.run.inference_precision), None,
                                self.link_model())
        direct, relayed = plan_choices(inv, world, self.node_map(), self.run.inference_precision)
        return choose_relay(direct, relayed, self.link_model())

    def link_model(self) -> LinkModel:
        hw = self.hardware
        return LinkModel(hw.gpus_per_node, hw.intra_node_gbps, hw.inter_node_gbps, hw.local_copy_gbps,
                         hw.intra_node_both_gbps, hw.link_source or DEFAULT_SOURCE, hw.quantise_gbps,
                         hw.amax_gbps, methods.method(self.run.method).two_sided)

    def with_ceilings(self, figures: LinkFigures, keep: Iterable[str] = ()) -> "RunConfig":
        """The link figures of measured ceilings, except the fields in `keep` (given as flags)."""
        keep = set(keep)
        changes: dict[str, Any] = {}
        for field, value in (("intra_node_gbps", figures.intra_node_gbps),
                             ("intra_node_both_gbps", figures.intra_node_both_gbps),
                             ("local_copy_gbps", figures.local_copy_gbps),
                             ("quantise_gbps", figures.quantise_gbps), ("amax_gbps", figures.amax_gbps)):
            if value is not None and field not in keep:
                changes[field] = value
        return self.with_changes(**changes, link_source=figures.source)

    def with_environment(self, environ: Mapping[str, str]) -> "RunConfig":
        """The config with the run settings that `environ` overrides (ENV_OVERRIDES; empty values do not count).
        Applied once, where the run is resolved (the process's variables and --env's), so `plan` shows them and
        config.json carries them to the ranks, which read no variable."""
        changes: dict[str, Any] = {}
        for field, name in ENV_OVERRIDES.items():
            text = environ.get(name, "").strip()
            if not text:
                continue
            default = default_of(field)
            if isinstance(default, bool):
                if text.lower() not in _SWITCH:
                    raise ConfigError(f"{name}={text!r}: use 1 or 0 (on or off)")
                changes[field] = _SWITCH[text.lower()]
            elif isinstance(default, int):
                if not text.isdigit():
                    raise ConfigError(f"{name}={text!r}: give a whole number of bytes, e.g. {default}")
                changes[field] = int(text)
            else:
                changes[field] = text
        return self.with_changes(**changes) if changes else self

    def with_changes(self, **changes: Any) -> "RunConfig":
        """The config with `changes`: flat settings (`method=`, `gpus=`, `source=`) go to their section (SECTION),
        whole sections (`run=RunSettings(...)`) and the other fields (`name=`, `model=`) replace what they name."""
        rest, by_section = route(changes)
        for section, fields in by_section.items():
            rest[section] = dataclasses.replace(rest.get(section, getattr(self, section)), **fields)
        return dataclasses.replace(self, **rest)

    def to_json(self) -> dict[str, Any]:
        """config.json: one object per section (refit_core/sections.py)."""
        return {"name": self.name, "model": dataclasses.asdict(self.model),
                **{section: section_json(getattr(self, section)) for section in SECTIONS},
                "use_case": self.use_case, "description": self.description}

    @classmethod
    def read(cls, path: Path) -> "RunConfig":
        """The config a run directory keeps (its config.json): the one reader, where a damaged or missing file
        becomes one RunDirError naming it."""
        try:
            return cls.from_json(read_json(path))
        except FileNotFoundError:
            raise RunDirError(path, "is missing", "the run directory is damaged") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(path, f"is not a run config ({e.__class__.__name__}: {e})",
                              "the run directory is damaged") from None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        """The config `to_json` wrote; also the flat form of run directories written before the sections
        (each key routed through SECTION). Keys it does not know are ignored (a newer or older writer's)."""
        if "layouts" not in d:
            rest, by_section = route(d)
            d = {**rest, **by_section}
        known = {f.name for f in dataclasses.fields(cls)} - set(SECTIONS) - {"model"}
        return cls(model=ModelSpec(**d["model"]),
                   **{section: section_from_json(section, d.get(section, {})) for section in SECTIONS},
                   **{k: v for k, v in d.items() if k in known})

def check_payload(cfg: RunConfig) -> None:
    """--payload: one of PAYLOADS; real models need a refitctl method that is two-sided (it refits the
    models' own tensors, refit_core/library) and the BF16 models Megatron-Core builds on the ranks."""
    if cfg.run.payload not in PAYLOADS:
        raise ConfigError(f"--payload must be one of {', '.join(PAYLOADS)}, got {cfg.run.payload!r}")
    if cfg.run.payload == PAYLOADS[0]:
        return
    m = methods.method(cfg.run.method)
    if m.peer or not m.two_sided:
        raise ConfigError(f"--payload {cfg.run.payload} refits the models through refitctl's library, which "
                          f"--refit-method {cfg.run.method} does not serve: use gloo on CPU or nccl on GPUs "
                          "(megatron-* methods build their own models)")
    if cfg.run.inference_precision != "bf16":
        raise ConfigError(f"--payload {cfg.run.payload} refits BF16 models: drop --rl-inference-precision "
                          f"{cfg.run.inference_precision}")
    spec = cfg.model
    if spec.multi_latent_attention or spec.first_dense_layers or spec.moe_router_enable_expert_bias:
        raise ConfigError(f"--payload {cfg.run.payload} builds GQA models with MoE in every layer: drop "
                          "--multi-latent-attention / --first-dense-layers / --moe-router-enable-expert-bias")
    if max(cfg.layouts.source.pp, cfg.layouts.destination.pp) > 1 and not spec.untie_embeddings_and_output_weights:
        raise ConfigError(f"--payload {cfg.run.payload} with PP > 1 needs --untie-embeddings-and-output-weights "
                          "(Megatron-Core cannot build tied embeddings across stages on CPU)")
