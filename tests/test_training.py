"""The training loop: learning on real digits, exact resume, determinism, failures.

Plain PyTorch in-process (no Ray, no MLflow); small models and data subsets so
the file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shlex

import numpy as np
import pytest
import torch
import yaml

from aevae.config import ModelParams, RunSpec, TrainParams, load_params
from aevae.core.models import MODEL_KINDS, as_images
from aevae.core.training import (
    CHECKPOINT,
    METRICS,
    Diverged,
    check_budget,
    planned_epochs,
    spec_digest,
    steps_per_epoch,
    stopped_by,
    train_model,
)
from aevae.data.sources import from_bundled
from aevae.errors import UserError
from aevae.progress import SweepProgress
from conftest import assert_one_line, shipped_params

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


# ------------------------------------------------------------------ budget (train.max_steps)

# digits["small"]: 256 images, batch 32 -> 8 steps per epoch


def test_max_steps_stops_inside_an_epoch_and_history_says_so(digits):
    data = (digits["small"], digits["small_val"])
    capped = spec(train={"epochs": 4, "max_steps": 19})
    assert steps_per_epoch(256, 32) == 8 and planned_epochs(capped.train, 256) == 3
    assert stopped_by(capped.train, 256) == "max_steps"
    result = train_model(capped, *data)
    assert result.epochs_run == 3
    assert [r["steps"] for r in result.history] == [8, 16, 19], "the third epoch stops after 3 of its 8 steps"

    # the budget run is the uncapped run cut short: same batches, same weights until the cap
    full = train_model(spec(train={"epochs": 3}), *data)
    assert [r["steps"] for r in full.history] == [8, 16, 24]
    assert without_seconds(full.history)[:2] == without_seconds(result.history)[:2]
    assert weights_differ(result.model, full.model), "the cut epoch must not run all 8 steps"
    three_steps = train_model(spec(train={"epochs": 3, "max_steps": 19}), *data)
    assert_same_weights(three_steps.model, result.model)


def test_max_steps_beyond_the_epochs_changes_nothing(digits):
    data = (digits["small"], digits["small_val"])
    loose = spec(model={"kind": "vae"}, train={"epochs": 2, "max_steps": 1000})
    assert planned_epochs(loose.train, 256) == 2 and stopped_by(loose.train, 256) == "epochs"
    a = train_model(loose, *data)
    b = train_model(spec(model={"kind": "vae"}, train={"epochs": 2}), *data)
    assert_same_weights(a.model, b.model)
    assert without_seconds(a.history) == without_seconds(b.history)


def test_budget_stopped_run_resumes_to_identical_weights(digits, tmp_path):
    """Killed after 2 of the 3 planned epochs (the third cut by max_steps), resumed == uninterrupted, to the bit;
    the KL warm-up (1 epoch) reaches beta within the budget."""
    s = spec(model={"kind": "vae", "beta": 2.0, "kl_warmup_epochs": 1}, train={"epochs": 10, "max_steps": 20})
    data = (digits["small"], digits["small_val"])
    interrupted = train_model(s, *data, checkpoint_dir=tmp_path / "a", stop_after=2)
    assert interrupted.epochs_run == 2
    resumed = train_model(s, *data, checkpoint_dir=tmp_path / "a")
    assert resumed.epochs_run == 1 and [r["steps"] for r in resumed.history] == [8, 16, 20]
    assert [r["kl_weight"] for r in resumed.history] == [0.0, 2.0, 2.0]
    fresh = train_model(s, *data, checkpoint_dir=tmp_path / "b")
    assert_same_weights(resumed.model, fresh.model)
    assert without_seconds(resumed.history) == without_seconds(fresh.history)
    again = train_model(s, *data, checkpoint_dir=tmp_path / "a")
    assert again.epochs_run == 0, "a run stopped by its budget is finished: nothing more to train"
    assert_same_weights(again.model, fresh.model)


def test_kl_warmup_longer_than_the_budget_is_one_line(digits):
    s = spec(name="v", model={"kind": "vae", "kl_warmup_epochs": 3}, train={"epochs": 10, "max_steps": 20})
    with pytest.raises(UserError) as info:
        check_budget(s, 256)
    message = str(info.value)
    assert_one_line(message)
    for part in ("'v'", "kl_warmup_epochs = 3", "3 epochs", "max_steps = 20", "256 images"):
        assert part in message, message
    with pytest.raises(UserError):
        train_model(s, digits["small"], digits["small_val"])
    check_budget(s, 128)  # half the data: 5 epochs in the same steps, the warm-up ends
    check_budget(spec(model={"kind": "ae", "kl_warmup_epochs": 3}, train={"epochs": 1}), 256)  # an AE has no KL


def test_progress_counts_the_planned_epochs():
    s = spec(train={"epochs": 20, "max_steps": 19})
    out = io.StringIO()
    progress = SweepProgress([s], stream=out, every=0.0, epochs={s.name: planned_epochs(s.train, 256)})
    rec = {
        "epoch": 1,
        "seconds": 2.0,
        "train/loss_per_image": 1.0,
        "train/recon_per_image": 1.0,
        "train/kl_nats_per_image": 0.0,
        "val/loss_per_image": 1.0,
    }
    progress.epoch(s.name, rec)
    progress.done(s.name, 3, 6.0)
    lines = out.getvalue().splitlines()
    assert "epoch   1/3" in lines[1] and "ETA    4s" in lines[1], lines
    assert "3 epochs trained" in lines[2] and "resumed" not in lines[2], lines


@pytest.mark.parametrize(
    "value, expected", [(0, "greater than 0"), (-5, "greater than 0"), ("many", "integer"), (2.5, "integer")]
)
def test_max_steps_validation_is_one_line(value, expected, tmp_path):
    params = copy.deepcopy(shipped_params())
    params["train"]["max_steps"] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert "train.max_steps" in message and repr(value) in message and expected in message, message


def test_max_steps_null_means_no_cap(tmp_path):
    params = copy.deepcopy(shipped_params())
    params["train"]["max_steps"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    train = load_params(path).train
    assert train.max_steps is None and planned_epochs(train, 54_000) == train.epochs


def test_shipped_budget_keeps_the_bundled_run_and_caps_the_full_one():
    """The shipped default: all epochs on the bundled 3,600 training digits, max_steps on the full 54,000."""
    train = TrainParams(**shipped_params()["train"])
    assert stopped_by(train, 3_600) == "epochs"
    assert stopped_by(train, 54_000) == "max_steps" and planned_epochs(train, 54_000) < train.epochs


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
    s = spec(
        name=f"boom-{kind}", model={"kind": kind, "recon": recon, "hidden": [64, 32]}, train={"lr": 1e6, "epochs": 3}
    )
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
