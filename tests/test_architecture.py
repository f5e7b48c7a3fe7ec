"""The layout's rules, read from the source with ``ast`` (issue 27): no import cycle anywhere, each domain
layer imports only the layers under it, the core imports no domain, functions stay short, and imports
inside functions are only the heavy optional ones, each with a comment saying why.

Imports inside functions count as edges; imports under ``if TYPE_CHECKING:`` (annotations only) do not.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"sci_diffusion": REPO / "src" / "sci_diffusion",
            "sci_diffusion_molecules": REPO / "domains" / "molecules",
            "sci_diffusion_medical": REPO / "domains" / "medical"}
# Each domain's layers from the bottom up; a module may import its own layer and the layers before it. Layers
# that share a rank are peers and must not import each other. The package's __init__ (its table of bundled
# checkpoints) sits under every layer, domain.py (the plug-in object) over every layer.
LAYERS = {
    "sci_diffusion_molecules": {"chem": 0, "data": 1, "generation": 2, "models": 3, "evaluation": 4, "report": 5,
                                "cli": 6},
    "sci_diffusion_medical": {"io": 0, "data": 1, "models": 2, "translation": 3, "synthetic": 3, "evaluation": 4,
                              "report": 5, "cli": 6},
}
MAX_FUNCTION_LINES = 80
# Third-party modules that may be imported inside a function: heavy to import, or optional at run time.
LAZY_IMPORTS_ALLOWED = ("matplotlib", "rdkit", "e3nn", "lightning", "jsonargparse", "torch._inductor", "nnunetv2",
                        "itk", "SimpleITK", "pydicom", "monai.apps", "scipy", "tblite",
                        "threadpoolctl")


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the packages."""
    found = {}
    for package, root in packages.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_statements(tree: ast.AST):
    """``(node, inside_a_function)`` for every import statement, skipping ``if TYPE_CHECKING:`` blocks."""
    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    yield from walk(tree, False)


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may bring in (a ``from`` import names its module and each name, one
    of which may be a submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules of the same packages it imports}`` (module level and inside functions)."""
    graph = {module: set() for module in files}
    for module, path in files.items():
        for node, _ in import_statements(ast.parse(path.read_text())):
            for name in imported_names(node, module, path.name == "__init__.py"):
                if name in files and name != module:
                    graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]], layers: dict[str, dict[str, int]]) -> list[str]:
    """Imports that go up a domain's layers, across peers, or from the core into a domain."""
    def place(module: str) -> tuple[str, str | None]:
        package, *rest = module.split(".")
        return package, rest[0] if rest else None

    problems = []
    for module, targets in graph.items():
        package, layer = place(module)
        for target in targets:
            target_package, target_layer = place(target)
            if package == "sci_diffusion" and target_package != "sci_diffusion":
                problems.append(f"the core module {module} imports the domain module {target}")
            if package not in layers or target_package != package or layer == target_layer or target_layer is None:
                continue  # another package (the core), the same layer, or the package's own __init__
            ranks = layers[package]
            if layer == "domain":
                continue
            if target_layer == "domain" or ranks[target_layer] >= ranks[layer]:
                problems.append(f"{module} (layer {layer}) imports {target} (layer {target_layer})")
    return sorted(problems)


# ----- the checker itself, on a made-up package -------------------------------------------------------------
def _write_package(root: Path, modules: dict[str, str]) -> dict[str, Path]:
    for name, source in modules.items():
        path = root / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return module_files({"fake": root})


def test_the_checker_sees_cycles_through_function_level_imports_but_not_through_annotations(tmp_path):
    files = _write_package(tmp_path / "fake", {
        "__init__": "", "data/__init__": "", "models/__init__": "",
        "data/reader": "from ..models import net\n",  # data imports models: up a layer
        "models/net": "def f():\n    from ..data import reader\n",  # ... and back, inside a function
        "models/typed": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..data import reader\n",
    })
    graph = import_graph(files)
    assert graph["fake.models.typed"] == set()
    assert find_cycle(graph) in (["fake.data.reader", "fake.models.net", "fake.data.reader"],
                                 ["fake.models.net", "fake.data.reader", "fake.models.net"])
    assert layer_violations(graph, {"fake": {"data": 0, "models": 1}}) == [
        "fake.data.reader (layer data) imports fake.models (layer models)",
        "fake.data.reader (layer data) imports fake.models.net (layer models)"]


# ----- the project -----------------------------------------------------------------------------------------
FILES = module_files(PACKAGES)
GRAPH = import_graph(FILES)


def test_the_import_graph_holds_edges_known_from_the_code():
    """A sanity check on the graph itself: imports at the top and inside functions both show up."""
    assert "sci_diffusion_medical.models.regression" in GRAPH["sci_diffusion_medical.models.residual"]
    assert "sci_diffusion_molecules.generation.sampling" in GRAPH["sci_diffusion_molecules.evaluation.conditional_protocol"]
    assert "sci_diffusion.losses" in GRAPH["sci_diffusion.module"]
    assert len(GRAPH) > 90


def test_there_is_no_import_cycle_anywhere():
    assert find_cycle(GRAPH) is None


def test_each_layer_imports_only_the_layers_under_it_and_the_core_no_domain():
    assert layer_violations(GRAPH, LAYERS) == []


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("folder", ["src", "domains", "benchmarks", "scripts"])
def test_no_function_is_longer_than_80_lines_but_argument_tables(folder):
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((REPO / folder).rglob("*.py")) for node in _functions(path)
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and not node.name.startswith("add_")]
    assert long == []


def function_level_import_runs(source: str) -> list[list[ast.Import | ast.ImportFrom]]:
    """The imports inside functions, in runs of statements at most 3 lines apart (``import matplotlib``,
    ``matplotlib.use("Agg")``, ``import matplotlib.pyplot``): one comment says why for a whole run."""
    runs: list[list[ast.Import | ast.ImportFrom]] = []
    for node, in_function in import_statements(ast.parse(source)):
        if not in_function:
            continue
        if runs and node.lineno - runs[-1][-1].end_lineno <= 3:
            runs[-1].append(node)
        else:
            runs.append([node])
    return runs


def test_imports_inside_functions_are_only_heavy_optional_ones_with_a_comment():
    """Anything else is imported at the module's top, where the dependency graph can be read."""
    problems = []
    for path in FILES.values():
        source = path.read_text()
        lines = source.splitlines()
        for run in function_level_import_runs(source):
            said_why = any("#" in line for line in lines[max(run[0].lineno - 4, 0):run[-1].end_lineno])
            for node in run:
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or "."]
                heavy = all(name.startswith(LAZY_IMPORTS_ALLOWED) for name in names) and not getattr(node, "level", 0)
                if not heavy or not said_why:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert problems == []
