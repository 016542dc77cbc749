"""Progress lines: the formatter itself, the classifier's early stopping, and every stage's lines in a real run."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch

from aevae.config import ClassifierParams
from aevae.data.sources import from_bundled
from aevae.errors import UserError
from aevae.evaluation import classifier as clf_lib
from aevae.progress import PROGRESS_ENV, Progress, every_s

LINE = re.compile(r"^\[(\w+)\] (\d+)/(\d+) (\w+) \(\s*\d+%\).*ETA\s+(\d+s|\d+min|\?)$")


def test_progress_throttles_and_ends_with_a_line(monkeypatch):
    out = io.StringIO()
    progress = Progress("stage", 100, "steps", stream=out, every=3600.0)
    for done in range(1, 101):
        progress.update(done, f"step {done}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then nothing until the last
    assert all(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("[stage] 100/100 steps (100%)  step 100  ETA    0s")
    monkeypatch.setenv(PROGRESS_ENV, "0.25")
    assert every_s(10.0) == 0.25 and Progress("s", 1, "x").every == 0.25
    monkeypatch.setenv(PROGRESS_ENV, "ten")
    with pytest.raises(UserError, match=f"{PROGRESS_ENV}='ten' is not a number"):
        every_s(10.0)


@pytest.fixture(scope="module")
def digits():
    raw = from_bundled()
    order = np.random.default_rng(0).permutation(len(raw.train_images))  # the bundled digits are sorted by class
    train, val = order[:600], order[600:900]
    return raw.train_images[train], raw.train_labels[train], raw.train_images[val], raw.train_labels[val]


def test_classifier_stops_early_and_keeps_its_best_epoch(digits, one_torch_thread):
    x, y, vx, vy = digits
    steps, epochs = [], []
    result = clf_lib.train(
        x,
        y,
        vx,
        vy,
        ClassifierParams(max_epochs=40, patience=2, seed=0, batch_size=64),
        shift=0,
        on_step=lambda e, s: steps.append((e, s)),
        on_epoch=epochs.append,
    )
    assert result.stopped == "patience" and len(result.history) < 40
    accs = [h["val/accuracy"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmax(accs)) and len(accs) - result.best_epoch == 2
    assert result.model.accuracy(vx, vy) == pytest.approx(max(accs))  # the best epoch's weights, not the last
    assert len(steps) == len(result.history) * 10 and epochs == result.history  # 600 / 64 -> 10 steps an epoch
    reached = clf_lib.train(
        x, y, vx, vy, ClassifierParams(max_epochs=40, patience=40, target_accuracy=0.5, seed=0), shift=0
    )
    assert reached.stopped == "target" and len(reached.history) == 1  # one epoch already beats 50%
    assert torch.equal(
        reached.model.head[1].weight,
        clf_lib.train(x, y, vx, vy, ClassifierParams(max_epochs=1, seed=0), shift=0).model.head[1].weight,
    )


def test_augmentation_only_for_small_training_sets():
    assert clf_lib.augment_shift("auto", 3_600) == 2 and clf_lib.augment_shift("auto", 54_000) == 0
    assert clf_lib.augment_shift(True, 54_000) == 2 and clf_lib.augment_shift(False, 3_600) == 0
    sides = {side: clf_lib.augment_shift("auto", 3_600, side=side) for side in (8, 28, 32, 64)}
    assert sides == {8: 1, 28: 2, 32: 2, 64: 5}  # scaled with the image: MNIST's 2 px stays


@pytest.mark.slow
def test_every_stage_prints_progress_with_an_eta(small_run):
    """The shared run has two classifier epochs of 3,600 / 64 steps and prints every update (PROGRESS_ENV=0)."""
    out = small_run.stdout
    lines = [line for line in out.splitlines() if LINE.match(line)]
    stages = {LINE.match(line)[1] for line in lines}
    assert {"prepare", "classifier", "evaluate", "report"} <= stages, out
    assert sum(LINE.match(line)[1] == "classifier" for line in lines) >= 2 * 51  # a line per step: 3,600 / 64
    assert re.search(r"^\[ae\s*\] epoch\s+2/3 .* ETA\s+\d+s$", out, re.M), out  # train: every epoch at interval 0
    assert re.search(r"^\[evaluate\] 2/2 models \(100%\)", out, re.M), out
    # after the last group's figures the report says what it does next, instead of going quiet
    assert re.search(r"^\[report\] figures across the sweep .*\n\[report\] rendering the page", out, re.M), out
    assert re.search(r"^\[report\] logging the report and figures to MLflow$", out, re.M), out
