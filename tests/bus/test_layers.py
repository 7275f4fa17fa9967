"""The layers import in one direction: kernel (bus, errors, settings) <- project <- services, client.

Read from the source with `ast`, so an import inside a function (the usual way round a cycle)
counts too, and so does a dotted module name written as a string (for `importlib.import_module`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = [ROOT / "swiftdeploy_core/bus", ROOT / "swiftdeploy_core/errors.py", ROOT / "swiftdeploy_core/settings.py",
          ROOT / "swiftdeploy_core/filelock.py"]  # fmt: skip
PROJECT = [ROOT / "swiftdeploy_core/project"]
SERVICES = [ROOT / "services"]
CLIENT, PROJECT_PKG, SERVICES_PKG = "swiftdeploy_core.client", "swiftdeploy_core.project", "services"

DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
RULES = [  # (layer, its sources, what it must not import)
    ("the kernel", KERNEL, (PROJECT_PKG, CLIENT, SERVICES_PKG)),
    ("the project layer", PROJECT, (CLIENT, SERVICES_PKG)),
    ("a service", SERVICES, (CLIENT,)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, anywhere in it."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            names.add(node.value)  # a module named as data, for importlib ("services.gatekeeper.checks")
    return names


def sources(places: list[Path]) -> list[Path]:
    return sorted(p for place in places for p in ([place] if place.is_file() else place.rglob("*.py")))


def violations(places: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sources(places):
        names = imported(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
        for name in sorted(names):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize(("layer", "places", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_each_layer_imports_only_the_layers_below_it(
    layer: str, places: list[Path], forbidden: tuple[str, ...]
) -> None:
    assert sources(places), f"no sources found for {layer}: the layout moved?"
    assert violations(places, forbidden) == [], f"{layer} imports what it must not"


def test_the_scan_sees_lazy_relative_and_dynamic_imports() -> None:
    source = """
import importlib

def later():
    from swiftdeploy_core.client.controlplane import running_redis_url
    from ..client import cli
    importlib.import_module("services.gatekeeper.checks")

CHECK_MODULES = ["services.orchestrator.checks"]
"""
    names = imported(source, "swiftdeploy_core.bus.connection")
    assert {"swiftdeploy_core.client.controlplane", "swiftdeploy_core.client", "services.gatekeeper.checks",
            "services.orchestrator.checks"} <= names  # fmt: skip
