"""bench/run.py --quick end to end: it runs, exits 0 and appends all four sections (no timing checks)."""

from __future__ import annotations

import json
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
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"bench exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )
    text = out.read_text()
    assert text.startswith("# earlier results\n")  # appended, not overwritten
    assert "quick run" in text and "- CPU: " in text and "- GPU: " in text
    for title in SECTIONS:
        assert title in text, f"missing section {title!r}"
        body = text.split(title, 1)[1].split("\n### ", 1)[0]
        assert "FAILED" not in body, body
        assert "|---|" in body, f"section {title!r} has no table"


FULL_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (FULL_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"no full MNIST in {FULL_MNIST}")
def test_quick_full_size_benchmark_writes_both_sections(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "full_size.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"bench exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )
    text = out.read_text()
    for title in (
        "### Single model: ours vs the pytorch/examples recipe",
        "### Training throughput: share of FP32 peak",
    ):
        body = text.split(title, 1)[1].split("\n### ", 1)[0]
        assert "|---|" in body and "FAILED" not in body, body


def test_full_size_benchmark_skips_without_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "full_size.py"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "RESULTS.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no MNIST IDX files")
    assert not (tmp_path / "RESULTS.md").exists()


@pytest.mark.skipif(not (FULL_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"no full MNIST in {FULL_MNIST}")
def test_quick_budget_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "budget.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"bench exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )
    text = out.read_text()
    assert "training budget (quick)" in text and "|---|" in text
    for group in ("ae-z2", "vae-beta1-z2"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {group} |")]
        assert len(rows) == 2 and "converged" in rows[0] and "budget: 40" in rows[1], rows


def test_budget_benchmark_skips_without_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "budget.py"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "RESULTS.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no MNIST IDX files")
    assert not (tmp_path / "RESULTS.md").exists()


def test_pipeline_full_size_benchmark_skips_without_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "pipeline_full_size.py"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "RESULTS.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no IDX files")
    assert not (tmp_path / "RESULTS.md").exists()


def test_pipeline_full_size_report_judges_the_share_outside_training():
    sys.path.insert(0, str(REPO / "bench"))
    from pipeline_full_size import report

    result = {
        "stages": {"prepare": 15.0, "train": 600.0, "classifier": 150.0, "evaluate": 135.0},
        "total": 900.0,
        "rc": 0,
        "peak_pss": 3 * 2**30,
        "peak_at": 700.0,
    }
    text = "\n".join(report(result, Path("/data"), "fashion-mnist"))
    assert "| train | 600 | 67% |" in text and "on fashion-mnist" in text
    assert "| outside the train stage | 33% | <= 35% | met |" in text
    assert "| whole `dvc repro -f` | 15.0 min | <= 12 min | **missed** |" in text and "3.00 GiB (at 700 s)" in text


def test_pipeline_full_size_tables_the_verdicts_per_latent_group(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from pipeline_full_size import verdicts

    claims = {"z16": {"pca": {"verdict": "contradicted"}}, "z2": {"pca": {"verdict": "supported"}, "loss": {}}}
    (tmp_path / "claims.json").write_text(json.dumps({"claims": claims}))
    assert verdicts(tmp_path / "claims.json") == [
        "| claim | z2 | z16 |",
        "|---|---|---|",
        "| pca | supported | contradicted |",
        "| loss | - | - |",
    ]
    assert verdicts(tmp_path / "missing.json") == []


def test_quick_colour_throughput_writes_its_row(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "colour_throughput.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [row] = [line for line in out.read_text().splitlines() if line.startswith("| conv-vae-3x32x32 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[-1].startswith("**") and cells[-1].endswith("%**"), row
