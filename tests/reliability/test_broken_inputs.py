"""Inputs the way users break them: odd labels, degenerate splits, non-finite numbers, a diverged
but finite model, addresses that lead nowhere useful. Each through the real stages (DVC, Ray, MLflow)."""

from __future__ import annotations

import contextlib
import copy
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


# ------------------------------------------------ a tiny test split of four classes, latent size 32


def test_four_classes_of_five_test_images_evaluate_and_report_with_strict_json(tmp_path):
    root = _idx_project(
        tmp_path,
        _digits(40, range(10)),
        _digits(5, range(4), offset=100),
        sweep={"latent_dims": [32], "seeds": [0], "models": SMALL_PARAMS["sweep"]["models"]},
        train={"epochs": 1},
    )
    dvc(["repro"], root)
    for path in [root / "metrics" / "summary.json", *(root / "metrics" / "models").glob("*.json")]:
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path.name} holds a bare {c}"))  # noqa: B023
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    for name in ("ae", "vae-beta1"):
        assert summary[name]["test/moment_kl_to_prior_nats"]["mean"] is None  # 20 codes in 32 dimensions: singular
        reasons = json.loads((root / "metrics" / "models" / f"{name}.json").read_text())["null_reasons"]
        assert "singular covariance" in reasons["test/moment_kl_to_prior_nats"]
    assert summary["ae"]["test/kl_nats_per_image"]["mean"] is None  # an AE has no KL: a reasoned null, not NaN
    assert (
        "not defined"
        in json.loads((root / "metrics" / "models" / "ae.json").read_text())["null_reasons"]["test/kl_nats_per_image"]
    )
    assert (root / "reports" / "index.html").is_file()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for run in client.search_runs(["1"], "tags.`aevae.role` = 'model'"):
        logged = run.data.metrics.get("test/moment_kl_to_prior_nats")
        assert logged is None or math.isnan(logged), "an infinite value logged as a number"
        assert "inf" in run.data.tags["aevae.nonfinite.test/moment_kl_to_prior_nats"]


# ------------------------------------------------ data that cannot be evaluated stops at prepare


def _blank(n: int, classes) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([classes[i % len(classes)] for i in range(n)], dtype=np.uint8)
    return np.zeros((n, 28, 28), np.uint8), labels


PREPARE_CASES = {
    # labels 1-25 in data named as MNIST (ten classes): the split, the label and the dataset are named
    "labels 1-25": (
        _blank(100, list(range(1, 26))),
        _blank(50, list(range(1, 26))),
        "include 25, not a class 0-9 of mnist",
        "train labels",
    ),
    "empty test file": (_blank(100, list(range(10))), _blank(0, [0]), "holds no images", "t10k-images"),
    "test split of one class": (_blank(100, list(range(10))), _blank(20, [3]), "one class only", "test"),
    "a test class of one image": (
        _blank(100, list(range(10))),
        (np.zeros((5, 28, 28), np.uint8), np.array([1, 1, 2, 2, 7], np.uint8)),
        "single image of class(es) [7]",
        "test",
    ),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_data_that_cannot_be_evaluated_stops_at_prepare(tmp_path, case):
    train_set, test_set, expected, culprit = PREPARE_CASES[case]
    dataset = "mnist" if case == "labels 1-25" else "idx"  # any other IDX data has as many classes as labels
    root = _idx_project(tmp_path, train_set, test_set, data={"dataset": dataset})
    proc = dvc(["repro", "prepare"], root, check=False)
    assert proc.returncode != 0
    line = _one_error_line(proc.stderr)
    assert expected in line and culprit in line, line
    assert not (root / "data" / "prepared").exists()


# ------------------------------------------------ a diverged model that is still finite


def _sweep(*models) -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    params["train"]["epochs"] = 2
    params["sweep"]["models"] = list(models)
    return params


def test_a_finite_but_diverged_model_fails_alone_and_is_not_registered(tmp_path):
    root = make_project(
        tmp_path / "p",
        _sweep(
            {"name": "ae", "model": {"kind": "ae"}}, {"name": "vae-lr5", "model": {"kind": "vae"}, "train": {"lr": 5.0}}
        ),
        git=False,
    )
    stage("prepare", root)
    proc = stage("train", root, check=False)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "vae-lr5" in line and "diverged at epoch" in line and "mean training image" in line
    assert "1 of 2 models failed (the others are saved)" in line
    assert [p.name for p in (root / "models").iterdir()] == ["ae"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    assert not client.search_model_versions("name='aevae-vae-lr5'") and client.search_model_versions("name='aevae-ae'")
    status = {r.info.run_name: r.info.status for r in client.search_runs(["1"])}
    assert status["vae-lr5"] == "FAILED" and status["ae"] == "FINISHED"
    assert [s for n, s in status.items() if n.startswith("pipeline-")] == ["FAILED"]


def test_when_every_model_diverges_the_message_says_none_was_saved(tmp_path):
    root = make_project(
        tmp_path / "p", _sweep({"name": "ae-lr5", "model": {"kind": "ae"}, "train": {"lr": 5.0}}), git=False
    )
    stage("prepare", root)
    proc = stage("train", root, check=False)
    line = _one_error_line(proc.stderr)
    assert proc.returncode == 2 and "1 of 1 models failed (none was saved)" in line and "others" not in line
    assert not (root / "models").exists() or not list((root / "models").iterdir())


# ------------------------------------------------ addresses that lead to no working service of the right kind


class _Page(http.server.BaseHTTPRequestHandler):
    """A web server that is neither Ray nor MLflow: a page for every path."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _web_server(handler=_Page):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _silent_port():
    """A port that accepts connections (the kernel completes the handshake) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def _nothing(address: str):
    yield address


ADDRESS_CASES = {
    "ray: a web server": ("RAY_ADDRESS", _web_server, "{a}", "not a Ray cluster"),
    "ray: a silent port": ("RAY_ADDRESS", _silent_port, "{a}", "no answer"),
    "ray: an unknown host": ("RAY_ADDRESS", lambda: _nothing("no-such-host.invalid:6379"), "{a}", "no Ray cluster"),
    "ray client: a web server": ("RAY_ADDRESS", _web_server, "ray://{a}", "not a Ray cluster"),
    "mlflow: a web server": ("MLFLOW_TRACKING_URI", _web_server, "http://{a}", "not as an MLflow tracking server"),
    "mlflow: a 404 server": (
        "MLFLOW_TRACKING_URI",
        lambda: _web_server(http.server.BaseHTTPRequestHandler),
        "http://{a}",
        "HTTP 501",
    ),
    "mlflow: a silent port": ("MLFLOW_TRACKING_URI", _silent_port, "http://{a}", "does not answer"),
    "mlflow: an unknown host": (
        "MLFLOW_TRACKING_URI",
        lambda: _nothing("no-such-host.invalid:5000"),
        "http://{a}",
        "does not answer",
    ),
    "mlflow: no scheme": ("MLFLOW_TRACKING_URI", lambda: _nothing("localhost:5000"), "{a}", "no scheme MLflow knows"),
    "mlflow: a misspelt scheme": (
        "MLFLOW_TRACKING_URI",
        lambda: _nothing("htp://localhost:5000"),
        "{a}",
        "no scheme MLflow knows",
    ),
    "mlflow: sqlite in no folder": (
        "MLFLOW_TRACKING_URI",
        lambda: _nothing("sqlite:////no/such/folder/m.db"),
        "{a}",
        "does not exist",
    ),
}


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("addr") / "p", git=False)
    stage("prepare", root)
    return root


@pytest.mark.parametrize("case", list(ADDRESS_CASES))
def test_an_address_that_leads_nowhere_useful_fails_in_seconds(prepared_project, case):
    variable, serve, template, expected = ADDRESS_CASES[case]
    with serve() as address:
        t0 = time.monotonic()
        proc = stage("train", prepared_project, check=False, **{variable: template.format(a=address)})
        seconds = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert variable in line and expected in line, line
    assert seconds < 60, f"took {seconds:.0f} s"  # the stage itself, imports included, on a loaded machine
    db = prepared_project / "mlflow.db"
    if variable == "RAY_ADDRESS" and db.exists():  # a bad cluster address is found before any run is opened
        uri = f"sqlite:///{db}"
        assert not [r for r in MlflowClient(uri).search_runs(["1"]) if r.info.status == "RUNNING"]
