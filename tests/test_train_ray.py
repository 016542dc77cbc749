"""The train stage on real Ray: a cluster started with `ray start`, a kill and resume, DDP."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from project import BIN, SMALL_PARAMS, dvc, free_port, kill_group, make_project, run, stage, start, stop_ray_processes

pytestmark = pytest.mark.slow


def _run_facts(root: Path) -> dict:
    return json.loads((root / "logs" / "train_run.json").read_text())


def _weights(root: Path, name: str) -> dict:
    return torch.load(root / "models" / name / "model.pt", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_instance_trains_every_member(small_run):
    root, out = small_run.root, small_run
    facts = _run_facts(root)
    assert facts["ray_started_locally"] is True and facts["failed"] == []
    for name in ("ae", "vae-beta1"):
        folder = root / "models" / name
        assert {p.name for p in folder.iterdir()} == {"model.pt", "config.json", "history.csv", "metrics.json"}
        rows = (folder / "history.csv").read_text().splitlines()
        assert len(rows) == 1 + SMALL_PARAMS["train"]["epochs"]
        assert f"[{name:<9}] done" in out.stdout
    assert "WARNING" not in out.stdout + out.stderr  # Ray's log noise stays out
    assert not list((root / "checkpoints").glob("*/last.pt"))  # cleaned once the sweep is saved


def test_attaches_to_an_existing_cluster(tmp_path):
    root = make_project(tmp_path / "p", git=False)
    stage("prepare", root)
    port = free_port()
    # Its own temp dir (short: Ray's socket paths must fit 107 bytes) identifies this head's processes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        root,
        timeout=120,
    )
    assert head.returncode == 0
    try:
        address = f"127.0.0.1:{port}"
        stage("train", root, RAY_ADDRESS=address)
        facts = _run_facts(root)
        assert facts["ray_started_locally"] is False
        # It used that cluster (Ray reports the head by its node IP), not a second instance.
        assert facts["ray_gcs_address"].endswith(f":{port}")
        assert facts["cluster_resources"]["CPU"] == 2.0
        assert all((root / "models" / n / "model.pt").is_file() for n in ("ae", "vae-beta1"))
    finally:
        stop_ray_processes(temp_dir)


def test_unreachable_cluster_fails_fast(tmp_path):
    root = make_project(tmp_path / "p", git=False)
    stage("prepare", root)
    t0 = time.monotonic()
    proc = stage("train", root, check=False, RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert time.monotonic() - t0 < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Ray cluster answers at RAY_ADDRESS" in lines[0]
    assert not (root / "models").exists()


def _wait_for_checkpoint(root: Path, min_epoch: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ckpt in (root / "checkpoints").glob("*/last.pt"):
            try:
                if torch.load(ckpt, weights_only=True)["epoch"] >= min_epoch:
                    return
            except Exception:
                pass  # being replaced right now; look again
        assert proc.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_killed_stage_resumes_from_checkpoints(tmp_path):
    # Only the run that is killed has a local Ray instance of its own (kill -9 takes it along, as a user's);
    # the reference and the rerun attach to the session's cluster. The report stage is not compared (it
    # names the git commit each project was made from), so both stop at evaluate.
    params = {**SMALL_PARAMS, "train": {**SMALL_PARAMS["train"], "epochs": 40}}
    reference = make_project(tmp_path / "reference", params)
    dvc(["repro", "evaluate"], reference)

    root = make_project(tmp_path / "killed", params)
    dvc(["repro", "prepare"], root)
    proc = start([str(BIN / "dvc"), "repro", "evaluate"], root, tmp_path / "killed.log", RAY_ADDRESS=None)
    _wait_for_checkpoint(root, min_epoch=5, proc=proc)
    kill_group(proc)  # kill -9 of dvc, the stage and its Ray instance

    out = dvc(["repro", "evaluate"], root)
    facts = _run_facts(root)
    resumed = [n for n, m in facts["models"].items() if m["epochs_run"] < 40]
    assert resumed, f"nothing resumed: {facts['models']}\n{out.stdout}"
    assert "resumed:" in out.stdout
    for name in ("ae", "vae-beta1"):
        assert _same_weights(_weights(root, name), _weights(reference, name)), name
    # The interrupted-then-rerun pipeline reaches the same dvc.lock outputs as the uninterrupted one.
    assert _lock_outs(root) == _lock_outs(reference)
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {
        "prepare",
        "train",
        "classifier",
        "evaluate",
    }


def _lock_outs(root: Path) -> list[dict]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return [out for stage in stages.values() for out in stage["outs"]]


def test_data_parallel_model_via_ray_train(tmp_path):
    params = {
        **SMALL_PARAMS,
        "train": {**SMALL_PARAMS["train"], "epochs": 2},
        "sweep": {"latent_dims": [2], "seeds": [0], "models": [{"name": "vae-ddp", "model": {"kind": "vae"}}]},
        "ray": {"cpus_per_model": 1, "workers_per_model": 2},
    }
    root = make_project(tmp_path / "p", params, git=False)
    stage("prepare", root)
    stage("train", root, timeout=300)
    facts = _run_facts(root)
    assert facts["models"]["vae-ddp"]["device"] == "ddp x2"
    history = (root / "models" / "vae-ddp" / "history.csv").read_text().splitlines()
    assert len(history) == 3
