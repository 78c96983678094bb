"""fastcifar.cli: a mistyped flag gets at most three lines (one usage line, the error, a
suggestion from the known flags); the console script shows its own name; no library noise."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fastcifar.cli import prog_name
from fastcifar.train import build_parser
from tests.conftest import run_train


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["--lerning-rate", "0.1"], "did you mean --lr?"),
        (["--batch_size", "3"], "did you mean --batch-size?"),
        (["--labelsmoothing", "0.1"], "did you mean --label-smoothing?"),
        (["--zzzz"], None),
    ],
)
def test_an_unknown_flag_is_three_lines_at_most(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "usage: python -m fastcifar.train [options] (--help lists them)"
    assert lines[1] == f"error: unrecognized arguments: {' '.join(argv)}"
    assert lines[2:] == ([suggestion] if suggestion else [])


def test_a_bad_choice_is_two_lines(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--loader", "fast"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "invalid choice: 'fast'" in lines[1]


def test_the_command_line_as_a_user_types_it():
    r = run_train("--lerning-rate", "0.1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 3
    assert r.stderr.strip().endswith("did you mean --lr?")


def test_the_console_script_shows_its_own_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fastcifar-train", "--help"])
    assert prog_name("fastcifar.train", "fastcifar-train") == "fastcifar-train"
    assert build_parser().prog == "fastcifar-train"
    monkeypatch.setattr(sys, "argv", ["/x/fastcifar/train.py"])
    assert prog_name("fastcifar.train", "fastcifar-train") == "python -m fastcifar.train"


def test_help_shows_defaults_and_choices():
    text = build_parser("speedrun94").format_help()
    assert text.startswith("usage: python -m fastcifar.train [--recipe NAME]")
    assert "--loader {auto,gpu,dali,albumentations}" in text and "[auto]" in text
    assert "--optimizer {sgd,adam,muon}" in text and "[muon]" in text  # the recipe's value
    assert "--progress-every SECONDS" in text


def test_no_cuda_runtime_warning_on_a_cpu_machine(tmp_path):
    # what the interpreter prints at import is the subject: a real process. CUDA_HOME set
    # makes torch.utils.cpp_extension warn on any machine without a CUDA runtime
    code = "import fastcifar, torch, torch.utils.cpp_extension; print(torch.cuda.is_available())"
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    if r.stdout.strip() == "False":
        assert "No CUDA runtime" not in r.stderr, r.stderr


def test_help_version_and_a_mistyped_flag_import_no_torch():
    # what a process imports is the subject: a real one, whose sys.modules starts empty
    code = (
        "import contextlib, io, sys\n"
        "from fastcifar.train import main\n"
        "for argv in (['--help'], ['--version'], ['--lerning-rate', '0.1'],\n"
        "             ['--recipe', 'mobilenetv2', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'triton', 'nvidia.dali', 'albumentations', 'cv2')\n"
        "             if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_help_fits_a_terminal_and_lists_every_recipe_in_whole_sentences(capsys):
    from fastcifar.recipes import RECIPES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 110
    listing = text.split("recipes (default s7):\n", 1)[1]
    for name in RECIPES:
        assert f"\n  {name} " in "\n" + listing, name
    # every description ends its sentence: none is cut at a line of its docstring
    entries = [" ".join(e.split()) for e in re.split(r"\n  (?=\S)", "\n" + listing) if e.strip()]
    assert all(e.endswith((".", ")")) for e in entries), entries
    assert "``" not in text  # reStructuredText's literal marks are the docstrings', not --help's


def test_validate_on_a_cpu_chooses_the_interpreter_itself():
    # as a user runs it: no TRITON_INTERPRET in the environment (the tests' conftest sets
    # it). torch 2.14's flop counter imports triton with fastcifar.kernels, so the command
    # must choose the interpreter before that import, or every kernel fails
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-m", "fastcifar.validate", "--model", "attention", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert " pass" in r.stdout and "FAIL" not in r.stdout
