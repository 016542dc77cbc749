"""models/<name>/: a trained model on disk, and loading it back.

Each folder holds model.pt (state_dict only, loaded with weights_only=True),
config.json (the resolved spec, the image shape (C, H, W) it was built for, data digest, training
facts), history.csv
(one row per epoch) and metrics.json (final numbers of the train stage). The
folder is written whole and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from aevae import atomic
from aevae.config import RunSpec
from aevae.core.models import AutoEncoder, build_model
from aevae.errors import UserError

MODELS_DIR = Path("models")


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def save(
    root: Path, spec: RunSpec, state_dict: dict, history: list[dict], facts: dict, image_shape: tuple[int, int, int]
) -> Path:
    """Write models/<name>/ for a model of (C, H, W) `image_shape`. Timings stay out: the folder must be
    byte-identical for identical training, so a killed-and-resumed run reaches the same dvc.lock as an
    uninterrupted one."""
    history = [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]
    last = history[-1]
    metrics = {k: v for k, v in last.items() if k.startswith(("train/", "val/"))}
    metrics["epochs"] = last["epoch"]
    with atomic.atomic_dir(Path(root) / spec.name) as tmp:
        (tmp / "model.pt").write_bytes(atomic.torch_bytes(state_dict))
        atomic.write_json(tmp / "config.json", {**spec.model_dump(), "image_shape": list(image_shape), **facts})
        (tmp / "history.csv").write_text(_history_csv(history))
        atomic.write_json(tmp / "metrics.json", metrics)
    return Path(root) / spec.name


def load(name: str, root: Path = MODELS_DIR, device: str = "cpu") -> tuple[AutoEncoder, RunSpec]:
    """(trained model in eval mode on `device`, its spec) from root/<name>/, weights loaded weights_only.

    Raises: UserError when the model is missing (run the train stage) or its file cannot be loaded safely.
    """
    folder = Path(root) / name
    spec = load_spec(name, root)
    state = atomic.torch_load(folder / "model.pt", "train", device)
    return build(spec, state, image_shape(name, root)).to(device), spec


def image_shape(name: str, root: Path = MODELS_DIR) -> tuple[int, int, int]:
    """(C, H, W) of the images the model in root/<name>/ was built for, from its config.json.

    Raises: UserError when the model is missing or was saved without it (retrain it).
    """
    folder = Path(root) / name
    load_spec(name, root)  # a missing model says so
    config = json.loads((folder / "config.json").read_text())
    if "image_shape" not in config:
        raise UserError(
            f"{folder / 'config.json'} does not record the image shape the model was built for;"
            " retrain it (dvc repro -f train)"
        )
    return tuple(int(s) for s in config["image_shape"])


def load_spec(name: str, root: Path = MODELS_DIR) -> RunSpec:
    """The resolved spec a model in root/<name>/ was trained with (its config.json), without loading weights.

    Raises: UserError when the model is missing (run the train stage).
    """
    folder = Path(root) / name
    if not (folder / "model.pt").is_file():
        raise UserError(f"model '{name}' not found in {root}; run the train stage first (dvc repro train)")
    config = json.loads((folder / "config.json").read_text())
    return RunSpec(
        name=config["name"],
        model=config["model"],
        train=config["train"],
        member=config.get("member", ""),
        group=config.get("group", ""),
    )


def build(spec: RunSpec, state_dict: dict, image_shape: tuple[int, int, int]) -> AutoEncoder:
    """The trained model for (C, H, W) images, in eval mode, from its spec and weights."""
    model = build_model(spec.model, image_shape)
    model.load_state_dict(state_dict)
    return model.eval()


def trained_names(root: Path = MODELS_DIR) -> list[str]:
    """Sorted names of the models under root that have a model.pt."""
    return sorted(p.parent.name for p in Path(root).glob("*/model.pt"))
