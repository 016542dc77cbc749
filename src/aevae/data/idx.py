"""MNIST-format IDX files: validated, then parsed by torchvision.

torchvision's parser trusts its input (it asserts), so the header and the
length are checked here first to turn a corrupt file into a clear UserError.
"""

from __future__ import annotations

import gzip
import math
import tempfile
import zlib
from pathlib import Path

import numpy as np

from aevae.errors import UserError

_UBYTE = 0x08  # the only element type MNIST-style datasets use


def _raw_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UserError(f"{path}: cannot read ({exc}); the file is truncated or corrupt, download it again") from None
    return data


def _check_header(path: Path, data: bytes, ndim: int) -> tuple[int, ...]:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] != ndim:
        raise UserError(
            f"{path}: wrong magic number {data[:4].hex() or '(empty file)'}, expected 0000080{ndim}"
            f" (an IDX file of {ndim}-d unsigned bytes); is this the right file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated header; download the file again")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[0] == 0:  # torchvision's parser fails on it with an opaque ValueError
        raise UserError(
            f"{path}: holds no {'images' if ndim == 3 else 'labels'} (its header says 0); is this the right file?"
        )
    expected = header + math.prod(dims)  # Python ints: a bogus header cannot overflow
    if len(data) != expected:
        raise UserError(
            f"{path}: {len(data)} bytes but its header {dims} needs {expected}; the file is truncated or corrupt,"
            " download it again"
        )
    return dims


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of uint8 (images: ndim 3, labels: ndim 1), .gz or not."""
    path = Path(path)
    data = _raw_bytes(path)
    _check_header(path, data, ndim)
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor  # heavy: imported when needed

    with tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
        tmp.write(data)
        tmp.flush()
        return read_sn3_pascalvincent_tensor(tmp.name, strict=True).numpy().copy()


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8, checked against each other."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels;"
            " the files do not belong together"
        )
    return images, labels
