"""What identifies an input or a result: the sha256 of a file and the git state of the checkout.

One home for both, read by data preparation (the manifest's hashes), tracking (run tags, the
weights a run trained), retraining (its fingerprint and records) and the report's provenance box.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

_CHUNK = 1 << 20  # read 1 MiB at a time: a full-size split need not fit in memory twice
_GIT_TIMEOUT_S = 10


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes.

    Raises: OSError (FileNotFoundError, PermissionError) when the file cannot be read; callers that
    can name the fix (rerun a stage) check for the file first.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git(cwd: Path | None, *args: str) -> str | None:
    """stdout of `git <args>`, or None when git is missing, times out or fails (not a checkout)."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def pipeline_outputs(root: Path | None = None) -> list[str]:
    """Paths the pipeline writes itself: dvc.lock and every `outs`, `metrics` and `plots` entry of
    root/dvc.yaml. A run rewrites them, so their changes say nothing about uncommitted inputs.
    Never raises ([] plus dvc.lock when dvc.yaml is missing or unreadable)."""
    import yaml

    found = ["dvc.lock"]
    try:
        stages = (yaml.safe_load((Path(root or ".") / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return found
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []) or []:
                found += list(entry) if isinstance(entry, dict) else [entry]
    return found


def _is_output(path: str, outputs: list[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)


def git_state(cwd: Path | None = None) -> dict:
    """{"commit": sha or "unknown", "dirty": bool | None, "changed": [paths]} of the working tree at `cwd`.

    dirty is None outside a git checkout; only tracked inputs count: untracked files (mlflow.db) and the
    pipeline's own outputs (`pipeline_outputs`: dvc.lock, metrics, reports) do not make a tree dirty, so
    a report of committed code and params says "clean" although its own run rewrote metrics/.
    Never raises: provenance must not stop a stage.
    """
    commit = (_git(cwd, "rev-parse", "HEAD") or "").strip()
    if not commit:
        return {"commit": "unknown", "dirty": None, "changed": []}
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no") or ""
    outputs = pipeline_outputs(cwd)
    changed = [
        path for path in (line[3:] for line in status.splitlines() if line.strip()) if not _is_output(path, outputs)
    ]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}
