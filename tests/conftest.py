"""Shared helpers: tiny IDX datasets written on the fly, params files, stage runs."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PARAMS = REPO / "params.yaml"
PREPARE_SCRIPT = REPO / "pipeline" / "prepare.py"

# The four MNIST file stems, in the canonical (dash) spelling.
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, magic_type, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write `array` as an IDX file; gzipped when the name ends in .gz (or gz=True)."""
    path = Path(path)
    if gz is None:
        gz = path.suffix == ".gz"
    elif gz and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_images(labels: np.ndarray, split_marker: int, size: int = 28, start_id: int = 0) -> np.ndarray:
    """(N, size, size) uint8 images carrying a unique id, a split marker and their label.

    pixel [0, 0] and [0, 1] hold the id (big-endian base 256), [0, 2] the split
    marker, [0, 3] the label; the rest is a deterministic pattern, so every image
    is distinct and traceable after splitting.
    """
    n = len(labels)
    rng = np.random.default_rng(1234 + split_marker)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    ids = np.arange(start_id, start_id + n)
    images[:, 0, 0] = ids // 256
    images[:, 0, 1] = ids % 256
    images[:, 0, 2] = split_marker
    images[:, 0, 3] = labels
    return images


def image_ids(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0].astype(np.int64) * 256 + images[:, 0, 1].astype(np.int64)


def make_arrays(per_class_train: int = 12, per_class_test: int = 3, classes=range(10), size: int = 28) -> dict:
    """Arrays of a small MNIST-like dataset, labels shuffled (not sorted by class)."""
    rng = np.random.default_rng(0)
    classes = list(classes)
    train_labels = rng.permutation(np.repeat(np.array(classes, dtype=np.uint8), per_class_train))
    test_labels = rng.permutation(np.repeat(np.array(classes, dtype=np.uint8), per_class_test))
    return {
        "train_images": make_images(train_labels, 1, size),
        "train_labels": train_labels,
        "test_images": make_images(test_labels, 2, size, start_id=len(train_labels)),
        "test_labels": test_labels,
    }


def write_idx_dir(folder: Path, arrays: dict | None = None, gz: bool = True) -> dict:
    """Write the four IDX files into `folder`; returns the arrays and the paths."""
    arrays = make_arrays() if arrays is None else arrays
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: write_idx(folder / IDX_NAMES[key], arrays[key], gz=gz) for key in IDX_NAMES}
    return {"arrays": arrays, "paths": paths}


# ------------------------------------------------------------------------ params


def shipped_params() -> dict:
    return yaml.safe_load(SHIPPED_PARAMS.read_text())


def write_params(folder: Path, data: dict | None = None, base: dict | None = None) -> Path:
    """params.yaml in `folder`: the shipped defaults with `data` section overrides."""
    params = copy.deepcopy(shipped_params() if base is None else base)
    params["data"].update(data or {})
    path = Path(folder) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ------------------------------------------------------------------------- stage


def run_stage(cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run pipeline/prepare.py as the pipeline does: a fresh process in `cwd`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, str(PREPARE_SCRIPT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative path."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hidden_entries(folder: Path) -> list[str]:
    """Names starting with '.' in `folder`: leftovers of an atomic write (DVC's .gitignore aside)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".gitignore")


def assert_one_line(message: str) -> None:
    text = str(message).strip()
    assert text, "empty error message"
    assert "\n" not in text, f"error message is not one line:\n{text}"


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored in every process they start: a
    stage would then ignore Ctrl-C, as no user's stage does. Give the workers Python's own handler instead
    (a handler, unlike SIG_IGN, is reset to the default in a started process)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell tests/project.py which tier runs now (its end-to-end helpers refuse a test not marked slow) and
    whether the test's runs attach to the session's Ray cluster (before fixtures, module-scoped ones too)."""
    import project

    slow = item.get_closest_marker("slow") is not None
    os.environ["AEVAE_TEST_TIER"] = "slow" if slow else "fast"
    project.SHARED_RAY.wanted = slow and item.get_closest_marker("own_ray") is None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the tests for two pytest-xdist workers (`--dist loadgroup --no-loadscope-reorder`).

    A module whose tests share a module- or class-scoped fixture is one work unit (an `xdist_group`), so its
    fixture is made once; every other test is a unit of its own, so the long end-to-end tests spread over
    both workers. Order: the first reader of each shared run (each worker makes one of them at once), then
    the other end-to-end tests, then the remaining shared-run readers (their run is ready by then), then the
    unit tests, which fill the workers at the end.
    """
    for item in items:
        if any(d.scope in ("module", "class") for defs in _fixture_defs(item) for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    first_readers = {next((i for i in items if run in i.fixturenames), None) for run in _SHARED_RUNS} - {None}

    def rank(item: pytest.Item) -> int:
        if item in first_readers:
            return 0
        if item.get_closest_marker("slow") is None:
            return 3
        return 2 if any(run in item.fixturenames for run in _SHARED_RUNS) else 1

    items.sort(key=rank)


_SHARED_RUNS = ("small_run", "seeded_run")


def _fixture_defs(item: pytest.Item):
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures a test uses
    return info.name2fixturedefs.values() if info is not None else ()


def pytest_sessionfinish(session: pytest.Session) -> None:
    import project

    project.SHARED_RAY.stop()


@pytest.fixture
def idx_dataset(tmp_path):
    """A tiny gzipped IDX dataset: 10 classes x 12 train, 10 x 3 test, 28x28."""
    return write_idx_dir(tmp_path / "raw", gz=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One thread for a module of tiny models: torch, BLAS and OpenMP pools (two threads spin-wait on a busy
    2-core machine: the reference classifier trains in 39 s on one, 117 s on two). Restored after the module."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


# Source files whose change can change a trained classifier's weights: part of its cache key.
_CLASSIFIER_SOURCES = ("evaluation/classifier.py", "core/models.py", "rng.py", "data/__init__.py")


def cached_classifier(config: pytest.Config, images: np.ndarray, labels: np.ndarray, **train_kwargs):
    """classifier.train(images, labels, settings=ClassifierParams(**train_kwargs)).model, trained once per code
    version and data.

    Training is seeded and deterministic, so the weights are a function of the code, torch's version, the
    data and the settings: they are kept in pytest's cache (.pytest_cache) under a sha256 of those and
    reloaded (weights_only) by later sessions. Without the cache plugin (-p no:cacheprovider) it trains.
    """
    import torch

    from aevae.config import ClassifierParams
    from aevae.evaluation import classifier as clf_lib

    cache = getattr(config, "cache", None)
    if cache is None:
        return clf_lib.train(images, labels, settings=ClassifierParams(**train_kwargs)).model
    key = hashlib.sha256(f"{torch.__version__} {sorted(train_kwargs.items())}".encode())
    src = REPO / "src" / "aevae"
    for name in _CLASSIFIER_SOURCES:
        key.update((src / name).read_bytes())
    key.update(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes())
    path = cache.mkdir("aevae-classifiers") / f"{key.hexdigest()[:16]}.pt"
    if path.is_file():
        return clf_lib.load(path)[0]
    model = clf_lib.train(images, labels, settings=ClassifierParams(**train_kwargs)).model
    clf_lib.save(path, model)
    return model


# ------------------------------------------------------------ the shared run


def _shared_project(tmp_path_factory, name: str, params: dict, dvc_args: list[str], **env: str | None):
    """A project made and run once (`dvc <dvc_args>`) per test session, under the basetemp's parent, which all
    pytest-xdist workers share: the first worker to ask makes it, the others wait on its lock and read it.

    Returns root, stdout and stderr (dvc's). An attempt that failed half-way is made again by the next asker.
    """
    from filelock import FileLock

    from project import dvc, make_project

    shared = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{shared}.lock"):
        done = shared / "dvc-output.json"
        if not done.is_file():
            if shared.exists():
                shutil.rmtree(shared)
            make_project(shared / "p", params)
            out = dvc(dvc_args, shared / "p", timeout=1500, **env)
            done.write_text(json.dumps({"stdout": out.stdout, "stderr": out.stderr}))
        output = json.loads(done.read_text())
    return SimpleNamespace(root=shared / "p", **output)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> SimpleNamespace:
    """One real `dvc repro` of the whole pipeline (SMALL_PARAMS with two classifier epochs, a git + DVC project,
    the default local MLflow store, a local Ray instance, project.SMALL_RUN_ENV), inspected by every test that
    only reads such a run. Tests must not change it: one that reruns or registers more copies it first
    (project.copy_project)."""
    from project import SMALL_PARAMS, SMALL_RUN_ENV

    params = copy.deepcopy(SMALL_PARAMS)
    params["classifier"]["max_epochs"] = 2
    return _shared_project(tmp_path_factory, "small-run", params, ["repro"], RAY_ADDRESS=None, **SMALL_RUN_ENV)


@pytest.fixture(scope="session")
def seeded_run(tmp_path_factory) -> SimpleNamespace:
    """`dvc repro evaluate` of an AE and a VAE (β = 1) at latent size 2 with seeds 0, 1, 2, one epoch each
    (SMALL_PARAMS otherwise), in a git + DVC project with the default local store; read-only, like small_run."""
    from project import SEEDED_RUN_SEEDS, SMALL_PARAMS

    params = copy.deepcopy(SMALL_PARAMS)
    params["sweep"]["seeds"] = SEEDED_RUN_SEEDS
    params["train"]["epochs"] = 1
    return _shared_project(tmp_path_factory, "seeded-run", params, ["repro", "evaluate"])
