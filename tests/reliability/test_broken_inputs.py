"""Inputs the way users break them (issue 14): odd labels, degenerate splits, non-finite numbers, a diverged
but finite model, addresses that lead nowhere useful. Each through the real stages (DVC, Ray, MLflow)."""

from __future__ import annotations

import copy
import contextlib
import gzip
import http.server
import json
import math
import socket
import threading
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from aevae.data.sources import from_bundled
from project import SMALL_PARAMS, dvc, free_port, make_project, stage

pytestmark = pytest.mark.slow


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _digits(per_class: int, classes, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits (the bundled 5,000): `per_class` of each class, from the `offset`-th on."""
    raw = from_bundled()
    picks = [np.flatnonzero(raw.train_labels == c)[offset : offset + per_class] for c in classes]
    index = np.concatenate(picks)
    return raw.train_images[index], raw.train_labels[index]


def _idx_project(tmp_path, train_set, test_set, labels_shift: int = 0, **params_change):
    """A project whose data/raw/mine holds the four IDX files of (images, labels) train and test."""
    params = copy.deepcopy(SMALL_PARAMS)
    params["data"].update(source="idx", idx_dir="data/raw/mine", dataset="idx")
    for section, values in params_change.items():
        params[section].update(values)
    root = make_project(tmp_path / "p", params)
    folder = root / "data" / "raw" / "mine"
    folder.mkdir(parents=True)
    for prefix, (images, labels) in (("train", train_set), ("t10k", test_set)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels + labels_shift)))
    return root


# ------------------------------------------------ 3 + 5: a tiny test split of four classes, latent size 32


def test_four_classes_of_five_test_images_evaluate_and_report_with_strict_json(tmp_path):
    root = _idx_project(tmp_path, _digits(40, range(10)), _digits(5, range(4), offset=100),
                        sweep={"latent_dims": [32], "models": SMALL_PARAMS["sweep"]["models"]}, train={"epochs": 1})
    dvc(["repro"], root)
    for path in [root / "metrics" / "summary.json", *(root / "metrics" / "models").glob("*.json")]:
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path.name} holds a bare {c}"))
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    for name in ("ae", "vae-beta1"):
        assert summary[name]["test/moment_kl_to_prior_nats"] is None  # 20 codes in 32 dimensions: singular
        reasons = json.loads((root / "metrics" / "models" / f"{name}.json").read_text())["null_reasons"]
        assert "singular covariance" in reasons["test/moment_kl_to_prior_nats"]
    assert summary["ae"]["test/kl_nats_per_image"] is None  # an AE has no KL: a reasoned null, not NaN
    assert "not defined" in json.loads((root / "metrics" / "models" / "ae.json").read_text())["null_reasons"][
        "test/kl_nats_per_image"]
    assert (root / "reports" / "index.html").is_file()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for run in client.search_runs(["1"], "tags.`aevae.role` = 'model'"):
        logged = run.data.metrics.get("test/moment_kl_to_prior_nats")
        assert logged is None or math.isnan(logged), "an infinite value logged as a number"
        assert "inf" in run.data.tags["aevae.nonfinite.test/moment_kl_to_prior_nats"]
