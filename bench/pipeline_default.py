"""Benchmark 3, the whole pipeline: `dvc repro -f` in a temporary copy of the project, wall time and
peak memory (sum of RSS over the process tree, sampled every 0.2 s); goals < 3 min and < 4 GB.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, SectionFailed, Settings, descendants, fmt_s, log, set_subreaper, table, tree_pss, venv_bin


def _quick_params(params: dict) -> dict:
    """Tiny pipeline: every `epochs` knob set to 1, one seed at one latent size (5 models, not the study's 30),
    and the offline (bundled) data source."""
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
    sweep = params.setdefault("sweep", {})
    sweep["seeds"], sweep["latent_dims"] = sweep.get("seeds", [0])[:1], sweep.get("latent_dims", [2])[:1]
    params.setdefault("data", {})["source"] = "bundled"
    return params


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


def section(cfg: Settings, targets_override: list[str] | None = None) -> tuple[list[str], dict]:
    """Benchmark 3: (Markdown lines, {"wall_s", "peak_rss", ...}). Raises SectionFailed when dvc repro fails."""
    import psutil
    import yaml

    subreaper = set_subreaper()
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
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(root / "src"),
            PYTHONUNBUFFERED="1",
            DVC_NO_ANALYTICS="1",
        )
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
        before = {p.pid for p in descendants(me)}
        samples: list[tuple[float, float, int, str]] = []  # (t, sum RSS bytes, processes, stage)
        pss_peak = [0.0]
        peak_procs: list[tuple[str, int]] = []  # (process, RSS) at the highest sum seen so far
        stage = ["(dvc start)"]
        stage_starts: list[tuple[str, float]] = []
        out_lines: list[str] = []
        log(f"pipeline: dvc repro -f {' '.join(targets)} in {root}")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(bin_dir / "dvc"), "repro", "-f", *targets],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
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
                procs = [p for p in descendants(me) if p.pid not in before]
                rss, each = 0, []
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        r = p.memory_info().rss
                        rss += r
                        each.append((p, r))
                if i % 5 == 0:  # PSS once a second: it costs more than RSS
                    pss_peak[0] = max(pss_peak[0], tree_pss(me, frozenset(before)))
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
        leftovers = [p for p in descendants(me) if p.pid not in before]
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
        stage_rows.insert(
            0,
            [
                "dvc start-up (before the first stage)",
                fmt_s(stage_starts[0][1]),
                f"{max((s[1] for s in samples if s[0] < stage_starts[0][1]), default=0) / 2**30:.2f}",
            ],
        )
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
        *table(
            ["measure", "value", "goal", "met"],
            [
                ["wall time", f"{wall:.1f} s", "< 180 s", "yes" if wall_ok else "**no**"],
                [
                    "peak memory, sum of RSS over the tree",
                    f"{peak[1] / 2**30:.2f} GiB ({peak[2]} processes, during '{peak[3]}', at {peak[0]:.0f} s)",
                    "< 4 GiB",
                    "yes" if mem_ok else "**no**",
                ],
                [
                    "peak memory, sum of PSS (shared pages counted once), sampled every 1 s",
                    f"{pss_peak[0] / 2**30:.2f} GiB",
                    "—",
                    "—",
                ],
            ],
        ),
    ]
    if peak_procs:
        grouped: dict[str, list[int]] = {}
        for label, r in peak_procs:
            grouped.setdefault(label, []).append(r)
        by_rss = sorted(grouped.items(), key=lambda kv: -sum(kv[1]))
        lines += [
            "",
            f"Processes at the peak ({peak[1] / 2**30:.2f} GiB sum of RSS; shared libraries such as "
            "torch's count once per process in RSS):",
            "",
            *table(["process", "count", "RSS, GiB"], [[f"`{k}`", len(v), f"{sum(v) / 2**30:.2f}"] for k, v in by_rss]),
        ]
    if rc != 0:
        tail = "\n".join(out_lines[-15:])
        lines += ["", f"**`dvc repro -f` FAILED with exit code {rc}.** Last lines:", "", "```", tail, "```"]
        raise SectionFailed(lines, f"dvc repro -f exited {rc}")
    return lines, {
        "wall_s": wall,
        "peak_rss": peak[1],
        "peak_pss": pss_peak[0],
        "wall_ok": wall_ok,
        "mem_ok": mem_ok,
        "stages": stage_rows,
    }
