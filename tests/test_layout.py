"""The package's layers, as its folders name them, and the rule between them (every import statement, lazy ones too).

    shared (aevae/*.py, aevae/data/)  <-  core/  <-  evaluation/  <-  report/
                                                              <-  ops/ (Ray, MLflow, retraining)

A layer imports only the layers to its left; report/ and ops/ do not import each other; only ops/ imports
ray or mlflow. pipeline/ scripts join the layers and may import any of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "aevae"
LAYERS = ("core", "evaluation", "report", "ops")
# What each layer may import of aevae (the shared modules and data/ are open to all).
ALLOWED = {
    "shared": set(),
    "core": set(),
    "evaluation": {"core"},
    "report": {"core", "evaluation"},
    "ops": {"core", "evaluation"},
}
SHARED = {"__init__", "atomic", "config", "cpus", "errors", "metric_registry", "progress", "provenance", "rng"}


def _layer(path: Path) -> str:
    part = path.relative_to(PACKAGE).parts[0]
    return part if part in LAYERS else "shared"


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in `path` names (absolute imports; the package has no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if node.module == "aevae")
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path):
    layer, where = _layer(path), path.relative_to(PACKAGE)
    wrong = []
    for name in sorted(_imports(path)):
        parts = name.split(".")
        if parts[0] == "aevae" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != layer:
            if parts[1] not in ALLOWED[layer]:
                wrong.append(f"{where} ({layer}) imports {name}")
        if parts[0] in ("ray", "mlflow") and layer != "ops":
            wrong.append(f"{where} ({layer}) imports {name}: only ops/ knows {parts[0]}")
    assert not wrong, "; ".join(wrong)


def test_every_module_lives_in_a_layer():
    """A new module goes into a layer's folder; the top level keeps the few facts every layer shares."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == SHARED, f"top-level modules outside a layer: {sorted(top - SHARED)}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {*LAYERS, "data"}, folders


def test_the_rule_catches_a_core_module_that_imports_ops(tmp_path, monkeypatch):
    """The checker itself: a core module importing MLflow's store, lazily inside a function, is refused."""
    fake = tmp_path / "aevae"
    (fake / "core").mkdir(parents=True)
    bad = fake / "core" / "bad.py"
    bad.write_text("def f():\n    from aevae.ops import mlflow_store\n    import mlflow\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="core/bad.py \\(core\\) imports aevae.ops.*imports mlflow: only ops/"):
        test_each_module_imports_only_the_layers_below_it(bad)
