"""The package's layers import downward only: train/ and infer/ never import each other, and
only the sweep (above both) uses them together; the ground modules (pipeline/*.py but the
commands on top) import no subpackage and no cycle of each other. Only the command-line
modules import click, and every line for the user goes through pipeline/output.py."""

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
# Ground modules that are the command line's: errors.py (UserError is a ClickException: the
# CLI prints its one line and exits 2) and cli_options.py (options several commands share).
CLICK_GROUND = {"errors", "cli_options"}


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


def imports_click(path: Path) -> bool:
    """Whether a module imports click (top level or inside functions)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "click" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "click":
            return True
    return False


def may_import_click(path: Path) -> bool:
    """`*/cli.py`, the commands on top, and the command line's ground modules."""
    relative = path.relative_to(PACKAGE)
    if path.name == "cli.py" or (len(relative.parts) == 1 and path.stem in ON_TOP):
        return True
    return len(relative.parts) == 1 and path.stem in CLICK_GROUND


def test_only_the_command_line_imports_click():
    modules = sorted(PACKAGE.rglob("*.py"))
    violations = [
        str(p.relative_to(PACKAGE)) for p in modules if imports_click(p) and not may_import_click(p)
    ]
    assert imports_click(PACKAGE / "cli.py") and imports_click(PACKAGE / "train" / "cli.py")
    assert not violations, "import click outside the command line: " + ", ".join(violations)


def is_std_stream(node: ast.expr) -> bool:
    """Whether `node` is `sys.stdout` or `sys.stderr`."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("stdout", "stderr")
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def prints_directly(path: Path) -> list[int]:
    """The line numbers of calls that print for the user without pipeline/output.py:
    click.echo / click.secho, print() to the terminal, sys.stdout/sys.stderr.write."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        echo = (
            isinstance(func, ast.Attribute)
            and func.attr in ("echo", "secho")
            and isinstance(func.value, ast.Name)
            and func.value.id == "click"
        )
        files = [k.value for k in node.keywords if k.arg == "file"]
        terminal_print = (
            isinstance(func, ast.Name)
            and func.id == "print"
            and (not files or is_std_stream(files[0]))
        )
        write = (
            isinstance(func, ast.Attribute) and func.attr == "write" and is_std_stream(func.value)
        )
        if echo or terminal_print or write:
            found.append(node.lineno)
    return found


def test_every_line_goes_through_the_output_module():
    # errors.py prints the CLI's error line (click calls UserError.show), on every rank
    exempt = {PACKAGE / "output.py", PACKAGE / "errors.py"}
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in exempt
        for line in prints_directly(path)
    ]
    assert not found, "prints outside pipeline/output.py: " + ", ".join(found)


def test_the_print_checks_see_a_violation(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        "import sys\ndef f(log):\n    import click\n    click.echo('x')\n    print('y')\n"
        "    print('z', file=sys.stderr)\n    sys.stdout.write('w')\n    print('v', file=log)\n"
    )
    assert imports_click(module)
    assert prints_directly(module) == [4, 5, 6, 7]


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
