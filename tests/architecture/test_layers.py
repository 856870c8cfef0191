"""The dependency direction between Tailor's packages, enforced on every import statement.

    tailor_contract  ←  {sdk, bandits, event_log}  ←  experiments  ←  decision_api  ←  demo

A package may import itself and anything to its left (lower), never to its right or sideways
within the same layer; nothing imports a private (``_``-prefixed) module of a dependency; the
contract and the SDK import only what their own distributions declare.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAYER = {
    "tailor_contract": 0,
    "sdk": 1,
    "bandits": 1,
    "event_log": 1,
    "experiments": 2,
    "decision_api": 3,
    "demo": 4,
}
"""Each package's layer: imports go to a strictly lower layer (or the package itself)."""

ALLOWED_THIRD_PARTY = {
    "tailor_contract": {"msgspec"},
    "sdk": {"msgspec", "httpx"},
}
"""Distributions with a short dependency list: the top-level imports each may use."""

STDLIB = frozenset(sys.stdlib_module_names)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str) -> list[str]:
    found = []
    for path in _modules(package):
        where = path.relative_to(ROOT)
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in LAYER and top != package and LAYER[top] >= LAYER[package]:
                found.append(
                    f"{where}:{line} imports {module} (layer {LAYER[top]} from "
                    f"layer {LAYER[package]})"
                )
            if top not in LAYER and any(p.startswith("_") for p in module.split(".")[1:]):
                found.append(f"{where}:{line} imports the private module {module}")
            allowed = ALLOWED_THIRD_PARTY.get(package)
            if (
                allowed is not None
                and top not in LAYER
                and top not in STDLIB
                and top not in allowed
                and top != "__future__"
            ):
                found.append(f"{where}:{line} imports {module}, not a dependency of {package}")
    return found


@pytest.mark.parametrize("package", sorted(LAYER))
def test_imports_point_down(package: str) -> None:
    """No module imports a package of its own or a higher layer, or a private module."""
    assert _modules(package), f"{package} has no modules"
    assert _violations(package) == []


def test_the_check_sees_an_upward_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The checker reports upward, private and undeclared imports (so an empty result means
    something)."""
    (tmp_path / "sdk").mkdir()
    (tmp_path / "sdk" / "bad.py").write_text(
        "from decision_api.app import create_app\nimport litestar._asgi.utils\nimport numpy\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations("sdk")
    assert [v.split(" ", 1)[1] for v in found] == [
        "imports decision_api.app (layer 3 from layer 1)",
        "imports the private module litestar._asgi.utils",
        "imports litestar._asgi.utils, not a dependency of sdk",
        "imports numpy, not a dependency of sdk",
    ]


DISTRIBUTION_OF = {
    "vowpal_wabbit_next": "vowpal-wabbit-next",
    "clickhouse_connect": "clickhouse-connect",
    "prometheus_client": "prometheus-client",
}
"""Import names whose distribution is spelled differently."""


def _declared(pyproject: Path) -> set[str]:
    import tomllib

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = set()
    for dep in deps:
        name = dep.split(";")[0]
        for stop in "<>=![ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


@pytest.mark.parametrize(
    ("pyproject", "packages"),
    [
        ("pyproject.toml", sorted(LAYER)),
        ("sdk/pyproject.toml", ["sdk"]),
        ("tailor_contract/pyproject.toml", ["tailor_contract"]),
    ],
)
def test_every_third_party_import_is_declared(pyproject: str, packages: list[str]) -> None:
    """Each distribution declares every third-party package its modules import."""
    declared = _declared(ROOT / pyproject)
    own = {"tailor-decision-contract": "tailor_contract"}
    missing = set()
    for package in packages:
        for path in _modules(package):
            for _, module in _imports(path):
                top = module.split(".")[0]
                if top in STDLIB or top in ("__future__", package):
                    continue
                if top in LAYER:
                    if pyproject != "pyproject.toml" and top not in own.values():
                        missing.add(top)
                    continue
                dist = DISTRIBUTION_OF.get(top, top).lower().replace("_", "-")
                if dist not in declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert sorted(missing) == []
