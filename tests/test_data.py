"""The prepare stage: sources, splits, the prepared folder, and bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from aevae.data import sources
from aevae.data.idx import read_idx, read_split
from aevae.data.prepare import split, write_prepared
from aevae.data.prepared import load_manifest, load_split
from aevae.data.sources import DEFAULT_IDX_DIR, RawData, load_raw
from aevae.errors import UserError
from conftest import (
    IDX_NAMES,
    assert_one_line,
    hidden_entries,
    idx_bytes,
    image_ids,
    make_arrays,
    run_stage,
    shipped_params,
    tree_digest,
    write_idx,
    write_idx_dir,
    write_params,
)

SPLITS = ("train", "val", "test")


def prepare(
    out_dir: Path,
    idx_dir: Path,
    source: str = "idx",
    dataset: str = "mnist",
    download_dir: Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """What pipeline/prepare.py does, in-process: source -> splits -> data/prepared/."""
    download_dir = download_dir or idx_dir.parent / "download"
    raw = load_raw(dataset, source, idx_dir, download_dir)
    return write_prepared(out_dir, split(raw, val_fraction, test_fraction, seed), raw, dataset)


def _raw_from(arrays: dict, test: bool = True) -> RawData:
    return RawData(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"] if test else None,
        arrays["test_labels"] if test else None,
        source="idx",
        origin="memory",
    )


@pytest.fixture
def no_network(monkeypatch):
    """Deterministically offline, whatever the machine: every connection attempt fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def bundled() -> RawData:
    return sources.from_bundled()


# ---------------------------------------------------------------------- sources


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_source_reads_the_four_files(tmp_path, gz):
    written = write_idx_dir(tmp_path / "raw", gz=gz)
    raw = load_raw("mnist", "idx", tmp_path / "raw", tmp_path / "download")
    arrays = written["arrays"]
    for key in IDX_NAMES:
        got = getattr(raw, key)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[key])
    assert raw.train_images.shape == (120, 28, 28) and raw.test_images.shape == (30, 28, 28)
    assert raw.source == "idx"
    assert raw.origin == str((tmp_path / "raw").resolve())
    assert not (tmp_path / "download").exists(), "the idx source must not try to download"


def test_idx_source_accepts_dotted_names_and_mixed_compression(tmp_path):
    arrays = make_arrays()
    folder = tmp_path / "raw"
    write_idx(folder / "train-images.idx3-ubyte", arrays["train_images"], gz=False)
    write_idx(folder / "train-labels.idx1-ubyte.gz", arrays["train_labels"])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", arrays["test_images"])
    write_idx(folder / "t10k-labels-idx1-ubyte", arrays["test_labels"], gz=False)
    raw = load_raw("idx", "idx", folder, tmp_path / "download")
    np.testing.assert_array_equal(raw.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(raw.test_images, arrays["test_images"])


def test_read_idx_round_trips_gz_and_plain(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels, gz=False), ndim=1), labels)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l.gz", labels), ndim=1), labels)


def test_bundled_source(bundled):
    raw = load_raw("mnist", "bundled", Path("unused"), Path("unused"))
    assert raw.source == "bundled"
    assert raw.train_images.shape == (5000, 28, 28) and raw.train_images.dtype == np.uint8
    assert raw.train_labels.shape == (5000,) and raw.train_labels.dtype == np.uint8
    assert sorted(np.unique(raw.train_labels).tolist()) == list(range(10))
    assert np.bincount(raw.train_labels).tolist() == [500] * 10
    assert raw.test_images is None and raw.test_labels is None, "the bundled subset has no official test split"
    assert raw.train_images.max() > 200, "real digits: ink close to 255"
    np.testing.assert_array_equal(raw.train_images, bundled.train_images)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "idx"])
def test_bundled_source_is_mnist_only(dataset):
    with pytest.raises(UserError) as info:
        load_raw(dataset, "bundled", Path("unused"), Path("unused"))
    assert_one_line(str(info.value))
    assert dataset in str(info.value) and "bundled" in str(info.value)


def test_auto_prefers_the_idx_folder(tmp_path, idx_dataset):
    raw = load_raw("mnist", "auto", tmp_path / "raw", tmp_path / "download")
    assert raw.source == "idx"
    np.testing.assert_array_equal(raw.train_images, idx_dataset["arrays"]["train_images"])
    assert not (tmp_path / "download").exists(), "auto must not download when the IDX files are there"
    manifest = write_prepared(tmp_path / "prepared", split(raw, 0.1, 0.2, 0), raw, "mnist")
    assert manifest["source"] == "idx" and manifest["test_split"] == "official"


def test_auto_falls_back_to_bundled_with_a_warning(tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)  # the default data.idx_dir, empty
    start = time.monotonic()
    raw = load_raw("mnist", "auto", Path(DEFAULT_IDX_DIR), tmp_path / "raw" / "download")
    assert time.monotonic() - start < 60
    assert raw.source == "bundled" and len(raw.train_images) == 5000
    err = capsys.readouterr().err
    assert "warning:" in err and "bundled" in err
    manifest = write_prepared(tmp_path / "prepared", split(raw, 0.1, 0.2, 0), raw, "mnist")
    assert manifest["source"] == "bundled"
    assert manifest["test_split"] == "carved from the training data"


def test_auto_with_a_mistyped_idx_dir_does_not_substitute_the_bundled_digits(tmp_path, no_network):
    with pytest.raises(UserError) as info:
        load_raw("mnist", "auto", tmp_path / "myidxx", tmp_path / "download")
    assert_one_line(str(info.value))
    assert f"data.idx_dir {tmp_path / 'myidxx'} holds no IDX files; fix the path" in str(info.value)


def test_auto_without_idx_files_does_not_substitute_mnist_for_other_datasets(tmp_path, no_network):
    with pytest.raises(UserError) as info:
        load_raw("fashion-mnist", "auto", tmp_path / "raw", tmp_path / "download")
    assert_one_line(str(info.value))
    assert "fashion-mnist" in str(info.value)


def test_auto_with_dataset_idx_names_the_missing_folder(tmp_path):
    with pytest.raises(UserError) as info:
        load_raw("idx", "auto", tmp_path / "mine", tmp_path / "download")
    assert_one_line(str(info.value))
    assert str(tmp_path / "mine") in str(info.value)


def test_auto_does_not_hide_an_incomplete_idx_folder(tmp_path, idx_dataset, no_network):
    # Three of the four files: the user's data with one missing, not a reason to use the bundled digits.
    path = idx_dataset["paths"]["train_labels"]
    path.unlink()
    with pytest.raises(UserError) as info:
        load_raw("mnist", "auto", tmp_path / "raw", tmp_path / "download")
    assert_one_line(str(info.value))
    assert "train-labels-idx1-ubyte" in str(info.value)


def test_auto_does_not_hide_a_corrupt_idx_folder(tmp_path, idx_dataset, no_network):
    # A present-but-broken file is the user's to fix, not a reason to fall back silently.
    path = idx_dataset["paths"]["train_labels"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError) as info:
        load_raw("mnist", "auto", tmp_path / "raw", tmp_path / "download")
    assert path.name in str(info.value)


def test_torchvision_offline_gives_user_error(tmp_path, no_network):
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_raw("mnist", "torchvision", tmp_path / "raw", tmp_path / "download")
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert_one_line(message)
    assert "cannot download mnist" in message and "bundled" in message


def _online() -> bool:
    try:
        socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_torchvision_on_this_offline_machine_fails_fast(tmp_path):
    """The real thing, no socket patching: the download timeout keeps the failure short."""
    if _online():
        pytest.skip("this machine is online: the download would succeed")
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_raw("mnist", "torchvision", tmp_path / "raw", tmp_path / "download")
    assert time.monotonic() - start < 60
    assert_one_line(str(info.value))


def test_torchvision_cannot_download_a_custom_idx_dataset(tmp_path):
    with pytest.raises(UserError) as info:
        load_raw("idx", "torchvision", tmp_path / "raw", tmp_path / "download")
    assert_one_line(str(info.value))
    assert "'idx'" in str(info.value)


# ----------------------------------------------------------------------- splits


def test_split_is_stratified():
    # deliberately unbalanced classes: 10, 17, 24, ... 73 images
    counts = [10 + 7 * c for c in range(10)]
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10, dtype=np.uint8), counts))
    arrays = make_arrays()
    arrays["train_images"], arrays["train_labels"] = np.zeros((len(labels), 28, 28), np.uint8), labels
    out = split(_raw_from(arrays), val_fraction=0.2, test_fraction=0.2, seed=5)
    train_y, val_y = out["train"][1], out["val"][1]
    n_train, n_val = len(train_y), len(val_y)
    assert n_train + n_val == len(labels)
    for c, total in enumerate(counts):
        t, v = int((train_y == c).sum()), int((val_y == c).sum())
        assert t + v == total
        # the class's share is the same in train and val, to within one image
        assert abs(v - t * n_val / n_train) <= 1, f"class {c}: train {t}, val {v}"
        assert abs(t - v * n_train / n_val) <= 1 + n_train / n_val, f"class {c}: train {t}, val {v}"
        assert abs(v - total * n_val / len(labels)) <= 1


def test_split_is_disjoint_and_complete_and_keeps_labels_with_images(idx_dataset):
    arrays = idx_dataset["arrays"]
    out = split(_raw_from(arrays), 0.1, 0.2, seed=0)
    train_ids, val_ids = image_ids(out["train"][0]), image_ids(out["val"][0])
    assert len(set(train_ids)) == len(train_ids) and len(set(val_ids)) == len(val_ids)
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(image_ids(arrays["train_images"]))
    assert not (set(train_ids) | set(val_ids)) & set(image_ids(out["test"][0]))
    assert (len(train_ids), len(val_ids)) == (108, 12)
    by_id = {int(i): img for i, img in zip(image_ids(arrays["train_images"]), arrays["train_images"])}
    for name in ("train", "val"):
        images, labels = out[name]
        np.testing.assert_array_equal(images[:, 0, 3], labels)  # the label travels with its image
        for img in images:
            np.testing.assert_array_equal(img, by_id[int(image_ids(img[None])[0])])  # pixels untouched


def test_split_is_seeded(idx_dataset):
    raw = _raw_from(idx_dataset["arrays"])
    a, b, c = split(raw, 0.1, 0.2, seed=0), split(raw, 0.1, 0.2, seed=0), split(raw, 0.1, 0.2, seed=1)
    for name in SPLITS:
        for i in range(2):
            np.testing.assert_array_equal(a[name][i], b[name][i])
    assert set(image_ids(a["val"][0])) != set(image_ids(c["val"][0])), "a different seed should give a different split"


def test_official_test_split_is_kept_unchanged(idx_dataset):
    arrays = idx_dataset["arrays"]
    out = split(_raw_from(arrays), 0.1, 0.2, seed=3)
    np.testing.assert_array_equal(out["test"][0], arrays["test_images"])
    np.testing.assert_array_equal(out["test"][1], arrays["test_labels"])


def test_bundled_test_split_is_carved_with_test_fraction(bundled):
    out = split(bundled, val_fraction=0.1, test_fraction=0.2, seed=0)
    sizes = {name: len(out[name][1]) for name in SPLITS}
    assert sizes == {"train": 3600, "val": 400, "test": 1000}
    for name, per_class in (("train", 360), ("val", 40), ("test", 100)):
        assert np.bincount(out[name][1], minlength=10).tolist() == [per_class] * 10
    keys = {name: {img.tobytes() for img in out[name][0]} for name in SPLITS}
    assert sum(len(k) for k in keys.values()) == 5000
    assert len(keys["train"] | keys["val"] | keys["test"]) == 5000, "the splits overlap"
    other = split(bundled, val_fraction=0.1, test_fraction=0.3, seed=0)
    assert len(other["test"][1]) == 1500


def test_prepared_folder_and_manifest(tmp_path, idx_dataset):
    out = tmp_path / "data" / "prepared"
    manifest = prepare(out, tmp_path / "raw")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels")]
    )
    assert json.loads((out / "manifest.json").read_text()) == manifest == load_manifest(out)
    assert manifest["source"] == "idx" and manifest["dataset"] == "mnist"
    assert manifest["origin"] == str((tmp_path / "raw").resolve())
    assert manifest["image_shape"] == [1, 28, 28] and manifest["classes"] == list(range(10))
    assert manifest["class_noun"] == "digit" and manifest["class_names"] == [str(c) for c in range(10)]
    assert {s: manifest["counts"][s]["total"] for s in SPLITS} == {"train": 108, "val": 12, "test": 30}
    per_class = manifest["counts"]["val"]["per_class"]
    assert sorted(per_class) == [str(c) for c in range(10)] and sum(per_class.values()) == 12
    assert set(per_class.values()) <= {1, 2}, "12 val images over 10 equal classes: 1 or 2 each"
    assert manifest["counts"]["test"]["per_class"] == {str(c): 3 for c in range(10)}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest["data_sha256"] == hashlib.sha256("".join(manifest["sha256"].values()).encode()).hexdigest()
    for name in SPLITS:
        loaded = load_split(name, out)
        assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.uint8
        assert loaded.images.shape == (manifest["counts"][name]["total"], 28, 28)
    np.testing.assert_array_equal(load_split("test", out).images, idx_dataset["arrays"]["test_images"])
    assert hidden_entries(out.parent) == []


def test_prepare_is_reproducible_and_replaces_the_folder_whole(tmp_path, idx_dataset):
    out = tmp_path / "data" / "prepared"
    first = prepare(out, tmp_path / "raw", seed=0)
    (out / "stray.txt").write_text("from an older run")
    again = prepare(out, tmp_path / "raw", seed=0)
    assert again["sha256"] == first["sha256"], "same params, same bytes"
    assert not (out / "stray.txt").exists(), "the folder is replaced whole, not merged"
    other = prepare(out, tmp_path / "raw", seed=1)
    assert other["sha256"]["val_images.npy"] != first["sha256"]["val_images.npy"]
    assert load_manifest(out)["sha256"] == other["sha256"]
    assert hidden_entries(out.parent) == []


def test_prepared_output_has_ordinary_permissions(tmp_path, idx_dataset):
    old = os.umask(0o022)
    try:
        out = tmp_path / "data" / "prepared"
        prepare(out, tmp_path / "raw")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir()]}
    assert modes == {name: (0o755 if name == "prepared" else 0o644) for name in modes}, modes


# ------------------------------------------------------------------- load_split


def test_load_split_detects_a_sha256_mismatch(tmp_path, idx_dataset):
    out = tmp_path / "prepared"
    prepare(out, tmp_path / "raw")
    images = np.load(out / "val_images.npy")
    images[0, 5, 5] ^= 0xFF
    np.save(out / "val_images.npy", images)
    with pytest.raises(UserError) as info:
        load_split("val", out)
    message = str(info.value)
    assert_one_line(message)
    assert "val_images.npy" in message and "sha256" in message
    load_split("train", out)  # untouched splits still load
    assert load_split("val", out, verify=False).images[0, 5, 5] == images[0, 5, 5]


def test_load_split_without_manifest_or_with_a_corrupt_one(tmp_path, idx_dataset):
    out = tmp_path / "prepared"
    with pytest.raises(UserError, match="manifest.json not found"):
        load_split("train", out)
    prepare(out, tmp_path / "raw")
    (out / "manifest.json").write_text("{ not json")
    with pytest.raises(UserError, match="corrupt"):
        load_split("train", out)


def test_load_split_missing_array(tmp_path, idx_dataset):
    out = tmp_path / "prepared"
    prepare(out, tmp_path / "raw")
    (out / "test_labels.npy").unlink()
    with pytest.raises(UserError, match="test_labels.npy not found"):
        load_split("test", out)


# -------------------------------------------------------------------- bad input


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep is not None else len(data) - 10])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite(paths, key, array, **kw):
    write_idx(paths[key], array, gz=paths[key].suffix == ".gz", **kw)


def _bad_magic(paths, arrays):
    # a labels file (magic 0x801) where the images file (0x803) belongs
    _rewrite(paths, "train_images", arrays["train_labels"])


def _float_magic(paths, arrays):
    data = bytearray(idx_bytes(arrays["test_images"]))
    data[2] = 0x0D  # element type float32
    paths["test_images"].write_bytes(
        gzip.compress(bytes(data)) if paths["test_images"].suffix == ".gz" else bytes(data)
    )


def _count_mismatch(paths, arrays):
    _rewrite(paths, "train_labels", arrays["train_labels"][:-1])


def _wrong_size(paths, arrays):
    _rewrite(paths, "train_images", arrays["train_images"][:, :20, :20])


def _one_class(paths, arrays):
    _rewrite(paths, "train_labels", np.full_like(arrays["train_labels"], 7))


def _trailing_bytes(paths, arrays):
    path = paths["train_labels"]
    data = idx_bytes(arrays["train_labels"]) + b"\x00" * 5
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# (id, gz, corrupt(paths, arrays), substrings of the message, file named in the message)
BAD_INPUTS = [
    ("truncated-plain", False, lambda p, a: _truncate(p["train_images"]), ["truncated"], "train_images"),
    ("truncated-header", False, lambda p, a: _truncate(p["test_labels"], keep=6), ["truncated"], "test_labels"),
    (
        "truncated-gz",
        True,
        lambda p, a: _truncate(p["train_images"], keep=200),
        ["truncated or corrupt"],
        "train_images",
    ),
    (
        "corrupt-gzip-garbage",
        True,
        lambda p, a: p["test_images"].write_bytes(os.urandom(300)),
        ["corrupt"],
        "test_images",
    ),
    ("corrupt-gzip-flipped-byte", True, lambda p, a: _flip_middle_byte(p["train_images"]), ["corrupt"], "train_images"),
    (
        "plain-data-named-gz",
        True,
        lambda p, a: p["train_labels"].write_bytes(idx_bytes(a["train_labels"])),
        ["corrupt"],
        "train_labels",
    ),
    (
        "gzip-data-without-gz-name",
        False,
        lambda p, a: p["train_labels"].write_bytes(gzip.compress(idx_bytes(a["train_labels"]))),
        ["magic"],
        "train_labels",
    ),
    ("wrong-magic", True, _bad_magic, ["wrong magic number", "00000803"], "train_images"),
    ("float-magic", False, _float_magic, ["wrong magic number"], "test_images"),
    ("empty-file", False, lambda p, a: p["test_labels"].write_bytes(b""), ["empty file"], "test_labels"),
    ("trailing-bytes", True, _trailing_bytes, ["bytes but its header"], "train_labels"),
    ("count-mismatch", True, _count_mismatch, ["120 images", "119 labels"], "train_labels"),
    ("train-test-sizes-differ", True, _wrong_size, ["(1, 20, 20)", "(1, 28, 28)", "data.image_size"], None),
    ("one-class-only", False, _one_class, ["one class", "[7]"], None),
]


@pytest.fixture
def good_prepared(tmp_path):
    """A project folder with a good data/prepared/ from a good raw folder (gz and plain)."""
    for gz, name in ((True, "raw-gz"), (False, "raw-plain")):
        write_idx_dir(tmp_path / name, gz=gz)
    out = tmp_path / "data" / "prepared"
    prepare(out, tmp_path / "raw-gz")
    return out


@pytest.mark.parametrize("gz, corrupt, expected, culprit", [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, good_prepared, gz, corrupt, expected, culprit):
    folder = tmp_path / ("raw-gz" if gz else "raw-plain")
    arrays = make_arrays()
    paths = {key: next(folder.glob(IDX_NAMES[key] + "*")) for key in IDX_NAMES}
    corrupt(paths, arrays)
    before = tree_digest(good_prepared)
    with pytest.raises(UserError) as info:
        prepare(good_prepared, folder)
    message = str(info.value)
    assert_one_line(message)
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"
    if culprit:
        assert paths[culprit].name in message, f"the message should name {paths[culprit].name}: {message}"
    assert tree_digest(good_prepared) == before, "data/prepared was changed by a failed run"
    assert hidden_entries(good_prepared.parent) == [], "temp folders left behind"


def test_missing_folder(tmp_path, good_prepared):
    before = tree_digest(good_prepared)
    with pytest.raises(UserError) as info:
        prepare(good_prepared, tmp_path / "no-such-folder")
    assert_one_line(str(info.value))
    assert "no-such-folder" in str(info.value) and "not found" in str(info.value)
    assert tree_digest(good_prepared) == before and hidden_entries(good_prepared.parent) == []


@pytest.mark.parametrize("missing", list(IDX_NAMES))
def test_missing_one_of_the_four_files(tmp_path, good_prepared, missing):
    folder = tmp_path / "raw-gz"
    next(folder.glob(IDX_NAMES[missing] + "*")).unlink()
    before = tree_digest(good_prepared)
    with pytest.raises(UserError) as info:
        prepare(good_prepared, folder)
    message = str(info.value)
    assert_one_line(message)
    assert IDX_NAMES[missing] in message
    assert [n for n in IDX_NAMES.values() if n in message] == [IDX_NAMES[missing]], "only the missing file is named"
    assert tree_digest(good_prepared) == before and hidden_entries(good_prepared.parent) == []


def test_absurd_header_dims_are_reported_sensibly(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (2**21).to_bytes(4, "big") * 3 + bytes(10))
    with pytest.raises(UserError) as info:
        read_idx(path, ndim=3)
    assert str(2**63 + 16) in str(info.value), str(info.value)


def test_count_mismatch_between_test_files(tmp_path):
    arrays = make_arrays()
    arrays["test_images"] = arrays["test_images"][:-2]
    written = write_idx_dir(tmp_path / "raw", arrays=arrays)
    with pytest.raises(UserError) as info:
        read_split(written["paths"]["test_images"], written["paths"]["test_labels"])
    assert "28 images" in str(info.value) and "30 labels" in str(info.value)


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param([0] * 20 + [1] * 20 + [2], id="class-with-one-image"),
        pytest.param(list(range(10)) * 3, id="val-smaller-than-class-count"),
    ],
)
def test_too_few_images_to_stratify_is_a_user_error(labels):
    labels = np.array(labels, dtype=np.uint8)
    raw = RawData(
        np.zeros((len(labels), 28, 28), np.uint8),
        labels,
        np.zeros((3, 28, 28), np.uint8),
        np.zeros(3, np.uint8),
        source="idx",
        origin="memory",
    )
    with pytest.raises(UserError) as info:
        split(raw, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert_one_line(str(info.value))


# ----------------------------------------------------------- the stage, as a process


@pytest.fixture(scope="module")
def stage_project(tmp_path_factory):
    """A project folder prepared by the real stage from gzipped IDX files."""
    root = tmp_path_factory.mktemp("stage")
    write_idx_dir(root / "data" / "raw" / "mnist", gz=True)
    write_params(root, {"source": "idx", "idx_dir": "data/raw/mnist"})
    result = run_stage(root)
    assert result.returncode == 0, result.stderr
    return root, result


def test_stage_prepares_from_idx_files(stage_project):
    root, result = stage_project
    assert "prepared mnist from idx: train 108, val 12, test 30" in result.stdout
    manifest = load_manifest(root / "data" / "prepared")
    assert manifest["source"] == "idx"
    assert hidden_entries(root / "data") == []
    for name in SPLITS:
        load_split(name, root / "data" / "prepared")


@pytest.mark.parametrize("corruption", ["truncated", "count-mismatch"])
def test_stage_with_bad_raw_data_exits_2_and_keeps_the_old_output(tmp_path, stage_project, corruption):
    root = tmp_path / "project"
    shutil.copytree(stage_project[0], root)
    raw = root / "data" / "raw" / "mnist"
    if corruption == "truncated":
        _truncate(raw / "train-images-idx3-ubyte.gz", keep=500)
    else:
        write_idx(raw / "t10k-labels-idx1-ubyte.gz", make_arrays()["test_labels"][:-1])
    before = tree_digest(root / "data" / "prepared")
    assert before
    result = run_stage(root)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert tree_digest(root / "data" / "prepared") == before
    assert hidden_entries(root / "data") == []


# -------------------------------------------------------------------------- DVC


@pytest.mark.slow
def test_dvc_repro_runs_prepare_then_is_up_to_date(tmp_path):
    import project  # tests/project.py: a throwaway copy of the repo with git and dvc initialised

    if not (project.BIN / "dvc").exists() or not shutil.which("git"):
        pytest.skip("needs git and the venv's dvc")
    params = shipped_params()
    params["data"]["source"] = "bundled"  # offline and deterministic, whatever the machine
    root = project.make_project(tmp_path / "repo", params)
    # only the prepare stage (and what it depends on): later stages train models
    first = project.dvc(["repro", "prepare"], root)
    assert "Running stage 'prepare'" in first.stdout
    assert "Running stage 'train'" not in first.stdout
    manifest = load_manifest(root / "data" / "prepared")
    assert manifest["source"] == "bundled"
    assert {s: manifest["counts"][s]["total"] for s in SPLITS} == {"train": 3600, "val": 400, "test": 1000}
    assert "prepare" in (root / "dvc.lock").read_text()
    before = tree_digest(root / "data" / "prepared")
    second = project.dvc(["repro", "prepare"], root)
    out = second.stdout + second.stderr
    assert "Running stage" not in out, out
    assert "didn't change" in out or "up to date" in out.lower(), out
    assert tree_digest(root / "data" / "prepared") == before
    assert hidden_entries(root / "data") == []
