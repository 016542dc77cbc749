"""What the training budget costs: test loss at params.yaml's train.max_steps against
training to convergence, on the full MNIST; appends a dated section to bench/RESULTS.md.

    python bench/budget.py                         # ae and vae-beta1 at latent 2, 60k/10k: ~15 min on 2 cores
    python bench/budget.py --model vae-beta1-z16   # another group (member-z<size>), repeatable
    python bench/budget.py --steps 3000 --steps 4000   # other budgets in optimizer steps, side by side
    python bench/budget.py --quick                 # 4,000 / 1,000 of those images, 3 epochs (smoke test)

Exits 0 with one line ("skipped: ..."), writing nothing, when the IDX files are absent. Each model (seed 0,
params.yaml's settings for its sweep member) trains once per budget and once to convergence, each run in its
own process with one torch thread, two at once:

1. at the budget: params.yaml's train (epochs, max_steps or each --steps), as the train stage trains it;
2. to convergence: no steps cap, up to --max-epochs epochs, stopped once the validation loss has not
   improved for --patience epochs; its test loss is taken at the best validation epoch.

Test loss is the model's training loss on the 10,000 test digits: BCE reconstruction for an AE, the
negative ELBO (recon + beta KL) for a VAE, in nats per image. Both runs share seed and batch order, so the
budget run is the first max_steps steps of the long one. Wall and process CPU seconds are reported; on a
shared machine the wall time is an upper bound and CPU time the better guide.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import DEFAULT_OUT, REPO, append_section, fmt_s, loadavg, log, machine_info, table  # noqa: E402

DEFAULT_DATA = BENCH.parents[1] / "shared" / "data" / "mnist"


def _data(data: Path, quick: bool) -> dict:
    """{train, val, test}: uint8 images (N, 28, 28), split as the prepare stage splits (data.val_fraction, seed)."""
    from aevae.config import load_params
    from aevae.data.prepare import split
    from aevae.data.sources import from_idx

    raw = from_idx(data)
    if quick:
        raw.train_images, raw.train_labels = raw.train_images[:4_000], raw.train_labels[:4_000]
        raw.test_images, raw.test_labels = raw.test_images[:1_000], raw.test_labels[:1_000]
    d = load_params(REPO / "params.yaml").data
    return {name: images for name, (images, _) in split(raw, d.val_fraction, d.test_fraction, d.seed).items()}


def _spec(group: str, quick: bool, steps: int | None, max_epochs: int):
    """params.yaml's seed-0 spec of `group` capped at `steps`; None: converge (no cap, max_epochs epochs)."""
    from aevae.config import load_params, resolve_sweep

    specs = [s for s in resolve_sweep(load_params(REPO / "params.yaml")) if s.group == group]
    if not specs:
        raise SystemExit(f"no group '{group}' in params.yaml's sweep (member-z<size>, e.g. ae-z2)")
    spec = specs[0]
    converge = steps is None
    train = {"epochs": max_epochs if converge else spec.train.epochs, "max_steps": steps}
    if quick:
        train = {"epochs": 3 if converge else 2, "max_steps": None if converge else min(steps, 40)}
    return spec.model_copy(update={"train": spec.train.model_copy(update=train)})


def _test_loss(model, images) -> float:
    from aevae.core.models import as_images
    from aevae.core.training import evaluate_loss

    return float(evaluate_loss(model, as_images(images))[0])


def run_one(group: str, steps: int | None, data: Path, quick: bool, max_epochs: int, patience: int) -> dict:
    """One training run (capped at `steps`; None: to convergence) in this fresh process on one torch thread."""
    import torch

    from aevae.core.training import train_model

    torch.set_num_threads(1)
    d = _data(data, quick)
    spec = _spec(group, quick, steps, max_epochs)
    converge = steps is None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if not converge:
        result = train_model(spec, d["train"], d["val"])
        rec = result.history[-1]
        out = {
            "steps": rec["steps"],
            "epochs": rec["epoch"],
            "test": _test_loss(result.model, d["test"]),
            "val": rec["val/loss_per_image"],
        }
    else:
        out = _converge(spec, d, patience)
    log(f"{group} {'convergence' if converge else f'budget {steps}'}: {out}")
    return {
        "group": group,
        "budget": steps,
        **out,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }


def _converge(spec, d: dict, patience: int) -> dict:
    """Train one epoch per call (resuming from the checkpoint) until val stops improving; test at the best epoch."""
    from aevae.core.training import train_model

    best = {"val": math.inf}
    with tempfile.TemporaryDirectory() as ckpt:
        while True:
            result = train_model(spec, d["train"], d["val"], checkpoint_dir=Path(ckpt), stop_after=1)
            if not result.epochs_run:
                break  # max epochs reached
            rec = result.history[-1]
            if rec["val/loss_per_image"] < best["val"]:
                best = {
                    "val": rec["val/loss_per_image"],
                    "epochs": rec["epoch"],
                    "steps": rec["steps"],
                    "test": _test_loss(result.model, d["test"]),
                }
            elif rec["epoch"] - best["epochs"] >= patience:
                break
    return {**best, "epochs_run": len(result.history)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="group member-z<size> (default: ae-z2, vae-beta1-z2)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST IDX files")
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument(
        "--steps",
        type=int,
        action="append",
        help="a budget in optimizer steps, repeatable (default: params.yaml's train.max_steps)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from aevae.data.sources import has_idx_files

    if not has_idx_files(args.data):
        print(f"skipped: no MNIST IDX files in {args.data}")
        return 0
    from aevae.config import load_params

    groups = args.model or ["ae-z2", "vae-beta1-z2"]
    budgets = args.steps or [load_params(REPO / "params.yaml").train.max_steps]
    t0, load = time.perf_counter(), loadavg()
    jobs = [(g, s) for g in groups for s in (None, *budgets)]  # the long runs first
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, g, s, args.data, args.quick, args.max_epochs, args.patience) for g, s in jobs]
        rows = {(r["group"], r["budget"]): r for r in (f.result() for f in futures)}
    _append(args, groups, budgets, rows, time.perf_counter() - t0, load)
    return 0


def _append(args, groups: list[str], budgets: list, rows: dict, seconds: float, load: str) -> None:
    from aevae.config import load_params

    train = load_params(REPO / "params.yaml").train
    lines = [
        f"## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: training budget"
        f"{' (quick)' if args.quick else ''} (bench/budget.py)",
        "",
        *machine_info(1),
        f"- load average at start: {load}",
        "",
        f"Budget: train.epochs {train.epochs}, train.max_steps {train.max_steps} (batch {train.batch_size}),"
        f" seed 0. Convergence: up to {args.max_epochs} epochs, stopped after {args.patience} epochs without a"
        " better validation loss, test loss at the best validation epoch. Test loss in nats per image (AE: BCE"
        " reconstruction; VAE: negative ELBO). Two runs at a time, one torch thread each.",
        "",
    ]
    body = []
    for g in groups:
        c = rows[(g, None)]
        body.append(
            [
                g,
                f"converged: {c['steps']:,} at best val ({c['epochs']} ep; {c['epochs_run']} run)",
                f"{c['test']:.2f}",
                "—",
                fmt_s(c["wall_s"]),
                fmt_s(c["cpu_s"]),
            ]
        )
        for s in budgets:
            b = rows[(g, s)]
            cost = b["test"] - c["test"]
            body.append(
                [
                    g,
                    f"budget: {b['steps']:,} ({b['epochs']} ep)",
                    f"{b['test']:.2f}",
                    f"{cost:+.2f} ({100 * cost / c['test']:+.1f}%)",
                    fmt_s(b["wall_s"]),
                    fmt_s(b["cpu_s"]),
                ]
            )
    lines += table(["model", "trained for (steps)", "test loss", "vs converged", "wall s", "CPU s"], body)
    lines += ["", f"_Section time: {seconds:.0f} s._", ""]
    append_section(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
