"""The package's import graph, read from the source: no cycles, lower layers never import upper ones,
and the seams the design relies on hold (the model builder knows no data layer, the CLI reaches the
trainer only when it trains). `ls bonsai/` reads as the architecture; this keeps it true."""

import ast

from conftest import ROOT

PACKAGE = ROOT / "bonsai"
# Foundation modules (config, io, errors, rundir, robust) sit at the top level of the package, below
# every subpackage; the CLI above everything.
LAYERS = {"": 0, "data": 1, "model": 2, "observe": 3, "evaluate": 4, "train": 5, "cluster": 6, "cli": 7}


def _runtime_nodes(node):
    """Every node below `node` except what sits under `if TYPE_CHECKING:` (type hints only)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            continue
        yield child
        yield from _runtime_nodes(child)


def _module_name(path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def module_imports(top_level_only: bool) -> dict[str, set[str]]:
    """bonsai module (e.g. "data.records") -> the bonsai modules it imports at run time."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else list(_runtime_nodes(tree))
        found = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bonsai."):
                base = node.module.removeprefix("bonsai.")
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("bonsai.") for a in node.names if a.name.startswith("bonsai.")}
        graph[_module_name(path)] = found - {_module_name(path)}
    return graph


def layer(module: str) -> int:
    return LAYERS[module if module == "cli" else module.split(".")[0] if "." in module else ""]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(module_imports(top_level_only=False)) is None


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_lower_layers_never_import_upper_ones():
    upward = [(m, i) for m, imports in module_imports(top_level_only=False).items() for i in imports
              if layer(i) > layer(m)]
    assert not upward, upward


def test_the_seams_hold():
    graph = module_imports(top_level_only=False)
    data = {m for m in graph if m.startswith("data.")}
    assert not graph["model.tiny"] & data, graph["model.tiny"]  # it takes texts, not a data path
    assert not graph["model.loading"] & data, graph["model.loading"]
    assert "data.tools" not in graph["data.dataset"] and "data.tools" not in graph["data.stream"]
    assert "train.trainer" not in module_imports(top_level_only=True)["cli"]  # errors come from bonsai.errors
    assert [m for m, imports in graph.items() if "train.trainer" in imports] == ["cli"]
