"""The layering, read from the tree: a module's layer is the folder it sits in
(docs/DESIGN.md, "Layers"), imports go down the layers only (function-level imports
count), the torch-free layers import no torch, and no import cycle exists."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "fastcifar"

# Lowest first. A module belongs to the first entry one of whose prefixes its dotted name
# starts with; every top-level module not named here is a command (the top layer). The
# kernels import only themselves; every other layer imports its own and those before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernels", ("fastcifar.kernels",)),
    (
        "leaves",
        (
            "fastcifar.errors",
            "fastcifar.units",
            "fastcifar.options",
            "fastcifar.cli",
            "fastcifar._io",
        ),
    ),
    ("nn", ("fastcifar.nn",)),
    ("recipes, data, models", ("fastcifar.recipes", "fastcifar.data", "fastcifar.models")),
    ("engine", ("fastcifar.engine",)),
    ("evaluation, roofline", ("fastcifar.evaluation", "fastcifar.roofline")),
    ("commands", ("fastcifar",)),
)
TORCH_FREE = (
    "fastcifar.errors",
    "fastcifar.units",
    "fastcifar.options",
    "fastcifar.cli",
    "fastcifar._io",
    "fastcifar.recipes",
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the module with dotted name ``module``."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise ValueError(f"{module} is not under fastcifar")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [p for p in path.relative_to(PACKAGE).with_suffix("").parts if p != "__init__"]
        found[".".join(["fastcifar", *parts])] = path
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
        out.update(name for name in names if name in modules)
    return out


def climbing_imports(graph: dict[str, set[str]]) -> list[str]:
    """The imports of ``graph`` ({module: modules it imports}) that climb: into a higher
    layer, or out of the kernels. The package's ``__init__`` (``fastcifar``: the version
    and ``FastCifarError``) counts as a leaf when imported."""
    bad = []
    for name, deps in graph.items():
        own = layer_of(name)
        for dep in deps:
            theirs = 1 if dep == "fastcifar" else layer_of(dep)
            if (own == 0 and theirs != 0) or theirs > own:
                bad.append(f"{name} ({LAYERS[own][0]}) imports {dep} ({LAYERS[theirs][0]})")
    return sorted(bad)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_import_goes_down_the_layers():
    bad = climbing_imports(_graph())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("fastcifar.nn.chain", "fastcifar.engine.runtime"),  # nn climbing into the engine
        ("fastcifar.kernels.conv", "fastcifar.errors"),  # the kernels import only themselves
        ("fastcifar.data.sources", "fastcifar.evaluation.report"),
        ("fastcifar.engine.trainer", "fastcifar.train"),
    ],  # a library importing a command
)
def test_the_check_fails_on_a_climbing_import(importer, imported):
    graph = _graph()
    graph[importer] = graph[importer] | {imported}
    assert climbing_imports(graph) == [
        f"{importer} ({LAYERS[layer_of(importer)][0]}) imports {imported} "
        f"({LAYERS[layer_of(imported)][0]})"
    ]


def test_every_folder_of_the_package_is_a_layer_and_design_names_it():
    design = (ROOT / "docs" / "DESIGN.md").read_text().split("## Layers", 1)[1]
    design = design.split("\n## ", 1)[0]
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    for folder in folders:
        assert layer_of(f"fastcifar.{folder}") < len(LAYERS) - 1, f"{folder}/ has no layer"
        assert f"`{folder}/`" in design, f"DESIGN.md's Layers section does not name {folder}/"
    commands = [m for m in _modules() if layer_of(m) == len(LAYERS) - 1 and m != "fastcifar"]
    assert all(m.count(".") == 1 for m in commands), commands  # commands sit at the top
    for command in commands:
        assert f"`{command.split('.')[1]}.py`" in design, f"DESIGN.md does not name {command}"


def test_torch_free_layers_import_no_torch():
    for name, path in _modules().items():
        if any(name == p or name.startswith(p + ".") for p in TORCH_FREE):
            for node in ast.parse(path.read_text()).body:
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    mods = [node.module]
                assert not any(m.split(".")[0] == "torch" for m in mods), f"{name} imports torch"


def test_no_import_cycle():
    graph = _graph()
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


# Sizes a newcomer can read in one sitting (docs/DESIGN.md, "Layers"): no module of
# fastcifar/ over 400 lines, no function over 60, the Trainer (the loop alone) under 300.
# A function counts its physical lines without its docstring: the Args/Returns/Raises
# sections every public function carries (test_docs) lengthen it without giving it more
# code to read; a module counts every line, its docstrings too. A ``@triton.jit`` kernel
# counts its body's logical lines (statements and comment lines, without its signature
# and docstring): the Triton tutorials' convention of one pointer argument a line with
# its shape in a comment, and the formatter's one argument a line in a long helper call,
# lengthen a kernel on the page without giving it more to read.
MAX_FUNCTION, MAX_MODULE, MAX_TRAINER = 60, 400, 300
MAX_FMT_SKIP = 15  # the formatter formats; a few aligned tables of numbers are kept so


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _docstring_lines(node: ast.FunctionDef | ast.ClassDef) -> int:
    first = node.body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return _length(first) if is_doc and isinstance(first.value.value, str) else 0


def _is_triton_kernel(node: ast.FunctionDef) -> bool:
    return any(ast.unparse(d).startswith(("triton.jit", "jit")) for d in node.decorator_list)


def _logical_body_lines(source: str, node: ast.FunctionDef) -> int:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    first, last = body[0].lineno, node.end_lineno
    count = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if first <= tok.start[0] <= last:
            comment_line = tok.type == tokenize.COMMENT and tok.line.strip().startswith("#")
            count += tok.type == tokenize.NEWLINE or comment_line
    return count


def function_lengths(source: str) -> dict[str, int]:
    """{function name: its length as the size rule counts it} for every function of
    ``source``: physical lines without the docstring, or a Triton kernel's logical body
    lines."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jit = _is_triton_kernel(node)
            plain = _length(node) - _docstring_lines(node)
            out[node.name] = _logical_body_lines(source, node) if jit else plain
    return out


def test_functions_and_modules_stay_short():
    long = []
    for name, path in _modules().items():
        source = path.read_text()
        long += [
            f"{name}.{function}: {length} lines"
            for function, length in function_lengths(source).items()
            if length > MAX_FUNCTION
        ]
        if len(source.splitlines()) > MAX_MODULE:
            long.append(f"{name}: {len(source.splitlines())} lines")
    assert not long, "\n".join(long)
    trainer = PACKAGE / "engine" / "trainer.py"
    cls = next(
        n
        for n in ast.parse(trainer.read_text()).body
        if isinstance(n, ast.ClassDef) and n.name == "Trainer"
    )
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    docstrings = _docstring_lines(cls) + sum(_docstring_lines(m) for m in methods)
    assert _length(cls) - docstrings < MAX_TRAINER


def test_the_size_rule_counts_a_kernels_body_and_a_functions_lines():
    kernel = "@triton.jit\ndef k(\n" + "    a,\n" * 70 + '):\n    """doc"""\n    x = f(\n'
    kernel += "        1,\n" * 30 + "    )\n    # a comment\n    return x\n"
    plain = "def g(\n" + "    a,\n" * 70 + "):\n    return a\n"
    documented = 'def h(a):\n    """Doc.\n\n    Args:\n        a: one.\n    """\n    return a\n'
    assert function_lengths(kernel) == {"k": 3}  # the call, the comment, the return
    assert function_lengths(plain) == {"g": 73}
    assert function_lengths(documented) == {"h": 2}  # the signature and the return


def test_the_formatter_formats():
    skips = sum(p.read_text().count("fmt: skip") for p in PACKAGE.rglob("*.py"))
    assert skips < MAX_FMT_SKIP, f"{skips} formatter-skip markers in fastcifar/"
