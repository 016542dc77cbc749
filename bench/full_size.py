"""Full-size benchmarks on the full MNIST; appends a dated section to bench/RESULTS.md.

    python bench/full_size.py            # 60k/10k from ../shared/data/mnist (or --data DIR): ~15 min on 2 cores
    python bench/full_size.py --quick    # 4,000 / 1,000 of those images, 2 baseline epochs (smoke test)

Exits 0 with one line, writing nothing, when the IDX files are absent. Two measurements, side by side in
one run, on the same torch thread count (--threads, default 1):

1. Single model, ours vs the pytorch/examples VAE recipe (bench/baseline_vae.py, 10 epochs): wall time
   of our `train_model` to the recipe's final test loss; goal >= 3x.
2. Training throughput as a share of the machine's FP32 peak: the peak is a large square FP32 matmul on
   the same threads (2 n^3 FLOP); the throughput counts the default params.yaml model's MACs (every
   nn.Linear / conv layer, measured with torch.utils.flop_counter on one forward and backward pass) per
   image times images per second over one epoch of `train_model`. Goal >= 60% for the sweep: run with
   --threads 1 once per core to see one model per core, as the sweep places them.

The whole `dvc repro -f` at full size (wall time per stage, share outside training, peak PSS) is
bench/run.py's section 3 run on a project whose data.idx_dir points at the same files.
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

from common import append_section, fmt_s, log, machine_info, table  # noqa: E402
from speed import ours_time_to_target, run_baseline  # noqa: E402

DEFAULT_DATA = BENCH.parents[1] / "shared" / "data" / "mnist"


def load(data: Path, quick: bool) -> dict[str, np.ndarray]:
    from aevae.data.sources import from_idx

    raw = from_idx(data)
    n_train, n_test = (4_000, 1_000) if quick else (len(raw.train_images), len(raw.test_images))
    return {
        "x_tr": raw.train_images[:n_train],
        "y_tr": raw.train_labels[:n_train],
        "x_te": raw.test_images[:n_test],
        "y_te": raw.test_labels[:n_test],
    }


def section_speed(d: dict, epochs: int) -> tuple[list[str], float | None]:
    log(f"speed: baseline recipe, {epochs} epochs on {len(d['x_tr'])} images")
    b = run_baseline(d["x_tr"], d["y_tr"], d["x_te"], d["y_te"], epochs)
    log(f"speed: ours, until test loss <= {b['test_loss']:.2f}")
    o = ours_time_to_target(d["x_tr"], d["x_te"], b["test_loss"], 3 * epochs)
    ratio = b["seconds"] / o["seconds"] if o["reached"] else None
    rows = [
        ["baseline (pytorch/examples)", epochs, f"{b['test_loss']:.2f}", fmt_s(b["seconds"]), fmt_s(b["cpu_s"])],
        ["ours (train_model)", o["epochs"], f"{o['last_loss']:.2f}", fmt_s(o["seconds"]), fmt_s(o["cpu_s"])],
    ]
    verdict = (
        f"**{ratio:.2f}x** (goal >= 3x: {'met' if ratio >= 3 else '**missed**'})"
        if ratio
        else "ours did not reach the baseline's loss: **missed**"
    )
    return [
        *table(["run", "epochs", "test loss (nats/image)", "wall s", "CPU s"], rows),
        "",
        f"Baseline / ours, wall time to the same test loss: {verdict}.",
    ], ratio


def fp32_peak_gflops(n: int, repeats: int = 3) -> float:
    """Best of `repeats` n x n FP32 matmuls on the current torch threads, in GFLOP/s (2 n^3 FLOP each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flops_per_image(spec, image_shape: tuple[int, int, int] = (1, 28, 28)) -> float:
    """FLOP of one training step per (C, H, W) image (forward + backward), counted by torch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aevae.core.models import build_model

    model = build_model(spec.model, image_shape)
    x = torch.rand(64, *image_shape)
    with FlopCounterMode(display=False) as counter:
        model.loss(x, 0).total.backward()
    return counter.get_total_flops() / len(x)


def section_throughput(d: dict, quick: bool) -> tuple[list[str], float]:
    from aevae.config import RunSpec, load_params, resolve_sweep
    from aevae.core.training import train_model

    params = load_params(BENCH.parent / "params.yaml")
    spec = resolve_sweep(params, str(BENCH.parent / "params.yaml"))[0]
    spec = RunSpec(name=spec.name, model=spec.model, train=spec.train.model_copy(update={"epochs": 1}))
    peak = fp32_peak_gflops(1024 if quick else 4096)
    flop = flops_per_image(spec)
    log(f"throughput: one epoch of {spec.name} on {len(d['x_tr'])} images")
    with tempfile.TemporaryDirectory(prefix="aevae-bench-ckpt-") as ckpt:
        seconds = _timed(lambda: train_model(spec, d["x_tr"], d["x_te"], checkpoint_dir=Path(ckpt)))
    achieved = flop * len(d["x_tr"]) / seconds / 1e9  # the epoch's validation pass counts against it
    share = achieved / peak
    rows = [
        [
            spec.name,
            f"{flop / 1e6:.2f}",
            f"{len(d['x_tr']) / seconds:,.0f}",
            f"{achieved:.1f}",
            f"{peak:.1f}",
            f"**{100 * share:.0f}%**",
        ]
    ]
    return [
        *table(
            [
                "model",
                "MFLOP per image (fwd + bwd)",
                "images/s",
                "GFLOP/s",
                "FP32 peak GFLOP/s (matmul)",
                "share of peak",
            ],
            rows,
        ),
        "",
        f"Goal for the sweep >= 60%: {'met' if share >= 0.6 else '**missed**'} for one model on these threads.",
    ], share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,000 / 1,000 images, 2 baseline epochs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the four MNIST IDX files")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="results file to append to")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args(argv)
    from aevae.data.sources import has_idx_files

    if not has_idx_files(args.data):
        print(f"skipped: no MNIST IDX files in {args.data}; pass --data DIR", flush=True)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    d = load(args.data, args.quick)
    t0 = time.perf_counter()
    speed, _ = section_speed(d, 2 if args.quick else 10)
    throughput, _ = section_throughput(d, args.quick)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "quick run (`--quick`)" if args.quick else "full size"
    text = [
        f"## {when} — full-size benchmarks, {kind} (`python bench/full_size.py`)",
        "",
        *machine_info(args.threads),
        f"- Data: {len(d['x_tr'])} train / {len(d['x_te'])} test from {args.data}; "
        f"total {time.perf_counter() - t0:.0f} s",
        "",
        "### Single model: ours vs the pytorch/examples recipe",
        "",
        *speed,
        "",
        "### Training throughput: share of FP32 peak",
        "",
        *throughput,
        "",
    ]
    append_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
