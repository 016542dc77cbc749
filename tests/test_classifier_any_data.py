"""The reference classifier on any data: sized from (C, H, W) and K, and its stopping rule (margin, step budget)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aevae.config import ClassifierParams
from aevae.errors import UserError
from aevae.evaluation import classifier as clf_lib

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int, shape: tuple[int, ...], k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class k lights up the k-th horizontal band: learnable in an epoch."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.integers(0, 60, (n, *shape), dtype=np.uint8)
    h = shape[-2]
    for c in range(k):
        x[y == c, ..., c * h // k : (c + 1) * h // k, :] = 250
    return x, y


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 20, 12), (1, 64, 64), (3, 128, 96)])
def test_any_shape_and_class_count(shape):
    cfg = clf_lib.ClassifierConfig(shape, n_classes=4)
    model = clf_lib.DigitClassifier(cfg)
    probs, feats = model.scores(torch.rand(3, *shape))
    assert probs.shape == (3, 4) and feats.shape == (3, cfg.hidden)
    linear = [m for m in model.body if isinstance(m, torch.nn.Linear)][0]
    assert linear.in_features <= cfg.channels[1] * clf_lib.MAX_GRID**2  # bounded on large images


def test_too_small_images_are_a_user_error():
    with pytest.raises(UserError, match="data.image_size"):
        clf_lib.DigitClassifier(clf_lib.ClassifierConfig((1, 3, 3), 2))


def test_colour_training_learns_and_saves_its_shape(tmp_path):
    x, y = data(300, (3, 12, 10), 3)
    xv, yv = data(90, (3, 12, 10), 3, seed=1)
    result = clf_lib.train(x, y, xv, yv, ClassifierParams(max_epochs=2, patience=2), shift=1)  # config from the data
    assert result.model.cfg.image_shape == (3, 12, 10) and result.model.cfg.n_classes == 3
    assert result.model.accuracy(xv, yv) > 0.9
    path = clf_lib.save(tmp_path / "c.pt", result.model)
    loaded, _ = clf_lib.load(path)
    assert loaded.cfg == result.model.cfg


def test_a_margin_under_one_images_share_stops_as_no_margin():
    """The rule that keeps the bundled MNIST's classifier as it was: accuracies move in steps of 1/n_val."""
    x, y = data(200, (1, 8, 8), 2)
    xv, yv = data(40, (1, 8, 8), 2, seed=1)  # steps of 0.025
    kw = dict(max_epochs=4, patience=1)
    plain = clf_lib.train(x, y, xv, yv, ClassifierParams(**kw), shift=0)
    margin = clf_lib.train(x, y, xv, yv, ClassifierParams(min_delta=0.02, **kw), shift=0)
    assert plain.history == [{**r, "seconds": p["seconds"]} for r, p in zip(margin.history, plain.history)]
    assert plain.best_epoch == margin.best_epoch


def test_a_large_margin_stops_at_the_plateau():
    x, y = data(200, (1, 8, 8), 2)
    xv, yv = data(40, (1, 8, 8), 2, seed=1)
    result = clf_lib.train(x, y, xv, yv, ClassifierParams(max_epochs=6, patience=1, min_delta=0.5), shift=0)
    assert result.stopped == "patience" and len(result.history) == 2 and result.best_epoch == 1


def test_the_step_budget_ends_training_after_the_epoch_that_reaches_it():
    x, y = data(200, (1, 8, 8), 2)
    result = clf_lib.train(
        x, y, settings=ClassifierParams(max_epochs=10, batch_size=64, max_steps=5), shift=0
    )  # 4 steps an epoch
    assert result.stopped == "max_steps" and len(result.history) == 2
    settings = ClassifierParams(max_epochs=10, batch_size=64, max_steps=5)
    assert clf_lib.steps_per_epoch(200, 64) == 4 and clf_lib.planned_epochs(settings, 200) == 2
    assert clf_lib.planned_epochs(ClassifierParams(max_epochs=3, max_steps=None), 200) == 3
    assert clf_lib.planned_epochs(ClassifierParams(max_epochs=1, batch_size=64, max_steps=5), 200) == 1


def test_evaluate_and_figures_on_colour_non_square_data():
    """The evaluate stage's metrics and the report's per-image figures, on (3, 12, 10) images of 3 classes."""
    import math

    from aevae.config import EvaluateParams, ModelParams, RunSpec
    from aevae.core.models import build_model
    from aevae.data import ClassNames
    from aevae.evaluation import metrics
    from aevae.report import figures as plots

    x, y = data(150, (3, 12, 10), 3)
    xt, yt = data(60, (3, 12, 10), 3, seed=1)
    scorer = clf_lib.train(x, y, settings=ClassifierParams(max_epochs=1), shift=0).model
    torch.manual_seed(0)
    spec = RunSpec(name="vae", model=ModelParams(kind="vae", hidden=[16], latent_dim=2), train={"epochs": 1})
    model = build_model(spec.model, (3, 12, 10)).eval()
    params = EvaluateParams(n_prior_samples=50, iw_samples=2, iw_images=20, interp_pairs=4, interp_steps=3)
    ev = metrics.evaluate(model, x, y, xt, yt, scorer, params)
    assert all(math.isfinite(v) for k, v in ev.metrics.items() if not k.startswith("test/moment"))
    assert ev.prior_images.shape == (50, 3, 12, 10) and ev.interpolation.strips.shape == (4, 3, 3, 12, 10)
    names = ClassNames("class", ("a", "b", "c"))
    recon = metrics.decode(model, metrics.encode(model, xt[:5])[0]).numpy()
    for fig in (
        plots.reconstructions(spec, xt[:5] / 255.0, recon, yt[:5], classes=names),
        plots.interpolation_strips(spec, ev.interpolation.strips, ev.interpolation.pair_labels, classes=names),
        plots.prior_samples(spec, ev.prior_images[:20], classes=names),
    ):
        assert plots.encode(fig, picture=True)[8:12] == b"WEBP"  # RIFF, size, WEBP
