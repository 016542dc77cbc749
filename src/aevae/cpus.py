"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota, not the machine's size.

os.cpu_count() counts the machine's cores. Under `taskset`, Slurm, a container or a CI runner the process
may run on fewer: sized by the machine, Ray would run two models on one allowed core and torch would spin
two threads against each other.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """CPUs this process may use (>= 1): the fewest of its affinity mask and its cgroup's quota, rounded up."""
    counts = [_affinity(), _cgroup_quota()]
    return max(1, min(c for c in counts if c is not None))


def use_available_cpus() -> int:
    """Size this process's torch thread pool, and the BLAS/OpenMP pools of the libraries loaded by now (numpy's,
    torch's), to available_cpus(); returns that count.

    For a stage's own process (its work outside Ray tasks): torch and the BLAS libraries size themselves by
    the machine, or at best by the affinity mask, never by a cgroup quota.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = available_cpus()
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # called, not entered: the limit holds for the rest of the process
    return threads


def _affinity() -> int:
    """CPUs in this process's affinity mask (taskset, Slurm's binding); the machine's count where there is none."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_quota() -> int | None:
    """The CPU quota of this process's cgroup and its parents (cgroup v2 cpu.max, v1 cfs_quota_us), rounded up
    to whole CPUs; None when unlimited or unreadable."""
    quotas = [q for q in (*_v2_quotas(), _v1_quota()) if q is not None]
    return math.ceil(min(quotas)) if quotas else None


def _v2_quotas() -> list[float | None]:
    """cpu.max ("<quota> <period>" or "max <period>") of this process's cgroup v2 and every parent up to the root."""
    folder = _own_cgroup("")
    out: list[float | None] = []
    while folder is not None and _CGROUP_ROOT in (folder, *folder.parents):
        out.append(_ratio(_read(folder / "cpu.max")))
        if folder == _CGROUP_ROOT:
            break
        folder = folder.parent
    return out


def _v1_quota() -> float | None:
    """cfs_quota_us / cfs_period_us of this process's cgroup v1 cpu controller; None when unlimited (-1)."""
    folder = _own_cgroup("cpu")
    if folder is None:
        return None
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    return _ratio(f"{quota} {period}") if quota and period else None


def _own_cgroup(controller: str) -> Path | None:
    """This process's folder under /sys/fs/cgroup: the v2 one (controller "") or the v1 one of `controller`."""
    text = _read(Path("/proc/self/cgroup"))
    for line in (text or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controller == "" and controllers == "":
            return _CGROUP_ROOT / path.lstrip("/")
        if controller and controller in controllers.split(","):
            for mount in (_CGROUP_ROOT / controllers, _CGROUP_ROOT / controller):
                if mount.is_dir():
                    return mount / path.lstrip("/")
    return None


def _ratio(text: str | None) -> float | None:
    """ "<quota> <period>" as CPUs; None for "max", -1 or anything unreadable."""
    parts = (text or "").split()
    try:
        quota, period = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):  # "max", missing
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
