"""Tracking runs that tell the truth: a stage that ends early ends its MLflow runs FAILED or KILLED,
and a stage logs only into the run that trained the models now in models/."""

from __future__ import annotations

import copy
import json
import os
import signal
import time

import pytest
import torch
from mlflow import MlflowClient

from project import BIN, SMALL_PARAMS, checkpoint_epochs, dvc, make_project, stage, start, write_params

pytestmark = pytest.mark.slow


def _client(root) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _statuses(root) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in _client(root).search_runs(["1"])}


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_train_stage_ends_its_runs_killed(tmp_path, how):
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"]["epochs"] = 200
    root = make_project(tmp_path / "p", params, git=False)
    stage("prepare", root)
    (root / "logs").mkdir()
    (root / "logs" / "mlflow_run.json").write_text('{"parent_run_id": "an older run"}')
    log = tmp_path / "train.log"
    proc = start([str(BIN / "python"), "pipeline/train.py"], root, log)
    deadline = time.monotonic() + 240
    while max(checkpoint_epochs(root), default=0) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    if how == "ctrl-c":  # the terminal sends SIGINT to the whole foreground group
        os.killpg(proc.pid, signal.SIGINT)
    else:  # kill, or a scheduler's timeout: the stage's process only
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    assert code == 130, log.read_text()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text()
    statuses = _statuses(root)
    assert len(statuses) == 3 and set(statuses.values()) == {"KILLED"}, statuses
    assert not (root / "logs" / "mlflow_run.json").exists(), "the run file still points at a run"


def _stage_pids(root, script: str) -> list[int]:
    """Processes running `python <script>` in the project `root`."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read().split(b"\0")
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
            except OSError:
                continue
            if script.encode() in cmdline and cwd == str(root):
                pids.append(int(entry.name))
    return pids


def test_killing_dvc_stops_the_stage_it_started(tmp_path):
    """`kill <dvc>` during train (tester finding): the stage must not train on alone, orphaned, beside a rerun."""
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"]["epochs"] = 200
    root = make_project(tmp_path / "p", params)  # a git + DVC project, as a user has
    log = tmp_path / "dvc.log"
    # SHELL=/bin/sh: dvc runs each cmd through $SHELL -c, and dash (unlike bash) forks rather than execs a lone
    # command, so without `exec` in the cmd the stage's parent is a shell that outlives dvc (CI has no SHELL).
    proc = start([str(BIN / "dvc"), "repro", "train"], root, log, SHELL="/bin/sh")  # prepare, then train
    deadline = time.monotonic() + 240
    while max(checkpoint_epochs(root), default=0) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    stages = _stage_pids(root, "pipeline/train.py")
    assert len(stages) == 1, stages
    proc.send_signal(signal.SIGTERM)  # dvc alone, as `kill <pid>` does
    proc.wait(timeout=60)
    deadline = time.monotonic() + 120
    while _stage_pids(root, "pipeline/train.py"):
        assert time.monotonic() < deadline, f"the train stage outlived dvc:\n{log.read_text()}"
        time.sleep(0.5)
    statuses = _statuses(root)
    assert statuses and set(statuses.values()) == {"KILLED"}, statuses  # it stopped as on SIGTERM, not SIGKILL


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_error_after_the_runs_opened_ends_them_failed(tmp_path):
    params = copy.deepcopy(SMALL_PARAMS)
    params["ray"]["use_gpu"] = True  # the local Ray instance has no GPU: a UserError inside the sweep
    root = make_project(tmp_path / "p", params, git=False)
    stage("prepare", root)
    proc = stage("train", root, check=False)
    assert proc.returncode == 2 and "ray.use_gpu is true" in proc.stderr
    statuses = _statuses(root)
    assert len(statuses) == 3 and set(statuses.values()) == {"FAILED"}, statuses
    assert not (root / "logs" / "mlflow_run.json").exists()


def test_after_a_cache_restore_nothing_is_logged_into_the_wrong_run(tmp_path):
    """params A, then B, then A: DVC restores train (A's models) from its run-cache while the run file names B's."""
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"]["epochs"] = 1
    params["sweep"]["models"] = [{"name": "ae", "model": {"kind": "ae"}}]
    root = make_project(tmp_path / "p", params)
    # A and B stop at evaluate: the third run's report is then its first, so one that logged into B's run
    # would add to B's artifacts below, not merely replace a report already there.
    dvc(["repro", "evaluate"], root)  # A
    params_b = copy.deepcopy(params)
    params_b["sweep"]["seeds"] = [1]
    write_params(root, params_b)
    dvc(["repro", "evaluate"], root)  # B
    run_b = json.loads((root / "logs" / "mlflow_run.json").read_text())
    client = _client(root)
    before = repr(sorted(client.get_run(run_b["children"]["ae"]).data.metrics.items()))  # repr: NaN == NaN
    artifacts_before = [f.path for f in client.list_artifacts(run_b["parent_run_id"])]
    write_params(root, params)
    proc = dvc(["repro"], root)  # A again: train and classifier restored, evaluate and report run
    assert "no model in models/ was trained by the recorded MLflow run" in proc.stderr, proc.stderr
    after = repr(sorted(client.get_run(run_b["children"]["ae"]).data.metrics.items()))
    assert after == before, "A's evaluation was logged into B's child"
    assert [f.path for f in client.list_artifacts(run_b["parent_run_id"])] == artifacts_before
    assert "Traceback" not in proc.stderr
