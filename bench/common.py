"""What every benchmark shares: the run settings (full and --quick), the machine description, logging,
Markdown tables, and the exceptions a section raises to stop early or to fail with its own lines.

Run `python bench/run.py` (`make bench`); the benchmarks are bench/speed.py, bench/ray_overhead.py,
bench/pipeline_default.py and bench/scaling.py, each a `section(...)` returning (Markdown lines, results).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "RESULTS.md"


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run: FULL (`make bench`) or QUICK (`--quick`, the smoke test)."""

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


FULL = Settings(
    "full",
    n_train=4000,
    n_test=1000,
    baseline_epochs=10,
    rounds=3,
    max_epochs_factor=3,
    sweep_epochs=None,
    sweep_train_cap=None,
    pipeline_quick=False,
    pipeline_timeout_s=900,
    sizes=(5_000, 20_000, 60_000),
    scaling_epochs=2,
)
QUICK = Settings(
    "quick",
    n_train=600,
    n_test=200,
    baseline_epochs=2,
    rounds=1,
    max_epochs_factor=2,
    sweep_epochs=1,
    sweep_train_cap=600,
    pipeline_quick=True,
    pipeline_timeout_s=300,
    sizes=(1_000, 2_000),
    scaling_epochs=1,
)


def log(msg: str) -> None:
    """A timestamped progress line on stderr (the results go to the Markdown file)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def venv_bin() -> Path:
    """The folder holding python and dvc: the project's .venv/bin, else this interpreter's."""
    candidate = REPO / ".venv" / "bin"
    return candidate if (candidate / "python").exists() else Path(sys.executable).parent


# ----------------------------------------------------------------------------- machine


def machine_info(threads: int) -> list[str]:
    """Markdown bullet lines: CPU, GPU, versions, and the torch threads used in-process."""
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
    """The 1/5/15-minute load averages as "a/b/c" ("?" where unavailable)."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fmt_s(x: float | None) -> str:
    """Seconds for a table cell: 2 decimals below 100 s, "—" for None."""
    return "—" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def append_section(out: Path, lines: list[str]) -> None:
    """Append a results section (Markdown lines) to `out` (bench/RESULTS.md) and print it."""
    with open(out, "a") as f:
        f.write("\n" + "\n".join(lines))
    print("\n".join(lines), flush=True)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table, one line per row."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


class Stop(Exception):
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
    """The 5,000 bundled MNIST digits: images (N, 28, 28) uint8, labels (N,)."""
    from aevae.data.sources import from_bundled

    raw = from_bundled()
    return raw.train_images, raw.train_labels


def set_subreaper() -> bool:
    """Orphaned descendants (e.g. daemonised Ray processes) get re-parented to us, so the tree sees them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - best effort, Linux only
        return False


def descendants(root_pid: int) -> list:
    """psutil.Process of every process below root_pid (none when it has ended)."""
    import psutil

    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []


def tree_pss(root_pid: int, exclude: frozenset[int] = frozenset()) -> int:
    """Bytes of PSS (shared pages split between the processes sharing them, so counted once) summed over every
    process below root_pid but those in `exclude`; a process that ends while we look counts 0."""
    import psutil

    total = 0
    for p in descendants(root_pid):
        if p.pid not in exclude:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
    return total


class SectionFailed(Exception):
    """A section that failed but has lines to show (e.g. the failing command's output)."""

    def __init__(self, lines: list[str], reason: str):
        super().__init__(reason)
        self.lines = lines
