"""Benchmarks for aevae; appends a dated section to bench/RESULTS.md.

    python bench/run.py            # full run: ~10 min on a 2-core machine, most of it `dvc repro -f`
    python bench/run.py --quick    # tiny settings, under a minute (the smoke test runs this)

Options: --out FILE (default bench/RESULTS.md), --only 124 (some sections), --threads N (torch
threads in-process, default 1), --pipeline-target STAGE (section 3 up to that stage), --pool (section
2 also times a plain process pool).

Four measurements, each a section of the results:

1. Training speed against the usual script: the pytorch/examples VAE
   (bench/baseline_vae.py) trains N epochs; then the wall time our
   `train_model` needs to reach the same test loss. Ratio baseline / ours,
   goal >= 3x on CPU. When missed: where the time goes (the baseline's input
   pipeline timed alone, ours under torch.profiler) and measured what-ifs
   that show what would close the gap (nothing in src/ is changed: the
   what-ifs patch the optimizer in this process or use existing params).
2. Ray overhead: the params.yaml sweep through `distributed.train_sweep` (a
   local Ray instance) against the same specs trained without Ray, each
   variant a fresh process; goal ray / in-process <= 1.15. Ray's fixed costs
   are broken down.
3. The whole pipeline: `dvc repro -f` in a temporary copy of the project,
   wall time and peak memory (sum of RSS over the process tree, sampled
   every 0.2 s); goals < 3 min and < 4 GB.
4. Scaling: seconds per epoch of one model (ae, vae) at 5k, 20k and 60k
   images; linear growth is constant seconds per 1,000 images.

Timings on a shared machine are noisy: the section header records the load
average, runs that are compared alternate, medians (or minima, for per-epoch
costs) are reported, and single-threaded work also reports CPU time, which
other load on the machine barely moves.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "RESULTS.md"


@dataclass(frozen=True)
class Settings:
    name: str
    # 1. speed
    n_train: int
    n_test: int
    baseline_epochs: int
    rounds: int  # baseline/ours pairs, run alternately
    max_epochs_factor: int  # ours gets up to this many times the baseline's epochs to reach its loss
    # 2. ray
    sweep_epochs: int | None  # None: as params.yaml says
    sweep_train_cap: int | None  # use at most this many training images (None: all)
    # 3. pipeline
    pipeline_quick: bool
    pipeline_timeout_s: int
    # 4. scaling
    sizes: tuple[int, ...]
    scaling_epochs: int


FULL = Settings("full", n_train=4000, n_test=1000, baseline_epochs=10, rounds=3, max_epochs_factor=3,
                sweep_epochs=None, sweep_train_cap=None, pipeline_quick=False, pipeline_timeout_s=900,
                sizes=(5_000, 20_000, 60_000), scaling_epochs=2)
QUICK = Settings("quick", n_train=600, n_test=200, baseline_epochs=2, rounds=1, max_epochs_factor=2,
                 sweep_epochs=1, sweep_train_cap=600, pipeline_quick=True, pipeline_timeout_s=300,
                 sizes=(1_000, 2_000), scaling_epochs=1)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def venv_bin() -> Path:
    candidate = REPO / ".venv" / "bin"
    return candidate if (candidate / "python").exists() else Path(sys.executable).parent


# ----------------------------------------------------------------------------- machine


def machine_info(threads: int) -> list[str]:
    import psutil
    import ray
    import torch

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
        flags = f" ({', '.join(have)})" if have else ""
    gpu = "none (torch.cuda.is_available() is False)"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        import dvc

        dvc_version = dvc.__version__
    except Exception:  # noqa: BLE001 - only a label
        dvc_version = "?"
    mem = psutil.virtual_memory().total / 2**30
    return [
        f"- CPU: {cpu}{flags}, {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical), "
        f"{mem:.1f} GiB RAM",
        f"- GPU: {gpu}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, dvc {dvc_version}, "
        f"numpy {np.__version__}",
        f"- torch threads for in-process training: {threads} (both sides of every comparison)",
    ]


def loadavg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- helpers


def fmt_s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


class _Stop(Exception):
    """Raised from an on_epoch callback to end train_model early (target reached, or a deadline)."""


@contextlib.contextmanager
def patched_adam(**kwargs):
    """What-if: torch.optim.Adam with extra kwargs (e.g. fused=True) for code that calls torch.optim.Adam."""
    import torch

    original = torch.optim.Adam
    torch.optim.Adam = functools.partial(original, **kwargs)
    try:
        yield
    finally:
        torch.optim.Adam = original


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    from aevae.data.sources import from_bundled

    raw = from_bundled()
    return raw.train_images, raw.train_labels


# ----------------------------------------------------------------------------- 1. speed


def _ours_spec(epochs: int, precision: str = "fp32", lr: float = 1e-3, batch_size: int = 128):
    from aevae.config import ModelParams, RunSpec, TrainParams

    model = ModelParams(kind="vae", arch="mlp", hidden=[400], latent_dim=20, recon="bce", beta=1)
    train = TrainParams(batch_size=batch_size, lr=lr, epochs=epochs, precision=precision)
    return RunSpec(name="bench-vae", model=model, train=train)


def ours_time_to_target(x_train, x_test, target: float | None, max_epochs: int, **spec_kw) -> dict:
    """Train with aevae.training.train_model (checkpointing every epoch, as the pipeline does), evaluating
    on the test images after every epoch; stop at the first epoch whose test loss <= target."""
    from aevae.training import train_model

    trace: list[tuple[int, float, float]] = []  # (epoch, elapsed s, test loss per image)
    with tempfile.TemporaryDirectory(prefix="aevae-bench-ckpt-") as ckpt:
        t0 = time.perf_counter()
        cpu0 = time.process_time()

        def on_epoch(rec: dict) -> None:
            trace.append((rec["epoch"], time.perf_counter() - t0, rec["val/loss_per_image"]))
            if target is not None and rec["val/loss_per_image"] <= target:
                raise _Stop

        with contextlib.suppress(_Stop):
            train_model(_ours_spec(max_epochs, **spec_kw), x_train, x_test, checkpoint_dir=Path(ckpt),
                        on_epoch=on_epoch)
        cpu = time.process_time() - cpu0
    reached = target is not None and trace[-1][2] <= target
    return {"trace": trace, "reached": reached, "epochs": trace[-1][0], "seconds": trace[-1][1] if reached else None,
            "last_loss": trace[-1][2], "cpu_s": cpu,
            "s_per_epoch": trace[-1][1] / len(trace)}


def run_baseline(x_train, y_train, x_test, y_test, epochs: int) -> dict:
    import baseline_vae

    with tempfile.TemporaryDirectory(prefix="aevae-bench-results-") as results:
        cpu0 = time.process_time()
        out = baseline_vae.run(x_train, y_train, x_test, y_test, epochs=epochs, results_dir=Path(results))
        out["cpu_s"] = time.process_time() - cpu0
    out["s_per_epoch"] = out["seconds"] / epochs
    return out


def _profile(fn) -> tuple[float, dict[str, float], list[tuple[str, float, int]]]:
    """Run fn under torch.profiler; (wall s, time per category, top ops by self CPU)."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    events = prof.key_averages()

    def total(pred) -> float:
        return sum(e.cpu_time_total for e in events if pred(e.key)) / 1e6

    def self_(pred) -> float:
        return sum(e.self_cpu_time_total for e in events if pred(e.key)) / 1e6

    cats = {
        "matmul, forward + backward (aten::addmm, aten::mm)": self_(lambda k: k in ("aten::addmm", "aten::mm")),
        "Adam step (default single-tensor loop: ~6 ops per parameter tensor per step)":
            total(lambda k: k.startswith("Optimizer.step")),
        "zero_grad": total(lambda k: k.startswith("Optimizer.zero_grad")),
    }
    cats["everything else: loss, activations, sampling, batch gather, per-epoch eval and checkpoint, Python"] = max(
        0.0, wall - sum(cats.values()))
    top = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in events), key=lambda t: -t[1])[:8]
    return wall, cats, top


def section_speed(cfg: Settings, threads: int) -> tuple[list[str], dict]:
    import torch

    torch.set_num_threads(threads)
    images, labels = bundled_digits()
    order = np.random.default_rng(0).permutation(len(images))
    tr, te = order[: cfg.n_train], order[cfg.n_train : cfg.n_train + cfg.n_test]
    x_tr, y_tr, x_te, y_te = images[tr], labels[tr], images[te], labels[te]
    n_epochs = cfg.baseline_epochs
    max_epochs = cfg.max_epochs_factor * n_epochs

    log("speed: warm-up (first-call costs land on neither side)")
    run_baseline(x_tr[:256], y_tr[:256], x_te[:256], y_te[:256], epochs=1)
    ours_time_to_target(x_tr[:256], x_te[:256], None, 1)

    rows, pairs = [], []
    target = None
    for r in range(cfg.rounds):
        first_baseline = r % 2 == 0 or target is None  # alternate who goes first; the target comes from the baseline
        pair: dict = {}
        for side in (("baseline", "ours") if first_baseline else ("ours", "baseline")):
            if side == "baseline":
                log(f"speed round {r + 1}/{cfg.rounds}: baseline, {n_epochs} epochs")
                pair["b"] = b = run_baseline(x_tr, y_tr, x_te, y_te, n_epochs)
                target = b["test_loss"] if target is None else target
            else:
                log(f"speed round {r + 1}/{cfg.rounds}: ours, until test loss <= {target:.2f}")
                pair["o"] = ours_time_to_target(x_tr, x_te, target, max_epochs)
        b, o = pair["b"], pair["o"]
        pair["ratio"] = b["seconds"] / o["seconds"] if o["reached"] else None
        # CPU time to the target: ours' CPU time is for all its epochs, which are the epochs to the target.
        pair["cpu_ratio"] = b["cpu_s"] / o["cpu_s"] if o["reached"] else None
        pairs.append(pair)
        rows.append([r + 1, "baseline first" if first_baseline else "ours first", f"{b['test_loss']:.2f}",
                     fmt_s(b["seconds"]), fmt_s(b["cpu_s"]),
                     o["epochs"] if o["reached"] else f"not in {max_epochs}", f"{o['last_loss']:.2f}",
                     fmt_s(o["seconds"]), fmt_s(o["cpu_s"]),
                     f"**{pair['ratio']:.2f}x**" if pair["ratio"] else "—",
                     f"{pair['cpu_ratio']:.2f}x" if pair["cpu_ratio"] else "—"])

    valid = [p for p in pairs if p["ratio"]]
    ratio = statistics.median(p["ratio"] for p in valid) if valid else None
    cpu_ratio = statistics.median(p["cpu_ratio"] for p in valid) if valid else None
    b_best = min(p["b"]["seconds"] for p in pairs)
    o_best = min(p["o"]["seconds"] for p in valid) if valid else None
    lines = [
        f"Baseline: pytorch/examples `vae/main.py` (bench/baseline_vae.py: MLP 784-400-20, DataLoader over a "
        f"Dataset that makes a PIL image and runs `ToTensor()` per sample, `loss.item()` every step, a test pass "
        f"and the two PNG grids per epoch). Ours: `aevae.training.train_model`, VAE mlp hidden [400], latent 20, "
        f"BCE, beta 1, batch 128, Adam lr 1e-3, checkpoint every epoch, evaluated on the same test set after "
        f"every epoch. Data: {cfg.n_train} train + {cfg.n_test} test bundled MNIST digits; torch threads "
        f"{threads}; one process, warmed up. Baseline: {n_epochs} epochs; ours: epochs until its test loss "
        f"(nats per image) is at most the baseline's final one. Each round runs both back to back; the ratio is "
        f"taken within a round. CPU s is this process's CPU time (single-threaded work, so it is what the run "
        f"costs without other load on the machine).",
        "",
        *table(["round", "order", "baseline test loss", "baseline s", "baseline CPU s", "ours epochs to reach",
                "ours test loss", "ours s to reach", "ours CPU s", "baseline / ours", "same, CPU time"], rows),
        "",
        (f"Median over rounds: **{ratio:.2f}x** wall time, {cpu_ratio:.2f}x CPU time "
         f"(goal >= 3x: **{'met' if ratio >= 3 else 'missed'}**)." if ratio else
         "Ours did not reach the baseline's test loss: goal >= 3x **missed**."),
    ]
    result = {"ratio": ratio, "cpu_ratio": cpu_ratio, "baseline_s": b_best, "ours_s": o_best}
    if ratio is None or ratio < 3:
        lines += ["", *_speed_diagnosis(cfg, x_tr, y_tr, x_te, target, max_epochs, pairs)]
    return lines, result


def _speed_diagnosis(cfg, x_tr, y_tr, x_te, target, max_epochs, pairs) -> list[str]:
    """Where the time goes (direct timing + torch.profiler), and measured what-ifs that would close the gap."""
    import baseline_vae
    from torch.utils.data import DataLoader
    from torchvision import transforms

    n_epochs = cfg.baseline_epochs
    # Baseline: its input pipeline alone (no model), best of 3 passes, against its whole epoch.
    loader = DataLoader(baseline_vae.MNISTLike(x_tr, y_tr, transforms.ToTensor()), batch_size=128, shuffle=True)
    passes = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for _batch in loader:
            pass
        passes.append((time.perf_counter() - t0, time.process_time() - c0))
    loader_wall, loader_cpu = min(passes)
    b_epoch_cpu = min(p["b"]["cpu_s"] for p in pairs) / n_epochs
    b_epoch_wall = min(p["b"]["seconds"] for p in pairs) / n_epochs
    o_epoch_cpu = min(p["o"]["cpu_s"] / p["o"]["epochs"] for p in pairs)
    o_epoch_wall = min(p["o"]["s_per_epoch"] for p in pairs)
    rest_cpu = b_epoch_cpu - loader_cpu
    lines = [
        "#### Where the time goes",
        "",
        *table(["per epoch (best round)", "wall s", "CPU s"], [
            ["baseline, whole epoch (train + test pass + PNGs)", f"{b_epoch_wall:.3f}", f"{b_epoch_cpu:.3f}"],
            ["... of which its DataLoader alone (PIL image + ToTensor per sample, collate; no model)",
             f"{loader_wall:.3f}", f"{loader_cpu:.3f}"],
            ["... the rest: the same model, loss and Adam that ours runs, `.item()` per step, the test pass",
             "", f"{rest_cpu:.3f}"],
            ["ours, whole epoch (train + eval on the test set + checkpoint)", f"{o_epoch_wall:.3f}", f"{o_epoch_cpu:.3f}"],
        ]),
        "",
        f"Removing the input pipeline is all ours does differently per step, and it is {100 * loader_cpu / b_epoch_cpu:.0f}% "
        f"of the baseline's CPU time: at equal epochs that caps the gain near "
        f"{b_epoch_cpu / max(o_epoch_cpu, 1e-9):.1f}x (measured) and {b_epoch_cpu / max(rest_cpu, 1e-9):.1f}x "
        f"(baseline minus its DataLoader). A 3x needs faster math per step or fewer epochs.",
    ]

    log("speed: profiling ours")
    prof_epochs = min(2, n_epochs)
    o_wall, o_cats, o_top = _profile(lambda: ours_time_to_target(x_tr, x_te, None, prof_epochs))
    lines += [
        "",
        f"Ours under torch.profiler ({prof_epochs} epochs, {o_wall / prof_epochs:.3f} s/epoch with the profiler on):",
        "",
        *table(["category", "s/epoch", "share"],
               [[k, f"{v / prof_epochs:.3f}", f"{100 * v / o_wall:.0f}%"] for k, v in o_cats.items()]),
        "",
        "Top operators of ours by self CPU time:",
        "",
        *table(["operator", f"self CPU s ({prof_epochs} epochs)", "calls"],
               [[f"`{k}`", f"{v:.3f}", n] for k, v, n in o_top]),
    ]

    log("speed: what-ifs")
    b_best = min(p["b"]["seconds"] for p in pairs)
    b_best_cpu = min(p["b"]["cpu_s"] for p in pairs)
    valid = [p["o"] for p in pairs if p["o"]["reached"]]
    rows = []
    if valid:
        best = min(valid, key=lambda o: o["seconds"])
        rows.append(["as is", best["epochs"], fmt_s(best["seconds"]), fmt_s(min(o["cpu_s"] for o in valid)),
                     f"{b_best / best['seconds']:.2f}x", f"{b_best_cpu / min(o['cpu_s'] for o in valid):.2f}x"])
    whatifs = [
        ("fused Adam (`torch.optim.Adam(..., fused=True)`)", {"fused": True}, {}),
        ("fused Adam + bf16 autocast (`train.precision: bf16`)", {"fused": True}, {"precision": "bf16"}),
        ("fused Adam + bf16 + lr 3e-3 (a recipe change)", {"fused": True}, {"precision": "bf16", "lr": 3e-3}),
    ]
    for label, adam, spec_kw in whatifs:
        runs = []
        for _ in range(2 if cfg.rounds > 1 else 1):
            with patched_adam(**adam):
                runs.append(ours_time_to_target(x_tr, x_te, target, max_epochs, **spec_kw))
        ok = [w for w in runs if w["reached"]]
        if not ok:
            rows.append([label, f"not in {max_epochs}", "—", "—", "—", "—"])
            continue
        w = min(ok, key=lambda w: w["seconds"])
        cpu = min(x["cpu_s"] for x in ok)
        rows.append([label, w["epochs"], fmt_s(w["seconds"]), fmt_s(cpu), f"{b_best / w['seconds']:.2f}x",
                     f"{b_best_cpu / cpu:.2f}x"])
    lines += [
        "",
        "#### What would close the gap",
        "",
        "Measured here without touching src/: the optimizer is patched in this process; bf16 and lr are existing "
        "params. Best of 2 runs each, against the best baseline run.",
        "",
        *table(["ours, with", "epochs to reach", "s to reach", "CPU s", "baseline / ours", "same, CPU time"], rows),
    ]
    return lines


# ----------------------------------------------------------------------------- 2. ray


def _sweep_specs(epochs: int | None):
    from aevae.config import load_params, resolve_sweep

    params = load_params(REPO / "params.yaml")
    specs = resolve_sweep(params, source=str(REPO / "params.yaml"))
    if epochs:
        specs = [s.model_copy(update={"train": s.train.model_copy(update={"epochs": epochs})}) for s in specs]
    return specs, params


def _sweep_data(cfg: Settings, tmp: Path) -> tuple[Path, str, int, int]:
    """Write the sweep's train/val images to tmp/data.npz; (path, where they came from, n train, n val)."""
    from aevae.data.prepared import load_manifest, load_split

    _, params = _sweep_specs(None)
    prepared = REPO / "data" / "prepared"
    if (prepared / "manifest.json").is_file():
        root, origin = prepared, "data/prepared"
    else:
        from aevae.data.prepare import split, write_prepared
        from aevae.data.sources import from_bundled

        raw = from_bundled()
        root, origin = tmp / "prepared", "bundled digits, prepared in a temp folder"
        write_prepared(root, split(raw, params.data.val_fraction, params.data.test_fraction, params.data.seed), raw, "mnist")
    sha = load_manifest(root)["data_sha256"]
    train, val = load_split("train", root).images, load_split("val", root).images
    if cfg.sweep_train_cap:
        train, val = train[: cfg.sweep_train_cap], val[: max(64, cfg.sweep_train_cap // 9)]
    path = tmp / "data.npz"
    np.savez(path, train=train, val=val, sha=np.array(sha))
    return path, origin, len(train), len(val)


def _pool_train(args) -> float:
    """One model in a process-pool worker: 1 torch thread, like a Ray task with cpus_per_model 1."""
    spec, train, val, ckpt, sha = args
    import torch

    torch.set_num_threads(1)
    from aevae.training import train_model

    t0 = time.perf_counter()
    train_model(spec, train, val, checkpoint_dir=Path(ckpt), data_sha256=sha)
    return time.perf_counter() - t0


def sweep_child(variant: str, data: Path, epochs: int | None, deadline_s: float | None) -> dict:
    """Body of one section-2 variant, run in a fresh process (`--sweep-variant`): a train stage with or without Ray.

    Every variant pays the same process start-up (Python, torch, aevae, and torch._dynamo, which the
    first torch.optim.Adam imports), so the comparison is between whole train stages.
    """
    marks = {"imports_done": time.time()}
    arrays = np.load(data)
    train, val, sha = arrays["train"], arrays["val"], str(arrays["sha"])
    specs, params = _sweep_specs(epochs)
    ckpt_root = data.parent / f"ckpt-{variant}"
    out: dict = {"marks": marks, "per_model": {}}
    if variant == "ray":
        out.update(_ray_sweep(specs, params.ray, train, val, sha, ckpt_root))
        return out
    if variant == "pool":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        workers = min(os.cpu_count() or 1, len(specs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            jobs = [(s, train, val, str(ckpt_root / s.name), sha) for s in specs]
            out["per_model"] = dict(zip((s.name for s in specs), pool.map(_pool_train, jobs)))
        return out
    import torch

    from aevae.training import train_model

    torch.set_num_threads(1 if variant == "a" else (os.cpu_count() or 1))
    marks["train_start"] = time.time()
    t0 = time.perf_counter()

    def guard(_rec):
        if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
            raise _Stop

    try:
        for spec in specs:
            t1 = time.perf_counter()
            train_model(spec, train, val, checkpoint_dir=ckpt_root / spec.name, data_sha256=sha, on_epoch=guard)
            out["per_model"][spec.name] = time.perf_counter() - t1
    except _Stop:
        out["aborted_after"] = time.perf_counter() - t0
    return out


def _ray_sweep(specs, ray_params, train, val, sha, ckpt_root: Path) -> dict:
    """train_sweep as the train stage calls it, with its fixed costs timed from the outside."""
    import ray

    from aevae import distributed

    marks: dict[str, float] = {}
    original_connect, original_shutdown = distributed.connect, ray.shutdown

    def timed_connect(*a, **kw):
        marks["connect_start"] = time.time()
        try:
            return original_connect(*a, **kw)
        finally:
            marks["connect_end"] = time.time()

    def timed_shutdown(*a, **kw):
        marks["shutdown_start"] = time.time()
        try:
            return original_shutdown(*a, **kw)
        finally:
            marks["shutdown_end"] = time.time()

    done: list[tuple[float, object]] = []
    distributed.connect, ray.shutdown = timed_connect, timed_shutdown
    os.environ.pop("RAY_ADDRESS", None)  # measure the local instance the default setup starts
    marks["sweep_start"] = time.time()
    try:
        distributed.train_sweep(specs, train, val, ckpt_root, ray_params, sha, on_epoch=lambda name, rec: None,
                                on_done=lambda outcome: done.append((time.time(), outcome)))
    finally:
        distributed.connect, ray.shutdown = original_connect, original_shutdown
    marks["sweep_end"] = time.time()
    failed = [o.error for _, o in done if o.error]
    if failed:
        raise RuntimeError(f"train_sweep: {len(failed)} model(s) failed: {failed[0]}")
    # A task's training started `seconds` before the driver saw it finish (ray.wait returns on completion).
    starts = [t - o.seconds for t, o in done]
    marks["first_task_start"], marks["last_task_done"] = min(starts), max(t for t, _ in done)
    return {"ray_marks": marks, "per_model": {o.spec.name: o.seconds for _, o in done},
            "train_s_sum": sum(o.seconds for _, o in done)}


def _run_variant(variant: str, data: Path, epochs: int | None, deadline_s: float | None, timeout_s: float) -> dict:
    """Run sweep_child in a fresh process; wall time from launch to exit, plus what the child measured."""
    import json

    out_json = data.parent / f"{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sweep-variant", variant, "--sweep-data", str(data),
           "--sweep-json", str(out_json)]
    if epochs:
        cmd += ["--sweep-epochs", str(epochs)]
    if deadline_s:
        cmd += ["--sweep-deadline", f"{deadline_s:.1f}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep variant {variant} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    res = json.loads(out_json.read_text())
    res["seconds"] = None if "aborted_after" in res else wall
    res["wall"] = wall
    res["launch"] = t0
    return res


def section_ray(cfg: Settings, threads: int, pool: bool) -> tuple[list[str], dict]:
    cores = os.cpu_count() or 1
    specs, params = _sweep_specs(cfg.sweep_epochs)
    slots = min(cores, len(specs))
    with tempfile.TemporaryDirectory(prefix="aevae-bench-ray-") as tmp_name:
        data, origin, n_train, n_val = _sweep_data(cfg, Path(tmp_name))
        log(f"ray: (a) one fresh process, sequential, 1 torch thread ({len(specs)} models)")
        a = _run_variant("a", data, cfg.sweep_epochs, None, 900)
        log("ray: train_sweep on a local Ray instance (fresh driver process)")
        r = _run_variant("ray", data, cfg.sweep_epochs, None, 900)
        # Once (b) is slower than (a) it cannot be the faster in-process variant: stop it there.
        deadline = a["wall"]
        log(f"ray: (b) one fresh process, sequential, {cores} torch threads (abandoned once slower than (a))")
        b = _run_variant("b", data, cfg.sweep_epochs, deadline, 900)
        c = None
        if pool:
            log(f"ray: (c) process pool, {slots} workers x 1 thread, no Ray")
            c = _run_variant("pool", data, cfg.sweep_epochs, None, 900)

    in_proc = [x["seconds"] for x in (a, b) if x["seconds"]]
    best = min(in_proc)
    ratio = r["wall"] / best
    b_cell = fmt_s(b["seconds"]) if b["seconds"] else (
        f"slower than (a): abandoned after {b['aborted_after']:.0f} s of training, "
        f"{len(b['per_model'])} of {len(specs)} models done")
    rows = [
        ["(a) one process, sequential, 1 torch thread", fmt_s(a["seconds"]), f"{r['wall'] / a['seconds']:.2f}"],
        [f"(b) one process, sequential, {cores} torch threads", b_cell,
         f"{r['wall'] / b['seconds']:.2f}" if b["seconds"] else "—"],
    ]
    if c:
        rows.append([f"(c) process pool, {slots} workers x 1 thread, no Ray (workers spawn and import torch)",
                     fmt_s(c["seconds"]), f"{r['wall'] / c['seconds']:.2f}"])
    rows.append([f"Ray: `distributed.train_sweep`, local instance, {params.ray.cpus_per_model:g} CPU per model",
                 fmt_s(r["wall"]), "1.00"])

    m = r["ray_marks"]
    launch, end = r["launch"], r["launch"] + r["wall"]
    ideal = r["train_s_sum"] / slots
    phases = [
        ("process start: Python, numpy, aevae imports, reading the data", launch, m["sweep_start"]),
        ("`ray.init` (local instance: GCS, raylet, object store)", m["connect_start"], m["connect_end"]),
        ("`ray.init` returned -> first task starts training (progress actor, `ray.put` of the data, worker "
         "processes start and import torch + aevae)", m["connect_end"], m["first_task_start"]),
        (f"training span, first task start -> last task done ({len(specs)} tasks on {slots} slots; perfect packing "
         f"of their {r['train_s_sum']:.1f} s would be {ideal:.1f} s)", m["first_task_start"], m["last_task_done"]),
        ("last task done -> `ray.shutdown` called", m["last_task_done"], m["shutdown_start"]),
        ("`ray.shutdown`", m["shutdown_start"], m["shutdown_end"]),
        ("driver exit", m["sweep_end"], end),
    ]
    breakdown = [[label, fmt_s(b1 - b0)] for label, b0, b1 in phases]
    fixed = r["wall"] - (m["last_task_done"] - m["first_task_start"])
    breakdown.append(["**everything but the training span**", f"**{fmt_s(fixed)}**"])
    a_start = a["marks"]["train_start"] - a["launch"]
    per_model = [[name, fmt_s(a["per_model"].get(name)), fmt_s(r["per_model"].get(name))] for name in a["per_model"]]
    verdict = "met" if ratio <= 1.15 else "missed"
    lines = [
        f"The params.yaml sweep ({len(specs)} models: {', '.join(s.name for s in specs)}; epochs "
        f"{sorted({s.train.epochs for s in specs})}) on {n_train} train / {n_val} val images from {origin}, "
        f"checkpointing every epoch. Every variant is a fresh process timed from launch to exit (a whole train "
        f"stage, minus saving the models), so each pays its start-up: Python, torch and aevae imports, reading the "
        f"data ({a_start:.1f} s in (a)). "
        f"Ray runs {slots} models at a time, one torch thread each, on {cores} cores.",
        "",
        *table(["variant", "wall s", "ray / variant"], rows),
        "",
        f"ray_time / in_process_time = {r['wall']:.1f} / {best:.1f} = **{ratio:.2f}** against the faster "
        f"in-process variant (goal <= 1.15: **{verdict}**).",
        "",
        "Ray's wall time, broken down:",
        "",
        *table(["phase", "s"], breakdown),
        "",
        "Training seconds per model: in one process (a), and inside its Ray task (a worker's first task also pays "
        "`import torch._dynamo`, which the first `torch.optim.Adam` triggers, and shares the cores with Ray):",
        "",
        *table(["model", "(a) s", "Ray task s"], per_model),
    ]
    return lines, {"ratio": ratio, "ray_s": r["wall"], "in_process_s": best, "fixed_s": fixed,
                   "a": a["seconds"], "b": b["seconds"], "c": c["seconds"] if c else None}


# ----------------------------------------------------------------------------- 3. pipeline


def _set_subreaper() -> bool:
    """Orphaned descendants (e.g. daemonised Ray processes) get re-parented to us, so the tree sees them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - best effort, Linux only
        return False


def _quick_params(params: dict) -> dict:
    """Tiny pipeline: every `epochs` knob set to 1, and the offline (bundled) data source."""
    params = copy.deepcopy(params)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "epochs" and isinstance(v, int):
                    node[k] = 1
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(params)
    params.setdefault("data", {})["source"] = "bundled"
    return params


def _descendants(root_pid: int):
    import psutil

    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []


def _proc_label(p) -> str:
    """A short name for a process: Ray's title (raylet, ray::_train_one, ...) or python's script."""
    import psutil

    try:
        name, cmd = p.name(), p.cmdline()
    except psutil.Error:
        return "?"
    if name.startswith("python") and len(cmd) > 1:
        script = next((c for c in cmd[1:] if not c.startswith("-")), cmd[1])
        return f"python {Path(script).name if '/' in script else script}"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    return name


def section_pipeline(cfg: Settings, targets_override: list[str] | None = None) -> tuple[list[str], dict]:
    import psutil
    import yaml

    subreaper = _set_subreaper()
    bin_dir = venv_bin()
    with tempfile.TemporaryDirectory(prefix="aevae-bench-pipeline-") as tmp_name:
        root = Path(tmp_name)
        for name in ("dvc.yaml", "params.yaml", ".gitignore"):
            if (REPO / name).exists():
                shutil.copy(REPO / name, root / name)
        for name in ("pipeline", "src"):
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        (root / "data" / "raw").mkdir(parents=True)
        shutil.copy(REPO / "data" / "raw" / "README.md", root / "data" / "raw" / "README.md")
        if cfg.pipeline_quick:
            params = _quick_params(yaml.safe_load((root / "params.yaml").read_text()))
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(root / "src"),
                   PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1")
        quiet = dict(cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if shutil.which("git"):
            subprocess.run(["git", "init", "-q"], **quiet)
            subprocess.run([str(bin_dir / "dvc"), "init", "-q"], **quiet)
        else:
            subprocess.run([str(bin_dir / "dvc"), "init", "-q", "--no-scm"], **quiet)
        subprocess.run([str(bin_dir / "dvc"), "config", "core.analytics", "false"], **quiet)

        stage_names = list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))
        targets = stage_names[:1] if cfg.pipeline_quick else []  # quick: the first stage only
        if targets_override:
            targets = targets_override
        me = os.getpid()
        before = {p.pid for p in _descendants(me)}
        samples: list[tuple[float, float, int, str]] = []  # (t, sum RSS bytes, processes, stage)
        pss_peak = [0.0]
        peak_procs: list[tuple[str, int]] = []  # (process, RSS) at the highest sum seen so far
        stage = ["(dvc start)"]
        stage_starts: list[tuple[str, float]] = []
        out_lines: list[str] = []
        log(f"pipeline: dvc repro -f {' '.join(targets)} in {root}")
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(bin_dir / "dvc"), "repro", "-f", *targets], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        stop = threading.Event()

        def reader():
            for line in proc.stdout:
                out_lines.append(line.rstrip("\n"))
                if line.startswith("Running stage '"):
                    name = line.split("'")[1]
                    stage[0] = name
                    stage_starts.append((name, time.perf_counter() - t0))

        def sampler():
            i = 0
            while not stop.is_set():
                procs = [p for p in _descendants(me) if p.pid not in before]
                rss, pss, each = 0, 0, []
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        r = p.memory_info().rss
                        rss += r
                        each.append((p, r))
                        if i % 5 == 0:  # PSS (shared pages split between processes) once a second: it costs more
                            pss += p.memory_full_info().pss
                if i % 5 == 0:
                    pss_peak[0] = max(pss_peak[0], pss)
                if rss > max((s[1] for s in samples), default=0):
                    peak_procs[:] = [(_proc_label(p), r) for p, r in each]
                samples.append((time.perf_counter() - t0, rss, len(procs), stage[0]))
                i += 1
                stop.wait(0.2)

        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=sampler, daemon=True)]
        for t in threads:
            t.start()
        try:
            rc = proc.wait(timeout=cfg.pipeline_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(timeout=5)
        # Anything the pipeline left running (it should leave nothing): end it, by pid.
        leftovers = [p for p in _descendants(me) if p.pid not in before]
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        psutil.wait_procs(leftovers, timeout=5)
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()

    peak = max(samples, key=lambda s: s[1]) if samples else (0.0, 0, 0, "?")
    stage_rows = []
    bounds = stage_starts + [("(end)", wall)]
    for (name, start), (_, end) in zip(bounds, bounds[1:]):
        stage_peak = max((s[1] for s in samples if start <= s[0] < end), default=0)
        stage_rows.append([name, fmt_s(end - start), f"{stage_peak / 2**30:.2f}"])
    if stage_starts:
        stage_rows.insert(0, ["dvc start-up (before the first stage)", fmt_s(stage_starts[0][1]),
                              f"{max((s[1] for s in samples if s[0] < stage_starts[0][1]), default=0) / 2**30:.2f}"])
    wall_ok, mem_ok = wall < 180, peak[1] < 4 * 2**30
    lines = [
        f"`dvc repro -f {' '.join(targets)}` in a temporary copy of the project "
        f"({'quick: the first stage only, every epochs knob 1, data.source bundled' if cfg.pipeline_quick else 'the default params.yaml'}; "
        f"stages run: {', '.join(n for n, _ in stage_starts) or '?'}; dvc.yaml has {', '.join(stage_names)}), PATH with {bin_dir} first, no RAY_ADDRESS or "
        f"MLFLOW_TRACKING_URI. Memory: sum of RSS over every process below this one (Ray's included"
        f"{'; orphans re-parented here' if subreaper else ''}), sampled every 0.2 s ({len(samples)} samples).",
        "",
        *table(["stage", "wall s", "peak sum RSS, GiB"], stage_rows),
        "",
        *table(["measure", "value", "goal", "met"], [
            ["wall time", f"{wall:.1f} s", "< 180 s", "yes" if wall_ok else "**no**"],
            ["peak memory, sum of RSS over the tree", f"{peak[1] / 2**30:.2f} GiB ({peak[2]} processes, during "
             f"'{peak[3]}', at {peak[0]:.0f} s)", "< 4 GiB", "yes" if mem_ok else "**no**"],
            ["peak memory, sum of PSS (shared pages counted once), sampled every 1 s",
             f"{pss_peak[0] / 2**30:.2f} GiB", "—", "—"],
        ]),
    ]
    if peak_procs:
        grouped: dict[str, list[int]] = {}
        for label, r in peak_procs:
            grouped.setdefault(label, []).append(r)
        by_rss = sorted(grouped.items(), key=lambda kv: -sum(kv[1]))
        lines += ["", f"Processes at the peak ({peak[1] / 2**30:.2f} GiB sum of RSS; shared libraries such as "
                      "torch's count once per process in RSS):", "",
                  *table(["process", "count", "RSS, GiB"],
                         [[f"`{k}`", len(v), f"{sum(v) / 2**30:.2f}"] for k, v in by_rss])]
    if rc != 0:
        tail = "\n".join(out_lines[-15:])
        lines += ["", f"**`dvc repro -f` FAILED with exit code {rc}.** Last lines:", "", "```", tail, "```"]
        raise _SectionFailed(lines, f"dvc repro -f exited {rc}")
    return lines, {"wall_s": wall, "peak_rss": peak[1], "peak_pss": pss_peak[0], "wall_ok": wall_ok, "mem_ok": mem_ok,
                   "stages": stage_rows}


class _SectionFailed(Exception):
    def __init__(self, lines: list[str], reason: str):
        super().__init__(reason)
        self.lines = lines


# ----------------------------------------------------------------------------- 4. scaling


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


def section_scaling(cfg: Settings) -> tuple[list[str], dict]:
    import torch

    from aevae.config import RunSpec, load_params
    from aevae.training import train_model

    params = load_params(REPO / "params.yaml")
    torch.set_num_threads(max(1, int(params.ray.cpus_per_model)))  # what a train-stage Ray task uses
    rows, per_k = [], {}
    for n in cfg.sizes:
        images = synthesize(n)
        n_val = int(round(n * params.data.val_fraction))
        train, val = images[n_val:], images[:n_val]
        for kind in ("ae", "vae"):
            spec = RunSpec(name=f"scale-{kind}", model=params.model.model_copy(update={"kind": kind}),
                           train=params.train.model_copy(update={"epochs": cfg.scaling_epochs}))
            log(f"scaling: {kind} at {n} images")
            cpu_marks = [time.process_time()]
            with tempfile.TemporaryDirectory(prefix="aevae-bench-scale-") as ckpt:
                t0 = time.perf_counter()
                result = train_model(spec, train, val, checkpoint_dir=Path(ckpt),
                                     on_epoch=lambda rec: cpu_marks.append(time.process_time()))
                total = time.perf_counter() - t0
            epoch_s = min(rec["seconds"] for rec in result.history)
            # CPU seconds per epoch (the first also has the model build): with one thread, unaffected by other load.
            epoch_cpu = min(b - a for a, b in zip(cpu_marks, cpu_marks[1:]))
            per_k[(kind, n)] = 1000 * epoch_cpu / len(train)
            rows.append([kind, f"{n:,}", f"{len(train):,} / {len(val):,}", f"{epoch_s:.2f}", f"{epoch_cpu:.2f}",
                         f"{1000 * epoch_s / len(train):.3f}", f"{per_k[(kind, n)]:.3f}", "", fmt_s(total)])
    first = cfg.sizes[0]
    for row in rows:
        kind, n = row[0], int(row[1].replace(",", ""))
        row[7] = f"{per_k[(kind, n)] / per_k[(kind, first)]:.2f}"
    m = params.model
    lines = [
        f"One model per kind with params.yaml's model defaults (mlp hidden {m.hidden}, latent {m.latent_dim}, "
        f"{m.recon}, batch {params.train.batch_size}), {max(1, int(params.ray.cpus_per_model))} torch thread "
        f"(as a train-stage Ray task with cpus_per_model {params.ray.cpus_per_model:g}), checkpoint every epoch, "
        f"{cfg.scaling_epochs} epoch(s); per epoch = the fastest epoch (train pass + validation + checkpoint), "
        f"wall and CPU time (one thread, so CPU time is what it costs without other load; linearity is judged on "
        f"it). Sets "
        f"beyond the 5,000 bundled digits are copies shifted by up to 2 px with pixel noise (seeded); "
        f"{params.data.val_fraction:g} held out for validation.",
        "",
        *table(["model", "images", "train / val", "wall s/epoch", "CPU s/epoch", "wall s per 1,000 train images",
                "CPU s per 1,000 train images", f"CPU per 1,000, relative to {first:,}", "wall s (incl. set-up)"], rows),
    ]
    worst = max(per_k[(k, n)] / per_k[(k, first)] for (k, n) in per_k)
    lines += ["", f"Largest growth of CPU seconds per 1,000 images over the smallest size: {worst:.2f}x "
                  f"({'about linear' if worst < 1.25 else 'worse than linear'})."]
    return lines, {"per_k": per_k, "worst": worst}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, under a minute (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file to append to")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for in-process training (default 1: on a shared 2-core machine more "
                             "threads than free cores makes PyTorch's parallel regions stall)")
    parser.add_argument("--only", default="1234", help="sections to run, e.g. 13 (default all)")
    parser.add_argument("--pipeline-target", action="append", metavar="STAGE",
                        help="section 3 reproduces only up to this stage (repeatable; default: the whole dvc.yaml)")
    parser.add_argument("--pool", action="store_true",
                        help="section 2 also times a plain process pool (same concurrency as Ray, no Ray)")
    # Internal: one variant of section 2 in a fresh process.
    parser.add_argument("--sweep-variant", choices=("a", "b", "pool", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--sweep-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sweep_variant:
        from aevae import atomic

        res = sweep_child(args.sweep_variant, args.sweep_data, args.sweep_epochs, args.sweep_deadline)
        atomic.write_json(args.sweep_json, res)  # strict JSON, like every file the project writes
        return 0
    cfg = QUICK if args.quick else FULL
    sys.path.insert(0, str(BENCH))  # baseline_vae

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = loadavg()
    t_start = time.perf_counter()
    sections: list[tuple[str, list[str]]] = []
    results: dict = {}
    failed = []
    runners = {"1": ("1. Training speed: ours vs the pytorch/examples VAE", lambda: section_speed(cfg, args.threads)),
               "2": ("2. Ray overhead: train_sweep vs the same sweep without Ray",
                     lambda: section_ray(cfg, args.threads, args.pool)),
               "3": ("3. Whole pipeline: `dvc repro -f`", lambda: section_pipeline(cfg, args.pipeline_target)),
               "4": ("4. Scaling with dataset size", lambda: section_scaling(cfg))}
    for key, (title, fn) in runners.items():
        if key not in args.only:
            sections.append((title, ["Not run (`--only`)."]))
            continue
        t0 = time.perf_counter()
        try:
            lines, res = fn()
            results[key] = res
        except _SectionFailed as exc:
            lines = exc.lines
            failed.append(f"{title}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            traceback.print_exc()
            lines = [f"**FAILED**: `{type(exc).__name__}: {exc}`"]
            failed.append(f"{title}: {type(exc).__name__}: {exc}")
        lines.append("")
        lines.append(f"_Section time: {time.perf_counter() - t0:.0f} s._")
        sections.append((title, lines))

    header = [
        f"## {started:%Y-%m-%d %H:%M} UTC — {cfg.name} run (`python bench/run.py{' --quick' if args.quick else ''}`)",
        "",
        *machine_info(args.threads),
        f"- Load average (1/5/15 min) at start {load_start}, at end {loadavg()}; total benchmark time "
        f"{time.perf_counter() - t_start:.0f} s",
        "",
    ]
    summary = _summary(results)
    body = []
    for title, lines in sections:
        body += [f"### {title}", "", *lines, ""]
    text = "\n".join(header + summary + body) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists():
        args.out.write_text("# Benchmark results\n\nEach run of `python bench/run.py` (`make bench`) appends a dated "
                            "section below; see bench/run.py for what is measured and how.\n\n")
    with args.out.open("a") as fh:
        fh.write(text)
    log(f"appended to {args.out}")
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    return 0


def _summary(results: dict) -> list[str]:
    rows = []
    if "1" in results and results["1"]["ratio"]:
        r = results["1"]["ratio"]
        rows.append(["training speed, baseline time / ours to the same test loss",
                     f"{r:.2f}x (CPU time: {results['1']['cpu_ratio']:.2f}x)", ">= 3x", "yes" if r >= 3 else "**no**"])
    if "2" in results:
        r = results["2"]["ratio"]
        rows.append(["Ray sweep time / in-process sweep time", f"{r:.2f}", "<= 1.15", "yes" if r <= 1.15 else "**no**"])
    if "3" in results:
        p = results["3"]
        rows.append(["`dvc repro -f` wall time", f"{p['wall_s']:.0f} s", "< 180 s", "yes" if p["wall_ok"] else "**no**"])
        rows.append(["`dvc repro -f` peak memory (sum RSS of the tree)", f"{p['peak_rss'] / 2**30:.2f} GiB", "< 4 GiB",
                     "yes" if p["mem_ok"] else "**no**"])
    if "4" in results:
        w = results["4"]["worst"]
        rows.append(["scaling: CPU s per 1,000 images, largest / smallest size", f"{w:.2f}x", "about 1 (linear)",
                     "yes" if w < 1.25 else "**no**"])
    if not rows:
        return []
    return ["Goals:", "", *table(["goal", "measured", "target", "met"], rows), ""]


if __name__ == "__main__":
    sys.exit(main())
