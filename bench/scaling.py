"""Benchmark 4, scaling: seconds per epoch of one model (ae, vae) at 5k, 20k and 60k images; linear
growth is constant seconds per 1,000 images.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, Settings, bundled_digits, fmt_s, log, table


def synthesize(n: int, seed: int = 0) -> np.ndarray:
    """n images: the bundled digits, then copies of them shifted by up to 2 px with pixel jitter (seeded)."""
    base, _ = bundled_digits()
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(base)
    out = base[idx].copy()
    extra = np.arange(len(base), n)  # every image after the first copy is perturbed
    if len(extra):
        shifts = rng.integers(-2, 3, size=(len(extra), 2))
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                sel = extra[(shifts[:, 0] == dy) & (shifts[:, 1] == dx)]
                out[sel] = np.roll(out[sel], (dy, dx), axis=(1, 2))
        noise = rng.normal(0, 8, size=(len(extra), 28, 28))
        out[extra] = np.clip(out[extra].astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return out[rng.permutation(n)]


def section(cfg: Settings) -> tuple[list[str], dict]:
    """Benchmark 4: (Markdown lines, {"per_k", "worst"}); worst is the largest growth of CPU s per 1,000 images."""
    import torch

    from aevae.config import RunSpec, load_params
    from aevae.core.training import train_model

    params = load_params(REPO / "params.yaml")
    torch.set_num_threads(max(1, int(params.ray.cpus_per_model)))  # what a train-stage Ray task uses
    rows, per_k = [], {}
    for n in cfg.sizes:
        images = synthesize(n)
        n_val = int(round(n * params.data.val_fraction))
        train, val = images[n_val:], images[:n_val]
        for kind in ("ae", "vae"):
            model = params.model.model_copy(update={"kind": kind, "latent_dim": params.sweep.latent_dims[0]})
            spec = RunSpec(
                name=f"scale-{kind}", model=model, train=params.train.model_copy(update={"epochs": cfg.scaling_epochs})
            )
            log(f"scaling: {kind} at {n} images")
            cpu_marks = [time.process_time()]
            with tempfile.TemporaryDirectory(prefix="aevae-bench-scale-") as ckpt:
                t0 = time.perf_counter()
                result = train_model(
                    spec,
                    train,
                    val,
                    checkpoint_dir=Path(ckpt),
                    on_epoch=lambda rec: cpu_marks.append(time.process_time()),  # noqa: B023 (called in this iteration)
                )
                total = time.perf_counter() - t0
            epoch_s = min(rec["seconds"] for rec in result.history)
            # CPU seconds per epoch (the first also has the model build): with one thread, unaffected by other load.
            epoch_cpu = min(b - a for a, b in zip(cpu_marks, cpu_marks[1:]))
            per_k[(kind, n)] = 1000 * epoch_cpu / len(train)
            rows.append(
                [
                    kind,
                    f"{n:,}",
                    f"{len(train):,} / {len(val):,}",
                    f"{epoch_s:.2f}",
                    f"{epoch_cpu:.2f}",
                    f"{1000 * epoch_s / len(train):.3f}",
                    f"{per_k[(kind, n)]:.3f}",
                    "",
                    fmt_s(total),
                ]
            )
    first = cfg.sizes[0]
    for row in rows:
        kind, n = row[0], int(row[1].replace(",", ""))
        row[7] = f"{per_k[(kind, n)] / per_k[(kind, first)]:.2f}"
    m = params.model
    lines = [
        f"One model per kind with params.yaml's model defaults (mlp hidden {m.hidden}, latent {params.sweep.latent_dims[0]}, "
        f"{m.recon}, batch {params.train.batch_size}), {max(1, int(params.ray.cpus_per_model))} torch thread "
        f"(as a train-stage Ray task with cpus_per_model {params.ray.cpus_per_model:g}), checkpoint every epoch, "
        f"{cfg.scaling_epochs} epoch(s); per epoch = the fastest epoch (train pass + validation + checkpoint), "
        f"wall and CPU time (one thread, so CPU time is what it costs without other load; linearity is judged on "
        f"it). Sets "
        f"beyond the 5,000 bundled digits are copies shifted by up to 2 px with pixel noise (seeded); "
        f"{params.data.val_fraction:g} held out for validation.",
        "",
        *table(
            [
                "model",
                "images",
                "train / val",
                "wall s/epoch",
                "CPU s/epoch",
                "wall s per 1,000 train images",
                "CPU s per 1,000 train images",
                f"CPU per 1,000, relative to {first:,}",
                "wall s (incl. set-up)",
            ],
            rows,
        ),
    ]
    worst = max(per_k[(k, n)] / per_k[(k, first)] for (k, n) in per_k)
    lines += [
        "",
        f"Largest growth of CPU seconds per 1,000 images over the smallest size: {worst:.2f}x "
        f"({'about linear' if worst < 1.25 else 'worse than linear'}).",
    ]
    return lines, {"per_k": per_k, "worst": worst}
