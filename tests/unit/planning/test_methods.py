"""Refit methods are one registry: every module asks it, none compares a method's name with a string."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

from conftest import ROOT
from refit_core.config import METHODS
from refit_core.errors import ConfigError
from refit_core.execution.transports.registry import make_transport
from refit_core.planning import methods as registry


def test_config_methods_are_the_registry() -> None:
    assert METHODS == tuple(registry.METHODS)
    assert set(METHODS) >= {"nvshmem", "nccl", "gloo", "naive", "megatron-nccl", "megatron-gloo", "megatron-nvshmem"}


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_every_method_names_a_transport_class_that_exists(name: str) -> None:
    module, cls = registry.METHODS[name].transport.split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def test_cpu_methods_build_without_cuda() -> None:
    for name, m in registry.METHODS.items():
        if not m.needs_cuda and not m.peer:
            assert make_transport(name).name == name


def test_unknown_and_refused_methods_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^unknown --refit-method 'rdma': use one of nvshmem, nccl, gloo, "):
        registry.method("rdma")
    with pytest.raises(ConfigError, match=r"^--refit-method megatron-nvshmem cannot run: .*use megatron-nccl$"):
        make_transport("megatron-nvshmem")


def test_help_lists_every_method() -> None:
    text = registry.method_help()
    assert all(f"{name}: " in text for name in registry.METHODS)


def _method_name_comparisons(path: Path) -> list[str]:
    """`x.method == "nccl"`, `method in ("gloo", ...)`, `method.startswith("megatron-")` and the like."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            names = [n for n in (node.left, *node.comparators) if _is_method(n)]
            consts = [n for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in registry.METHODS]
            if names and consts:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith" \
                and _is_method(node.func.value):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


def _is_method(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in ("method", "name")) or \
        (isinstance(node, ast.Attribute) and node.attr == "method")


def test_no_module_switches_on_a_method_name() -> None:
    files = [p for d in ("refit_core", "orchestrator", "jobs") for p in (ROOT / d).rglob("*.py")
             if p.name != "registry.py"]
    assert [hit for p in files for hit in _method_name_comparisons(p)] == []
