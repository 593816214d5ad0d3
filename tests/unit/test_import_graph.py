"""The packages import one way: no module of refit_core, orchestrator or jobs reaches itself again
through imports (a loop makes the import order matter and hides which module owns a concept).

A static walk of every `import` / `from ... import` statement, those inside functions included,
relative names resolved; importing a submodule also imports its parent packages. Imports under
`if TYPE_CHECKING:` never run and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("refit_core", "orchestrator", "jobs")


def module_files(root: Path) -> dict[str, Path]:
    """Every module of PACKAGES under `root`, by dotted name (a package by its own name)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imported_names(module: str, is_package: bool, tree: ast.AST) -> list[str]:
    """The dotted names `module` imports (relative ones resolved), `from X import Y` as X.Y and X."""
    skip = _type_checking_only(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            prefix = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            names += [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of PACKAGES it imports (a name resolved to the longest module it names, and
    every module's parent packages, which Python imports first)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path.name == "__init__.py", ast.parse(path.read_text(), str(path))):
            while name and name not in files:
                name = name.rpartition(".")[0]
            while name:
                targets.add(name)
                name = name.rpartition(".")[0]
        parent = module.rpartition(".")[0]
        while parent:
            targets.add(parent)
            parent = parent.rpartition(".")[0]
        targets.discard(module)
        graph[module] = {t for t in targets if not module.startswith(t + ".")}  # a package's own parents
    for module in files:  # a submodule imports its parents first: that edge is Python's, not a loop
        graph[module] -= {p for p in graph[module] if module.startswith(p + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_packages_import_one_way() -> None:  # no loops, whatever the layers
    graph = import_graph(ROOT)
    assert "orchestrator.cli" in graph and "orchestrator.actions.launch" in graph["orchestrator.commands.run"]
    cycle = find_cycle(graph)
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_a_planted_loop_is_found(tmp_path: Path) -> None:
    """The walk sees a loop through a relative import inside a function, and one through `from pkg import mod`."""
    pkg = tmp_path / "orchestrator" / "views"
    pkg.mkdir(parents=True)
    (tmp_path / "orchestrator" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from orchestrator.views import a\n")
    for other in ("refit_core", "jobs"):
        (tmp_path / other).mkdir()
    assert find_cycle(import_graph(tmp_path)) == ["orchestrator.views.a", "orchestrator.views.b", "orchestrator.views.a"]
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from orchestrator.views import a\n")
    assert find_cycle(import_graph(tmp_path)) is None


# Layers, lowest first: a module may import its own layer and the layers below, never one above (imports
# inside functions count too). refit_core: the base modules, pure planning, the config, execution, peers;
# then jobs (what runs on the nodes); then the orchestrator's layers: what commands share (actions/) below the
# command modules, the CLI and the local controller (a process of its own, which finalizes runs) last.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("refit_core", "refit_core.errors", "refit_core.numbers", "refit_core.jsonfile", "refit_core.environment",
     "refit_core.paths",
     "refit_core.records", "refit_core.results"),
    ("refit_core.planning",),
    ("refit_core.config", "refit_core.sections"),
    ("refit_core.execution",),
    ("refit_core.library",),
    ("refit_core.peers",),
    ("refit_core.megatron",),
    ("jobs",),
    ("orchestrator", "orchestrator.safety"),
    ("orchestrator.configs",),
    ("orchestrator.submission",),
    ("orchestrator.state",),
    ("orchestrator.views",),
    ("orchestrator.actions",),
    ("orchestrator.commands",),
    ("orchestrator.cli", "orchestrator.__main__", "orchestrator.controller"),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming `module` (a package names its submodules)."""
    best, best_len = -1, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len and \
                    not (n in ("refit_core", "orchestrator") and module != n and "." in module):
                best, best_len = i, len(n)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer than its own, as 'a -> b'."""
    out = []
    for module, targets in graph.items():
        here = layer_of(module)
        out += [f"{module} -> {t}" for t in sorted(targets) if layer_of(t) > here]
    return sorted(out)


def command_to_command(graph: dict[str, set[str]]) -> list[str]:
    """Imports between two command modules (orchestrator/commands/*: each a group of commands)."""
    commands = {m for m in graph if m.startswith("orchestrator.commands.")}
    return sorted(f"{a} -> {b}" for a in commands for b in graph[a] & commands)


def test_every_module_has_a_layer() -> None:
    assert [m for m in import_graph(ROOT) if layer_of(m) < 0] == []


def test_layers_import_downwards_only() -> None:
    """planning < config < execution < peers < jobs < orchestrator (configs < submission < state < views <
    actions < commands < cli): what a folder may import can be told from its name."""
    graph = import_graph(ROOT)
    assert "refit_core.planning.methods" in graph and "refit_core.planning.blocks" in graph
    assert upward_imports(graph) == []
    assert command_to_command(graph) == []


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """planning importing execution, even inside a function, and one command module importing another, are named."""
    for pkg in ("refit_core/planning", "refit_core/execution", "orchestrator/commands", "jobs"):
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "refit_core" / "__init__.py").write_text("")
    (tmp_path / "orchestrator" / "__init__.py").write_text("")
    (tmp_path / "refit_core/execution/engine.py").write_text("X = 1\n")
    (tmp_path / "refit_core/planning/plan.py").write_text("def f():\n    from refit_core.execution.engine import X\n")
    (tmp_path / "orchestrator/commands/a.py").write_text("")
    (tmp_path / "orchestrator/commands/b.py").write_text("from orchestrator.commands import a\n")
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["refit_core.planning.plan -> refit_core.execution",
                                     "refit_core.planning.plan -> refit_core.execution.engine"]
    assert command_to_command(graph) == ["orchestrator.commands.b -> orchestrator.commands.a"]
