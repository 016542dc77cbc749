"""Data: reading sources (IDX, npz, image folders, torchvision, bundled), splitting, the prepared arrays.

The images' shape and classes come from the data: prepare records them in
data/prepared/manifest.json ("image_shape" [C, H, W], "class_names"), and
every later module reads them from there or from a model's saved config.
Prepared arrays are uint8, (N, H, W) for grey images and (N, C, H, W) for colour.
Unlabelled data (an npz without y_ arrays, a folder without class folders) records no classes
("class_names": []): the stages that need labels skip their work and say why (NO_LABELS).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ClassNames(NamedTuple):
    """How figures and text name the labels of a dataset: the noun ("digit" for MNIST) and one name per label."""

    noun: str
    names: tuple[str, ...]  # names[c] for label c in range(len(names))

    def name(self, label: int) -> str:
        return self.names[int(label)]


# Class names of the datasets known by name (params.yaml data.dataset); any other data names its classes itself
# (folder names) or gets "class 0".."class K-1". Fashion-MNIST's names and order: Xiao et al. 2017,
# arXiv:1708.07747, Table 1.
CLASS_NAMES: dict[str, ClassNames] = {
    "mnist": ClassNames("digit", tuple(str(c) for c in range(10))),
    "fashion-mnist": ClassNames(
        "class",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": ClassNames("character", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "cifar10": ClassNames(
        "class", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ),
    "svhn": ClassNames("digit", tuple(str(c) for c in range(10))),
}


# Why a metric that needs labels (the reference classifier, the classes of the codes) is null, why the classifier
# stage trains nothing and why a claim resting only on such metrics is untestable: one wording everywhere.
NO_LABELS = "the data has no labels"
# How figures and text name the images of unlabelled data: no class names, and "image" where labelled data says
# "digit" or "class" ("look for images vs blurs").
UNLABELLED = ClassNames("image", ())


def numbered(n_classes: int) -> ClassNames:
    """ "class 0".."class K-1": the names of labels that come without names."""
    return ClassNames("class", tuple(f"class {c}" for c in range(n_classes)))


def class_names(dataset: str, n_classes: int = 10) -> ClassNames:
    """The class names of the dataset known as `dataset`; another gets numbered(n_classes)."""
    return CLASS_NAMES.get(dataset, numbered(n_classes))


def manifest_classes(manifest: dict) -> ClassNames:
    """The class names recorded in a prepared manifest; UNLABELLED for unlabelled data (no names).

    A manifest written before names were recorded gets those of its dataset. Never raises.
    """
    if not manifest_labelled(manifest):
        return UNLABELLED
    if "class_names" in manifest:
        return ClassNames(manifest.get("class_noun", "class"), tuple(manifest["class_names"]))
    return class_names(manifest.get("dataset", "idx"), len(manifest.get("classes", range(10))))


def manifest_labelled(manifest: dict) -> bool:
    """Whether the prepared data has labels: unlabelled data's manifest records an empty "class_names" (a manifest
    written before names were recorded has none, and was labelled: prepare refused unlabelled data then)."""
    return manifest.get("class_names") != []


def manifest_shape(manifest: dict) -> tuple[int, int, int]:
    """(C, H, W) of the prepared images. A manifest written before channels were recorded holds (H, W): grey."""
    shape = tuple(int(s) for s in manifest["image_shape"])
    return (1, *shape) if len(shape) == 2 else shape


def shape_of(images: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of a stack of prepared images: uint8 (N, H, W) grey or (N, C, H, W), or float (N, C, H, W).

    Raises: ValueError for another number of dimensions.
    """
    if images.ndim == 3:
        return (1, *images.shape[1:])
    if images.ndim == 4:
        return tuple(images.shape[1:])
    raise ValueError(f"images of shape {images.shape}: expected (N, H, W) or (N, C, H, W)")


def array_shape(image_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """How one image of (C, H, W) is stored in arrays (prepared data, figures' arrays): (H, W) grey, else (C, H, W)."""
    return tuple(image_shape[1:]) if image_shape[0] == 1 else tuple(image_shape)
