"""The pipeline broken the way its users break it: params edited mid-run, YAML 1.1 spellings, kill -9 (of train,
retrain, evaluate), an MLflow store of another version or not a database, a checkout path with a space, a taken
port, a failing Ray task, one allowed core.
Each ends in one line naming the problem and the fix, and nothing lies about what produced a result."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from project import BIN, REPO, SMALL_PARAMS, dvc, kill_group, make_project, run, stage, start, write_params

pytestmark = pytest.mark.slow

ONE_MODEL = {
    **copy.deepcopy(SMALL_PARAMS),
    "sweep": {**SMALL_PARAMS["sweep"], "models": [{"name": "ae"}]},
    "train": {**SMALL_PARAMS["train"], "epochs": 1},
}


def _params(**ray) -> dict:
    params = copy.deepcopy(ONE_MODEL)
    params["ray"].update(ray)
    return params


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _until(condition, what: str, timeout: float = 120, proc=None, log: Path | None = None):
    """Poll `condition()` until it is truthy (returned), failing after `timeout` s or when `proc` exits."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        alive = proc is None or proc.poll() is None
        assert alive and time.monotonic() < deadline, f"{what}: {log.read_text() if log else ''}"
        time.sleep(0.1)
    return value


def _store(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _runs(root: Path) -> list:
    if not (root / "mlflow.db").is_file():
        return []
    with contextlib.suppress(Exception):  # the stage is creating the store
        exp = _store(root).get_experiment_by_name("aevae")
        return _store(root).search_runs([exp.experiment_id]) if exp else []
    return []


# ------------------------------------------------------------------ provenance


def test_params_edited_while_training_are_not_recorded(tmp_path):
    root = make_project(tmp_path / "p", _params())
    dvc(["repro", "-q", "prepare"], root)
    log = tmp_path / "repro.log"
    proc = start([str(BIN / "dvc"), "repro", "train"], root, log)
    _until(lambda: "opening the MLflow pipeline run" in log.read_text(), "train never started", proc=proc, log=log)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 0.005
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert proc.wait(timeout=300) != 0, log.read_text()
    errors = _error_lines(log.read_text())
    assert len(errors) == 1 and "params.yaml changed while this ran" in errors[0] and "rerun" in errors[0], (
        log.read_text()
    )
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert "train" not in lock["stages"], "dvc.lock records params the models were not trained with"
    assert "train" in dvc(["status", "train"], root).stdout
    # Nor does MLflow: no version registered from those models, and no run called finished.
    assert not _store(root).search_model_versions(""), "a model trained with the old params was registered"
    assert {r.info.status for r in _runs(root)} == {"FAILED"}


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "  seeds:\n  - 0\n",
            "  seeds: [010]\n",
            "sweep.seeds.0 is ambiguous: YAML 1.2 (what DVC records) reads 10, YAML 1.1 reads 8",
        ),
        ("  latent_dims:\n  - 2\n", "  latent_dims: [2]\n  latent_dims: [3]\n", 'duplicate key "latent_dims"'),
    ],
    ids=["octal-seed", "duplicate-key"],
)
def test_params_dvc_and_the_stage_would_read_differently_stop_the_stage(tmp_path, old, new, expected):
    root = make_project(tmp_path / "p", _params(), git=False)
    text = (root / "params.yaml").read_text()
    assert old in text
    (root / "params.yaml").write_text(text.replace(old, new, 1))
    proc = stage("prepare", root, check=False)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (root / "data" / "prepared").exists()


# ------------------------------------------------------------------ kill -9


def test_runs_of_a_killed_train_stage_end_killed_on_the_next_start(tmp_path):
    params = _params()
    params["train"]["epochs"] = 500  # still training when it is killed, however soon the workers start
    root = make_project(tmp_path / "p", params, git=False)
    stage("prepare", root)
    log = tmp_path / "train.log"
    proc = start([str(BIN / "python"), "pipeline/train.py"], root, log)
    # The stage says so once its runs are open; asking the store before that would race the stage's creation of it.
    _until(lambda: "training 1 model" in log.read_text(), "runs never opened", proc=proc, log=log)
    opened = _runs(root)
    assert len(opened) == 2  # the pipeline run and its one child
    os.kill(proc.pid, signal.SIGKILL)  # the stage alone, as `kill -9 <pid>` would
    kill_group(proc)  # then whatever it left (its Ray instance), so the test leaves nothing running
    assert {r.info.status for r in _runs(root)} == {"RUNNING"}
    params["train"]["epochs"] = 1  # the next start need not train long: it is what ends the orphaned runs
    write_params(root, params)
    rerun = stage("train", root)
    assert "warning: ended 2 MLflow runs left RUNNING by a killed process" in rerun.stderr, rerun.stderr
    status = {r.info.run_id: r.info.status for r in _runs(root)}
    assert all(status[r.info.run_id] == "KILLED" for r in opened)
    assert sorted(status.values()) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]


def _running_aggregate_owner(db: Path) -> int | None:
    """pid owning a RUNNING aggregate run, read from the SQLite store itself; None when none (or the store is busy)."""
    query = (
        "SELECT o.value FROM runs r JOIN tags a ON a.run_uuid = r.run_uuid AND a.key = 'aevae.aggregate'"
        " JOIN tags o ON o.run_uuid = r.run_uuid AND o.key = 'aevae.owner.pid' WHERE r.status = 'RUNNING'"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute(query).fetchone()
    except sqlite3.Error:  # no store or tables yet, or a write in progress
        return None
    return int(row[0]) if row else None


def _kill_while_an_aggregate_runs(db: Path, proc, log: Path) -> int:
    """SIGKILL the process that owns a RUNNING aggregate run, stopped (SIGSTOP) while the store says so; its pid.

    The evaluate stage holds each aggregate run open for a fraction of a second: stopping it first makes
    "still RUNNING" a fact at the moment of the kill, not a guess."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, f"no aggregate run seen RUNNING: {log.read_text()}"
        pid = _running_aggregate_owner(db)
        if pid is None:
            time.sleep(0.01)
            continue
        os.kill(pid, signal.SIGSTOP)
        if _running_aggregate_owner(db) == pid:
            os.kill(pid, signal.SIGKILL)
            return pid
        os.kill(pid, signal.SIGCONT)


def test_runs_of_a_killed_evaluate_stage_end_killed_on_the_next_repro(tmp_path):
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"]["epochs"] = 1
    root = make_project(tmp_path / "p", params)
    dvc(["repro", "train", "classifier"], root)
    log = tmp_path / "evaluate.log"
    proc = start([str(BIN / "dvc"), "repro", "evaluate"], root, log)
    pid = _kill_while_an_aggregate_runs(root / "mlflow.db", proc, log)
    assert proc.wait(timeout=60) != 0
    kill_group(proc)
    left = [r for r in _runs(root) if r.info.status == "RUNNING"]
    assert left and all(r.data.tags["aevae.owner.pid"] == str(pid) for r in left)
    rerun = dvc(["repro", "evaluate"], root)
    assert f"warning: ended {len(left)} MLflow runs left RUNNING by a killed process (pid {pid})" in rerun.stderr
    runs = _runs(root)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # The rerun's numbers, once: one aggregate run per group, finished, holding summary.json's means.
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    aggregates = {r.data.tags["model"]: r for r in runs if r.data.tags.get("aevae.aggregate") == "true"}
    assert len(aggregates) == len([r for r in runs if r.data.tags.get("aevae.aggregate") == "true"]) == len(summary)
    for group, agg in aggregates.items():
        assert agg.info.status == "FINISHED" and "aevae.error" not in agg.data.tags, agg.data.tags
        key = "test/recon_mse_per_pixel"
        assert agg.data.metrics[key] == pytest.approx(summary[group][key]["mean"])


def _descendant(pid: int, needle: str) -> psutil.Process | None:
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(needle in part for part in proc.cmdline()):
                return proc
    return None


def test_kill_9_of_retrain_takes_its_dvc_and_stage_along(tmp_path):
    from aevae.ops.retrain import check_dvc_lock

    root = make_project(tmp_path / "p", _params())
    log = tmp_path / "retrain.log"
    proc = start([str(BIN / "python"), "-m", "aevae.ops.retrain"], root, log)
    try:
        train = _until(lambda: _descendant(proc.pid, "pipeline/train.py"), "no train stage", proc=proc, log=log)
        repro = _descendant(proc.pid, "repro")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _until(
            lambda: not (train.is_running() or (repro and repro.is_running())),
            "dvc or the stage outlived retrain",
            timeout=60,
        )
        check_dvc_lock(root / ".dvc" / "tmp" / "lock")  # free: the next retrain can run
        assert {r.info.status for r in _runs(root)} <= {"KILLED"}, "the stage ended its runs on SIGTERM"
    finally:
        kill_group(proc)


# ------------------------------------------------------------------ environment


def _set_revision(db: Path, revision: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        conn.commit()


def test_store_of_another_mlflow_is_one_line_in_a_path_with_a_space(tmp_path):
    root = make_project(tmp_path / "my dir" / "p", _params(), git=False)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    (root / ".venv").symlink_to(BIN.parent)  # the Makefile's venv: no reinstall
    stage("prepare", root)
    assert run(["make", "-s", "-o", ".venv/.installed", "models"], root, check=False).returncode == 2
    _store(root).search_experiments()  # MLflow creates the store, at its current schema
    _set_revision(root / "mlflow.db", "ffffffffffff")  # written by a newer MLflow
    proc = stage("train", root, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "newer or another MLflow" in lines[0], proc.stderr
    assert str(root / "mlflow.db") in lines[0] and "out-of-date" not in lines[0]
    # The Makefile's other doors to the store, through the spaced path; an older store gets the upgrade command.
    for revision, target, words in (
        ("ffffffffffff", "serve", "newer or another MLflow"),
        ("1b5f0d9ad7c1", "models", "mlflow db upgrade"),
    ):
        _set_revision(root / "mlflow.db", revision)
        made = run(["make", "-s", "-o", ".venv/.installed", target], root, check=False)
        assert made.returncode == 2 and words in made.stderr and "Traceback" not in made.stderr, made.stderr
    assert not (root / "models").exists() or not any((root / "models").iterdir())


def test_a_text_file_as_the_mlflow_store_is_one_line_through_dvc(tmp_path):
    root = make_project(tmp_path / "p", _params())
    (root / "mlflow.db").write_text("notes, not a database\n")
    proc = dvc(["repro"], root, check=False)
    errors = _error_lines(proc.stderr)
    assert proc.returncode != 0 and "exited with 2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and f"the MLflow store {root / 'mlflow.db'} is not an SQLite database" in errors[0]
    assert "move it aside" in errors[0] and "dvc checkout" in errors[0], errors[0]
    assert (root / "mlflow.db").read_text() == "notes, not a database\n", "the file was overwritten"


def test_make_ui_and_make_serve_on_a_taken_port_are_one_line(tmp_path):
    import socket

    root = make_project(tmp_path / "p", _params(), git=False)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    (root / ".venv").symlink_to(BIN.parent)  # the Makefile's venv: no reinstall
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for target, fix in (("ui", f"UI_PORT={port}"), ("serve", f"PORT={port}")):
            made = run(["make", "-s", "-o", ".venv/.installed", target, fix], root, check=False, timeout=120)
            ours = _error_lines(made.stderr)  # and make's own "*** Error 2" line
            assert made.returncode == 2 and len(ours) == 1 and "Traceback" not in made.stderr, made.stderr
            assert f"port {port} on 127.0.0.1 is taken" in ours[0] and f"{fix.split('=')[0]}=<port>" in ours[0]


@pytest.mark.own_ray  # the thread counts of tasks on the local instance it starts
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two allowed cores to allow one")
def test_threads_in_tasks_and_the_classifier_follow_one_allowed_core(tmp_path):
    root = make_project(tmp_path / "p", _params())
    proc = run(["taskset", "-c", "0", str(BIN / "dvc"), "repro", "evaluate"], root)
    out = proc.stdout + proc.stderr
    assert "starting a local Ray instance (1 CPUs)" in out and "with 1 torch threads" in out, out
    for facts in ("train_run.json", "evaluate_run.json"):
        models = json.loads((root / "logs" / facts).read_text())["models"]
        assert models and {m["threads"] for m in models.values()} == {1}, (facts, models)


@pytest.mark.own_ray  # it counts the CPUs of the local instance it starts
def test_a_failing_ray_task_is_its_cause_on_one_allowed_core(tmp_path):
    root = make_project(tmp_path / "p", _params(storage_path="blocked"), git=False)
    (root / "blocked").write_text("a file where the checkpoint folder should be\n")
    stage("prepare", root)
    proc = run(["taskset", "-c", "0", str(BIN / "python"), "pipeline/train.py"], root, check=False)
    assert "starting a local Ray instance (1 CPUs)" in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stderr
    [line] = _error_lines(proc.stderr)
    assert "model 'ae' failed: cannot create folder" in line and "blocked" in line, line  # the task's own UserError
    assert "\x1b" not in line and "ray::" not in line and "pid=" not in line


def test_a_raising_evaluation_task_is_its_cause():
    from aevae.ops.distributed import map_tasks

    outcomes = []
    map_tasks(math.sqrt, {"ae": (-1.0,)}, {}, 1, 0, outcomes.append)
    assert [o.error for o in outcomes] == ["'ae' failed: ValueError: math domain error"]
