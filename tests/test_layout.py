"""
The package's shape: no import cycles between its modules, and no private
attribute of Twisted or Klein objects used anywhere (those are what a
Twisted upgrade breaks).
"""

from __future__ import annotations

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "llamaswap"
PRIVATE_TWISTED = re.compile(
    r"\._(disconnected|raiseSynchronously|waitingForPort|factory|finishedDeferreds|transferDecoder"
    r"|networkProducer|requestProducer|channel|dataBuffer|tempDataBuffer)\b|_HTTP11ClientFactory"
)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: pathlib.Path) -> set[str]:
    """
    The llamaswap modules a module imports when it is loaded (not those
    imported inside functions or only for type checking).
    """
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("llamaswap"):
                found.add(child.module)
                for alias in child.names:
                    found.add(f"{child.module}.{alias.name}")
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith("llamaswap"))
    return found


def test_no_import_cycles():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {
        name: {target for target in top_level_imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }
    # A package's __init__ importing its own modules is how packages work.
    for name in graph:
        graph[name] = {target for target in graph[name] if not name.startswith(target + ".")}
    visiting, done, cycles = set(), set(), []

    def visit(name, trail):
        if name in done:
            return
        if name in visiting:
            cycles.append(trail[trail.index(name) :] + [name])
            return
        visiting.add(name)
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_no_private_twisted_attributes():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_TWISTED.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []
