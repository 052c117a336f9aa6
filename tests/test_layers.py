"""The production packages are layers that import one way (docs/architecture.md, "Layers"):

    flows → tasks → blocks → pipelines → libraries        (an arrow: "may import")

A layer imports its own modules and the layers below it, never one above; none imports ``deployments``,
``devstack``, ``bench`` or ``tests``, which stand outside the layers (and may import anything). And no
modules of these packages import each other in a loop, whether the imports are at module level or
inside a function: an import moved into a function to hide a cycle is still a cycle.

Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The layers, top first: each may import itself and the ones after it.
LAYERS = ("flows", "tasks", "blocks", "pipelines")
#: Packages of the repository outside the layers: no layer imports them.
OUTSIDE = ("deployments", "devstack", "bench", "tests")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "blocks.tableau.pat"
    target: str  # the imported module or package of the repository, e.g. "blocks.secrets"
    where: str  # "blocks/tableau/pat.py:19"


def project_modules() -> dict[str, Path]:
    """Every module of the layers: dotted name → file."""
    modules = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_in(module: str, code: str, *, where: str, is_package: bool, modules: set[str]) -> list[Import]:
    """Every import of a repository package in ``code`` (at module, class or function level, relative
    ones resolved), to the most specific module: ``from pkg import mod`` names ``pkg.mod`` when that is
    a module, else ``pkg``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in sorted(ast.walk(ast.parse(code)), key=lambda node: getattr(node, "lineno", 0)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in (*LAYERS, *OUTSIDE):
                found.append(Import(module, target, f"{where}:{node.lineno}"))
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    return [
        found
        for name, path in modules.items()
        for found in imports_in(
            name,
            path.read_text(encoding="utf-8"),
            where=str(path.relative_to(ROOT)),
            is_package=path.name == "__init__.py",
            modules=set(modules),
        )
    ]


def layer_violations(imports: list[Import]) -> list[str]:
    wrong = []
    for i in imports:
        source, target = i.source.split(".")[0], i.target.split(".")[0]
        if target in OUTSIDE:
            wrong.append(f"{i.where}: {i.source} imports {i.target} ({target}/ is outside the layers)")
        elif LAYERS.index(target) < LAYERS.index(source):
            wrong.append(f"{i.where}: {i.source} imports {i.target} ({source}/ may not import {target}/)")
    return wrong


def cycles(imports: list[Import]) -> list[list[str]]:
    """The modules that import each other in a loop: each strongly connected component of more than one
    module, or a module importing itself, sorted (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:  # recursion depth: at most the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def describe(component: list[str], imports: list[Import]) -> str:
    ties = sorted({f"{i.where}: {i.target}" for i in imports if {i.source, i.target} <= set(component)})
    return " ⇄ ".join(component) + "".join(f"\n    {tie}" for tie in ties)


def test_layers_import_only_downwards() -> None:
    wrong = layer_violations(all_imports())
    assert not wrong, "imports against the layers flows → tasks → blocks → pipelines:\n" + "\n".join(wrong)


def test_no_module_imports_itself_through_others() -> None:
    imports = all_imports()
    found = cycles(imports)
    assert not found, "modules that import each other in a loop:\n" + "\n".join(
        describe(component, imports) for component in found
    )


def test_the_check_reads_every_layer_and_every_kind_of_import() -> None:
    modules = project_modules()
    assert {name.split(".")[0] for name in modules} == set(LAYERS)
    assert any(i.source.startswith("flows.") and i.target.startswith("tasks.") for i in all_imports())
    code = (
        "import pipelines.retries\n"
        "from . import site\n"
        "def f():\n"
        "    from .. import secrets, run_logger\n"
        "    from ..loading import load_block\n"
        "    import devstack.demo\n"
    )
    found = imports_in(
        "blocks.tableau.pat",
        code,
        where="blocks/tableau/pat.py",
        is_package=False,
        modules={"blocks", "blocks.loading", "blocks.secrets", "blocks.tableau.site", "pipelines.retries"},
    )
    assert [(i.target, i.where) for i in found] == [
        ("pipelines.retries", "blocks/tableau/pat.py:1"),
        ("blocks.tableau.site", "blocks/tableau/pat.py:2"),
        ("blocks.secrets", "blocks/tableau/pat.py:4"),
        ("blocks", "blocks/tableau/pat.py:4"),
        ("blocks.loading", "blocks/tableau/pat.py:5"),
        ("devstack.demo", "blocks/tableau/pat.py:6"),
    ]


def test_the_check_names_what_is_wrong() -> None:
    imports = [
        Import("blocks.a", "tasks.common", "blocks/a.py:3"),
        Import("pipelines.b", "devstack.demo", "pipelines/b.py:4"),
        Import("tasks.c", "blocks.a", "tasks/c.py:5"),
        Import("pipelines.x", "pipelines.y", "pipelines/x.py:1"),
        Import("pipelines.y", "pipelines.z", "pipelines/y.py:2"),
        Import("pipelines.z", "pipelines.x", "pipelines/z.py:9"),
    ]
    assert layer_violations(imports) == [
        "blocks/a.py:3: blocks.a imports tasks.common (blocks/ may not import tasks/)",
        "pipelines/b.py:4: pipelines.b imports devstack.demo (devstack/ is outside the layers)",
    ]
    assert cycles(imports) == [["pipelines.x", "pipelines.y", "pipelines.z"]]
    assert describe(["pipelines.x", "pipelines.y", "pipelines.z"], imports).splitlines()[1:] == [
        "    pipelines/x.py:1: pipelines.y",
        "    pipelines/y.py:2: pipelines.z",
        "    pipelines/z.py:9: pipelines.x",
    ]
