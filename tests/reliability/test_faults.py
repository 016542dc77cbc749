"""Faults while the pipeline runs: a diverging model, a killed Ray worker, a stopped MLflow server,
a full or read-only disk. Each ends in one line and loses nothing that could be kept."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import time

import psutil
import pytest
from mlflow import MlflowClient

from mlflow_server import mlflow_server
from project import BIN, SMALL_PARAMS, checkpoint_epochs, make_project, stage, start

pytestmark = pytest.mark.slow


def _params(**train) -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"].update(train)
    return params


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_a_diverging_model_fails_alone(tmp_path):
    params = _params()
    params["model"]["hidden"] = [64, 32]
    params["sweep"]["models"].append({"name": "vae-boom", "model": {"kind": "vae"}, "train": {"lr": 1e6}})
    root = make_project(tmp_path / "p", params, git=False)
    stage("prepare", root)
    proc = stage("train", root, check=False)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "vae-boom" in line and "diverged at epoch 1" in line and "lower train.lr" in line
    assert "(the others are saved)" in line
    assert sorted(p.name for p in (root / "models").iterdir()) == ["ae", "vae-beta1"]  # the others finished
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    assert not client.search_model_versions("name='aevae-vae-boom'"), "a diverged model is never registered"
    assert client.search_model_versions("name='aevae-ae'")
    boom = [r for r in client.search_runs(["1"]) if r.info.run_name == "vae-boom"]
    assert boom[0].info.status == "FAILED"


def _train_workers(stage_pid: int) -> list[psutil.Process]:
    """The Ray workers training for this stage: descendants of its process (its local Ray instance)."""
    found = []
    for proc in psutil.Process(stage_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("ray::_train_one" in part for part in proc.cmdline()):
                found.append(proc)
    return found


@pytest.mark.own_ray
def test_a_killed_ray_worker_is_retried_and_resumes(tmp_path):
    root = make_project(tmp_path / "p", _params(epochs=100), git=False)
    stage("prepare", root)
    proc = start([str(BIN / "python"), "pipeline/train.py"], root, tmp_path / "train.log")
    deadline = time.monotonic() + 180
    # Every model has a checkpoint to resume from, whichever worker is killed (under load one starts late).
    while len(epochs := checkpoint_epochs(root)) < 2 or min(epochs) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()
        time.sleep(0.2)
    victims = _train_workers(proc.pid)
    assert victims, "no Ray training worker found"
    victims[0].send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, (tmp_path / "train.log").read_text()
    facts = json.loads((root / "logs" / "train_run.json").read_text())
    assert facts["failed"] == []
    assert any(m["epochs_run"] < 100 for m in facts["models"].values()), "the retry resumed from its checkpoint"
    log = (tmp_path / "train.log").read_text()
    # One line of ours, not Ray's multi-line "(raylet) A worker died ..." dump.
    assert "a Ray worker died; its model is retried" in log and "(raylet)" not in log, log
    assert all((root / "models" / n / "model.pt").is_file() for n in ("ae", "vae-beta1"))


def test_mlflow_server_stopped_mid_run_loses_no_training(tmp_path):
    root = make_project(tmp_path / "p", _params(epochs=30), git=False)
    stage("prepare", root)
    with mlflow_server(tmp_path / "server") as (uri, server):
        proc = start([str(BIN / "python"), "pipeline/train.py"], root, tmp_path / "train.log", MLFLOW_TRACKING_URI=uri)
        deadline = time.monotonic() + 180
        while max(checkpoint_epochs(root), default=0) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies mid-run
        t0 = time.monotonic()
        code = proc.wait(timeout=300)
    log = (tmp_path / "train.log").read_text()
    assert code == 2, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MLflow tracking failed" in errors[0] and "models are saved" in errors[0]
    assert all((root / "models" / n / "model.pt").is_file() for n in ("ae", "vae-beta1")), "no training lost"
    assert time.monotonic() - t0 < 120, "no long hang on the dead server"


@contextlib.contextmanager
def _mounted(path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("options, reason", [("size=16k", "No space left"), ("ro,size=1m", "Read-only")])
def test_full_or_read_only_output_folder(tmp_path, options, reason):
    root = make_project(tmp_path / "p", git=False)
    stage("prepare", root)
    with _mounted(root / "models", options):
        proc = stage("train", root, check=False)
        assert proc.returncode == 2
        line = _one_error_line(proc.stderr)
        assert "cannot" in line and reason in line and "models" in line
        assert not [p for p in (root / "models").iterdir() if p.name.startswith(".")], "half-written files"
