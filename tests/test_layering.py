"""The package's layers import downward only: train/ and infer/ never import each other, and
only the sweep (above both) uses them together."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
FORBIDDEN = {
    "sweep": {"extract"},
    "train": {"infer", "sweep"},
    "infer": {"train", "sweep"},
    "dataset": {"train", "infer", "sweep"},
    "decoder": {"train", "infer", "dataset", "extract", "sweep"},
    "data": {"train", "infer", "dataset", "decoder", "extract", "sweep"},
    "extract": {"train", "infer", "dataset", "decoder", "sweep"},
}


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


def test_the_check_sees_a_violation(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        "def f():\n    from pipeline.train.trainer import train\nfrom pipeline import infer\n"
    )
    assert imported_subpackages(module) == {"train", "infer"}
