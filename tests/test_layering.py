"""The package's layers import downward only: train/ and infer/ never import each other, and
only the sweep (above both) uses them together; the ground modules (pipeline/*.py but the
commands on top) import no subpackage and no cycle of each other."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
FORBIDDEN = {
    "sweep": set(),  # above every layer: the backbone axis runs extract/ before training
    "train": {"infer", "sweep"},
    "infer": {"train", "sweep"},
    "dataset": {"train", "infer", "sweep"},
    "metrics": {"train", "infer", "dataset", "extract", "sweep", "testbed"},
    "decoder": {"train", "infer", "dataset", "metrics", "extract", "sweep", "testbed"},
    "testbed": {"train", "infer", "dataset", "decoder", "metrics", "extract", "sweep"},
    "captions": {"train", "infer", "dataset", "decoder", "metrics", "extract", "sweep", "testbed"},
    "extract": {"train", "infer", "dataset", "decoder", "metrics", "sweep", "testbed"},
}
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
assert set(SUBPACKAGES) == set(FORBIDDEN), "a subpackage without a layer rule"
ON_TOP = {"cli", "__main__", "demo"}  # the commands: they sit on every layer
GROUND = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ON_TOP)


def imported_subpackages(path: Path) -> set[str]:
    """The `pipeline.<sub>` names a module imports (top level or inside functions)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            if node.module == "pipeline":
                modules = [f"pipeline.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "pipeline" and len(parts) > 1:
                names.add(parts[1])
    return names


def test_layers_import_downward_only():
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            bad = imported_subpackages(path) & forbidden
            violations += [f"{path.relative_to(PACKAGE)} imports pipeline.{name}" for name in bad]
    assert not violations, "\n".join(violations)


def test_ground_modules_import_no_subpackage():
    violations = [
        f"{name}.py imports pipeline.{sub}"
        for name in GROUND
        for sub in sorted(imported_subpackages(PACKAGE / f"{name}.py") & set(SUBPACKAGES))
    ]
    assert SUBPACKAGES and "config" in GROUND and "device" in GROUND
    assert not violations, "\n".join(violations)


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` (module -> modules it imports) as [a, b, .., a]; [] if none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return []
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return []

    for node in sorted(graph):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return []


def test_ground_modules_import_each_other_without_a_cycle():
    graph = {name: imported_subpackages(PACKAGE / f"{name}.py") & set(GROUND) for name in GROUND}
    assert any(graph.values())  # the imports were read
    assert import_cycle(graph) == [], " -> ".join(import_cycle(graph))


def test_the_cycle_check_sees_a_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_check_sees_a_violation(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        "def f():\n    from pipeline.train.trainer import train\nfrom pipeline import infer\n"
    )
    assert imported_subpackages(module) == {"train", "infer"}
