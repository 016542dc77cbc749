"""The conv VAE on 32x32 colour images: training throughput as a share of the machine's FP32 peak.

    python bench/colour_throughput.py            # 20,000 images, one epoch, ~2 min on one core
    python bench/colour_throughput.py --quick    # 2,000 images (smoke test)

The model is the default params.yaml VAE (beta 1, latent 16) with `model.arch: conv` (channels auto: 32, 64
at 32 px) and `recon: gaussian` (the sigma-VAE, for natural images), trained by `train_model` for one epoch on
(N, 3, 32, 32) uint8 images. The pixels are seeded noise: a step's FLOP and time do not depend on what the
images show, and no 32x32 colour set ships with this machine. FLOP per image: torch.utils.flop_counter over
one forward and backward pass; the peak: a large square FP32 matmul on the same threads (bench/full_size.py).
Appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import append_section, log, machine_info, table  # noqa: E402
from full_size import flops_per_image, fp32_peak_gflops  # noqa: E402

SHAPE = (3, 32, 32)


def conv_vae_spec():
    """The default sweep's VAE (beta 1, the largest latent size) as a conv sigma-VAE, one epoch, no step cap."""
    from aevae.config import RunSpec, load_params, resolve_sweep

    params = load_params(BENCH.parent / "params.yaml")
    spec = next(s for s in resolve_sweep(params, str(BENCH.parent / "params.yaml")) if s.model.kind == "vae")
    model = spec.model.model_copy(update={"arch": "conv", "recon": "gaussian", "beta": 1.0})
    train = spec.train.model_copy(update={"epochs": 1, "max_steps": None})
    return RunSpec(name=f"conv-vae-{'x'.join(map(str, SHAPE))}", model=model, train=train)


def measure(n: int, threads: int) -> list[str]:
    import torch

    from aevae.core.training import train_model

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    x_val = rng.integers(0, 256, (max(n // 10, 64), *SHAPE), dtype=np.uint8)
    spec = conv_vae_spec()
    peak = fp32_peak_gflops(2048)
    flop = flops_per_image(spec, SHAPE)
    log(f"one epoch of {spec.name} on {n} images, {threads} thread(s)")
    with tempfile.TemporaryDirectory(prefix="aevae-bench-ckpt-") as ckpt:
        t0 = time.perf_counter()
        train_model(spec, x_tr, x_val, checkpoint_dir=Path(ckpt))
        seconds = time.perf_counter() - t0
    achieved = flop * n / seconds / 1e9  # the epoch's validation pass counts against it
    row = [spec.name, f"{flop / 1e6:.1f}", f"{n / seconds:,.0f}", f"{achieved:.1f}", f"{peak:.1f}"]
    header = ["model", "MFLOP per image (fwd + bwd)", "images/s", "GFLOP/s", "FP32 peak GFLOP/s (matmul)"]
    return [*table([*header, "share of peak"], [[*row, f"**{100 * achieved / peak:.0f}%**"]])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sweep runs one model per core)")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="results file to append to")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else 20000
    lines = measure(n, args.threads)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    append_section(
        args.out,
        [
            f"## {when} — conv VAE on 32x32 colour: share of FP32 peak (`python bench/colour_throughput.py`)",
            "",
            *machine_info(args.threads),
            f"- Data: {n} seeded-noise images (N, 3, 32, 32), one epoch",
            "",
            *lines,
            "",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
