"""fastcifar.engine.cluster's own rules that need no Ray running: where --address auto
looks, and a run directory's name under a study. (The trials themselves run on a real
Ray in tests/test_tune.py and tests/test_sweep.py.)"""

from __future__ import annotations

import pytest

from fastcifar.engine import cluster, trials
from fastcifar.errors import FastCifarError
from fastcifar.options import RunOptions
from fastcifar.recipes import get_recipe


def test_address_auto_reads_ray_address_then_ray_starts_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(FastCifarError, match="no Ray cluster was started on this machine"):
        cluster._auto_address()
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.2:6379\n")
    assert cluster._auto_address() == "127.0.0.2:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.5:7000")
    assert cluster._auto_address() == "127.0.0.5:7000"


def test_an_address_that_is_not_host_port_is_refused_in_one_line():
    with pytest.raises(FastCifarError, match="is not HOST:PORT"):
        cluster._check_reachable("head-node")


def test_run_directories_are_named_by_trial_or_seed_and_data_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree").mkdir()
    recipe = get_recipe("s7")
    spec = trials.TrialSpec(recipe, RunOptions(data="tree"), str(tmp_path / "study"))
    assert spec.options.data == str(tmp_path / "tree")  # trials run in Ray's directories
    assert spec.run_dir({"lr": 0.1}, "ab_00001") == tmp_path / "study/trials/trial-ab_00001"
    sweep = trials.TrialSpec(recipe, RunOptions(), str(tmp_path / "sweep"), by_seed=True)
    assert sweep.run_dir({"seed": 3}, "ab_00002") == tmp_path / "sweep/seed-3"
