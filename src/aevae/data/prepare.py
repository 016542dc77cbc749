"""The prepare stage's logic: raw arrays -> stratified, seeded splits on disk.

Layout of data/prepared/: {train,val,test}_{images,labels}.npy (uint8) and
manifest.json (counts per split and class, image shape, source, sha256 of
every file). The folder is written whole to a temp sibling and renamed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from aevae import atomic
from aevae.data import IMAGE_SHAPE, N_CLASSES
from aevae.data.sources import RawData
from aevae.errors import UserError
from aevae.provenance import sha256_file

SPLITS = ("train", "val", "test")


def _check(raw: RawData) -> None:
    for name, images in (("train", raw.train_images), ("test", raw.test_images)):
        if images is None:
            continue
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
            raise UserError(
                f"{name} images have shape {images.shape[1:]}, expected {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} (MNIST format); resize them first"
            )
    for name, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        if labels is None:
            continue
        if len(labels) and labels.max() >= N_CLASSES:
            raise UserError(f"the {name} labels of {raw.origin} include {int(labels.max())}, not a class"
                            f" 0-{N_CLASSES - 1} of an MNIST-style dataset; fix or drop those items")
        classes = np.unique(labels)
        if len(classes) == 0:
            raise UserError(f"the {name} data holds no images; check the source files")
        if len(classes) < 2:
            raise UserError(f"the {name} data holds one class only ({classes.tolist()}); every split needs at least"
                            " two classes to be evaluated (latent clusters, interpolation between classes)")


def _check_test(labels: np.ndarray) -> None:
    """The evaluate stage scores the test split per class: each class present needs 2+ images."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise UserError(f"the test split has a single image of class(es) {classes[counts < 2].tolist()}; evaluation"
                        " needs at least 2 per class present: add test images or drop those")


def _check_stratifiable(labels: np.ndarray, fraction: float, what: str) -> None:
    """sklearn's stratified split needs 2+ images per class and a share holding every class."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts < 2].tolist()
        raise UserError(f"class(es) {rare} have a single image; a stratified {what} split needs at least 2 per class")
    n_held = int(np.ceil(fraction * len(labels)))
    if n_held < len(classes) or len(labels) - n_held < len(classes):
        raise UserError(
            f"a {what} share of {fraction} of {len(labels)} images gives {n_held} images for {len(classes)} classes;"
            f" raise data.{what}_fraction or use more data"
        )


def split(raw: RawData, val_fraction: float, test_fraction: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded train/val (and test when the source has no official one): {split: (images (N, 28, 28)
    uint8, labels (N,))}.

    Raises: UserError for images that are not 28x28 or a class too small to stratify.
    """
    # sklearn takes seconds to import: a stage that stops on bad params or bad data should not pay for it.
    from sklearn.model_selection import train_test_split

    _check(raw)
    images, labels = raw.train_images, raw.train_labels
    out = {}
    if raw.test_images is None:
        _check_stratifiable(labels, test_fraction, "test")
        images, test_x, labels, test_y = train_test_split(
            images, labels, test_size=test_fraction, stratify=labels, random_state=seed
        )
        out["test"] = (test_x, test_y)
    else:
        out["test"] = (raw.test_images, raw.test_labels)
    _check_test(out["test"][1])
    _check_stratifiable(labels, val_fraction, "val")
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=val_fraction, stratify=labels, random_state=seed
    )
    out["train"], out["val"] = (train_x, train_y), (val_x, val_y)
    return {s: out[s] for s in SPLITS}


def write_prepared(out_dir: Path, splits: dict, raw: RawData, dataset: str) -> dict:
    """Write arrays + manifest into a temp folder, then swap it in atomically."""
    with atomic.atomic_dir(out_dir) as tmp:
        for name, (images, labels) in splits.items():
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(images, dtype=np.uint8))
            np.save(tmp / f"{name}_labels.npy", np.ascontiguousarray(labels, dtype=np.uint8))
        manifest = {
            "dataset": dataset,
            "source": raw.source,
            "origin": raw.origin,
            "test_split": "official" if raw.test_images is not None else "carved from the training data",
            "image_shape": list(splits["train"][0].shape[1:]),
            "classes": sorted(int(c) for c in np.unique(splits["train"][1])),
            "counts": {
                name: {"total": int(len(y)), "per_class": {str(int(c)): int(n) for c, n in zip(*np.unique(y, return_counts=True))}}
                for name, (_, y) in splits.items()
            },
            "sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.npy"))},
        }
        # A digest of the data files alone: one tag that says "same data" for tracking and retraining.
        manifest["data_sha256"] = hashlib.sha256("".join(manifest["sha256"].values()).encode()).hexdigest()
        atomic.write_json(tmp / "manifest.json", manifest)
    return manifest
