"""A small reference CNN digit classifier, used only to score images.

It never trains the autoencoders; the evaluate stage asks it two things about
an image set: the class probabilities (how confidently a decoded prior sample
looks like a digit, and which) and the penultimate-layer features (for the
classifier-FID, a Fréchet distance in this network's feature space rather
than Inception's, so numbers are comparable within this project only).

Training follows training.py: the whole split is one tensor, batches come
from a seeded permutation (no DataLoader), losses are read once per epoch.
Each batch is randomly shifted by up to `shift` pixels, which buys a couple
of points of accuracy when only a few thousand digits are available.

On disk: {"config": {...}, "state_dict": {...}, "facts": {...}} written
atomically and read back with torch.load(weights_only=True).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aevae import atomic
from aevae.data import N_CLASSES
from aevae.errors import UserError
from aevae.models import EVAL_BATCH, IMAGE_SHAPE, as_images
from aevae.rng import epoch_generator


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int] = (32, 64)  # two conv + max-pool blocks: 28 -> 14 -> 7
    hidden: int = 128  # size of the penultimate layer: the classifier-FID feature size
    n_classes: int = N_CLASSES  # the labels prepare lets through
    dropout: float = 0.25


class DigitClassifier(nn.Module):
    """conv-pool, conv-pool, linear (features), linear (logits)."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.channels
        side = IMAGE_SHAPE[-1] // 4  # two 2x poolings: 28 -> 7
        self.body = nn.Sequential(
            nn.Conv2d(IMAGE_SHAPE[0], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
            nn.Flatten(),
            nn.Linear(c2 * side * side, cfg.hidden), nn.ReLU(),  # (B, hidden): the features
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, n_classes) logits."""
        return self.head(self.body(x))

    @torch.no_grad()
    def _batched(self, images, fn) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            x = as_images(images, self._device())
            return torch.cat([fn(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
        finally:
            self.train(was_training)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def predict_proba(self, images) -> torch.Tensor:
        """(N, n_classes) softmax probabilities, eval mode, batched."""
        return self._batched(images, lambda b: torch.softmax(self(b), dim=1))

    def features(self, images) -> torch.Tensor:
        """(N, hidden) penultimate-layer activations (after ReLU, before dropout)."""
        return self._batched(images, self.body)

    def accuracy(self, images, labels) -> float:
        """Share of images whose most probable class is the label, in [0, 1]."""
        pred = self.predict_proba(images).argmax(1).cpu()
        return float((pred == torch.as_tensor(np.asarray(labels)).long()).float().mean())


@dataclass
class ClassifierResult:
    model: DigitClassifier
    history: list[dict] = field(default_factory=list)  # one record per epoch


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by its own integer (dy, dx) in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, 1, h + 2s, w + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (B, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (B, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(
    train_images,
    train_labels,
    val_images=None,
    val_labels=None,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    shift: int = 2,
    config: ClassifierConfig = ClassifierConfig(),
    device: torch.device | str = "cpu",
) -> ClassifierResult:
    """Train with Adam and a one-cycle learning rate; seeded, so reruns give the same weights.

    Records per epoch: train loss (nats per image), val accuracy when val data is given.
    """
    device = torch.device(device)
    torch.manual_seed(seed)  # weight init and dropout
    model = DigitClassifier(config).to(device)
    x = as_images(train_images, device)
    y = torch.as_tensor(np.asarray(train_labels)).long().to(device)
    steps_per_epoch = -(-len(x) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    result = ClassifierResult(model=model)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        gen = epoch_generator(seed, epoch)  # batch order and shifts
        order = torch.randperm(len(x), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(_random_shift(x[idx], shift, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
        record = {"epoch": epoch + 1, "train/loss_nats_per_image": float(loss_sum) / len(x)}
        if val_images is not None and val_labels is not None:
            record["val/accuracy"] = model.accuracy(val_images, val_labels)
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
    model.eval()
    return result


def save(path: str | Path, model: DigitClassifier, facts: dict | None = None) -> Path:
    """Write config + state_dict (+ plain facts such as test accuracy) atomically."""
    cfg = asdict(model.cfg)
    cfg["channels"] = list(cfg["channels"])
    state = {"config": cfg, "state_dict": model.state_dict(), "facts": dict(facts or {})}
    atomic.torch_save(path, state)
    return Path(path)


def load(path: str | Path, device: torch.device | str = "cpu") -> tuple[DigitClassifier, dict]:
    """(classifier in eval mode, facts) from `path`; a missing or unsafe file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier {path} not found; run the classifier stage first (dvc repro classifier)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        cfg = dict(state["config"])
        cfg["channels"] = tuple(cfg["channels"])
        model = DigitClassifier(ClassifierConfig(**cfg))
        model.load_state_dict(state["state_dict"])
    except Exception as exc:  # weights_only refuses pickled code; anything else is a corrupt file
        raise UserError(f"{path} cannot be loaded safely ({type(exc).__name__}); retrain it (dvc repro -f classifier)") from None
    return model.to(device).eval(), dict(state.get("facts", {}))
