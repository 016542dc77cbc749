"""Evaluation on Ray: one task per model gives exactly the in-process numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aevae.config import ClassifierParams, EvaluateParams, ModelParams, RunSpec, TrainParams
from aevae.core.training import train_model
from aevae.data.sources import from_bundled
from aevae.evaluation import classifier as clf_lib
from aevae.evaluation import metrics
from aevae.ops.distributed import map_tasks

pytestmark = pytest.mark.slow


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in ((a[k], b[k]) for k in a)
    )


def test_evaluation_on_ray_matches_in_process(monkeypatch, one_torch_thread):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw = from_bundled()
    order = np.random.default_rng(0).permutation(len(raw.train_images))  # sorted by class: mix them
    tr, te = order[:1500], order[1500:1800]
    data = dict(
        train_images=raw.train_images[tr],
        train_labels=raw.train_labels[tr],
        test_images=raw.train_images[te],
        test_labels=raw.train_labels[te],
    )
    scorer = clf_lib.train(
        data["train_images"], data["train_labels"], settings=ClassifierParams(max_epochs=1, seed=0)
    ).model
    params = EvaluateParams(seed=3, n_prior_samples=100, iw_samples=4, interp_pairs=4, interp_steps=4)
    models = {}
    for kind in ("ae", "vae"):
        spec = RunSpec(name=kind, model=ModelParams(kind=kind, hidden=[32]), train=TrainParams(epochs=1))
        models[kind] = train_model(spec, data["train_images"], data["test_images"]).model.eval()
    shared = dict(**data, classifier=scorer, params=params)
    expected = {k: metrics.evaluate_model(m, **shared) for k, m in models.items()}  # one thread, as each task

    outcomes, waits = [], []
    facts = map_tasks(
        metrics.evaluate_model,
        {k: (m,) for k, m in models.items()},
        shared,
        cpus_per_task=1,
        max_retries=0,
        on_done=outcomes.append,
        on_wait=waits.append,
    )
    assert facts["ray_started_locally"] is True
    assert sorted(o.key for o in outcomes) == ["ae", "vae"] and not any(o.error for o in outcomes)
    for o in outcomes:
        assert _same(o.value, expected[o.key]), (o.key, o.value, expected[o.key])
        assert o.node_id and o.seconds > 0
    assert all(set(w) <= {"ae", "vae"} for w in waits)
