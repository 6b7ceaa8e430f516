"""Imports point one way: down the layers that docs/ARCHITECTURE.md states (its "Layers" block),
never up, never sideways between packages of one layer, never in a cycle between packages.

The import graph is read from the source (every ``.py`` file ast-parsed, imports inside functions
and ``TYPE_CHECKING`` blocks included: a lazy import is still a dependency), so that nothing is
imported to check it. ``tests/`` may import anything.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# Folders of the checkout that hold no project code (or code that may import anything).
NOT_CODE = {"tests", "docs", "configs", "prompts", "videocrafter_models", "results", "shared"}


@dataclass(frozen=True)
class Import:
    """``source`` (a project file) imports ``target`` (a project package) on ``line``."""

    source: Path
    line: int
    importer: str  # the package the file belongs to
    target: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.importer} imports {self.target}"


def read_layers(text: str) -> dict[str, int]:
    """The layers of ARCHITECTURE.md's fenced block under "## Layers": one line per layer,
    ``N  name/  name.py  ...  (comment)``, N counted from the bottom. → {package: N}."""
    section = text.split("\n## Layers", 1)[1]
    block = section.split("```", 2)[1]
    layers: dict[str, int] = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(.*)", line)
        if match is None:
            continue
        for token in match.group(2).split():
            if token.endswith("/") or token.endswith(".py"):
                layers[token.removesuffix("/").removesuffix(".py")] = int(match.group(1))
    return layers


def project_packages(root: Path) -> dict[str, list[Path]]:
    """Every top-level package (a folder of ``.py`` files) and module of the checkout → its files."""
    packages: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.name in NOT_CODE:
            continue
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.py") if ".venv" not in p.parts)
            if files:
                packages[path.name] = files
        elif path.suffix == ".py":
            packages[path.stem] = [path]
    return packages


@functools.cache
def imports_of(root: Path) -> tuple[Import, ...]:
    """Every import of a project package by a file of another one (relative imports stay inside
    their package and are skipped)."""
    return tuple(_imports_of(root))


def _imports_of(root: Path) -> Iterator[Import]:
    packages = project_packages(root)
    for importer, files in packages.items():
        for path in files:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = name.split(".", 1)[0]
                    if target in packages and target != importer:
                        yield Import(path.relative_to(root), node.lineno, importer, target)


def layer_violations(root: Path, layers: dict[str, int]) -> list[str]:
    """Imports that point up a layer or sideways, and packages the layers do not name."""
    problems = [
        f"{name} is not in the layers of docs/ARCHITECTURE.md: add it there"
        for name in project_packages(root)
        if name not in layers
    ]
    for edge in imports_of(root):
        if edge.importer not in layers or edge.target not in layers:
            continue
        below, above = layers[edge.target], layers[edge.importer]
        if below > above:
            problems.append(f"{edge}: up from layer {above} to layer {below}")
        elif below == above:
            problems.append(f"{edge}: sideways within layer {above} (neither may import the other)")
    return problems


def package_cycles(root: Path) -> list[list[str]]:
    """The cycles of the package graph (each as the packages along it, first repeated at the end)."""
    graph: dict[str, set[str]] = {name: set() for name in project_packages(root)}
    for edge in imports_of(root):
        graph[edge.importer].add(edge.target)
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


@pytest.fixture(scope="module")
def layers() -> dict[str, int]:
    return read_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def test_architecture_states_the_layers(layers) -> None:
    assert layers["infra"] < layers["lvdm"] < layers["fifo"] < layers["cli"] < layers["videocrafter_main"]
    assert layers["fifo"] < layers["tools"] < layers["scripts"]


def test_no_import_points_up_or_sideways(layers) -> None:
    problems = layer_violations(REPO, layers)
    assert not problems, "\n".join(problems)


def test_no_cycle_between_packages() -> None:
    cycles = package_cycles(REPO)
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path, layers) -> None:
    """The same checks on a made-up checkout: a lazy upward import and a cycle are found."""
    for package, source in {
        "infra": "import os\n",
        "lvdm": "from infra import x\n",
        "fifo": "import lvdm.build\n\ndef f():\n    from tools.reference import y\n",
        "tools": "from fifo import z\nfrom . import here\n",
        "cli": "import tools\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(source)
    (tmp_path / "extra.py").write_text("import fifo\n")
    problems = layer_violations(tmp_path, layers)
    assert any("fifo imports tools: up from layer" in p for p in problems), problems
    assert any("cli imports tools: sideways" in p for p in problems), problems
    assert any(p.startswith("extra is not in the layers") for p in problems), problems
    assert len(problems) == 3, problems
    assert [sorted(set(cycle)) for cycle in package_cycles(tmp_path)] == [["fifo", "tools"]]


def test_the_entry_point_hands_over_to_the_cli_package() -> None:
    """videocrafter_main.py is what a newcomer opens first: a few lines, the work in cli/."""
    source = (REPO / "videocrafter_main.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 100
    assert "from cli.main import main" in source


# ------------------------------------------------------------------ modules inside the packages


def module_name(root: Path, path: Path) -> str:
    """``fifo/tricks/srg.py`` → ``fifo.tricks.srg``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def module_graph(root: Path) -> dict[str, set[str]]:
    """Every project module → the project modules it imports (lazily and under ``TYPE_CHECKING``
    too). ``from a.b import c`` depends on ``a.b``, and on ``a.b.c`` when that is a module;
    relative imports are resolved."""
    modules = {module_name(root, path): path for files in project_packages(root).values() for path in files}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a module graph (one per strongly connected set of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def read_fifo_layers(text: str) -> dict[str, int]:
    """The layers of ARCHITECTURE.md's block under "## Layers inside fifo/", as for the packages:
    ``{module: N}`` (``tricks/`` stands for every module of ``fifo.tricks``)."""
    section = text.split("\n## Layers inside fifo/", 1)[1]
    block = section.split("```", 2)[1]
    layers: dict[str, int] = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(.*)", line)
        if match is None:
            continue
        for token in match.group(2).split():
            if token.endswith("/") or token.endswith(".py"):
                layers["fifo." + token.removesuffix("/").removesuffix(".py")] = int(match.group(1))
    return layers


def fifo_layer(module: str, layers: dict[str, int]) -> int | None:
    while module and module not in layers:
        module = module.rpartition(".")[0]
    return layers.get(module)


# What the core of the method must not touch: files, other processes, caches.
FILE_RANK_CACHE = (
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "json",
    "pickle",
    "PIL",
    "imageio",
    "torch.distributed",
    "infra.video_io",
    "infra.image_io",
    "infra.csv_table",
    "infra.memory",
    "infra.cuda_runtime",
)


def direct_imports(path: Path) -> set[str]:
    """Every module a file names in an import (dotted, as written; relative imports skipped)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.fixture(scope="module")
def fifo_layers() -> dict[str, int]:
    return read_fifo_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def test_no_cycle_between_modules() -> None:
    """No module reaches itself through imports, inside a package or across packages."""
    cycles = module_cycles(module_graph(REPO))
    assert not cycles, "\n".join(" ↔ ".join(cycle) for cycle in cycles)


def test_fifo_modules_import_down_their_layers(fifo_layers) -> None:
    graph = module_graph(REPO)
    fifo = sorted(name for name in graph if name.startswith("fifo.") and name != "fifo.tricks")
    problems = [
        f"{m} is not in docs/ARCHITECTURE.md's layers inside fifo/"
        for m in fifo
        if fifo_layer(m, fifo_layers) is None
    ]
    for module in fifo:
        for target in sorted(graph[module]):
            mine, theirs = fifo_layer(module, fifo_layers), fifo_layer(target, fifo_layers)
            if target.startswith("fifo.") and None not in (mine, theirs) and theirs > mine:
                problems.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not problems, "\n".join(problems)


def test_the_core_imports_no_file_rank_or_cache_code(fifo_layers) -> None:
    """The FIFO loop and everything it reaches in fifo/ open no file, talk to no process, keep no cache."""
    graph = module_graph(REPO)
    core = {m for m in graph if m.startswith("fifo.") and fifo_layer(m, fifo_layers) == CORE_LAYER}
    assert {"fifo.sampler", "fifo.state", "fifo.hooks", "fifo.step", "fifo.guidance"} <= core
    reached, todo = set(), list(core)
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        todo.extend(t for t in graph[module] if t.startswith("fifo."))
    problems = []
    for module in sorted(reached):
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        for name in sorted(direct_imports(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in FILE_RANK_CACHE):
                problems.append(f"{module} (reached from the core) imports {name}")
    assert not problems, "\n".join(problems)


CORE_LAYER = 2


def test_the_module_checks_catch_a_cycle_and_a_file_import(tmp_path: Path) -> None:
    """The same checks on a made-up checkout: a lazy cycle through a relative import is found."""
    (tmp_path / "fifo").mkdir()
    (tmp_path / "fifo" / "__init__.py").write_text("")
    (tmp_path / "fifo" / "sampler.py").write_text("def f():\n    from .generator import g\n")
    (tmp_path / "fifo" / "generator.py").write_text("from fifo.sampler import f\nimport pathlib\n")
    (tmp_path / "fifo" / "state.py").write_text("import os.path\n")
    assert module_cycles(module_graph(tmp_path)) == [["fifo.generator", "fifo.sampler"]]
    assert "os.path" in direct_imports(tmp_path / "fifo" / "state.py")
