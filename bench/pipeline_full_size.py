"""The whole pipeline at full size: `dvc repro -f` of the default params on the full MNIST,
wall time per stage, the share spent outside training, and peak memory; appends a section to bench/RESULTS.md.

    python bench/pipeline_full_size.py              # 60k/10k from ../shared/data/mnist (or --data DIR): ~15 min, 2 cores
    python bench/pipeline_full_size.py --keep DIR   # keep the project copy (its reports/, metrics/claims.json) in DIR
    python bench/pipeline_full_size.py --data /usr/share/datasets/fashion-mnist --dataset fashion-mnist
    python bench/pipeline_full_size.py --own PATH   # your own images: a .npz (source npz) or a folder (source folder)

Exits 0 with one line, writing nothing, when the IDX files are absent. The project is a `git clone` of this
repository (the committed params.yaml, code and dvc.yaml) with `data.source: idx` and `data.idx_dir` pointing at
the files: the run a user gets after `source: auto` downloaded MNIST. PATH puts this venv's bin first; no
RAY_ADDRESS or MLFLOW_TRACKING_URI, so Ray and MLflow are local. Every output line of dvc gets a timestamp;
a stage's wall time runs from its "Running stage" line to the next one. Memory: the sum of PSS (shared pages
counted once) over every process below this one, Ray's daemons included (this process is their subreaper),
sampled every second. Goals: the whole run <= 12 min on 2 cores; outside the train stage <= 35%; PSS <= 4 GiB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import REPO, append_section, log, machine_info, set_subreaper, table, tree_pss, venv_bin  # noqa: E402

DEFAULT_DATA = BENCH.parents[1] / "shared" / "data" / "mnist"
STAGE = re.compile(r"Running stage '([^']+)'")


def _project(data: Path, dataset: str, where: Path) -> Path:
    """A clone of this repository whose params.yaml reads `data`: IDX files named `dataset`, or own images."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    params = where / "params.yaml"
    text = re.sub(r"(?m)^  dataset: \S+", f"  dataset: {dataset}", params.read_text())
    if dataset == "custom":
        source = "npz" if data.is_file() else "folder"
        text = re.sub(r"(?m)^  source: .*$", f"  source: {source}", text)
        params.write_text(re.sub(r"(?m)^  path: \S+", f"  path: {data}", text))
    else:
        text = re.sub(r"(?m)^  source: .*$", "  source: idx", text)
        params.write_text(re.sub(r"(?m)^  idx_dir: .*$", f"  idx_dir: {data}", text))
    return where


def run(project: Path) -> dict:
    """`dvc repro -f` in project: {"stages": {name: seconds}, "total", "rc", "peak_pss", "peak_at", "lines"}."""
    env = {**os.environ, "PATH": f"{venv_bin()}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project / "src")}
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    set_subreaper()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["dvc", "repro", "-f"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"pss": 0, "at": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = tree_pss(os.getpid())
            if total > peak["pss"]:
                peak.update(pss=total, at=time.monotonic() - t0)
            done.wait(1.0)

    threading.Thread(target=sample, daemon=True).start()
    starts, lines = [], []
    for line in proc.stdout:
        now = time.monotonic() - t0
        lines.append(f"[{now:7.1f}] {line.rstrip()}")
        if m := STAGE.search(line):
            starts.append((m.group(1), now))
            log(f"{m.group(1)} starts at {now:.0f} s")
    rc = proc.wait()
    total = time.monotonic() - t0
    done.set()
    ends = [t for _, t in starts[1:]] + [total]
    stages = {name: end - start for (name, start), end in zip(starts, ends)}
    return {"stages": stages, "total": total, "rc": rc, "peak_pss": peak["pss"], "peak_at": peak["at"], "lines": lines}


def verdicts(claims_file: Path) -> list[str]:
    """The run's verdict per claim (rows) and latent group (columns), as a Markdown table; [] without claims."""
    if not claims_file.is_file():
        return []
    claims = json.loads(claims_file.read_text())["claims"]
    groups = sorted(claims, key=lambda g: int(g.lstrip("z")) if g.lstrip("z").isdigit() else g)
    names = list(dict.fromkeys(name for g in groups for name in claims[g]))
    rows = [[name, *(claims[g].get(name, {}).get("verdict", "-") for g in groups)] for name in names]
    return table(["claim", *groups], rows)


def _source(data: Path, dataset: str) -> str:
    return ("npz" if data.is_file() else "folder") if dataset == "custom" else "idx"


def report(r: dict, data: Path, dataset: str) -> list[str]:
    total, stages = r["total"], r["stages"]
    outside = total - stages.get("train", 0.0)
    rows = [[name, f"{s:.0f}", f"{100 * s / total:.0f}%"] for name, s in stages.items()]
    goals = [
        ["whole `dvc repro -f`", f"{total / 60:.1f} min", "<= 12 min", "met" if total <= 720 else "**missed**"],
        [
            "outside the train stage",
            f"{100 * outside / total:.0f}%",
            "<= 35%",
            "met" if outside <= 0.35 * total else "**missed**",
        ],
        [
            "peak memory, sum of PSS over the tree",
            f"{r['peak_pss'] / 2**30:.2f} GiB (at {r['peak_at']:.0f} s)",
            "<= 4 GiB",
            "met" if r["peak_pss"] <= 4 * 2**30 else "**missed**",
        ],
    ]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"## {when} — the whole pipeline at full size on {dataset} (`python bench/pipeline_full_size.py`)",
        "",
        *machine_info(1),
        f"- Data: {data} (data.dataset {dataset}, data.source {_source(data, dataset)}); default params.yaml"
        f" otherwise; exit code {r['rc']}",
        "",
        *table(["stage", "wall s", "share"], rows),
        "",
        *table(["measure", "value", "goal", "met"], goals),
        "",
        *([*r["verdicts"], ""] if r.get("verdicts") else []),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the four IDX files")
    parser.add_argument("--dataset", default="mnist", help="data.dataset: mnist, fashion-mnist, kmnist or idx")
    parser.add_argument("--own", type=Path, help="own images instead: a .npz (Keras arrays) or an image folder")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="results file to append to")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    args = parser.parse_args(argv)
    from aevae.data.sources import has_idx_files

    if args.own is not None:
        if not args.own.exists():
            print(f"error: no {args.own}; pass a .npz or an image folder to --own", file=sys.stderr)
            return 2
        args.data, args.dataset = args.own, "custom"
    elif not has_idx_files(args.data):
        print(f"skipped: no IDX files in {args.data}; pass --data DIR", flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="aevae-full-") as tmp:
        project = _project(args.data.resolve(), args.dataset, args.keep or Path(tmp) / "project")
        result = run(project)
        result["verdicts"] = verdicts(project / "metrics" / "claims.json")
    if result["rc"] != 0:
        print("\n".join(result["lines"][-30:]), file=sys.stderr)
        return result["rc"]
    text = report(result, args.data, args.dataset)
    append_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
