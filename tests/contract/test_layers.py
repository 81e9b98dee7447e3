"""The layer rules of docs/architecture.md: which package of exporter/ may import which.

Every module's imports are read with `ast` (imports inside functions and under TYPE_CHECKING
count too), so a forbidden edge fails here before it becomes a cycle or a hidden coupling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

# importer package -> packages it must not import (a prefix matches the package and its modules).
# cli, daemon, reload and environment wire everything together and may import anything.
_ENTRY = ("exporter.cli", "exporter.daemon", "exporter.reload", "exporter.environment")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "exporter.sources": (
        "exporter.context",
        "exporter.accounting",
        "exporter.exposition",
        "exporter.web",
        "exporter.sim",
        *_ENTRY,
    ),
    "exporter.context": (
        "exporter.sources",
        "exporter.accounting",
        "exporter.exposition",
        "exporter.web",
        "exporter.sim",
        *_ENTRY,
    ),
    # The three context parts are independent; only context/provider.py composes them.
    "exporter.context.host": ("exporter.context.price", "exporter.context.owner", "exporter.context.provider"),
    "exporter.context.price": ("exporter.context.host", "exporter.context.owner", "exporter.context.provider"),
    "exporter.context.owner": ("exporter.context.host", "exporter.context.price", "exporter.context.provider"),
    "exporter.accounting": ("exporter.sources", "exporter.exposition", "exporter.web", "exporter.sim", *_ENTRY),
    "exporter.exposition": ("exporter.sources", "exporter.context", "exporter.web", "exporter.sim", *_ENTRY),
    "exporter.web": ("exporter.sources", "exporter.context", "exporter.sim", *_ENTRY),
    # The simulator replaces hardware: it may use the sources' public types (no `_private` name of
    # another package is imported anywhere: see forbidden_edges), nothing downstream.
    "exporter.sim": ("exporter.context", "exporter.accounting", "exporter.exposition", "exporter.web", *_ENTRY),
    "exporter.config": (
        "exporter.sources",
        "exporter.accounting",
        "exporter.exposition",
        "exporter.web",
        "exporter.sim",
        *_ENTRY,
    ),
    "exporter.readings": ("exporter.",),
    "exporter.clock": ("exporter.",),
    "exporter.zones": ("exporter.",),
    # uid -> name for both the process reader (sources) and attribution (context): a leaf like clock.
    "exporter.users": ("exporter.",),
    # Imported by the Neuron parser child, which must stay small: standard library only.
    "exporter.numbers": ("exporter.",),
}


def _within(name: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    """`exporter/context/host/metadata.py` -> `exporter.context.host.metadata`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module `tree` imports; `from a import b` counts as `a.b` too (b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden_edges(root: Path) -> list[str]:
    """`importer -> imported (rule)` for every import the rules forbid, in the tree under `root`."""
    edges: list[str] = []
    for path in sorted((root / "exporter").rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported in sorted(imported_names(tree, module, path.name == "__init__.py")):
            for importer, banned in FORBIDDEN.items():
                if not _within(module, importer):
                    continue
                edges.extend(
                    f"{module} -> {imported} ({importer} must not import {prefix})"
                    for prefix in banned
                    if _within(imported, prefix) and not _within(imported, importer)
                )
            if _within(imported, "exporter") and _private(imported) and _package(imported) != _package(module):
                edges.append(f"{module} -> {imported} (a private name of another package)")
    return edges


def _package(name: str) -> str:
    """`exporter.sources.procfs` -> `exporter.sources`; a top-level module is its own package."""
    return ".".join(name.split(".")[:2])


def _private(name: str) -> bool:
    """Whether a dotted name has a `_private` part (dunders such as `__version__` are public)."""
    return any(part.startswith("_") and not part.endswith("__") for part in name.split("."))


def test_no_module_imports_across_a_forbidden_layer_edge() -> None:
    assert forbidden_edges(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "text", "edge"),
    [
        (
            "exporter/sources/neuron_cores.py",
            "from exporter.context.host.discovery import region_from_zone\n",
            "exporter.sources.neuron_cores -> exporter.context.host.discovery",
        ),
        (
            "exporter/sources/nvml.py",
            "def f():\n    import exporter.accounting.ledger\n",
            "exporter.sources.nvml -> exporter.accounting.ledger",
        ),
        (
            "exporter/context/price/pricing.py",
            "from ..host import metadata\n",
            "exporter.context.price.pricing -> exporter.context.host.metadata",
        ),
        (
            "exporter/exposition/collector.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from exporter.context import model\n",
            "exporter.context.model",
        ),
        ("exporter/readings.py", "from exporter.clock import Clock\n", "exporter.readings -> exporter.clock"),
        (
            "exporter/sim/fake_nvml.py",
            "from exporter.sources.nvml_inventory import _mig_children\n",
            "exporter.sim.fake_nvml -> exporter.sources.nvml_inventory._mig_children (a private name",
        ),
    ],
)
def test_the_checker_finds_a_forbidden_edge(tmp_path: Path, name: str, text: str, edge: str) -> None:
    edges = forbidden_edges(_tree(tmp_path, {name: text}))
    assert any(edge in line for line in edges), edges


def test_the_checker_allows_the_permitted_edges(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "exporter/sim/fake_nvml.py": "from exporter.sources.procfs import ProcessFacts\n",
            "exporter/accounting/ledger.py": "from exporter.context.model import HostContext\n",
            "exporter/context/provider.py": "from exporter.context.host.metadata import merge_identity\n",
            "exporter/context/host/aws_imds.py": "from exporter.context.host.discovery import Discovered\n",
            "exporter/daemon.py": "from exporter.sources.nvml import NvmlSource\n",
            "exporter/sources/nvml.py": "from exporter import __version__\nfrom exporter.sources.nvml_inventory import _x\n",
        },
    )
    assert forbidden_edges(root) == []


# The entry points reach sources only through the registry and the simulator only through its host
# environment, so that a new accelerator kind changes sources/ and sim/ and nothing here.
ENTRY_MAY_USE = {
    "exporter.sources": ("exporter.sources.registry", "exporter.sources.base"),
    "exporter.sim": ("exporter.sim.host", "exporter.sim.scenario"),
}


def entry_point_edges(root: Path) -> list[str]:
    """`entry point -> module` for each source or simulator module an entry point names directly."""
    edges = []
    for name in (*_ENTRY, "exporter.cli_values"):
        path = root / (name.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported in sorted(imported_names(tree, name, False)):
            edges.extend(
                f"{name} -> {imported}"
                for package, allowed in ENTRY_MAY_USE.items()
                if _within(imported, package) and imported != package and not any(_within(imported, a) for a in allowed)
            )
    return edges


def test_entry_points_know_sources_only_through_the_registry() -> None:
    assert entry_point_edges(ROOT) == []


def test_a_source_named_in_the_daemon_is_caught(tmp_path: Path) -> None:
    files = {f"{name.replace('.', '/')}.py": "" for name in (*_ENTRY, "exporter.cli_values")}
    files["exporter/daemon.py"] = (
        "from exporter.sources.nvml import NvmlSource\nfrom exporter.sim.host import SimulatedHost\n"
    )
    assert entry_point_edges(_tree(tmp_path, files)) == [
        "exporter.daemon -> exporter.sources.nvml",
        "exporter.daemon -> exporter.sources.nvml.NvmlSource",
    ]
