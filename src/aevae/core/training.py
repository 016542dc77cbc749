"""The training loop: plain PyTorch, no Ray, no MLflow.

The whole split lives on the device as one tensor and batches are drawn from
a seeded permutation, so there is no DataLoader and no per-sample Python.
Losses are accumulated on the device and read once per epoch (no per-step
host sync). A checkpoint is written atomically after every epoch and a
resumed run continues exactly where the interrupted one stopped.

The budget: `train.epochs` passes over the data, or fewer when `train.max_steps` optimizer steps come
first (the last epoch then stops part-way). A budget in steps costs the same on 3,600 digits as on
54,000, where 20 epochs would cost 15x more; every model of the sweep gets the same steps, so the
comparison stays fair, which early stopping (a different length per model) would not keep.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aevae import atomic
from aevae.config import RunSpec, TrainParams
from aevae.core.losses import recon_per_image
from aevae.core.models import EVAL_BATCH, AutoEncoder, as_images, build_model
from aevae.data import shape_of
from aevae.errors import UserError
from aevae.rng import epoch_generator

CHECKPOINT = "last.pt"
METRICS = ("loss_per_image", "recon_per_image", "kl_nats_per_image")


# A loss this many times that of the trivial model (see trivial_loss) is divergence, finite or not: a healthy
# model's first-epoch train loss is under ~2.6x (its untrained output is ~0.5 everywhere); a diverged one is ~1e8+.
DIVERGENCE_FACTOR = 5.0


class Diverged(RuntimeError):
    """Training diverged (a non-finite loss, or one far worse than the trivial model); the model must not be kept."""


def trivial_loss(train_images: torch.Tensor, val_images: torch.Tensor, recon: str) -> float:
    """Per-image loss on val_images (B, C, H, W) of the model that outputs the mean training image for every input.

    The best input-independent output: what a model that learnt nothing scores (BCE: nats per image,
    ~206 on MNIST where 0.5 everywhere scores 784 ln 2 = 543 (784 = C*H*W pixels); MSE: squared error per image). Its KL
    is 0 (posterior = prior), so it is a baseline for the VAE's total loss too.
    """
    mean = train_images.float().mean(0, keepdim=True).clamp(1e-4, 1 - 1e-4)  # (1, C, H, W); finite logits
    logits = torch.logit(mean).expand_as(val_images)
    return float(recon_per_image(logits, val_images.float(), recon).mean())


# Adam holds two moments beside each weight and its gradient: four float32 copies of every parameter.
_BYTES_PER_PARAMETER = 4 * 4
# Per image of a batch: every layer's output kept for backward, its gradient, and one more copy of slack for
# the allocator's rounding and the loss's temporaries (float32, also under bf16 autocast: the master copies stay).
_ACTIVATION_COPIES = 3
# While as_images converts the training split its uint8 copy (1 byte a pixel) and the float before the division
# by 255 (4) sit beside the result: the run's peak, before the first step.
_LOADING_BYTES_PER_PIXEL = 1 + 4


def device_bytes(spec: RunSpec, train_images: np.ndarray, n_val: int = 0) -> int:
    """Estimated peak bytes one train_model run of `spec` holds on its device, CUDA context excluded.

    train_images: (N, H, W) or (N, C, H, W) uint8, the training split (n_val: the validation images); both live
    on the device as float32 for the whole run, the training split briefly twice more while it is converted. The
    model's weights, gradients and Adam's moments, plus _ACTIVATION_COPIES float32 copies of every layer's outputs
    for a training batch (or one pass of EVAL_BATCH images without gradients, if larger). Counted by building the
    model on the CPU and running one image through it: milliseconds, no GPU needed. A caller adds its own safety
    factor. Never raises.
    """
    model = build_model(spec.model, shape_of(train_images))
    parameters = sum(p.numel() for p in model.parameters())
    per_image = _activation_floats(model, as_images(train_images[:1]))
    activations = 4 * per_image * max(_ACTIVATION_COPIES * spec.train.batch_size, EVAL_BATCH)
    pixels = int(np.prod(train_images.shape[1:]))
    data = 4 * pixels * (len(train_images) + n_val) + _LOADING_BYTES_PER_PIXEL * pixels * len(train_images)
    return _BYTES_PER_PARAMETER * parameters + activations + data


@torch.no_grad()
def _activation_floats(model: AutoEncoder, x: torch.Tensor) -> int:
    """Floats every leaf module outputs for one image x (1, C, H, W): what a batch keeps per image for backward."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.loss(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass
class TrainResult:
    model: AutoEncoder
    history: list[dict] = field(default_factory=list)  # one record per epoch, all epochs so far
    epochs_run: int = 0  # epochs trained by this call (fewer than the total after a resume)


def steps_per_epoch(n_images: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps in one pass over n_images split over `world` data-parallel workers (rank 0's share)."""
    return math.ceil(math.ceil(n_images / world) / batch_size)


def planned_epochs(train: TrainParams, n_images: int, world: int = 1) -> int:
    """Epochs the budget allows: train.epochs, or fewer when train.max_steps ends training first.

    The last of them may be partial (the steps cap falls inside it). Never raises.
    """
    if train.max_steps is None:
        return train.epochs
    return min(train.epochs, math.ceil(train.max_steps / steps_per_epoch(n_images, train.batch_size, world)))


def stopped_by(train: TrainParams, n_images: int, world: int = 1) -> str:
    """What ends training: "max_steps" when the steps cap comes before train.epochs, else "epochs"."""
    full = train.epochs * steps_per_epoch(n_images, train.batch_size, world)
    return "max_steps" if train.max_steps is not None and train.max_steps < full else "epochs"


def check_budget(spec: RunSpec, n_images: int, world: int = 1) -> None:
    """UserError (one line) when a VAE's KL warm-up would not end within the epochs the budget allows.

    A warm-up that never reaches beta trains a model whose final loss is not the beta-ELBO it is
    reported as. Warm-up ends at epoch index kl_warmup_epochs, so it needs more planned epochs than that.
    """
    m, planned = spec.model, planned_epochs(spec.train, n_images, world)
    if m.kind != "vae" or m.kl_warmup_epochs < planned:
        return
    budget = (
        f"train.max_steps = {spec.train.max_steps} allows on {n_images:,} images"
        if stopped_by(spec.train, n_images, world) == "max_steps"
        else "train.epochs allows"
    )
    raise UserError(
        f"model '{spec.name}': model.kl_warmup_epochs = {m.kl_warmup_epochs} does not end within the"
        f" {planned} epochs {budget}; lower kl_warmup_epochs below {planned} or raise the budget"
    )


def spec_digest(spec: RunSpec, data_sha256: str = "") -> str:
    """12 hex digits identifying what a checkpoint was trained for: resume only onto the same spec and data."""
    return hashlib.sha256((spec.model_dump_json() + data_sha256).encode()).hexdigest()[:12]


def kl_weight(beta: float, epoch: int, warmup_epochs: int) -> float:
    """The KL term's weight at `epoch` (from 0): linear warm-up from 0 to beta over `warmup_epochs`, then beta.

    The schedule lives in the loop, as nanoGPT keeps get_lr in its training script; the model's loss
    takes the value. Sources: beta-VAE (Higgins et al. 2017); KL warm-up (Bowman et al. 2016,
    Sønderby et al. 2016). Never raises.
    """
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def _epoch_kl_weight(spec: RunSpec, epoch: int) -> float:
    """This epoch's KL weight; 0 for an AE, which has no KL term."""
    m = spec.model
    return kl_weight(m.beta, epoch, m.kl_warmup_epochs) if m.kind == "vae" else 0.0


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LossOf(torch.nn.Module):
    """forward(x (B, C, H, W), kl_weight) -> (total, recon, kl) scalars: the module that DDP or torch.compile wraps."""

    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's loss terms as a tuple (DDP and torch.compile want tensors, not a dataclass)."""
        terms = self.model.loss(x, kl_weight)
        return terms.total, terms.recon, terms.kl


def _run_epoch(
    step: torch.nn.Module,
    opt,
    x: torch.Tensor,
    spec: RunSpec,
    epoch: int,
    weight: float,
    shard: tuple[int, int],
    max_batches: int,
) -> torch.Tensor:
    """One pass over x (N, C, H, W) with KL weight `weight`, cut after `max_batches` optimizer steps (the
    budget's last epoch); returns (3,) device tensor of per-image means of [total, recon, kl] over the images seen."""
    step.train()
    rank, world = shard
    order = torch.randperm(len(x), generator=epoch_generator(spec.train.seed, epoch)).to(x.device)
    order = order[rank::world]  # data-parallel: each worker takes its own share
    bs = spec.train.batch_size
    order = order[: max_batches * bs]  # the whole permutation is drawn first, so a cut epoch shares its batches
    sums = torch.zeros(3, device=x.device)
    for start in range(0, len(order), bs):
        batch = x[order[start : start + bs]]
        with _autocast(x.device, spec.train.precision):
            total, recon, kl = step(batch, weight)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sums += torch.stack([total, recon, kl]).detach().float() * len(batch)
    return sums / len(order)


@torch.no_grad()
def evaluate_loss(
    model: AutoEncoder, x: torch.Tensor, kl_weight: float | None = None, precision: str = "fp32"
) -> torch.Tensor:
    """(3,) per-image means of [total, recon, kl] over x (N, C, H, W), in eval mode, batched.

    Units as AutoEncoder.loss (nats per image for BCE and KL); kl_weight as there (None: cfg.beta).
    """
    model.eval()
    sums = torch.zeros(3, device=x.device)
    for start in range(0, len(x), EVAL_BATCH):
        batch = x[start : start + EVAL_BATCH]
        with _autocast(x.device, precision):
            terms = model.loss(batch, kl_weight)
        sums += torch.stack([terms.total, terms.recon, terms.kl]).float() * len(batch)
    return sums / len(x)


def _record(epoch: int, steps: int, train: list[float], val: list[float], weight: float, seconds: float) -> dict:
    rec: dict = {"epoch": epoch + 1, "steps": steps}  # steps: optimizer steps so far, the budget's unit
    rec.update({f"train/{k}": v for k, v in zip(METRICS, train)})
    rec.update({f"val/{k}": v for k, v in zip(METRICS, val)})
    rec["kl_weight"] = weight
    rec["seconds"] = seconds
    return rec


def _save_checkpoint(path: Path, model, opt, epoch: int, history: list[dict], digest: str) -> None:
    state = {
        "digest": digest,
        "epoch": epoch,  # epochs completed
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "history": history,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic.torch_save(path, state)


_CHECKPOINT_KEYS = {"digest", "epoch", "model", "optimizer", "history", "rng_cpu", "rng_cuda"}


def read_checkpoint(path: Path, digest: str, device: torch.device) -> dict | None:
    """The checkpoint at `path` if it is ours and for this spec; None means train from scratch."""
    if not path.is_file():
        return None
    try:
        state = atomic.torch_load(path, "train", device)
    except UserError:  # corrupt, or carries pickled code: not fatal, train from scratch
        return None
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys() or state["digest"] != digest:
        return None
    return state


def _restore(state: dict, model, opt) -> tuple[int, list[dict]]:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
    return int(state["epoch"]), list(state["history"])


def _check_diverged(spec: RunSpec, epoch: int, train: list[float], val: list[float], baseline: float) -> None:
    """Raise Diverged on a non-finite loss, or a train or val loss over DIVERGENCE_FACTOR x the trivial model's.

    The train loss counts too: a model can blow up during the epoch (1e8 nats per image) and still end it
    near the trivial model, so its validation loss alone would pass it.
    """
    worst = max(train[0], val[0])
    if all(np.isfinite(train + val)) and worst <= DIVERGENCE_FACTOR * baseline:
        return
    unit = "per image" if spec.model.recon == "mse" else "nats per image"
    why = (
        f"loss {train[0]}"
        if not all(np.isfinite(train + val))
        else f"loss {worst:.4g} {unit}, over {DIVERGENCE_FACTOR:g}x the {baseline:.4g} of always"
        " predicting the mean training image"
    )
    raise Diverged(
        f"model '{spec.name}' diverged at epoch {epoch + 1} ({why}); lower train.lr (now {spec.train.lr}) and rerun"
    )


def train_model(
    spec: RunSpec,
    train_images: np.ndarray,
    val_images: np.ndarray,
    device: torch.device | str = "cpu",
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    data_sha256: str = "",
    shard: tuple[int, int] = (0, 1),
    wrap: Callable[[AutoEncoder], torch.nn.Module] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train one sweep member, resuming from `checkpoint_dir` when it holds its checkpoint.

    Trains planned_epochs(...) epochs: train.epochs, or up to train.max_steps optimizer steps, the
    last epoch cut part-way (each history record's `steps` counts them). `wrap` lets a data-parallel
    caller put the model in DDP; `shard` is (rank, world size); only rank 0 writes checkpoints.
    `stop_after` ends the call after that many epochs (tests use it to simulate an interruption).
    Raises: Diverged; UserError from check_budget (a KL warm-up longer than the budget).
    """
    world = shard[1]
    check_budget(spec, len(train_images), world)
    per_epoch = steps_per_epoch(len(train_images), spec.train.batch_size, world)
    max_steps = spec.train.max_steps or math.inf
    device = torch.device(device)
    torch.manual_seed(spec.train.seed)  # weights init and the VAE's sampling noise
    model = build_model(spec.model, shape_of(train_images)).to(device)
    # fused: one kernel for the whole update instead of ~6 small ops per tensor; ~2x faster epochs on CPU.
    opt = torch.optim.Adam(model.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay, fused=True)
    digest = spec_digest(spec, data_sha256)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    state = read_checkpoint(ckpt, digest, device) if ckpt else None
    start, history = _restore(state, model, opt) if state else (0, [])

    step = LossOf(model)
    step = wrap(step) if wrap else step
    if spec.train.compile:
        step = torch.compile(step)
    x_train, x_val = as_images(train_images, device), as_images(val_images, device)
    baseline = trivial_loss(x_train, x_val, spec.model.recon)
    result = TrainResult(model=model, history=history)
    for epoch in range(start, planned_epochs(spec.train, len(train_images), world)):
        if stop_after is not None and result.epochs_run >= stop_after:
            break
        t0 = time.perf_counter()
        weight = _epoch_kl_weight(spec, epoch)  # computed once, passed to the loss (train and val alike)
        batches = int(min(per_epoch, max_steps - epoch * per_epoch))  # the steps left in the budget
        train = _run_epoch(step, opt, x_train, spec, epoch, weight, shard, batches).tolist()  # the one sync per epoch
        val = evaluate_loss(model, x_val, weight, spec.train.precision).tolist()
        _check_diverged(spec, epoch, train, val, baseline)
        record = _record(epoch, epoch * per_epoch + batches, train, val, weight, time.perf_counter() - t0)
        history.append(record)
        result.epochs_run += 1
        if ckpt and shard[0] == 0:
            _save_checkpoint(ckpt, model, opt, epoch + 1, history, digest)
        if on_epoch:
            on_epoch(record)
    model.eval()
    return result
