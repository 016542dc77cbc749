"""The CPUs the process may use: affinity mask and cgroup quota, not the machine's size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from aevae import cpus


def test_available_cpus_is_within_the_affinity_mask():
    assert 1 <= cpus.available_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_taskset_one_core_gives_one_cpu():
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", "from aevae.cpus import available_cpus; print(available_cpus())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max 100000", None),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("-1 100000", None),
        ("", None),
        (None, None),
    ],
)
def test_cgroup_quota_lines(text, expected):
    assert cpus._ratio(text) == expected


def test_a_cgroup_quota_caps_the_count(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job" / "cpu.max").write_text("50000 100000\n")  # half a CPU: rounds up to one
    monkeypatch.setattr(cpus, "_CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cpus, "_own_cgroup", lambda controller: tmp_path / "job" if controller == "" else None)
    assert cpus._cgroup_quota() == 1
    assert cpus.available_cpus() == 1
