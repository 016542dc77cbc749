"""A colour image set cut from real photographs: random size x size RGB patches of scikit-image's bundled
sample photos, one class per photo, written as a Keras-style .npz for the npz source.

    pip install scikit-image                                  # the photos ship inside its wheel
    python bench/photo_patches.py data/raw/photos.npz         # 50,000 train / 10,000 test patches, 32x32x3
    python bench/pipeline_full_size.py --own data/raw/photos.npz

Train patches come from the left 80% of each photo's columns and test patches from the right 20%, so no test
patch overlaps a training one. Classes are balanced (the same count per photo); patches are uint8 (N, H, W, 3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket")
TRAIN_SHARE = 0.8


def _patches(photo: np.ndarray, n: int, size: int, columns: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """n random (size, size, 3) crops of photo (H, W, 3) whose columns lie in [columns[0], columns[1])."""
    ys = rng.integers(0, photo.shape[0] - size + 1, n)
    xs = rng.integers(columns[0], columns[1] - size + 1, n)
    return np.stack([photo[y : y + size, x : x + size] for y, x in zip(ys, xs)])


def make(n_train: int, n_test: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """x_train (n_train, size, size, 3) uint8, y_train (n_train,) int64 photo index, and the same for test."""
    from skimage import data

    rng = np.random.default_rng(seed)
    arrays: dict[str, list] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for label, name in enumerate(PHOTOS):
        photo = np.asarray(getattr(data, name)())[..., :3]
        cut = int(photo.shape[1] * TRAIN_SHARE)
        for split, n, columns in (("train", n_train, (0, cut)), ("test", n_test, (cut, photo.shape[1]))):
            count = n // len(PHOTOS) + (label < n % len(PHOTOS))
            arrays[f"x_{split}"].append(_patches(photo, count, size, columns, rng))
            arrays[f"y_{split}"].append(np.full(count, label, dtype=np.int64))
    return {key: np.concatenate(parts) for key, parts in arrays.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, help="patch side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("error: scikit-image is not installed; pip install scikit-image", file=sys.stderr)
        return 2
    arrays = make(args.n_train, args.n_test, args.size, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
