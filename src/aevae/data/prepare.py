"""The prepare stage's logic: raw arrays -> seeded splits on disk, stratified when the data has labels.

Layout of data/prepared/: {train,val,test}_{images,labels}.npy (uint8; images
(N, H, W) grey or (N, C, H, W) colour) and manifest.json (counts per split and
class, image shape (C, H, W), class names, source, sha256 of every file). The
folder is written whole to a temp sibling and renamed. Unlabelled data has no
*_labels.npy files, and its manifest records no classes ("classes" and
"class_names" empty, counts without "per_class").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from aevae import atomic
from aevae.data import UNLABELLED, ClassNames, class_names, shape_of
from aevae.data.sources import RawData
from aevae.errors import UserError
from aevae.provenance import sha256_file

SPLITS = ("train", "val", "test")


MIN_SIDE, MAX_SIDE = 8, 128  # image sides the models and the reference classifier are built and tested for


def _check_shape(raw: RawData) -> None:
    """Train and test images of one (C, H, W), C 1 or 3, sides 8-128 px."""
    shape = shape_of(raw.train_images)
    if raw.test_images is not None and shape_of(raw.test_images) != shape:
        raise UserError(
            f"the train images of {raw.origin} are {shape} (C, H, W) but its test images are"
            f" {shape_of(raw.test_images)}; set data.image_size (and data.channels) to bring both to one"
        )
    if shape[0] not in (1, 3) or not all(MIN_SIDE <= side <= MAX_SIDE for side in shape[1:]):
        raise UserError(
            f"the images of {raw.origin} are {shape} (C, H, W); aevae takes 1 or 3 channels and sides"
            f" of {MIN_SIDE}-{MAX_SIDE} px: set data.image_size and data.channels"
        )


def dataset_classes(raw: RawData, dataset: str) -> ClassNames:
    """The names of the classes: the source's own (folder names), the dataset's (MNIST's digits), or numbered;
    UNLABELLED (no names) for unlabelled data.

    Raises: UserError for a label with no name (MNIST-style data labels its images 0-9).
    """
    if raw.train_labels is None:
        return UNLABELLED
    top = max(int(labels.max()) for labels in (raw.train_labels, raw.test_labels) if labels is not None and len(labels))
    names = ClassNames("class", tuple(raw.class_names)) if raw.class_names else class_names(dataset, top + 1)
    for split, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        if labels is not None and len(labels) and labels.max() >= len(names.names):
            raise UserError(
                f"the {split} labels of {raw.origin} include {int(labels.max())}, not a class"
                f" 0-{len(names.names) - 1} of {dataset}; fix or drop those items, or set data.dataset"
                " to idx"
            )
    return names


def _check(raw: RawData) -> None:
    _check_shape(raw)
    for name, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        if labels is None:
            continue
        classes = np.unique(labels)
        if len(classes) == 0:
            raise UserError(f"the {name} data holds no images; check the source files")
        if len(classes) < 2:
            raise UserError(
                f"the {name} data holds one class only ({classes.tolist()}); every split needs at least"
                " two classes to be evaluated (latent clusters, interpolation between classes)"
            )


def _check_test(labels: np.ndarray) -> None:
    """The evaluate stage scores the test split per class: each class present needs 2+ images."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise UserError(
            f"the test split has a single image of class(es) {classes[counts < 2].tolist()}; evaluation"
            " needs at least 2 per class present: add test images or drop those"
        )


def _check_stratifiable(labels: np.ndarray, fraction: float, what: str, origin: str = "") -> None:
    """sklearn's stratified split needs 2+ images per class and a share holding every class."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts < 2].tolist()
        where = f" of {origin}" if origin else ""
        raise UserError(
            f"class(es) {rare}{where} have a single image; a stratified {what} split needs at least 2 per"
            " class: add images of those classes or drop them"
        )
    n_held = int(np.ceil(fraction * len(labels)))
    if n_held < len(classes) or len(labels) - n_held < len(classes):
        raise UserError(
            f"a {what} share of {fraction} of {len(labels)} images gives {n_held} images for {len(classes)} classes;"
            f" raise data.{what}_fraction or use more data"
        )


# Images each split of unlabelled data needs: the evaluate stage interpolates between two different test images,
# and a nearest-neighbour radius needs a code's nearest other code.
MIN_UNLABELLED_SPLIT = 2


def _check_unstratified(n: int, fraction: float, what: str, origin: str) -> None:
    """An unlabelled split of n images at `fraction` (sklearn's ceil rule) must leave 2+ images on each side."""
    n_held = int(np.ceil(fraction * n))
    if min(n_held, n - n_held) < MIN_UNLABELLED_SPLIT:
        raise UserError(
            f"a {what} share of {fraction} of the {n} images of {origin} leaves {n_held} and {n - n_held};"
            f" each split needs at least {MIN_UNLABELLED_SPLIT} images: use more images or change"
            f" data.{what}_fraction"
        )


def _split_unlabelled(raw: RawData, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Seeded, unstratified train/val (and test): {split: (images, None)}. Raises: UserError for too few images."""
    from sklearn.model_selection import train_test_split

    images, test = raw.train_images, raw.test_images
    if test is None:
        _check_unstratified(len(images), test_fraction, "test", raw.origin)
        images, test = train_test_split(images, test_size=test_fraction, random_state=seed)
    elif len(test) < MIN_UNLABELLED_SPLIT:
        raise UserError(
            f"the test split of {raw.origin} holds {len(test)} image(s); evaluation needs at least"
            f" {MIN_UNLABELLED_SPLIT}: add test images, or drop x_test to carve the test split out"
        )
    _check_unstratified(len(images), val_fraction, "val", raw.origin)
    train, val = train_test_split(images, test_size=val_fraction, random_state=seed)
    return {"train": (train, None), "val": (val, None), "test": (test, None)}


def split(
    raw: RawData, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Seeded train/val (and test when the source has no official one), stratified when the data has labels:
    {split: (images (N, H, W) or (N, C, H, W) uint8, labels (N,), or None for unlabelled data)}.

    Raises: UserError for train and test images of different shapes, a shape outside 1 or 3 channels of
    8-128 px, a single class, a class too small to stratify, or unlabelled splits under 2 images.
    """
    # sklearn takes seconds to import: a stage that stops on bad params or bad data should not pay for it.
    from sklearn.model_selection import train_test_split

    _check(raw)
    if raw.train_labels is None:
        return _split_unlabelled(raw, val_fraction, test_fraction, seed)
    images, labels = raw.train_images, raw.train_labels
    out = {}
    if raw.test_images is None:
        _check_stratifiable(labels, test_fraction, "test", raw.origin)
        images, test_x, labels, test_y = train_test_split(
            images, labels, test_size=test_fraction, stratify=labels, random_state=seed
        )
        out["test"] = (test_x, test_y)
    else:
        out["test"] = (raw.test_images, raw.test_labels)
    _check_test(out["test"][1])
    _check_stratifiable(labels, val_fraction, "val", raw.origin)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=val_fraction, stratify=labels, random_state=seed
    )
    out["train"], out["val"] = (train_x, train_y), (val_x, val_y)
    return {s: out[s] for s in SPLITS}


def write_prepared(out_dir: Path, splits: dict, raw: RawData, dataset: str) -> dict:
    """Write arrays + manifest into a temp folder, then swap it in atomically.

    Raises: UserError for a label without a class name (dataset_classes), before anything is written.
    """
    classes = dataset_classes(raw, dataset)
    labelled = raw.train_labels is not None
    with atomic.atomic_dir(out_dir) as tmp:
        for name, (images, labels) in splits.items():
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(images, dtype=np.uint8))
            if labelled:
                np.save(tmp / f"{name}_labels.npy", np.ascontiguousarray(labels, dtype=np.uint8))
        manifest = {
            "dataset": dataset,
            "source": raw.source,
            "origin": raw.origin,
            "test_split": "official" if raw.test_images is not None else "carved from the training data",
            "image_shape": list(shape_of(splits["train"][0])),  # (C, H, W)
            "classes": sorted(int(c) for c in np.unique(splits["train"][1])) if labelled else [],
            "class_noun": classes.noun,
            "class_names": list(classes.names),  # names[k] of label k; K = len(names) classifier outputs; []: none
            "counts": {name: _counts(images, labels) for name, (images, labels) in splits.items()},
            "sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.npy"))},
        }
        # A digest of the data files alone: one tag that says "same data" for tracking and retraining.
        manifest["data_sha256"] = hashlib.sha256("".join(manifest["sha256"].values()).encode()).hexdigest()
        atomic.write_json(tmp / "manifest.json", manifest)
    return manifest


def _counts(images: np.ndarray, labels: np.ndarray | None) -> dict:
    """A split's manifest counts: {"total"}, and {"per_class": {label: images}} when it has labels."""
    if labels is None:
        return {"total": int(len(images))}
    return {
        "total": int(len(labels)),
        "per_class": {str(int(c)): int(n) for c, n in zip(*np.unique(labels, return_counts=True))},
    }
