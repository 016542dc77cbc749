"""Benchmarks for aevae; appends a dated section to bench/RESULTS.md.

    python bench/run.py            # full run: ~10 min on a 2-core machine, most of it `dvc repro -f`
    python bench/run.py --quick    # tiny settings, under a minute (the smoke test runs this)

Options: --out FILE (default bench/RESULTS.md), --only 124 (some sections), --threads N (torch
threads in-process, default 1), --pipeline-target STAGE (section 3 up to that stage), --pool (section
2 also times a plain process pool).

Four measurements, one file each (bench/common.py holds what they share), each a section of the results:

1. bench/speed.py, training speed against the usual script: the pytorch/examples VAE
   (bench/baseline_vae.py) trains N epochs; then the wall time our
   `train_model` needs to reach the same test loss. Ratio baseline / ours,
   goal >= 3x on CPU. When missed: where the time goes (the baseline's input
   pipeline timed alone, ours under torch.profiler) and measured what-ifs
   that show what would close the gap (nothing in src/ is changed: the
   what-ifs patch the optimizer in this process or use existing params).
2. bench/ray_overhead.py, Ray overhead: the params.yaml sweep through `distributed.train_sweep` (a
   local Ray instance) against the same specs trained without Ray, each
   variant a fresh process; goal ray / in-process <= 1.15. Ray's fixed costs
   are broken down.
3. bench/pipeline_default.py, the whole pipeline: `dvc repro -f` in a temporary copy of the project,
   wall time and peak memory (sum of RSS over the process tree, sampled
   every 0.2 s); goals < 3 min and < 4 GB.
4. bench/scaling.py, scaling: seconds per epoch of one model (ae, vae) at 5k, 20k and 60k
   images; linear growth is constant seconds per 1,000 images.

Timings on a shared machine are noisy: the section header records the load
average, runs that are compared alternate, medians (or minima, for per-epoch
costs) are reported, and single-threaded work also reports CPU time, which
other load on the machine barely moves.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from pathlib import Path

import pipeline_default
import ray_overhead
import scaling
import speed
from common import DEFAULT_OUT, FULL, QUICK, SectionFailed, loadavg, log, machine_info, table


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, append one dated section to --out; 1 when a section failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, under a minute (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file to append to")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for in-process training (default 1: on a shared 2-core machine more "
        "threads than free cores makes PyTorch's parallel regions stall)",
    )
    parser.add_argument("--only", default="1234", help="sections to run, e.g. 13 (default all)")
    parser.add_argument(
        "--pipeline-target",
        action="append",
        metavar="STAGE",
        help="section 3 reproduces only up to this stage (repeatable; default: the whole dvc.yaml)",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="section 2 also times a plain process pool (same concurrency as Ray, no Ray)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    started = datetime.datetime.now(datetime.UTC)
    load_start = loadavg()
    t_start = time.perf_counter()
    sections: list[tuple[str, list[str]]] = []
    results: dict = {}
    failed = []
    runners = {
        "1": ("1. Training speed: ours vs the pytorch/examples VAE", lambda: speed.section(cfg, args.threads)),
        "2": (
            "2. Ray overhead: train_sweep vs the same sweep without Ray",
            lambda: ray_overhead.section(cfg, args.threads, args.pool),
        ),
        "3": ("3. Whole pipeline: `dvc repro -f`", lambda: pipeline_default.section(cfg, args.pipeline_target)),
        "4": ("4. Scaling with dataset size", lambda: scaling.section(cfg)),
    }
    for key, (title, fn) in runners.items():
        if key not in args.only:
            sections.append((title, ["Not run (`--only`)."]))
            continue
        t0 = time.perf_counter()
        try:
            lines, res = fn()
            results[key] = res
        except SectionFailed as exc:
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
        args.out.write_text(
            "# Benchmark results\n\nEach run of `python bench/run.py` (`make bench`) appends a dated "
            "section below; see bench/run.py for what is measured and how.\n\n"
        )
    with args.out.open("a") as fh:
        fh.write(text)
    log(f"appended to {args.out}")
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    return 0


def _summary(results: dict) -> list[str]:
    """The goals table: each section's headline number against its target."""
    rows = []
    if "1" in results and results["1"]["ratio"]:
        r = results["1"]["ratio"]
        rows.append(
            [
                "training speed, baseline time / ours to the same test loss",
                f"{r:.2f}x (CPU time: {results['1']['cpu_ratio']:.2f}x)",
                ">= 3x",
                "yes" if r >= 3 else "**no**",
            ]
        )
    if "2" in results:
        r = results["2"]["ratio"]
        rows.append(["Ray sweep time / in-process sweep time", f"{r:.2f}", "<= 1.15", "yes" if r <= 1.15 else "**no**"])
    if "3" in results:
        p = results["3"]
        rows.append(
            ["`dvc repro -f` wall time", f"{p['wall_s']:.0f} s", "< 180 s", "yes" if p["wall_ok"] else "**no**"]
        )
        rows.append(
            [
                "`dvc repro -f` peak memory (sum RSS of the tree)",
                f"{p['peak_rss'] / 2**30:.2f} GiB",
                "< 4 GiB",
                "yes" if p["mem_ok"] else "**no**",
            ]
        )
    if "4" in results:
        w = results["4"]["worst"]
        rows.append(
            [
                "scaling: CPU s per 1,000 images, largest / smallest size",
                f"{w:.2f}x",
                "about 1 (linear)",
                "yes" if w < 1.25 else "**no**",
            ]
        )
    if not rows:
        return []
    return ["Goals:", "", *table(["goal", "measured", "target", "met"], rows), ""]


if __name__ == "__main__":
    sys.exit(main())
