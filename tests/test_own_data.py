"""A team's own images: npz files and image folders written by the tests (real files, read by NumPy and Pillow),
their conversions, and every bad input (one line naming the file and the fix, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aevae.config import DataParams
from aevae.data import manifest_classes, manifest_shape
from aevae.data.prepare import split, write_prepared
from aevae.data.prepared import load_split
from aevae.data.sources import load_raw
from aevae.errors import UserError
from conftest import assert_one_line, hidden_entries, tree_digest

RNG = np.random.default_rng(0)


def prepare(out, source: str, path, **kw) -> dict:
    """What pipeline/prepare.py does, in-process, for an own source."""
    raw = load_raw("custom", source, out.parent / "idx", out.parent / "dl", path, **kw)
    return write_prepared(out, split(raw, 0.2, 0.2, 0), raw, "custom")


def images(n: int, h: int, w: int, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def write_folder(root, classes=("cat", "dog", "owl"), per_class: int = 10, size=(12, 10), mode="RGB") -> None:
    """root/<class>/<i>.png: `per_class` random images of `size` (W, H) per class."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
            pixels = RNG.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(root / name / f"{i}.png")


# ------------------------------------------------------------------------------------------------------ npz


def test_npz_grey_keras_layout_round_trips(tmp_path):
    x_tr, x_te = images(30, 8, 8), images(12, 8, 8)
    np.savez(tmp_path / "d.npz", x_train=x_tr, y_train=labels(30), x_test=x_te, y_test=labels(12))
    out = tmp_path / "prepared"
    manifest = prepare(out, "npz", tmp_path / "d.npz")
    assert manifest_shape(manifest) == (1, 8, 8) and manifest["source"] == "npz"
    assert manifest_classes(manifest).names == ("class 0", "class 1", "class 2")
    test = load_split("test", out)
    np.testing.assert_array_equal(test.images, x_te)  # the official test split, untouched
    assert load_split("train", out).images.shape[1:] == (8, 8)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_colour_layouts_give_the_same_nchw_arrays(tmp_path, layout):
    x = images(30, 9, 11, 3)  # (N, H, W, C)
    stored = x if layout == "nhwc" else x.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "d.npz", x_train=stored, y_train=labels(30))
    raw = load_raw("custom", "npz", tmp_path, tmp_path, tmp_path / "d.npz")
    np.testing.assert_array_equal(raw.train_images, x.transpose(0, 3, 1, 2))
    assert raw.test_images is None


def test_npz_resize_and_channels(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=images(20, 8, 8), y_train=labels(20))
    raw = load_raw("custom", "npz", tmp_path, tmp_path, tmp_path / "d.npz", image_size=(16, 12), channels=3)
    assert raw.train_images.shape == (20, 3, 16, 12)
    # grey -> colour repeats the grey level in the three channels
    np.testing.assert_array_equal(raw.train_images[:, 0], raw.train_images[:, 2])


def test_npz_alpha_is_composited_on_the_background(tmp_path):
    x = np.zeros((10, 8, 8, 4), np.uint8)
    x[..., :3] = 200
    x[:, :4, :, 3] = 255  # top half opaque, bottom half transparent
    np.savez(tmp_path / "d.npz", x_train=x, y_train=labels(10, 2))
    raw = load_raw("custom", "npz", tmp_path, tmp_path, tmp_path / "d.npz", background=30)
    assert raw.train_images.shape == (10, 3, 8, 8)
    assert (raw.train_images[:, :, :4] == 200).all() and (raw.train_images[:, :, 4:] == 30).all()


NPZ_BAD = [
    ("no-x_train", dict(x_test=images(4, 8, 8)), ["no x_train", "x_train="]),
    ("float-pixels", dict(x_train=images(4, 8, 8).astype(np.float32)), ["float32", "uint8", "refused"]),
    ("16-bit-pixels", dict(x_train=images(4, 8, 8).astype(np.uint16)), ["uint16", "uint8"]),
    ("ambiguous-layout", dict(x_train=images(4, 3, 3, 3)), ["ambiguous", "(N, H, W, C)"]),
    ("string-labels", dict(x_train=images(4, 8, 8), y_train=np.array(list("abab"))), ["labels must be", "integers"]),
    ("float-labels", dict(x_train=images(4, 8, 8), y_train=np.arange(4) / 2), ["float64", "integers"]),
    ("label-count", dict(x_train=images(4, 8, 8), y_train=np.arange(3)), ["3 labels for 4 images"]),
    (
        "y_test-alone",
        dict(x_train=images(4, 8, 8), y_train=np.arange(4), x_test=images(4, 8, 8)),
        ["y_train and y_test must come together"],
    ),
]


@pytest.mark.parametrize("arrays, expected", [pytest.param(*c[1:], id=c[0]) for c in NPZ_BAD])
def test_npz_bad_input_is_one_line_naming_the_file(tmp_path, arrays, expected):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError) as info:
        load_raw("custom", "npz", tmp_path, tmp_path, tmp_path / "bad.npz")
    message = str(info.value)
    assert_one_line(message)
    assert "bad.npz" in message
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"


def test_npz_that_is_not_an_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(UserError, match="bad.npz: cannot read it as a NumPy .npz"):
        load_raw("custom", "npz", tmp_path, tmp_path, tmp_path / "bad.npz")


# --------------------------------------------------------------------------------------------------- folder


def test_folder_classes_from_folder_names_and_a_stratified_split(tmp_path):
    write_folder(tmp_path / "imgs")
    out = tmp_path / "prepared"
    manifest = prepare(out, "folder", tmp_path / "imgs")
    assert manifest_shape(manifest) == (3, 10, 12)  # (C, H, W) of 12x10 (W x H) PNGs
    assert manifest_classes(manifest).names == ("cat", "dog", "owl")
    assert manifest["test_split"] == "carved from the training data"
    for name in ("train", "val", "test"):
        split_ = load_split(name, out)
        assert split_.images.shape[1:] == (3, 10, 12) and set(split_.labels.tolist()) == {0, 1, 2}


def test_folder_png_pixels_are_read_exactly(tmp_path):
    write_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2, mode="L", size=(8, 8))
    raw = load_raw("custom", "folder", tmp_path, tmp_path, tmp_path / "imgs")
    expected = np.asarray(Image.open(tmp_path / "imgs" / "a" / "0.png"))
    np.testing.assert_array_equal(raw.train_images[0], expected)
    assert raw.train_images.shape == (4, 8, 8) and raw.class_names == ("a", "b")


def test_folder_with_train_and_test_keeps_the_official_test_split(tmp_path):
    write_folder(tmp_path / "imgs" / "train", per_class=6)
    write_folder(tmp_path / "imgs" / "test", per_class=2)
    raw = load_raw("custom", "folder", tmp_path, tmp_path, tmp_path / "imgs")
    assert len(raw.train_images) == 18 and len(raw.test_images) == 6
    assert raw.class_names == ("cat", "dog", "owl")


def test_folder_mixed_sizes_are_resized_with_image_size(tmp_path):
    write_folder(tmp_path / "imgs", classes=("a",), size=(12, 10))
    write_folder(tmp_path / "imgs", classes=("b",), size=(20, 16), mode="RGBA")
    raw = load_raw("custom", "folder", tmp_path, tmp_path, tmp_path / "imgs", image_size=(8, 8), channels=1)
    assert raw.train_images.shape == (20, 8, 8)


def test_data_params_validate_the_new_keys():
    assert DataParams(source="folder", path="x", image_size=32).size == (32, 32)
    assert DataParams(image_size=[24, 16]).size == (24, 16)
    for bad in (
        dict(source="npz"),
        dict(image_size=4),
        dict(image_size=[8, 8, 8]),
        dict(channels=2),
        dict(background=300),
    ):
        with pytest.raises(ValueError):
            DataParams(**bad)


def _corrupt(root):
    write_folder(root)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root / "dog" / "broken.png", ["not an image Pillow can read", "remove or replace"]


def _text_file(root):
    write_folder(root)
    (root / "cat" / "notes.txt").write_text("hello")
    return root / "cat" / "notes.txt", ["not an image"]


def _mixed_sizes(root):
    write_folder(root, classes=("a", "b"))
    write_folder(root, classes=("c",), size=(9, 9))
    return root / "c" / "0.png", ["9x9", "data.image_size"]


def _empty_class(root):
    write_folder(root)
    (root / "zebra").mkdir()
    return root / "zebra", ["is empty"]


def _one_image_class(root):
    write_folder(root)
    write_folder(root, classes=("zebra",), per_class=1)
    return root / "zebra", ["holds one image", "at least 2"]


def _one_class(root):
    write_folder(root, classes=("only",))
    return root, ["one class folder (only)"]


def _sixteen_bit(root):
    write_folder(root)
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(root / "owl" / "deep.png")
    return root / "owl" / "deep.png", ["8-bit", "16-bit"]


def _float_tiff(root):
    write_folder(root)
    Image.fromarray(np.full((10, 12), 0.5, np.float32)).save(root / "owl" / "hdr.tiff")
    return root / "owl" / "hdr.tiff", ["8-bit", "float"]


def _train_test_differ(root):
    write_folder(root / "train")
    write_folder(root / "test", classes=("cat", "dog", "emu"))
    return root / "test", ["different classes", "emu", "owl"]


FOLDER_BAD = [
    ("corrupt-file", _corrupt),
    ("non-image-file", _text_file),
    ("mixed-sizes", _mixed_sizes),
    ("empty-class", _empty_class),
    ("one-image-class", _one_image_class),
    ("one-class", _one_class),
    ("16-bit", _sixteen_bit),
    ("float", _float_tiff),
    ("train-test-classes-differ", _train_test_differ),
]


@pytest.mark.parametrize("make_bad", [pytest.param(c[1], id=c[0]) for c in FOLDER_BAD])
def test_folder_bad_input_is_one_line_and_writes_nothing(tmp_path, make_bad):
    good = tmp_path / "good"
    write_folder(good)
    out = tmp_path / "prepared"
    prepare(out, "folder", good)
    before = tree_digest(out)
    culprit, expected = make_bad(tmp_path / "bad")
    with pytest.raises(UserError) as info:
        prepare(out, "folder", tmp_path / "bad")
    message = str(info.value)
    assert_one_line(message)
    assert str(culprit) in message, f"the message should name {culprit}: {message}"
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"
    assert tree_digest(out) == before, "data/prepared was changed by a failed run"
    assert hidden_entries(out.parent) == [], "temp folders left behind"


# ---------------------------------------------------------------------------------------------- torchvision


def test_torchvision_kmnist_reads_its_idx_files_offline(tmp_path):
    from aevae.data.sources import from_torchvision
    from conftest import write_idx_dir

    written = write_idx_dir(tmp_path / "KMNIST" / "raw", gz=False)
    raw = from_torchvision("kmnist", tmp_path, download=False)
    np.testing.assert_array_equal(raw.train_images, written["arrays"]["train_images"])
    np.testing.assert_array_equal(raw.test_labels, written["arrays"]["test_labels"])


def test_torchvision_cifar10_reads_its_pickled_batches_offline(tmp_path, monkeypatch):
    import pickle

    from aevae.data.prepare import dataset_classes
    from aevae.data.sources import from_torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    ):
        batches[name] = (images(4, 3, 32 * 32), [(i + j) % 10 for j in range(4)])  # rows of 3x32x32, CIFAR's own
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": batches[name][0].reshape(4, -1), "labels": batches[name][1]}, fh)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    import torchvision.datasets.cifar

    # torchvision checks the md5 of the real CIFAR-10 files; these are written by the test in that format
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    raw = from_torchvision("cifar10", tmp_path, download=False)
    assert raw.train_images.shape == (20, 3, 32, 32) and raw.test_images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(raw.test_images, batches["test_batch"][0].reshape(4, 3, 32, 32))
    assert raw.train_labels.tolist()[:4] == [0, 1, 2, 3] and dataset_classes(raw, "cifar10").names == tuple(names)


def test_torchvision_svhn_reads_its_mat_files_offline(tmp_path, monkeypatch):
    import scipy.io
    from torchvision import datasets

    from aevae.data.sources import from_torchvision

    x = {part: images(5, 32, 32, 3).transpose(1, 2, 3, 0) for part in ("train", "test")}  # (32, 32, 3, N)
    for part in ("train", "test"):
        scipy.io.savemat(tmp_path / f"{part}_32x32.mat", {"X": x[part], "y": np.array([[10], [1], [2], [3], [4]])})
    monkeypatch.setattr(datasets.SVHN, "_check_integrity", lambda self: True)  # md5s of the real files
    raw = from_torchvision("svhn", tmp_path, download=False)
    assert raw.train_images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(raw.train_images, x["train"].transpose(3, 2, 0, 1))  # SVHN's own transpose
    assert raw.train_labels.tolist() == [0, 1, 2, 3, 4]  # its "10" is the digit 0


def test_npz_class_with_one_image_names_the_file(tmp_path):
    y = np.array([0] * 10 + [1] * 10 + [2])
    np.savez(tmp_path / "one.npz", x_train=images(21, 8, 8), y_train=y)
    with pytest.raises(UserError) as info:
        prepare(tmp_path / "prepared", "npz", tmp_path / "one.npz")
    assert_one_line(str(info.value))
    assert "one.npz" in str(info.value) and "[2]" in str(info.value) and "single image" in str(info.value)
    assert not (tmp_path / "prepared").exists()
