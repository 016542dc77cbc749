"""The shared helpers: file hashes, git state, seeded random streams."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch

from aevae.provenance import git_state, sha256_file
from aevae.rng import epoch_generator, purpose_generator


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB: more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": None, "changed": []}


def test_git_state_sees_an_edit_of_a_tracked_file(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "a.txt").write_text("one\n")
    git("init", "-q")
    git("add", "a.txt")
    git("commit", "-qm", "init")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "untracked.txt").write_text("not tracked: not dirty\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": clean["commit"], "dirty": True, "changed": ["a.txt"]}


@pytest.mark.parametrize("make", [epoch_generator, purpose_generator])
def test_a_stream_is_a_pure_function_of_seed_and_stream(make):
    draw = lambda seed, stream: torch.randn(8, generator=make(seed, stream))  # noqa: E731
    assert torch.equal(draw(3, 1), draw(3, 1))
    assert not torch.equal(draw(3, 1), draw(3, 2))
    assert not torch.equal(draw(3, 1), draw(4, 1))


def test_the_pipelines_own_outputs_do_not_make_a_tree_dirty(tmp_path):
    """A run rewrites dvc.lock, metrics and reports: a tree whose only changes are those is clean (tester finding)."""

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: x\n    outs:\n      - metrics/models:\n"
        "          cache: false\n    metrics:\n      - metrics/summary.json:\n"
        "          cache: false\n  report:\n    cmd: y\n    outs:\n      - reports/summary.md\n"
    )
    files = ["dvc.lock", "metrics/models/ae.json", "metrics/summary.json", "reports/summary.md", "params.yaml"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    for name in files[:-1]:
        (tmp_path / name).write_text("rewritten by a run\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "params.yaml").write_text("an edited input\n")
    assert git_state(tmp_path)["changed"] == ["params.yaml"]
