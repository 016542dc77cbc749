"""bench/run.py --quick end to end: it runs, exits 0 and appends all four sections (no timing checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("### 1. Training speed", "### 2. Ray overhead", "### 3. Whole pipeline", "### 4. Scaling")

pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# earlier results\n")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = out.read_text()
    assert text.startswith("# earlier results\n")  # appended, not overwritten
    assert "quick run" in text and "- CPU: " in text and "- GPU: " in text
    for title in SECTIONS:
        assert title in text, f"missing section {title!r}"
        body = text.split(title, 1)[1].split("\n### ", 1)[0]
        assert "FAILED" not in body, body
        assert "|---|" in body, f"section {title!r} has no table"
