"""Bad params and bad data, the way a user meets them: through `dvc repro`."""

from __future__ import annotations

import copy
import gzip

import pytest

from project import SMALL_PARAMS, dvc, make_project

pytestmark = pytest.mark.slow


def _params(change) -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    change(params)
    return params


CASES = {
    "misspelt key": (lambda p: p["train"].update(epohcs=3), "unknown key 'train.epohcs'"),
    "wrong type": (lambda p: p["train"].update(epochs="ten"), "train.epochs = 'ten'"),
    "out of range": (lambda p: p["sweep"].update(latent_dims=[0]), "sweep.latent_dims.0 = 0"),
    "negative beta": (lambda p: p["sweep"]["models"][1]["model"].update(beta=-1), "beta = -1"),
    "unknown kind": (lambda p: p["sweep"]["models"][0]["model"].update(kind="gan"), "kind = 'gan'"),
    "empty sweep": (lambda p: p["sweep"].update(models=[]), "sweep.models"),
    "duplicate names": (lambda p: p["sweep"]["models"][1].update(name="ae"), "duplicate model name"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_stop_before_any_work(tmp_path, case):
    change, expected = CASES[case]
    root = make_project(tmp_path / "p", _params(change))
    proc = dvc(["repro"], root, check=False)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and expected in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "data" / "prepared").exists() and not (root / "models").exists()


def test_yaml_syntax_error(tmp_path):
    root = make_project(tmp_path / "p")
    (root / "params.yaml").write_text("data:\n  source: bundled\n  seed: [1, 2\n")
    proc = dvc(["repro"], root, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    # DVC reads params.yaml itself before our stage can: either voice must name the file and the problem.
    assert "params.yaml" in proc.stderr


def _idx(images: bytes, n: int, rows: int = 28) -> bytes:
    return bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + rows.to_bytes(4, "big") + (28).to_bytes(4, "big") + images


def _labels(labels: list[int]) -> bytes:
    return bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)


def _write_idx(folder, n_train=40, n_test=20, rows=28, classes=10, truncate=False, label_count=None):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = _idx(bytes(n * rows * 28), n, rows)
        if truncate and prefix == "train":
            images = images[: len(images) // 2]
        labels = [i % classes for i in range(label_count if label_count is not None else n)]
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_labels(labels)))


DATA_CASES = {
    "missing folder": (None, "IDX folder"),
    "truncated file": (dict(truncate=True), "truncated or corrupt"),
    "count mismatch": (dict(label_count=39), "images but"),
    "wrong image size": (dict(rows=4), "sides of 8-128 px"),  # 4x28: below the smallest side the models take
    "one class only": (dict(classes=1), "one class only"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_stops_with_one_line_and_writes_nothing(tmp_path, case):
    layout, expected = DATA_CASES[case]
    params = _params(lambda p: p["data"].update(source="idx", idx_dir="data/raw/mine", dataset="idx"))
    root = make_project(tmp_path / "p", params)
    if layout is not None:
        _write_idx(root / "data" / "raw" / "mine", **layout)
    proc = dvc(["repro", "prepare"], root, check=False)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and expected in ours[0], proc.stderr
    assert not (root / "data" / "prepared").exists()
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".")], "temp folders left behind"
