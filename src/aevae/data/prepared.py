"""Reading data/prepared/ back, verified against its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aevae.atomic import read_json
from aevae.data import manifest_labelled
from aevae.errors import UserError
from aevae.provenance import sha256_file

PREPARED_DIR = Path("data/prepared")


@dataclass
class Split:
    images: np.ndarray  # (N, H, W) grey or (N, C, H, W) colour, uint8 (the manifest's image_shape)
    labels: np.ndarray | None  # (N,) uint8; None: unlabelled data (aevae.data.manifest_labelled)


def load_manifest(root: Path = PREPARED_DIR) -> dict:
    """data/prepared/manifest.json. Raises: UserError when missing or corrupt (rerun the prepare stage)."""
    return read_json(Path(root) / "manifest.json", "prepare")


def load_split(name: str, root: Path = PREPARED_DIR, verify: bool = True) -> Split:
    """Load one split: images (N, H, W) or (N, C, H, W) uint8, labels (N,) uint8 (None for unlabelled data, which
    has no labels file); with verify, its files must match the manifest's sha256.

    Raises: UserError when a file is missing or does not match its hash (rerun the prepare stage).
    """
    root = Path(root)
    manifest = load_manifest(root)
    images = _read(root / f"{name}_images.npy", manifest, verify)
    labels = _read(root / f"{name}_labels.npy", manifest, verify) if manifest_labelled(manifest) else None
    return Split(images, labels)


def _read(path: Path, manifest: dict, verify: bool) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path} not found; rerun the prepare stage (dvc repro -f prepare)")
    if verify and sha256_file(path) != manifest["sha256"].get(path.name):
        raise UserError(
            f"{path} does not match its sha256 in the manifest; rerun the prepare stage (dvc repro -f prepare)"
        )
    return np.load(path, allow_pickle=False)
