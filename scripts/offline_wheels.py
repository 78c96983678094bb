"""The wheels a GPU machine that reaches no package registry needs, generated from the
resolved requirements: every distribution fastcifar[dali] needs (its requirements,
followed through the installed packages' metadata), less the GPU stack such a machine
already has (torch, torchvision, triton and what they need).

    python scripts/offline_wheels.py          # print README's pip download command
    python scripts/offline_wheels.py write    # rewrite README's block with it
    python scripts/offline_wheels.py check    # exit 1 if README's block is stale

Direct requirements keep fastcifar's own bounds (pyproject.toml); the others are bare
names (the versions pip resolves for Python 3.12). README's block sits between
``<!-- offline-wheels -->`` and ``<!-- /offline-wheels -->``.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STACK = ("torch", "torchvision", "triton")  # what the GPU machine brings
EXTRAS = ("dali",)
START, END = "<!-- offline-wheels -->", "<!-- /offline-wheels -->"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[Requirement]) -> dict[str, Requirement]:
    """{normalised name: the requirement that first named it} of ``roots`` and every
    distribution they need, through the installed metadata (markers evaluated here, the
    roots' extras applied)."""
    seen: dict[str, Requirement] = {}
    todo = list(roots)
    while todo:
        req = todo.pop(0)
        name = _norm(req.name)
        if name in seen:
            continue
        seen[name] = req
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            extras = ("",) + tuple(req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return seen


def wheels() -> list[str]:
    """The pip requirement strings to download: fastcifar[dali]'s closure less the GPU
    stack's, sorted, direct requirements with fastcifar's bounds."""
    ours = closure([Requirement(f"fastcifar[{','.join(EXTRAS)}]")])
    stack = closure([Requirement(n) for n in STACK])
    direct = {
        _norm(Requirement(r).name)
        for r in metadata.distribution("fastcifar").requires or []
        if not Requirement(r).marker or "extra" in str(Requirement(r).marker)
    }
    out = []
    for name, req in sorted(ours.items()):
        if name in stack or name == "fastcifar":
            continue
        spec = str(req.specifier) if name in direct and req.specifier else ""
        out.append(f"{name}{spec}")
    return out


def block() -> str:
    """README's block: the download command on a connected machine."""
    names = [f'"{w}"' if any(c in w for c in "<>=!") else w for w in wheels()]
    lines, line = [], "  "
    for name in names:
        if len(line) + len(name) > 88:
            lines.append(line.rstrip() + " \\")
            line = "  "
        line += name + " "
    lines.append(line.rstrip())
    return "\n".join(
        [
            "```bash",
            "# connected machine, Python 3.12 wheels for x86-64 Linux (scripts/offline_wheels.py)",
            "pip download --no-deps --only-binary=:all: --python-version 3.12 "
            "--platform manylinux_2_28_x86_64 \\",
            "  --platform manylinux2014_x86_64 -d wheels \\",
            *lines,
            "```",
        ]
    )


def _rewrite(text: str) -> str:
    i, j = text.index(START) + len(START), text.index(END)
    return text[:i] + "\n" + block() + "\n" + text[j:]


def main(argv: list[str]) -> int:
    if not argv:
        print(block())
        return 0
    text = README.read_text()
    if argv[0] == "write":
        README.write_text(_rewrite(text))
        return 0
    if argv[0] == "check":
        if _rewrite(text) != text:
            fix = "python scripts/offline_wheels.py write"
            print(f"README.md: the offline wheel list is stale: run {fix}", file=sys.stderr)
            return 1
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
