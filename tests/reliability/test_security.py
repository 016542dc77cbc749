"""Unsafe files are refused, the UI stays on this machine, and no secret leaks into MLflow."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from aevae.config import ModelParams, RunSpec, TrainParams
from aevae.core import model_store
from aevae.core.models import build_model
from aevae.errors import UserError
from aevae.evaluation import classifier
from project import REPO, SMALL_RUN_ENV, SMALL_RUN_SECRET


class _RunsCode:
    """Unpickling this runs a shell command: exactly what weights_only=True must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved_model(root):
    spec = RunSpec(name="ae", model=ModelParams(hidden=[16]), train=TrainParams(epochs=1))
    model = build_model(spec.model, (1, 28, 28))
    history = [{"epoch": 1, "train/loss_per_image": 1.0, "seconds": 0.1}]
    return model_store.save(root, spec, model.state_dict(), history, {}, image_shape=(1, 28, 28))


def test_a_model_file_with_code_is_refused(tmp_path):
    folder = _saved_model(tmp_path / "models")
    marker = tmp_path / "pwned"
    torch.save({"weights": _RunsCode(marker)}, folder / "model.pt")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        model_store.load("ae", tmp_path / "models")
    assert not marker.exists(), "the pickled code ran"


def test_a_classifier_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"config": {}, "state_dict": _RunsCode(marker)}, tmp_path / "model.pt")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        classifier.load(tmp_path / "model.pt")
    assert not marker.exists()


def test_the_mlflow_ui_binds_to_localhost():
    dry = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--host 127.0.0.1" in dry and "0.0.0.0" not in dry


@pytest.mark.slow
def test_no_secret_from_the_environment_is_logged(small_run):
    """The shared run's every stage had the secrets below in its environment."""
    secret = SMALL_RUN_SECRET
    assert {k for k, v in SMALL_RUN_ENV.items() if v == secret} == {
        "AWS_SECRET_ACCESS_KEY",
        "AEVAE_API_TOKEN",
        "DATABASE_PASSWORD",
    }
    uri = f"sqlite:///{small_run.root / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs(["1"])
    assert runs
    for run in runs:
        logged = json.dumps({**run.data.params, **run.data.tags})
        assert secret not in logged, f"secret leaked into {run.info.run_name}"
