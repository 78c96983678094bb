"""Seed sweeps: the statistics (fastcifar.seedstats), the GPU list and resume rules of
fastcifar.sweep, and scripts/speedrun.sh (a thin call of it) end to end: a sweep over a
two-node Ray cluster on loopback addresses, resumed on a local Ray."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

from fastcifar.errors import FastCifarError
from fastcifar.seedstats import describe, load_runs, summarise
from fastcifar.sweep import gpu_list, pending_seeds
from tests.conftest import ROOT, make_tree, run_train


def test_describe_gives_the_t_interval_by_hand():
    d = describe([93.8, 94.0, 94.2])
    assert d["mean"] == pytest.approx(94.0) and d["std"] == pytest.approx(0.2)
    half = 4.302653 * 0.2 / 3**0.5  # t(0.975, 2 degrees of freedom) = 4.3027
    assert d["ci95_low"] == pytest.approx(94.0 - half, abs=1e-5)
    assert d["ci95_high"] == pytest.approx(94.0 + half, abs=1e-5)
    one = describe([93.0])
    assert (one["std"], one["ci95_low"], one["ci95_high"]) == (0.0, 93.0, 93.0)


def _fake_run(root, name, seed, acc, seconds):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"recipe": {"seed": seed}, "run": {}}))
    (d / "summary.json").write_text(
        json.dumps(
            {"final_test_acc": acc, "timed_span_s": seconds, "train_time_s": 0, "device": "X"}
        )
    )


def test_summary_counts_runs_at_the_target_and_skips_unfinished_ones(tmp_path):
    for i, acc in enumerate([93.9, 94.0, 94.1], start=1):
        _fake_run(tmp_path, f"seed-{i}", i, acc, 2.0 + i / 10)
    (tmp_path / "seed-4").mkdir()  # unfinished: no summary.json
    runs = load_runs(tmp_path)
    assert [r["seed"] for r in runs] == [1, 2, 3]
    stats = summarise(runs, 94.0)
    assert stats["reached"] == 2 and stats["fraction_reached"] == pytest.approx(2 / 3)
    assert stats["seconds"]["mean"] == pytest.approx(2.2)


def test_seedstats_without_runs_says_so_in_one_line(tmp_path):
    r = run_train(str(tmp_path), module="fastcifar.seedstats")
    assert r.returncode == 2 and "no finished run" in r.stderr and "Traceback" not in r.stderr


def test_speedrun_script_runs_seeds_on_both_nodes_of_a_ray_cluster_reports_and_resumes(
    tmp_path,
):
    """Four seeds at tiny size through scripts/speedrun.sh (a thin call of fastcifar.sweep)
    over a two-node Ray cluster on this machine (``--address``; one CPU a node, so two
    runs at a time, one on each): four run directories, on both nodes, sweep.json from
    them; with the last run unfinished, the same command without ``--address`` (a local
    Ray) runs only that one again. The test starts both nodes and stops them itself."""
    pytest.importorskip("ray.tune", reason="fastcifar[tune] is not installed")
    make_tree(tmp_path / "tree", per_class=4)
    sweep = tmp_path / "sweep"
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    flags = "--epochs 1 --batch-size 16 --device cpu --workers 0 --no-compile --no-amp"
    with ray_cluster(env) as address:
        cmd = ["bash", str(ROOT / "scripts/speedrun.sh"), "4", "speedrun94", "--out", str(sweep)]
        cmd += ["--address", address, "--data", str(tmp_path / "tree"), "--whiten-images", "20"]
        cmd += flags.split()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "4 to run" in r.stdout and "sweep: 4 runs: accuracy" in r.stdout
        assert f"on the Ray cluster at {address}" in r.stdout
        stats = json.loads((sweep / "sweep.json").read_text())
        assert [run["seed"] for run in stats["runs"]] == [1, 2, 3, 4]
        assert len(stats["nodes"]) == 2, stats["nodes"]
        assert "on 2 Ray node(s)" in (sweep / "sweep.md").read_text()
        accs = [
            json.loads((sweep / f"seed-{i}" / "summary.json").read_text())["final_test_acc"]
            for i in (1, 2, 3, 4)
        ]
        assert stats["accuracy"]["mean"] == pytest.approx(sum(accs) / 4)
        assert stats["accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        md = (sweep / "sweep.md").read_text()
        assert "95 % interval" in md
        # both timing contracts: the record's (no final TTA) below fastcifar's, by the TTA
        assert "--timing fastcifar (" in md and "--timing record (" in md
        for run in stats["runs"]:
            summary = json.loads((sweep / run["run"] / "summary.json").read_text())
            assert run["record_seconds"] == pytest.approx(
                run["fastcifar_seconds"] - summary["tta_time_s"]
            )
            assert run["seconds"] == run["fastcifar_seconds"]  # --timing fastcifar, the default
        # killed during seed 4, before its first checkpoint: only seed 4 runs again
        for name in ("summary.json", "last.pt", "metrics.jsonl"):
            (sweep / "seed-4" / name).unlink(missing_ok=True)
        stamp = (sweep / "seed-1" / "summary.json").stat().st_mtime_ns
    # resumed on this machine's own Ray (no --address: the default), the cluster gone
    local = [a for a in cmd if a not in ("--address", address)] + ["--gpus", "none"]
    r = subprocess.run(local, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 to run" in r.stdout and "on the CPU" in r.stdout and "sweep: 4 runs" in r.stdout
    assert (sweep / "seed-1" / "summary.json").stat().st_mtime_ns == stamp
    assert (sweep / "seed-4" / "summary.json").exists()


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("all", 0, [None]),
        ("all", 3, ["0", "1", "2"]),
        ("none", 3, [None]),
        ("2", 3, ["0", "1"]),
        ("0,2", 3, ["0", "2"]),
    ],
)
def test_gpu_list(spec, count, expected, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: count)
    assert gpu_list(spec) == expected


@pytest.mark.parametrize("spec", ["5", "0,7", "x"])
def test_gpu_list_refuses_what_the_machine_lacks(spec, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 3)
    with pytest.raises(FastCifarError, match="--gpus"):
        gpu_list(spec)


def test_only_unfinished_seeds_are_pending(tmp_path):
    for seed in (1, 3):
        (tmp_path / f"seed-{seed}").mkdir()
    (tmp_path / "seed-1" / "summary.json").write_text("{}")
    (tmp_path / "seed-3" / "last.pt").write_bytes(b"")  # stopped after an epoch: resumes
    assert pending_seeds(tmp_path, 4) == [2, 3, 4]


@contextlib.contextmanager
def ray_cluster(env: dict):
    """A head node (127.0.0.2) and a second node (127.0.0.3, resource ``second_node``) of
    one CPU each, started with ``ray start --block`` in sessions of their own and stopped
    by those sessions' process groups: SIGTERM, then SIGKILL after 3 s. Yields the
    head's HOST:PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block"]
    head = ["--head", "--port", str(port), "--node-ip-address", "127.0.0.2"]
    second = ["--address", f"127.0.0.2:{port}", "--node-ip-address", "127.0.0.3"]
    nodes = []
    try:
        for args in (head, [*second, "--resources", '{"second_node": 1}']):
            nodes.append(
                subprocess.Popen(
                    ["ray", "start", *args, *common],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            )
            _wait_for_port("127.0.0.2", port)
        yield f"127.0.0.2:{port}"
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=10)


def _wait_for_port(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.25)
    raise AssertionError(f"ray start: nothing listens on {host}:{port} after {timeout} s")
