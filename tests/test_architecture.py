"""The shape of the package: imports point one way, and the public surface is where users look."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import HOOKS

import sdessm
from sdessm import em, fit

PACKAGE = Path(sdessm.__file__).parent
ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of sdessm imported at module level, those imported anywhere else), without the
    imports under `if TYPE_CHECKING:` (annotations only)."""
    tree = ast.parse(path.read_text())
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in guarded:
            names = [node.module] if node.module else [a.name for a in node.names]
            (top if node in tree.body else inner).update(n.split(".")[0] for n in names)
    return top, inner - top


def _graph(level: str) -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        top, inner = _imports(PACKAGE / f"{name}.py")
        graph[name] = (top if level == "top" else top | inner) & modules
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_module_level_imports_are_acyclic():
    assert _cycle(_graph("top")) is None


def test_imports_in_functions_close_no_cycle_either():
    assert _cycle(_graph("all")) is None


@pytest.mark.parametrize(
    "lower", ["errors", "discretize", "params", "kalman", "stats", "mstep", "information", "em"]
)
def test_the_em_layers_never_import_the_numpyro_layer_or_above(lower):
    top, inner = _imports(PACKAGE / f"{lower}.py")
    above = {"fit", "infer", "model_em", "ppl", "forecast", "diagnostics", "io", "report", "cli"}
    assert not (top | inner) & above


def test_fit_em_takes_the_options_of_the_em_loop():
    """`sdessm.fit_em` forwards its EM options to `em.run_em`: same names, same defaults."""
    ours = dict(inspect.signature(fit.fit_em).parameters)
    for name in fit.MODEL_ONLY:
        ours.pop(name)
    loop = dict(inspect.signature(em.run_em).parameters)
    loop["model"] = loop.pop("init").replace(name="model")
    assert {k: (p.default, p.kind) for k, p in ours.items()} == {
        k: (p.default, p.kind) for k, p in loop.items()
    }


def test_public_names_and_submodules_without_importing_numpyro():
    """`import sdessm` alone reaches every submodule and the lazily loaded names, and does not
    import NumPyro, ArviZ or matplotlib until one of them is used."""
    code = """
import sys
import sdessm
heavy = {"numpyro", "arviz", "matplotlib"}
assert not heavy & set(sys.modules), heavy & set(sys.modules)
assert sdessm.fit_nuts is sdessm.infer.fit_nuts
assert sdessm.LTISDE is sdessm.ppl.LTISDE
assert sdessm.recovery_table is sdessm.diagnostics.recovery_table
assert sdessm.identifiable is sdessm.diagnostics.identifiable
assert sdessm.load_model("ou").TRUE_PARAMS["theta"] == 0.5
assert sdessm.models.load is sdessm.load_model
assert sdessm.standard_errors is sdessm.information.standard_errors
for name in sdessm.__all__:
    getattr(sdessm, name)
for name in sdessm._SUBMODULES:
    getattr(sdessm, name)
assert {"fit_nuts", "models", "io"} <= set(dir(sdessm))
try:
    sdessm.no_such_name
except AttributeError as err:
    assert "no_such_name" in str(err)
else:
    raise AssertionError("no AttributeError")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_is_listed_as_a_submodule():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "_checks"}
    assert modules | {"models"} == set(sdessm._SUBMODULES)


def _layers() -> dict[str, int]:
    """Module -> its layer's rank, from the `text` block of docs/architecture.md."""
    block = ARCHITECTURE.read_text().split("```text\n", 1)[1].split("```", 1)[0]
    ranks = {}
    for rank, line in enumerate(block.strip().splitlines()):
        for name in line.split(":", 1)[1].split(","):
            ranks[name.strip()] = rank
    return ranks


def test_every_import_points_down_the_documented_layers():
    """Each module imports (at any level) only from its own layer or below."""
    ranks = _layers()
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert set(ranks) == modules
    upward = []
    for name, imported in _graph("all").items():
        for other in imported:
            if ranks[other] > ranks[name]:
                upward.append(f"{name} -> {other}")
    assert not upward


def test_the_module_map_lists_every_module():
    table = HOOKS.module_map()
    assert "<!-- module-map -->" in ARCHITECTURE.read_text()
    for path in PACKAGE.glob("*.py"):
        assert f"| `{path.name}` | {len(path.read_text().splitlines())} |" in table


def test_imports_inside_functions_only_where_stated():
    """Modules of sdessm are imported at the top of a module, but for the NumPyro layer (imported
    on the paths that need it), the command line (which answers bad arguments before importing
    JAX) and `outputs`' version string."""
    allowed = {("outputs", "__version__")}
    inside = []
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("__init__", "summaries", "runs", "commands", "cli"):
            continue
        _, inner = _imports(path)
        inside += [
            (path.stem, other)
            for other in inner
            if other not in ("infer", "model_em", "ppl") and (path.stem, other) not in allowed
        ]
    assert not inside


def test_no_private_name_is_imported_across_modules():
    """What one module uses of another is public there (the private module `_checks` aside,
    whose names all serve the package)."""
    private = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module != "_checks":
                private += [
                    f"{path.stem} <- {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not private
