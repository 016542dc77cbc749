"""Device check: the GPU paths, run on a machine with a CUDA GPU; results go to a folder (JSON + Markdown).

    python bench/device_check.py OUT_DIR                 # full MNIST from ../shared/data/mnist, <= 8 min
    python bench/device_check.py OUT_DIR --data DIR      # the four MNIST IDX files elsewhere

Without a GPU torch can use it prints one line saying so, writes it to OUT_DIR and exits 0. With one,
every part runs on the first GPU (CUDA_VISIBLE_DEVICES narrows it) and a part that the time left
(--budget-s, default 480) cannot hold is recorded as skipped, so the whole check ends in time. They run
in the order 1, 2, 6, 7, 5, 3, 4 (the headline figures before the smaller checks):

1. determinism: one VAE trained twice with one seed on CUDA: bitwise-identical weights?
2. exact resume: the same run interrupted after an epoch and resumed: identical to the uninterrupted one?
3. bf16 and torch.compile (train.precision, train.compile): finite, the loss against fp32, seconds;
4. evaluation on CUDA against the CPU: metrics.evaluate of one model both ways, the largest relative difference;
5. memory: one default model's peak on the GPU (torch.cuda.max_memory_allocated) against the estimate that
   ray.gpus_per_model: auto packs by (training.device_bytes);
6. the default sweep of params.yaml on full MNIST through distributed.train_sweep, packing on (auto) and off
   (one GPU per model): wall time, GPU utilisation and memory sampled by nvidia-smi every 500 ms, models per
   GPU (Ray's share and the most that actually ran at once);
7. one model against the pytorch/examples VAE recipe (bench/baseline_vae.py) on the same GPU: the wall time
   to the recipe's final test loss, as a ratio.
Figures are ratios and measurements; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

# The first folder holding the IDX files: beside the checkout (a worktree's parent), or one level further up.
DATA_CANDIDATES = (REPO.parent / "shared" / "data" / "mnist", REPO.parents[1] / "shared" / "data" / "mnist")
BUDGET_S = 480.0
# Seconds each part needs on an H100-class GPU with 16 cores, measured or estimated: a part starts only when
# this fits in the time left.
NEEDS_S = {
    "determinism": 15,
    "resume": 15,
    "sweep_packed": 90,
    "sweep_unpacked": 150,
    "baseline_ratio": 90,
    "memory": 10,
    "bf16_compile": 60,
    "evaluate": 30,
}


def no_gpu_line() -> str | None:
    """One line naming why there is no GPU to check (None when torch can use one)."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no GPU: torch.cuda.is_available() is False on this machine (torch {torch.__version__}, {build});"
        " the device checks need a CUDA GPU and were skipped"
    )


def _spec(kind: str = "vae", epochs: int = 3, **train):
    """A params.yaml default-size model (784-512-256-2) of `kind`, trained for `epochs`."""
    from aevae.config import ModelParams, RunSpec, TrainParams

    model = ModelParams(kind=kind, latent_dim=2)
    return RunSpec(name=f"check-{kind}", model=model, train=TrainParams(epochs=epochs, max_steps=None, **train))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _train(spec, x_tr, x_val, device: str = "cuda", ckpt: Path | None = None, **kw):
    from aevae.core.training import train_model

    t0 = time.perf_counter()
    result = train_model(spec, x_tr, x_val, device=device, checkpoint_dir=ckpt, **kw)
    return result, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the parts


def check_determinism(d: dict) -> dict:
    spec = _spec()
    a, sa = _train(spec, d["small_tr"], d["small_val"])
    b, sb = _train(spec, d["small_tr"], d["small_val"])
    same = _same(a.model.state_dict(), b.model.state_dict())
    return {"ok": same, "identical_weights": same, "seconds": [round(sa, 2), round(sb, 2)]}


def check_resume(d: dict, tmp: Path) -> dict:
    spec = _spec()
    whole, _ = _train(spec, d["small_tr"], d["small_val"])
    _train(spec, d["small_tr"], d["small_val"], ckpt=tmp / "resume", stop_after=1)
    resumed, _ = _train(spec, d["small_tr"], d["small_val"], ckpt=tmp / "resume")
    same = _same(whole.model.state_dict(), resumed.model.state_dict())
    return {
        "ok": same and resumed.epochs_run == spec.train.epochs - 1,
        "identical_weights": same,
        "epochs_after_resume": resumed.epochs_run,
    }


def check_bf16_compile(d: dict) -> dict:
    out = {}
    for name, train in (
        ("fp32", {}),
        ("bf16", {"precision": "bf16"}),
        ("compile", {"compile": True}),
        ("bf16+compile", {"precision": "bf16", "compile": True}),
    ):
        result, seconds = _train(_spec(**train), d["small_tr"], d["small_val"])
        loss = result.history[-1]["val/loss_per_image"]
        out[name] = {"val_loss_per_image": round(loss, 3), "seconds": round(seconds, 2), "finite": math.isfinite(loss)}
    base = out["fp32"]["val_loss_per_image"]
    for rec in out.values():
        rec["loss_vs_fp32"] = round(rec["val_loss_per_image"] / base, 4)
    # bf16 rounds activations: a few percent off fp32 after three epochs is expected, 10% would be a fault.
    out["ok"] = all(r["finite"] and abs(r["loss_vs_fp32"] - 1) < 0.1 for r in out.values() if isinstance(r, dict))
    return out


def check_evaluate(d: dict) -> dict:
    import copy

    from aevae.config import ClassifierParams, EvaluateParams
    from aevae.evaluation import classifier, metrics

    model, _ = _train(_spec(epochs=2), d["small_tr"], d["small_val"], device="cpu")
    scorer = classifier.train(
        d["small_tr"], d["small_tr_labels"], settings=ClassifierParams(max_epochs=1, seed=0)
    ).model
    params = EvaluateParams(n_prior_samples=200, iw_samples=8, interp_pairs=8, interp_steps=5)
    data = dict(
        train_images=d["small_tr"],
        train_labels=d["small_tr_labels"],
        test_images=d["small_val"],
        test_labels=d["small_val_labels"],
        params=params,
    )
    t0 = time.perf_counter()
    on_cpu = metrics.evaluate(model.model.eval(), classifier=scorer, **data).metrics
    cpu_s, t0 = time.perf_counter() - t0, time.perf_counter()
    on_gpu = metrics.evaluate(
        copy.deepcopy(model.model).cuda(), classifier=copy.deepcopy(scorer).cuda(), **data
    ).metrics
    gpu_s = time.perf_counter() - t0
    diffs = {k: abs(on_gpu[k] - v) / max(abs(v), 1e-12) for k, v in on_cpu.items() if math.isfinite(v)}
    worst = sorted(diffs, key=diffs.get, reverse=True)[:3]
    # Kernels differ between devices (float sums in another order): agreement to 1% is the same evaluation.
    return {
        "ok": max(diffs.values()) < 0.01,
        "max_relative_difference": {k: f"{diffs[k]:.2e}" for k in worst},
        "seconds_cpu": round(cpu_s, 2),
        "seconds_cuda": round(gpu_s, 2),
    }


def check_memory(d: dict) -> dict:
    import torch

    from aevae.core.training import device_bytes
    from aevae.ops.distributed import CUDA_CONTEXT_BYTES, MEMORY_SAFETY

    spec = _spec(epochs=1)
    torch.cuda.reset_peak_memory_stats()
    _train(spec, d["tr"], d["val"])
    peak = torch.cuda.max_memory_allocated()
    estimate = device_bytes(spec, d["tr"], len(d["val"]))
    return {
        "ok": MEMORY_SAFETY * estimate >= peak,
        "measured_peak_mib": round(peak / 2**20, 1),
        "estimate_mib": round(estimate / 2**20, 1),
        "estimate_over_measured": round(estimate / peak, 2),
        "auto_counts_per_model_mib": round((MEMORY_SAFETY * estimate + CUDA_CONTEXT_BYTES) / 2**20, 1),
    }


@contextlib.contextmanager
def gpu_samples(path: Path, gpu: str):
    """nvidia-smi sampling utilisation (%) and memory used (MiB) of GPU `gpu` every 500 ms into `path` (CSV)
    while the block runs; yields a callable that returns the summary. Started and stopped by its own pid."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        yield lambda: {"nvidia_smi": "not found"}
        return
    with open(path, "w") as fh:
        proc = subprocess.Popen(
            [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv", f"--id={gpu}", "-lms", "500"],
            stdout=fh,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield lambda: _summarise(path)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _summarise(path: Path) -> dict:
    util, mem = [], []
    for line in path.read_text().splitlines()[1:]:  # the header: "utilization.gpu [%], memory.used [MiB]"
        with contextlib.suppress(ValueError, IndexError):
            u, m = (part.strip().split()[0] for part in line.split(","))
            util.append(float(u))
            mem.append(float(m))
    if not util:
        return {"samples": 0}
    return {
        "samples": len(util),
        "util_mean_pct": round(float(np.mean(util)), 1),
        "util_max_pct": max(util),
        "memory_max_mib": max(mem),
    }


def most_at_once(outcomes) -> int:
    """The most tasks whose [started, started + seconds] intervals overlap at one instant."""
    edges = sorted([(o.started, 1) for o in outcomes] + [(o.started + o.seconds, -1) for o in outcomes])
    running = most = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return most


def run_sweep(d: dict, tmp: Path, gpus_per_model, gpu: str) -> dict:
    """The params.yaml sweep on full MNIST through train_sweep, as the train stage runs it (its own Ray start)."""
    from aevae.config import load_params, resolve_sweep
    from aevae.ops.distributed import train_sweep

    params = load_params(REPO / "params.yaml")
    specs = resolve_sweep(params, str(REPO / "params.yaml"))
    ray_params = params.ray.model_copy(update={"gpus_per_model": gpus_per_model, "storage_path": str(tmp)})
    outcomes: list = []
    csv = tmp.parent / f"nvidia-smi-{'auto' if gpus_per_model == 'auto' else 'whole'}.csv"
    with gpu_samples(csv, gpu) as summary:
        t0 = time.perf_counter()
        facts = train_sweep(
            specs,
            d["tr"],
            d["val"],
            tmp,
            ray_params,
            d["sha"],
            on_epoch=lambda name, rec: None,
            on_done=outcomes.append,
        )
        wall = time.perf_counter() - t0
    failed = [o.error for o in outcomes if o.error]
    share = facts["gpus_per_model"]
    return {
        "ok": not failed and len(outcomes) == len(specs),
        "models": len(specs),
        "wall_s": round(wall, 1),
        "gpus_per_model": share,
        "models_per_gpu_allowed": math.floor(1 / share + 1e-9) if share else None,
        "models_at_once": most_at_once(outcomes),
        "devices": sorted({o.device for o in outcomes}),
        "failed": failed[:3],
        "gpu": summary(),
    }


def check_baseline_ratio(d: dict, epochs: int) -> dict:
    from speed import ours_time_to_target, run_baseline

    b = run_baseline(d["tr"], d["tr_labels"], d["te"], d["te_labels"], epochs, device="cuda")
    o = ours_time_to_target(d["tr"], d["te"], b["test_loss"], 3 * epochs, device="cuda")
    ratio = b["seconds"] / o["seconds"] if o["reached"] else None
    return {
        "ok": o["reached"],
        "baseline_epochs": epochs,
        "baseline_s": round(b["seconds"], 1),
        "baseline_test_loss": round(b["test_loss"], 2),
        "ours_s": round(o["seconds"], 1) if o["seconds"] else None,
        "ours_epochs": o["epochs"],
        "baseline_over_ours": round(ratio, 2) if ratio else None,
    }


# ----------------------------------------------------------------------------- running them


def load_data(folder: Path | None) -> dict:
    """The bundled digits (the quick checks) and, when `folder` holds them, full MNIST split as prepare does."""
    from aevae.data.prepare import split
    from aevae.data.sources import from_bundled, from_idx

    small = split(from_bundled(), 0.1, 0.2, 0)
    d = {
        "small_tr": small["train"][0],
        "small_tr_labels": small["train"][1],
        "small_val": small["val"][0],
        "small_val_labels": small["val"][1],
    }
    if folder is not None:
        full = split(from_idx(folder), 0.1, 0.2, 0)
        d.update(
            tr=full["train"][0],
            tr_labels=full["train"][1],
            val=full["val"][0],
            te=full["test"][0],
            te_labels=full["test"][1],
            sha="device-check-full-mnist",
        )
    return d


def run_parts(parts: dict[str, Callable[[], dict]], budget_s: float) -> dict:
    """Each part in order, unless the time left cannot hold NEEDS_S of it; an exception is that part's result."""
    t0, results = time.perf_counter(), {}
    for name, part in parts.items():
        left = budget_s - (time.perf_counter() - t0)
        if NEEDS_S[name] > left:
            results[name] = {"ok": None, "skipped": f"{left:.0f} s left of the budget, it needs ~{NEEDS_S[name]} s"}
            continue
        print(f"[device check {time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            results[name] = part()
        except Exception as exc:  # noqa: BLE001 - one part's failure is its result, the others still run
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        results[name]["part_s"] = round(time.perf_counter() - started, 1)
    return results


def markdown(report: dict) -> str:
    """The report as Markdown: the machine, then one table row per part."""
    lines = [
        f"# Device check, {report['when']}",
        "",
        f"- GPU: {report['gpu']}",
        f"- {report['versions']}",
        f"- Data: {report['data']}",
        f"- Total: {report['total_s']} s",
        "",
        "| part | ok | result |",
        "|---|---|---|",
    ]
    for name, result in report["parts"].items():
        ok = {True: "yes", False: "**no**", None: "skipped"}[result.get("ok")]
        rest = ", ".join(f"{k}: {v}" for k, v in result.items() if k != "ok")
        lines.append(f"| {name} | {ok} | {rest} |")
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "device_check.md").write_text(markdown(report) if "parts" in report else f"{report['result']}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for device_check.json, device_check.md, nvidia-smi samples")
    parser.add_argument("--data", type=Path, default=None, help="folder of the four MNIST IDX files")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="parts that would end past it are skipped")
    parser.add_argument("--baseline-epochs", type=int, default=5, help="epochs of the pytorch/examples recipe")
    args = parser.parse_args(argv)
    line = no_gpu_line()
    if line is not None:
        print(line, flush=True)
        write(args.out, {"gpu": None, "result": line})
        return 0
    return run_on_gpu(args)


def run_on_gpu(args) -> int:
    import ray
    import torch

    from aevae.data.sources import has_idx_files

    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # one GPU: the local Ray instance sees only it
    folder = args.data or next((f for f in DATA_CANDIDATES if has_idx_files(f)), None)
    folder = folder if folder is not None and has_idx_files(folder) else None
    t0 = time.perf_counter()
    d = load_data(folder)
    with tempfile.TemporaryDirectory(prefix="aevae-device-check-") as tmp_name:
        tmp = Path(tmp_name)
        parts = {"determinism": lambda: check_determinism(d), "resume": lambda: check_resume(d, tmp)}
        if folder is not None:  # the headline figures next, so a short budget drops the smaller checks
            parts.update(
                sweep_packed=lambda: run_sweep(d, tmp / "packed", "auto", gpu),
                sweep_unpacked=lambda: run_sweep(d, tmp / "unpacked", 1, gpu),
                baseline_ratio=lambda: check_baseline_ratio(d, args.baseline_epochs),
                memory=lambda: check_memory(d),
            )
        parts.update(bf16_compile=lambda: check_bf16_compile(d), evaluate=lambda: check_evaluate(d))
        results = run_parts(parts, args.budget_s - (time.perf_counter() - t0))
        for csv in tmp.glob("nvidia-smi-*.csv"):
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(csv, args.out / csv.name)
    packed, unpacked = results.get("sweep_packed", {}), results.get("sweep_unpacked", {})
    if packed.get("ok") and unpacked.get("ok"):
        results["packing_speedup"] = {
            "ok": True,
            "unpacked_over_packed": round(unpacked["wall_s"] / packed["wall_s"], 2),
        }
    report = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)",
        "versions": f"torch {torch.__version__} (CUDA {torch.version.cuda}), ray {ray.__version__}, "
        f"{os.cpu_count()} CPUs",
        "data": f"full MNIST from {folder}" if folder else "bundled digits only (no IDX files: parts 5-7 not run)",
        "total_s": round(time.perf_counter() - t0, 1),
        "parts": results,
    }
    write(args.out, report)
    print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
