"""The architecture holds: every import of the library goes down the layers, and the packages form
no cycle.  An AST walk over ``interventions/`` and ``datamodules/`` (imports inside functions and
under ``TYPE_CHECKING`` included), so a violation fails here before it becomes a tangle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each group and the groups it may import (besides itself).  Order = the layers of DESIGN.md.
ALLOWED: dict[str, set[str]] = {
    "interventions.core": set(),
    "interventions.edits": {"interventions.core"},
    "interventions.evaluation": {"interventions.core", "interventions.edits"},
    "interventions.reporting": {
        "interventions.core",
        "interventions.edits",
        "interventions.evaluation",
    },
    "interventions.methods": {
        "interventions.core",
        "interventions.edits",
        "interventions.evaluation",
        "interventions.reporting",
    },
    "datamodules": {"interventions.core"},
    # the entry points: the public API, the Lightning CLI, the shell commands
    "interventions": {
        "interventions.core",
        "interventions.edits",
        "interventions.evaluation",
        "interventions.reporting",
        "interventions.methods",
        "datamodules",
    },
    "interventions.experiments": {
        "interventions",
        "interventions.core",
        "interventions.edits",
        "interventions.evaluation",
        "interventions.reporting",
        "interventions.methods",
        "datamodules",
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _group(module: str) -> str | None:
    """The layer group of a project module (``None`` for third-party modules)."""
    if module.split(".")[0] == "datamodules":
        return "datamodules"
    if module.split(".")[0] != "interventions":
        return None
    parts = module.split(".")
    if len(parts) > 1 and f"interventions.{parts[1]}" in ALLOWED:
        return f"interventions.{parts[1]}"
    return "interventions"  # __init__, cli, commands, __main__


def _package(module: str) -> str:
    """The package a module is in, one level below its group for methods
    (``interventions.methods.w2s``), else the group itself."""
    parts = module.split(".")
    if parts[:2] == ["interventions", "methods"] and len(parts) > 2:
        return ".".join(parts[:3])
    return _group(module) or module


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every project module ``path`` imports, with the line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from interventions.methods import attribution` names a module too
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return [(m, line) for m, line in found if _group(m) is not None]


def _existing(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


FILES = sorted([*ROOT.glob("interventions/**/*.py"), *ROOT.glob("datamodules/**/*.py")])


def test_the_walk_sees_the_whole_library():
    groups = {_group(_module_name(f)) for f in FILES}
    assert groups == set(ALLOWED)
    assert len(FILES) > 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    source = _group(_module_name(path))
    bad = []
    for target, line in _imports(path):
        if not _existing(target):
            continue  # a name imported from a module, e.g. `from x import SomeClass`
        group = _group(target)
        if group != source and group not in ALLOWED[source]:
            bad.append(f"line {line}: {target} ({group}) from {source}")
    assert not bad, f"{path.relative_to(ROOT)} imports from a layer above it:\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in FILES:
        source = _package(_module_name(path))
        for target, _ in _imports(path):
            if _existing(target) and _package(target) != source:
                graph.setdefault(source, set()).add(_package(target))
    return graph


def test_packages_form_no_cycle():
    graph = _package_graph()
    assert "interventions.methods.w2s" in graph  # the graph is real: W2S uses CAA and the sweep
    assert "interventions.methods.caa" in graph["interventions.methods.w2s"]
    cycle = _cycle(graph)
    assert cycle is None, "packages import each other in a cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_violation():
    """The walk and the cycle finder on a hand-made case: both must fail it."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    assert "interventions.methods" not in ALLOWED["interventions.core"]
    assert _group("interventions.methods.w2s.module") == "interventions.methods"
    assert _group("interventions.cli") == "interventions"
    assert _package("interventions.methods.w2s.module") == "interventions.methods.w2s"


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(ROOT)): n for p in FILES if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"


def test_one_hook_system():
    """Only interventions.core.hooks registers PyTorch hooks; everything else goes through
    attach / record."""
    raw = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in FILES
        if p.name != "hooks.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "register_forward" in line or "register_full_backward" in line
    ]
    assert not raw, f"hooks registered outside interventions.core.hooks: {raw}"


def test_public_api_names_resolve():
    import interventions

    assert interventions.__all__ == sorted(interventions._EXPORTS)
    for name in interventions.__all__:
        assert getattr(interventions, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        interventions.nope  # noqa: B018
