"""Public functions and classes say what they take, return and raise (docs/DESIGN.md,
"Sizes and format"): Google-style sections, checked on every module-level name of
fastcifar/ that does not start with an underscore, and every such method of those
classes, in every module whose own name does not (``_stencil``, ``_window``, ``_pool``
and ``_io`` are the kernels' and the package's private helpers).

The rule, per definition:

* a function with parameters has ``Args:``; one that returns a value (a ``return``
  with a value in its own body) ``Returns:``, a generator ``Yields:``; one that raises
  in its own body (``raise X(...)``) ``Raises:`` (errors raised by what it calls are
  documented where the caller knows them; this rule cannot see them);
* a class whose constructor takes arguments, or a dataclass with fields, has ``Args:``
  or ``Attributes:``;
* an ``Args:`` section names every parameter and nothing else (a stale name after a
  rename fails);
* a ``@triton.jit`` kernel needs a docstring: its arguments are documented at the
  signature, one pointer a line with its shape in a comment, as the Triton tutorials
  write them.
"""

from __future__ import annotations

import ast
import re

from tests.test_layers import PACKAGE

_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _own_nodes(fn: ast.FunctionDef):
    """The nodes of ``fn``'s body, without descending into nested definitions."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _NESTED):
            stack.extend(ast.iter_child_nodes(node))


def _returns_value(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    is_none = isinstance(value, ast.Constant) and value.value is None
    return isinstance(node, ast.Return) and value is not None and not is_none


def missing_sections(node: ast.FunctionDef | ast.ClassDef) -> list[str]:
    """The sections ``node``'s docstring lacks by the rule above (``["docstring"]`` when
    it has none)."""
    doc = ast.get_docstring(node)
    if not doc:
        return ["docstring"]
    if any("jit" in ast.unparse(d) for d in node.decorator_list) or _is_property(node):
        return []
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if getattr(n, "name", "") == "__init__"), None)
        takes = init is not None and len(init.args.args) + len(init.args.kwonlyargs) > 1
        fields = any(isinstance(n, ast.AnnAssign) for n in node.body)
        described = "Args:" in doc or "Attributes:" in doc
        return [] if described or not (takes or fields) else ["Args or Attributes"]
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
    own = list(_own_nodes(node))
    generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in own)
    wanted = {
        "Args:": bool(names or a.vararg or a.kwarg),
        "Yields:": generator,
        "Returns:": not generator and any(_returns_value(n) for n in own),
        "Raises:": any(isinstance(n, ast.Raise) and n.exc is not None for n in own),
    }
    return [s for s, want in wanted.items() if want and s not in doc]


def _is_property(node: ast.AST) -> bool:
    return any(ast.unparse(d) == "property" for d in getattr(node, "decorator_list", ()))


def public_definitions():
    """(path, node) of every public function, class and public method of a public class
    (a property needs a docstring only: it reads as an attribute)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.stem.startswith("_") and not path.stem.startswith("__"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name[0] != "_":
                yield path.relative_to(PACKAGE.parent), node
                methods = node.body if isinstance(node, ast.ClassDef) else []
                for m in methods:
                    if isinstance(m, ast.FunctionDef) and m.name[0] != "_":
                        yield path.relative_to(PACKAGE.parent), m


def test_public_definitions_document_their_arguments_results_and_errors():
    lacking = [
        f"{path}:{node.lineno} {node.name}: {', '.join(missing)}"
        for path, node in public_definitions()
        if (missing := missing_sections(node))
    ]
    assert not lacking, "docstring sections missing:\n" + "\n".join(lacking)


# an Args entry: "name: ...", "*args: ...", "mean, std: ...", "x (N, C, H, W): ..."
_ENTRY = re.compile(r"^(\*{0,2}\w+(?:, \*{0,2}\w+)*)(?: \([^)]*\))?:")


def args_mismatch(node: ast.FunctionDef | ast.ClassDef) -> tuple[list[str], list[str]]:
    """(names the ``Args:`` section gives that are no parameter, parameters it leaves out)
    of a function, or of a class's ``__init__``; ([], []) without an ``Args:`` section."""
    doc = ast.get_docstring(node) or ""
    lines = doc.split("\n")
    if "Args:" not in lines:
        return [], []
    named = []
    for line in lines[lines.index("Args:") + 1 :]:
        if not line.strip():
            break
        entry = _ENTRY.match(line[4:]) if line[:4] == "    " and line[4] != " " else None
        named += [n.strip().lstrip("*") for n in entry.group(1).split(",")] if entry else []
    fn = node
    if isinstance(node, ast.ClassDef):
        fn = next((n for n in node.body if getattr(n, "name", "") == "__init__"), None)
        if fn is None:
            return [], []
    a = fn.args
    params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    params = params[1:] if params[:1] in (["self"], ["cls"]) else params  # a method's own
    params += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in named if n not in params], [p for p in params if p not in named]


def test_args_sections_name_the_parameters():
    wrong = []
    for path, node in public_definitions():
        extra, missing = args_mismatch(node)
        if extra or missing:
            wrong.append(
                f"{path}:{node.lineno} {node.name}: not parameters {extra}, "
                f"not documented {missing}"
            )
    assert not wrong, "Args sections that do not match the signature:\n" + "\n".join(wrong)


def _first(source: str):
    return ast.parse(source).body[0]


def test_the_rule_sees_each_missing_section():
    bare = 'def f(x):\n    """Doc."""\n    if x:\n        raise ValueError(x)\n    return x\n'
    assert missing_sections(_first(bare)) == ["Args:", "Returns:", "Raises:"]
    done = (
        'def f(x):\n    """Doc.\n\n    Args:\n        x: one.\n\n    Returns:\n        x.\n\n'
        '    Raises:\n        ValueError: x is true.\n    """\n    if x:\n'
        "        raise ValueError(x)\n    return x\n"
    )
    assert missing_sections(_first(done)) == []
    nested = 'def f():\n    """Doc."""\n\n    def g():\n        return 1\n\n    yield g\n'
    assert missing_sections(_first(nested)) == ["Yields:"]  # g's return is g's own
    assert missing_sections(_first("def f():\n    pass\n")) == ["docstring"]
    fields = '@dataclass\nclass C:\n    """Doc."""\n\n    x: int\n'
    assert missing_sections(_first(fields)) == ["Args or Attributes"]
    kernel = '@triton.jit\ndef k(x_ptr, N):\n    """Doc."""\n    return\n'
    assert missing_sections(_first(kernel)) == []
    prop = '@property\ndef p(self):\n    """The value."""\n    return 1\n'
    assert missing_sections(_first(prop)) == []
    stale = 'def f(x, y):\n    """Doc.\n\n    Args:\n        x: one.\n        z: gone.\n    """\n'
    assert args_mismatch(_first(stale)) == (["z"], ["y"])
