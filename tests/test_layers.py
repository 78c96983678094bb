"""The layering of docs/DESIGN.md, read from the source (function-level imports count):
every module has the layer the design's "Layers" section gives it, imports go down the
layers only, fastcifar/kernels/ imports nothing of fastcifar above it, and no import cycle
exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = {"fastcifar": ROOT / "fastcifar"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """fastcifar modules that ``path`` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                out.add(name)
    return out


def test_kernels_import_nothing_above_them():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("fastcifar.kernels"):
            bad = {m for m in _imports(path, modules) if not m.startswith("fastcifar.kernels")}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle between layers
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def design_layers() -> dict[str, int]:
    """{module: layer number} as docs/DESIGN.md's "Layers" section states it: each module
    named in item N (``fastcifar.x``, ``x.py``, ``data/x.py``, or a package folder such as
    ``models/``) is in layer N; a module named in two items is in the first."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"^(\d)\. ", section, flags=re.M)[1:]
    modules = _modules()
    layers: dict[str, int] = {}
    for number, body in zip(items[::2], items[1::2], strict=True):
        layer = int(number)
        base = "fastcifar.kernels" if layer == 1 else "fastcifar"
        for token in re.findall(r"`([\w./]+)`", body):
            if token.startswith("fastcifar."):
                names = [token]
            elif token.endswith("/"):  # a package folder: all of it
                names = [m for m in modules if m.startswith(f"{base}.{token[:-1]}")]
            elif token.endswith(".py"):
                names = [f"{base}.{token[:-3].replace('/', '.')}"]
            else:
                continue
            if layer == 1 and token == "fastcifar.kernels":
                names = [m for m in modules if m.startswith("fastcifar.kernels")]
            for name in names:
                if name in modules:
                    layers.setdefault(name, layer)
    return layers


def test_design_places_every_module_in_a_layer():
    layers = design_layers()
    unplaced = set(_modules()) - set(layers) - {"fastcifar", "fastcifar.errors"}
    unplaced = {m for m in unplaced if not m.endswith("__init__")}
    assert not unplaced, f"docs/DESIGN.md's Layers section names no layer for {sorted(unplaced)}"
    assert layers["fastcifar.nn"] == 2 and layers["fastcifar.engine"] == 4
    assert layers["fastcifar.train"] == 5 and layers["fastcifar.kernels.launch"] == 1


def test_every_import_goes_down_the_layers_of_the_design():
    # a module imports only from its own layer and the ones below it; fastcifar.errors
    # may be imported by any layer above the kernels (DESIGN.md)
    layers = design_layers()
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if name not in layers:
            continue
        for dep in _imports(path, modules):
            if dep == "fastcifar.errors" and layers[name] >= 2:
                continue
            if dep in layers and layers[dep] > layers[name]:
                bad.append(f"{name} (layer {layers[name]}) imports {dep} (layer {layers[dep]})")
    assert not bad, "\n".join(bad)


# Sizes a newcomer can read in one sitting (docs/DESIGN.md, "Layers"): no function of
# fastcifar/ over 80 lines, no module of it over 500, the engine under 400 and the
# Trainer, the loop alone, under 300.
MAX_FUNCTION, MAX_MODULE, MAX_ENGINE, MAX_TRAINER = 80, 500, 400, 300


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def test_functions_and_modules_stay_short():
    long = []
    for name, path in _modules().items():
        if not name.startswith("fastcifar.kernels"):
            tree = ast.parse(path.read_text())
            functions = (ast.FunctionDef, ast.AsyncFunctionDef)
            long += [f"{name}.{n.name}: {_length(n)} lines" for n in ast.walk(tree)
                     if isinstance(n, functions) and _length(n) > MAX_FUNCTION]  # fmt: skip
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE:
                long.append(f"{name}: {lines} lines")
    assert not long, "\n".join(long)
    engine = ROOT / "fastcifar" / "engine.py"
    assert len(engine.read_text().splitlines()) < MAX_ENGINE
    trainer = next(n for n in ast.parse(engine.read_text()).body
                   if isinstance(n, ast.ClassDef) and n.name == "Trainer")  # fmt: skip
    assert _length(trainer) < MAX_TRAINER
