"""Two Ray nodes on this machine: the sweep and the evaluation spread over both, then one node dies mid-run.

A head (`ray start --head --num-cpus 1`) and a second node (`ray start --address ... --num-cpus 1`), each
with its own temp dir, so the test stops exactly its own processes (`ray stop` would stop every Ray
instance on the machine). The second node is killed (kill -9 of every process under its temp dir) while
both models train: its model must finish on the head from its last checkpoint, bit for bit the weights of
the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch

from project import BIN, SMALL_PARAMS, free_port, make_project, run, stage, start

pytestmark = pytest.mark.slow

EPOCHS = 30  # long enough to stop a node mid-run on tiny data


def _facts(root: Path, stage_name: str) -> dict:
    return json.loads((root / "logs" / f"{stage_name}_run.json").read_text())


def _node_procs(temp_dir: str) -> list[psutil.Process]:
    """Every process of the Ray node whose temp dir this is (it appears in each one's command line)."""
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                procs.append(proc)
    return procs


def _kill_node(temp_dir: str, hard: bool) -> None:
    procs = _node_procs(temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill() if hard else proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _ray_start(args: list[str], temp_dir: str, root: Path) -> None:
    out = run(
        [
            str(BIN / "ray"),
            "start",
            *args,
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        root,
        check=False,
        timeout=120,
        RAY_AUTH_MODE="token",
    )  # a head started by `ray start` wants the token (~/.ray/auth_token) from nodes
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def two_nodes(tmp_path):
    """(address, second node's temp dir): a head and a second node of one CPU each, stopped afterwards."""
    # Short temp dirs: Ray's socket paths must fit in 107 bytes.
    head_dir, node_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp"), tempfile.mkdtemp(prefix="rayn", dir="/tmp")
    port = free_port()
    try:
        _ray_start(["--head", f"--port={port}", "--include-dashboard=false"], head_dir, tmp_path)
        _ray_start([f"--address=127.0.0.1:{port}"], node_dir, tmp_path)
        yield f"127.0.0.1:{port}", node_dir
    finally:
        for temp_dir in (node_dir, head_dir):
            _kill_node(temp_dir, hard=False)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_checkpoints(root: Path, n: int, min_epoch: int, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        epochs = []
        for ckpt in (root / "checkpoints").glob("*/last.pt"):
            with contextlib.suppress(Exception):  # being replaced right now: look again
                epochs.append(torch.load(ckpt, weights_only=True)["epoch"])
        if len(epochs) == n and min(epochs) >= min_epoch:
            return
        assert proc.poll() is None, "the stage ended before a node could be stopped"
        time.sleep(0.2)
    raise AssertionError("the checkpoints did not appear")


def _weights(root: Path, name: str) -> dict:
    return torch.load(root / "models" / name / "model.pt", weights_only=True)


def test_sweep_and_evaluation_spread_over_two_nodes_and_survive_one(tmp_path, two_nodes):
    address, node_dir = two_nodes
    params = {**SMALL_PARAMS, "train": {**SMALL_PARAMS["train"], "epochs": EPOCHS}}
    root = make_project(tmp_path / "p", params, git=False)
    names = [m["name"] for m in params["sweep"]["models"]]
    stage("prepare", root)

    # 1. Both nodes up: one model trains on each, then one model is evaluated on each.
    stage("train", root, timeout=600, RAY_ADDRESS=address)
    train = _facts(root, "train")
    assert train["cluster_resources"]["CPU"] == 2.0 and train["failed"] == []
    assert len({train["models"][n]["node_id"] for n in names}) == 2, train
    stage("classifier", root)
    stage("evaluate", root, timeout=600, RAY_ADDRESS=address)
    evaluate = _facts(root, "evaluate")
    nodes = {evaluate["models"][n]["node_id"] for n in names}
    assert len(nodes) == 2 and nodes == {train["models"][n]["node_id"] for n in names}, evaluate
    reference = {n: _weights(root, n) for n in names}

    # 2. The same sweep again; the second node dies once both models have checkpoints.
    shutil.rmtree(root / "models")
    proc = start([str(BIN / "python"), "pipeline/train.py"], root, tmp_path / "train.log", RAY_ADDRESS=address)
    try:
        _wait_for_checkpoints(root, n=len(names), min_epoch=2, proc=proc)
        _kill_node(node_dir, hard=True)
        assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "train.log").read_text()
    train = _facts(root, "train")
    assert train["failed"] == [], log
    survivors = {train["models"][n]["node_id"] for n in names}
    assert len(survivors) == 1 and survivors < nodes, train  # everything finished on the head
    resumed = [n for n in names if train["models"][n]["epochs_run"] < EPOCHS]
    assert resumed and "resumed:" in log, log  # the dead node's model went on from its checkpoint
    for n in names:
        got = _weights(root, n)
        assert got.keys() == reference[n].keys() and all(torch.equal(got[k], reference[n][k]) for k in got), n
