"""A throwaway copy of the project for end-to-end runs: real DVC, real Ray, real files.

Tests run stage scripts and `dvc repro` in a temp folder holding the repo's
dvc.yaml, pipeline/ and src/ (deps DVC hashes) and a small params.yaml, so a
run takes seconds and never touches the working tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from aevae.progress import PROGRESS_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: python, dvc, ray, mlflow

SMALL_PARAMS = {
    "data": {"source": "bundled", "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0},
    "model": {"hidden": [64]},
    "train": {"epochs": 3, "batch_size": 128, "lr": 0.002},
    "sweep": {
        "latent_dims": [2],
        "seeds": [0],
        "models": [
            {"name": "ae", "model": {"kind": "ae"}},
            {"name": "vae-beta1", "model": {"kind": "vae", "beta": 1.0}},
        ],
    },
    "ray": {"cpus_per_model": 1, "workers_per_model": 1},
    "classifier": {"max_epochs": 1, "batch_size": 64, "lr": 0.002, "seed": 0},
    "evaluate": {
        "seed": 0,
        "n_prior_samples": 200,
        "iw_samples": 8,
        "interp_pairs": 8,
        "interp_steps": 5,
        "confidence_threshold": 0.9,
    },
}


# The settings of the one full `dvc repro` many end-to-end tests inspect (conftest.py's `small_run`): SMALL_PARAMS with two
# classifier epochs (so its progress shows an epoch boundary), a progress line per update, and secrets in the
# environment that no run may log.
SMALL_RUN_SECRET = "s3cr3t-value-that-must-not-leak"
SMALL_RUN_ENV = {
    PROGRESS_ENV: "0",
    "AWS_SECRET_ACCESS_KEY": SMALL_RUN_SECRET,
    "AEVAE_API_TOKEN": SMALL_RUN_SECRET,
    "DATABASE_PASSWORD": SMALL_RUN_SECRET,
}


# Seeds of the shared seeded run (conftest.py's `seeded_run`): three, so an interval has two degrees of freedom.
SEEDED_RUN_SEEDS = [0, 1, 2]


def env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would have, minus anything pointing at real servers.

    In a test that may share the session's Ray cluster (conftest.py decides: slow tests not marked
    `own_ray`), RAY_ADDRESS leads there unless the test sets RAY_ADDRESS itself.
    """
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONUNBUFFERED"] = "1"
    if SHARED_RAY.wanted and "RAY_ADDRESS" not in extra:
        base["RAY_ADDRESS"] = SHARED_RAY.address()
    if extra.get("RAY_ADDRESS", "") is None:  # RAY_ADDRESS=None: a local instance, as without the variable
        del extra["RAY_ADDRESS"]
    base.update(extra)
    return base


class SharedRay:
    """One Ray head per test process (`ray start --head` on 127.0.0.1), started on first use, stopped at the end.

    Starting a local Ray instance costs each stage seconds that attaching to a running cluster does not;
    the end-to-end runs that do not test Ray itself attach here instead, each as its own Ray job. Tests
    that start, break or kill Ray (or read an environment variable inside a Ray task) are marked
    `own_ray` and get a local instance per stage, as a user without RAY_ADDRESS does.
    """

    def __init__(self) -> None:
        self.wanted = False  # set per test by conftest.py
        self._address: str | None = None
        self._temp_dir: str | None = None

    def address(self) -> str:
        if self._address is None:
            # A short temp dir of its own (Ray's socket paths must fit 107 bytes) names this head's processes.
            self._temp_dir = tempfile.mkdtemp(prefix="rays", dir="/tmp")
            port = free_port()
            cmd = [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                f"--num-cpus={os.cpu_count()}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={self._temp_dir}",
            ]
            run(cmd, Path(self._temp_dir), timeout=120, RAY_ADDRESS=None)  # not an address: this is the head
            self._address = f"127.0.0.1:{port}"
        return self._address

    def stop(self) -> None:
        if self._temp_dir is not None:
            stop_ray_processes(self._temp_dir)
            self._address = self._temp_dir = None


def stop_ray_processes(temp_dir: str) -> None:
    """Stop only the Ray processes started with `temp_dir` (`ray stop` would stop every instance on the machine)."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                procs.append(proc)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


SHARED_RAY = SharedRay()


def make_project(root: Path, params: dict | None = None, git: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("pipeline", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "README.md").write_text("raw data goes here\n")
    write_params(root, params or SMALL_PARAMS)
    if git:
        run(["git", "init", "-q"], root)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], root)
        run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root)
        run([str(BIN / "dvc"), "init", "-q"], root)
        run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    return root


def copy_project(source: Path, root: Path) -> Path:
    """A copy of the project at `source` (git, DVC cache, outputs, its local MLflow store) to change freely.

    MLflow keeps a local experiment's artifact location as an absolute path, so runs made in the copy store
    their artifacts under the original's mlartifacts/, in folders of their own run ids; the original's store
    knows nothing of them and reads none of them.
    """
    shutil.copytree(source, root, symlinks=True)
    # The train stage recorded which store its runs are in (logs/mlflow_run.json): the copy's own store now.
    run_file = root / "logs" / "mlflow_run.json"
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        if run.get("tracking_uri") == f"sqlite:///{Path(source).resolve() / 'mlflow.db'}":
            run["tracking_uri"] = f"sqlite:///{root.resolve() / 'mlflow.db'}"
            run_file.write_text(json.dumps(run))
    return root


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600, **env_extra: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(**env_extra), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _end_to_end() -> None:
    """Under pytest an end-to-end run belongs to a test marked slow, so `pytest -m "not slow"` stays fast.

    conftest.py sets AEVAE_TEST_TIER for each test; outside pytest it is unset and nothing is checked.
    """
    if os.environ.get("AEVAE_TEST_TIER") == "fast":
        raise AssertionError(
            "an end-to-end run (dvc, a stage script or a pipeline process) in a test not marked"
            " @pytest.mark.slow: mark the test slow to keep the fast tier fast"
        )


def stage(script: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run pipeline/<script>.py in the project, as dvc would (end to end: slow tests only)."""
    _end_to_end()
    return run([sys.executable, f"pipeline/{script}.py"], cwd, **kw)


def dvc(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run the venv's dvc in the project (end to end: slow tests only)."""
    _end_to_end()
    return run([str(BIN / "dvc"), *args], cwd, **kw)


def start(cmd: list[str], cwd: Path, log: Path, **env_extra: str) -> subprocess.Popen:
    """Start a process in its own session, so a test can kill it and all its children (slow tests only)."""
    _end_to_end()
    return subprocess.Popen(
        cmd, cwd=cwd, env=env(**env_extra), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def checkpoint_epochs(root: Path) -> list[int]:
    """Epochs completed by each model's checkpoint under root/checkpoints (models without a readable one: absent)."""
    import torch

    epochs = []
    for ckpt in (root / "checkpoints").glob("*/last.pt"):
        try:
            epochs.append(int(torch.load(ckpt, weights_only=True)["epoch"]))
        except Exception:  # being written, or not ours: not a completed epoch
            continue
    return epochs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
