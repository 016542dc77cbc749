"""Benchmark 2, Ray overhead: the params.yaml sweep through `distributed.train_sweep` (a local Ray
instance) against the same specs trained without Ray, each variant a fresh process; goal ray /
in-process <= 1.15. Ray's fixed costs are broken down.

Each variant runs as `python bench/ray_overhead.py VARIANT --data DATA.npz --json OUT.json [--epochs N]
[--deadline S]` (this file's own entry point, started by `section`), so every variant pays the same
process start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, Settings, Stop, fmt_s, log, table


def _sweep_specs(epochs: int | None):
    from aevae.config import load_params, resolve_sweep

    params = load_params(REPO / "params.yaml")
    specs = resolve_sweep(params, source=str(REPO / "params.yaml"))
    if epochs:  # --quick: the first seed at the first latent size (5 models, not the study's 30), few epochs
        first = (params.sweep.seeds[0], params.sweep.latent_dims[0])
        specs = [
            s.model_copy(update={"train": s.train.model_copy(update={"epochs": epochs})})
            for s in specs
            if (s.seed, s.model.latent_dim) == first
        ]
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
        write_prepared(
            root, split(raw, params.data.val_fraction, params.data.test_fraction, params.data.seed), raw, "mnist"
        )
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
    from aevae.core.training import train_model

    t0 = time.perf_counter()
    train_model(spec, train, val, checkpoint_dir=Path(ckpt), data_sha256=sha)
    return time.perf_counter() - t0


def sweep_child(variant: str, data: Path, epochs: int | None, deadline_s: float | None) -> dict:
    """Body of one section-2 variant, run in a fresh process (this file run as a script): a train stage with or without Ray.

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

    from aevae.core.training import train_model

    torch.set_num_threads(1 if variant == "a" else (os.cpu_count() or 1))
    marks["train_start"] = time.time()
    t0 = time.perf_counter()

    def guard(_rec):
        if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
            raise Stop

    try:
        for spec in specs:
            t1 = time.perf_counter()
            train_model(spec, train, val, checkpoint_dir=ckpt_root / spec.name, data_sha256=sha, on_epoch=guard)
            out["per_model"][spec.name] = time.perf_counter() - t1
    except Stop:
        out["aborted_after"] = time.perf_counter() - t0
    return out


def _ray_sweep(specs, ray_params, train, val, sha, ckpt_root: Path) -> dict:
    """train_sweep as the train stage calls it, with its fixed costs timed from the outside."""
    import ray

    from aevae.ops import distributed

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
        distributed.train_sweep(
            specs,
            train,
            val,
            ckpt_root,
            ray_params,
            sha,
            on_epoch=lambda name, rec: None,
            on_done=lambda outcome: done.append((time.time(), outcome)),
        )
    finally:
        distributed.connect, ray.shutdown = original_connect, original_shutdown
    marks["sweep_end"] = time.time()
    failed = [o.error for _, o in done if o.error]
    if failed:
        raise RuntimeError(f"train_sweep: {len(failed)} model(s) failed: {failed[0]}")
    # A task's training started `seconds` before the driver saw it finish (ray.wait returns on completion).
    starts = [t - o.seconds for t, o in done]
    marks["first_task_start"], marks["last_task_done"] = min(starts), max(t for t, _ in done)
    return {
        "ray_marks": marks,
        "per_model": {o.spec.name: o.seconds for _, o in done},
        "train_s_sum": sum(o.seconds for _, o in done),
    }


def _run_variant(variant: str, data: Path, epochs: int | None, deadline_s: float | None, timeout_s: float) -> dict:
    """Run sweep_child in a fresh process; wall time from launch to exit, plus what the child measured."""
    out_json = data.parent / f"{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), variant, "--data", str(data), "--json", str(out_json)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if deadline_s:
        cmd += ["--deadline", f"{deadline_s:.1f}"]
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


def section(cfg: Settings, threads: int, pool: bool) -> tuple[list[str], dict]:
    """Benchmark 2: (Markdown lines, {"ratio", ...}); ratio is Ray's wall time / the faster in-process variant."""
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
    b_cell = (
        fmt_s(b["seconds"])
        if b["seconds"]
        else (
            f"slower than (a): abandoned after {b['aborted_after']:.0f} s of training, "
            f"{len(b['per_model'])} of {len(specs)} models done"
        )
    )
    rows = [
        ["(a) one process, sequential, 1 torch thread", fmt_s(a["seconds"]), f"{r['wall'] / a['seconds']:.2f}"],
        [
            f"(b) one process, sequential, {cores} torch threads",
            b_cell,
            f"{r['wall'] / b['seconds']:.2f}" if b["seconds"] else "—",
        ],
    ]
    if c:
        rows.append(
            [
                f"(c) process pool, {slots} workers x 1 thread, no Ray (workers spawn and import torch)",
                fmt_s(c["seconds"]),
                f"{r['wall'] / c['seconds']:.2f}",
            ]
        )
    rows.append(
        [
            f"Ray: `distributed.train_sweep`, local instance, {params.ray.cpus_per_model:g} CPU per model",
            fmt_s(r["wall"]),
            "1.00",
        ]
    )

    m = r["ray_marks"]
    launch, end = r["launch"], r["launch"] + r["wall"]
    ideal = r["train_s_sum"] / slots
    phases = [
        ("process start: Python, numpy, aevae imports, reading the data", launch, m["sweep_start"]),
        ("`ray.init` (local instance: GCS, raylet, object store)", m["connect_start"], m["connect_end"]),
        (
            "`ray.init` returned -> first task starts training (progress actor, `ray.put` of the data, worker "
            "processes start and import torch + aevae)",
            m["connect_end"],
            m["first_task_start"],
        ),
        (
            f"training span, first task start -> last task done ({len(specs)} tasks on {slots} slots; perfect packing "
            f"of their {r['train_s_sum']:.1f} s would be {ideal:.1f} s)",
            m["first_task_start"],
            m["last_task_done"],
        ),
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
    return lines, {
        "ratio": ratio,
        "ray_s": r["wall"],
        "in_process_s": best,
        "fixed_s": fixed,
        "a": a["seconds"],
        "b": b["seconds"],
        "c": c["seconds"] if c else None,
    }


def main(argv: list[str] | None = None) -> int:
    """One variant in this fresh process; what it measured goes to --json."""
    parser = argparse.ArgumentParser(description="one variant of the Ray overhead benchmark (started by section)")
    parser.add_argument("variant", choices=("a", "b", "pool", "ray"))
    parser.add_argument("--data", type=Path, required=True, help="train/val images written by _sweep_data")
    parser.add_argument("--json", type=Path, required=True, help="where to write what the variant measured")
    parser.add_argument("--epochs", type=int, help="override every model's epochs")
    parser.add_argument("--deadline", type=float, help="(b) stops once it has trained this many seconds")
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps(sweep_child(args.variant, args.data, args.epochs, args.deadline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
