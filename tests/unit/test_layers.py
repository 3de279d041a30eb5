"""
The package's layers: each folder imports only the layers below it, and no
module imports itself back through others (no cycle).

An AST walk over every module, so that a new upward import or a cycle
fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "txairflowrpc"

#: Each layer and the layers it may import.  ``""`` is the package's own
#: ``__init__``.
ALLOWED: dict[str, set[str]] = {
    "": set(),
    "config": set(),
    "core": set(),
    "audit": {"core"},
    "upstream": {"core"},
    "identity": {"core", "config"},
    "gate": {"core", "config", "audit", "upstream", "identity"},
    # The caller's side (the call/trigger commands, AWS-IAM signing): it
    # reaches the gateway over XML-RPC like any caller, so only core's fault
    # codes and id rules (the wire contract) are its; the gateway never
    # imports it, only the command does.
    "client": {"", "core"},
    "service": {"", "core", "config", "audit", "upstream", "identity", "gate", "client"},
    "devstack": {"config"},
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, imported txairflowrpc module) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "txairflowrpc"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "txairflowrpc":
                continue
            # "from . import x" imports the module x, not the package.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate, root) else target))
    return found


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def upward_imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """The imports of ``path`` that reach a layer it may not import."""
    here = layer_of(module_name(path, root))
    return [
        f"{path.relative_to(root.parent)}:{line} imports {target}"
        for line, target in imports_of(path, root)
        if layer_of(target) != here and layer_of(target) not in ALLOWED[here]
    ]


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``graph`` meets, as ``a -> b -> a``."""
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    return cycles


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_known_layer() -> None:
    assert MODULES
    unknown = {layer_of(module_name(p)) for p in MODULES} - set(ALLOWED)
    assert not unknown, f"folders without a place in ALLOWED: {unknown}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downward(path: Path) -> None:
    upward = upward_imports(path)
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_through_others() -> None:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = module_name(path)
        # A package's __init__ re-exporting its modules is not a cycle of theirs.
        graph[name] = {t for _, t in imports_of(path) if t != name and not name.startswith(t + ".")}
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(cycles)


def test_the_walk_catches_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    root = tmp_path / "txairflowrpc"
    (root / "core").mkdir(parents=True)
    (root / "gate").mkdir()
    for init in (root, root / "core", root / "gate"):
        (init / "__init__.py").write_text("")
    (root / "gate" / "site.py").write_text("from ..core import errors\n")
    bad = root / "core" / "errors.py"
    bad.write_text("import os\nfrom ..gate import site\nimport txairflowrpc.gate.site\n")
    assert upward_imports(bad, root) == [
        "txairflowrpc/core/errors.py:2 imports txairflowrpc.gate.site",
        "txairflowrpc/core/errors.py:3 imports txairflowrpc.gate.site",
    ]
    assert upward_imports(root / "gate" / "site.py", root) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
