"""bench/device_check.py where no GPU is: one line, written to the folder too, exit 0; and its CPU-side helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import device_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run for minutes")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path, capsys):
    out = tmp_path / "device"
    assert device_check.main([str(out), "--data", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed and printed.startswith("no GPU: torch.cuda.is_available() is False")
    assert (out / "device_check.md").read_text().strip() == printed
    assert json.loads((out / "device_check.json").read_text()) == {"gpu": None, "result": printed}


def test_nvidia_smi_samples_are_summarised(tmp_path):
    csv = tmp_path / "smi.csv"
    csv.write_text("utilization.gpu [%], memory.used [MiB]\n10 %, 1000 MiB\n90 %, 3000 MiB\n[N/A], [N/A]\n")
    assert device_check._summarise(csv) == {
        "samples": 2,
        "util_mean_pct": 50.0,
        "util_max_pct": 90.0,
        "memory_max_mib": 3000.0,
    }
    assert device_check._summarise(tmp_path / "smi.csv").get("samples") == 2
    csv.write_text("utilization.gpu [%], memory.used [MiB]\n")
    assert device_check._summarise(csv) == {"samples": 0}


def test_models_at_once_counts_overlapping_tasks():
    runs = [SimpleNamespace(started=s, seconds=d) for s, d in ((0, 2), (1, 2), (2.5, 1), (3, 1))]
    assert device_check.most_at_once(runs) == 2
    back_to_back = [SimpleNamespace(started=s, seconds=1) for s in (0, 1, 2)]
    assert device_check.most_at_once(back_to_back) == 1  # one ends as the next starts: never two at once


def test_a_part_that_the_budget_cannot_hold_is_skipped_and_a_failing_one_recorded():
    def boom():
        raise RuntimeError("no kernel image is available\nsecond line")

    results = device_check.run_parts({"determinism": boom, "sweep_unpacked": lambda: {"ok": True}}, budget_s=60)
    assert results["determinism"]["ok"] is False and results["determinism"]["error"].endswith("is available")
    assert results["sweep_unpacked"]["ok"] is None and "budget" in results["sweep_unpacked"]["skipped"]
    text = device_check.markdown(
        {"when": "now", "gpu": "g", "versions": "v", "data": "d", "total_s": 1, "parts": results}
    )
    assert "| determinism | **no** |" in text and "| sweep_unpacked | skipped |" in text
