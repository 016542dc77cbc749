"""The training loop: learning on real digits, exact resume, determinism, failures.

Plain PyTorch in-process (no Ray, no MLflow); small models and data subsets so
the file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import os
import re
import shlex

import numpy as np
import pytest
import torch

from aevae.config import ModelParams, RunSpec, TrainParams
from aevae.data.sources import from_bundled
from aevae.models import MODEL_KINDS, as_images
from aevae.training import CHECKPOINT, METRICS, Diverged, spec_digest, train_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """Real MNIST digits (the bundled 5,000): 2,000 to train on, 500 held out."""
    images = from_bundled().train_images
    return {"train": images[:2000], "val": images[4500:], "small": images[2000:2256], "small_val": images[2256:2320]}


def spec(name: str = "m", model: dict | None = None, train: dict | None = None) -> RunSpec:
    model = {"hidden": [32], "latent_dim": 2, **(model or {})}
    train = {"epochs": 4, "batch_size": 32, **(train or {})}
    return RunSpec(name=name, model=ModelParams(**model), train=TrainParams(**train))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def weights_differ(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


def mean_image_bce(train: np.ndarray, val: np.ndarray) -> float:
    """Per-image BCE on `val` of always predicting the training set's mean image."""
    p = np.clip(train.reshape(len(train), -1).astype(np.float64).mean(0) / 255.0, 1e-6, 1 - 1e-6)
    v = val.reshape(len(val), -1) / 255.0
    return float(-(v * np.log(p) + (1 - v) * np.log(1 - p)).sum(1).mean())


# ------------------------------------------------------------------ basics


def test_as_images_scales_uint8_to_unit_interval():
    images = np.array([[[0, 255], [128, 51]]], dtype=np.uint8)
    x = as_images(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 1.0, 128 / 255, 0.2]))


def test_history_records(digits):
    s = spec(model={"kind": "vae", "beta": 2.0, "kl_warmup_epochs": 2}, train={"epochs": 3})
    seen = []
    result = train_model(s, digits["small"], digits["small_val"], on_epoch=seen.append)
    assert result.epochs_run == 3 and len(result.history) == 3 and seen == result.history
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [r["kl_weight"] for r in result.history] == [0.0, 1.0, 2.0]
    for rec in result.history:
        for split in ("train", "val"):
            values = [rec[f"{split}/{m}"] for m in METRICS]
            assert all(np.isfinite(values))
            assert rec[f"{split}/kl_nats_per_image"] >= 0
        # the val total is recon + weight * KL at that epoch's weight
        assert rec["val/loss_per_image"] == pytest.approx(
            rec["val/recon_per_image"] + rec["kl_weight"] * rec["val/kl_nats_per_image"], rel=1e-5
        )
    assert not result.model.training, "train_model returns the model in eval mode"


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_loss_falls_on_real_digits(kind, digits):
    s = spec(
        kind,
        model={"kind": kind, "hidden": [256], "latent_dim": 8},
        train={"epochs": 3, "batch_size": 32, "lr": 5e-3},
    )
    result = train_model(s, digits["train"], digits["val"])
    val = [r["val/loss_per_image"] for r in result.history]
    recon = [r["val/recon_per_image"] for r in result.history]
    print(f"{kind} val loss per epoch: {[round(v, 2) for v in val]}; val recon: {[round(v, 2) for v in recon]}")
    assert val[2] < 0.9 * val[0], val
    # and it has learnt digits, not just the average: it beats predicting the mean image
    baseline = mean_image_bce(digits["train"], digits["val"])
    assert val[2] < 0.9 * baseline, (val, baseline)
    if kind == "ae":
        assert all(r["val/kl_nats_per_image"] == 0.0 for r in result.history)
    else:
        assert all(r["val/kl_nats_per_image"] > 0.0 for r in result.history)


# ------------------------------------------------------------------ resume


def test_vae_resume_is_bitwise_identical(digits, tmp_path):
    """Interrupted after 2 of 4 epochs and resumed == uninterrupted, to the bit
    (the VAE's sampling noise included)."""
    s = spec(model={"kind": "vae", "kl_warmup_epochs": 2}, train={"epochs": 4})
    data = (digits["small"], digits["small_val"])

    interrupted = train_model(s, *data, checkpoint_dir=tmp_path / "a", stop_after=2)
    assert interrupted.epochs_run == 2 and len(interrupted.history) == 2
    ckpt = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["digest"] == spec_digest(s)

    resumed = train_model(s, *data, checkpoint_dir=tmp_path / "a")
    assert resumed.epochs_run == s.train.epochs - 2
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]

    fresh = train_model(s, *data, checkpoint_dir=tmp_path / "b")
    assert fresh.epochs_run == 4
    assert_same_weights(resumed.model, fresh.model)
    assert without_seconds(resumed.history) == without_seconds(fresh.history)

    # the finished checkpoint loads with weights_only=True, and a finished run trains nothing more
    done = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    assert done["epoch"] == 4
    again = train_model(s, *data, checkpoint_dir=tmp_path / "a")
    assert again.epochs_run == 0
    assert_same_weights(again.model, fresh.model)
    assert without_seconds(again.history) == without_seconds(fresh.history)


def test_checkpoint_of_another_spec_is_not_resumed(digits, tmp_path):
    data = (digits["small"], digits["small_val"])
    a = spec(model={"kind": "vae"}, train={"epochs": 2, "lr": 1e-3})
    b = spec(model={"kind": "vae"}, train={"epochs": 2, "lr": 2e-3})
    assert spec_digest(a) != spec_digest(b)
    train_model(a, *data, checkpoint_dir=tmp_path / "shared", stop_after=1)

    result = train_model(b, *data, checkpoint_dir=tmp_path / "shared")
    assert result.epochs_run == 2, "a checkpoint of another spec must not be resumed"
    fresh = train_model(b, *data, checkpoint_dir=tmp_path / "fresh")
    assert_same_weights(result.model, fresh.model)
    assert without_seconds(result.history) == without_seconds(fresh.history)
    assert torch.load(tmp_path / "shared" / CHECKPOINT, weights_only=True)["digest"] == spec_digest(b)


def test_checkpoint_of_other_data_is_not_resumed(digits, tmp_path):
    data = (digits["small"], digits["small_val"])
    s = spec(train={"epochs": 2})
    train_model(s, *data, checkpoint_dir=tmp_path, data_sha256="aaaa", stop_after=1)
    assert train_model(s, *data, checkpoint_dir=tmp_path, data_sha256="bbbb").epochs_run == 2


def test_corrupt_checkpoint_trains_from_scratch(digits, tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    result = train_model(spec(train={"epochs": 1}), digits["small"], digits["small_val"], checkpoint_dir=tmp_path)
    assert result.epochs_run == 1


def test_foreign_checkpoint_that_is_not_a_dict_trains_from_scratch(digits, tmp_path):
    torch.save(torch.zeros(3), tmp_path / CHECKPOINT)
    result = train_model(spec(train={"epochs": 1}), digits["small"], digits["small_val"], checkpoint_dir=tmp_path)
    assert result.epochs_run == 1


class _RunsCode:
    """Unpickling this object runs a shell command: what weights_only=True must refuse."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_checkpoint_with_code_is_not_executed(digits, tmp_path):
    marker = tmp_path / "pwned"
    s = spec(train={"epochs": 2})

    # the control: this payload really runs when unpickled without weights_only
    control = tmp_path / "control"
    torch.save({"x": _RunsCode(f"touch {shlex.quote(str(control))}")}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists(), "test premise: the payload executes when fully unpickled"

    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    evil = {
        "digest": spec_digest(s),  # looks like this spec's checkpoint
        "epoch": 1,
        "model": _RunsCode(f"touch {shlex.quote(str(marker))}"),
        "optimizer": {},
        "history": [],
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": [],
    }
    torch.save(evil, ckpt_dir / CHECKPOINT)
    try:
        result = train_model(s, digits["small"], digits["small_val"], checkpoint_dir=ckpt_dir)
    except Exception:
        pass  # refusing is fine too
    else:
        assert result.epochs_run == 2, "the malicious checkpoint must be ignored: train from scratch"
    assert not marker.exists(), "code in the checkpoint was executed"


# ------------------------------------------------------------------ determinism


def test_same_seed_same_run_other_seed_other_weights(digits):
    data = (digits["small"], digits["small_val"])
    s = spec(model={"kind": "vae"}, train={"epochs": 2, "seed": 7})
    a = train_model(s, *data)
    b = train_model(s, *data)
    assert_same_weights(a.model, b.model)
    assert without_seconds(a.history) == without_seconds(b.history)

    c = train_model(spec(model={"kind": "vae"}, train={"epochs": 2, "seed": 8}), *data)
    assert weights_differ(a.model, c.model)
    assert without_seconds(a.history) != without_seconds(c.history)


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("kind, recon", [("ae", "bce"), ("vae", "mse")])
def test_divergence_raises_non_finite_loss(kind, recon, digits, tmp_path):
    # two hidden layers: with one, lr 1e6 gives losses ~1e30 that are still finite
    s = spec(name=f"boom-{kind}", model={"kind": kind, "recon": recon, "hidden": [64, 32]}, train={"lr": 1e6, "epochs": 3})
    with pytest.raises(Diverged) as info:
        train_model(s, digits["small"], digits["small_val"], checkpoint_dir=tmp_path)
    message = str(info.value)
    assert f"boom-{kind}" in message
    match = re.search(r"epoch (\d+)", message)
    assert match, message
    failed_epoch = int(match.group(1))
    assert 1 <= failed_epoch <= 3
    # no checkpoint records the diverged epoch as done
    ckpt = tmp_path / CHECKPOINT
    if ckpt.exists():
        assert torch.load(ckpt, weights_only=True)["epoch"] < failed_epoch


# ------------------------------------------------------------------ precision


@pytest.mark.skipif(
    not torch.amp.autocast_mode.is_autocast_available("cpu"), reason="this torch has no bf16 autocast on CPU"
)
@pytest.mark.parametrize("kind, arch", [("ae", "mlp"), ("vae", "mlp"), ("vae", "conv")])
def test_bf16_runs_on_cpu_without_nan(kind, arch, digits):
    model = {"kind": kind, "arch": arch, "channels": [4, 8]}
    s = spec(model=model, train={"epochs": 2, "precision": "bf16"})
    result = train_model(s, digits["small"][:128], digits["small_val"])
    assert result.epochs_run == 2
    for rec in result.history:
        assert all(np.isfinite(v) for k, v in rec.items() if k != "seconds")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())
    fp32 = train_model(spec(model=model, train={"epochs": 2}), digits["small"][:128], digits["small_val"])
    # same seed, same data: bf16 tracks fp32 closely, not exactly
    assert result.history[-1]["val/recon_per_image"] == pytest.approx(fp32.history[-1]["val/recon_per_image"], rel=0.1)
