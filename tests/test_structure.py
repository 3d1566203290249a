"""The library's shape: no import cycles (counting imports inside functions too), short
functions and modules, and the result tables of a micro run equal to stored fingerprints.

A function over MAX_FUNCTION lines or a module over MAX_MODULE lines needs a one-line reason:
a comment `# long: <reason>` on the `def` line or the line above it (a function), or in the
first ten lines (a module).
"""
import ast
import json
import os

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "monollm")
MAX_FUNCTION, MAX_MODULE = 50, 400


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(tree: ast.AST, name: str, known: set[str]) -> set[str]:
    """Package modules that module `name` imports anywhere in its body (functions included)."""
    out = set()
    package = name if name in known and any(k.startswith(name + ".") for k in known) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    out.add(f"{base}.{alias.name}")
                elif base in known:
                    out.add(base)
    return out - {name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(ast.parse(open(path).read()), name, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_function_level_and_relative_imports():
    known = {"monollm", "monollm.config", "monollm.attacks", "monollm.attacks.common"}
    code = "def f():\n    from monollm import config\nfrom .common import x\nimport monollm.attacks\n"
    assert imported(ast.parse(code), "monollm.attacks.uat", known) == {
        "monollm.config", "monollm.attacks.common", "monollm.attacks"}


def test_no_import_cycles_in_the_library():
    graph = import_graph()
    assert "monollm.config" in graph["monollm.pipeline"]  # the graph is not empty by mistake
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, lowest first: a module may import its own layer and those below it, never one above.
# Domain packages of one layer (train and attacks) do not import each other.
LAYERS = [
    {"errors", "constants", "schema", "stats", "progress", "checkpoints", "saving"},  # the base
    {"data"}, {"model"}, {"evaluation"}, {"train", "attacks"}, {"results"}, {"cluster"},
    {"config", "checks", "profiles", "runtime", "pipeline", "branches", "setup_reuse", "rank", "cli"},  # what the flow calls
    {"experiments", "sweep", "compare", "rehearsal", "browse"},  # many runs, and the `python -m` entry points
]


def layer(module: str) -> tuple[int, str]:
    """(layer index, top-level part) of a package module, e.g. monollm.train.loop -> (4, "train")."""
    part = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if part in names), part


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up a layer, or across between two packages of one domain layer."""
    bad = []
    for name, deps in sorted(graph.items()):
        if name == "monollm":
            continue
        (mine, part) = layer(name)
        for dep in sorted(deps):
            (theirs, other) = layer(dep)
            across = theirs == mine and other != part and mine not in (0, 7, 8)
            if theirs > mine or across:
                bad.append(f"{name} -> {dep}")
    return bad


def test_every_module_has_a_layer_and_imports_point_down():
    graph = import_graph()
    unplaced = sorted(n for n in graph if n != "monollm" and not any(n.split(".")[1] in g for g in LAYERS))
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    assert upward_imports({"monollm.train.loop": {"monollm.config"}}) == ["monollm.train.loop -> monollm.config"]
    assert upward_imports({"monollm.train.loop": {"monollm.attacks.common"}})  # across one layer
    bad = upward_imports(graph)
    assert not bad, "imports that point up (or across domain packages): " + ", ".join(bad)


def test_the_package_shows_its_architecture():
    """Few modules at the top: the domain code lives in the subpackages."""
    top = sorted(n for n in import_graph() if n.count(".") == 1 and not os.path.isdir(os.path.join(PACKAGE, n[8:])))
    assert len(top) <= 20, f"{len(top)} modules directly in monollm/: {top}"


def _has_reason(lines: list[str], *line_numbers: int) -> bool:
    return any("# long:" in lines[n - 1] for n in line_numbers if 0 < n <= len(lines))


def test_functions_and_modules_are_short_or_say_why():
    too_long = []
    for name, path in sorted(modules().items()):
        lines = open(path).read().splitlines()
        if len(lines) > MAX_MODULE and not _has_reason(lines, *range(1, 11)):
            too_long.append(f"module {name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - first + 1
                if length > MAX_FUNCTION and not _has_reason(lines, node.lineno, first - 1):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, f"over {MAX_FUNCTION} lines (function) or {MAX_MODULE} (module) without a " \
                         f"'# long: reason' comment: {too_long}"


@pytest.mark.flow
def test_micro_run_matches_its_fingerprint(micro_run):
    """The micro run's tables equal those stored in tests/fingerprints/micro.json. A change that
    is meant to change results regenerates it (python tests/fingerprint.py RUN_ID FILE) and
    says so; any other difference is a regression."""
    from fingerprint import close, differences, fingerprint, machine

    with open(os.path.join(ROOT, "tests", "fingerprints", "micro.json")) as f:
        expected = json.load(f)
    got = json.loads(json.dumps(fingerprint(micro_run.data), sort_keys=True))
    if expected["machine"] == machine():
        diffs = differences(expected, got)
        assert not diffs, "the micro run's results changed:\n" + "\n".join(diffs[:20])
    else:  # other kernels reorder floating-point sums: the same shapes, numbers to 1e-3
        diffs = close(expected, got)
        assert not diffs, (f"the micro run's results changed (stored on {expected['machine']}, compared on "
                           f"{machine()} to 1e-3):\n" + "\n".join(diffs[:20]))
