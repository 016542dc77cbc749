"""Unlabelled data (an npz without y_ arrays, a folder of images without class folders) through every stage.

Fast: prepare's seeded unstratified split and manifest, the metrics that need labels as NaN and the rest
measured, the claims judged without them, the figures without classes, the model card. Slow: a real
`dvc repro` of tiny params on an unlabelled npz and on an unlabelled folder of PNGs, both written here.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aevae import metric_registry
from aevae.config import EvaluateParams, ModelParams, Params, RunSpec
from aevae.core.models import build_model
from aevae.data import NO_LABELS, manifest_classes, manifest_labelled
from aevae.data.prepare import split, write_prepared
from aevae.data.prepared import load_split
from aevae.data.sources import load_raw
from aevae.errors import UserError
from aevae.evaluation import metrics, study
from aevae.evaluation.study import SeedRecord
from aevae.ops import model_card
from aevae.report import figures
from conftest import assert_one_line
from project import SMALL_PARAMS, dvc, make_project

RNG = np.random.default_rng(0)
LABEL_KEYS = {m.key for m in metric_registry.needing_labels()}
FAST = EvaluateParams(n_prior_samples=50, iw_samples=2, iw_images=20, interp_pairs=4, interp_steps=3)


def write_npz(path, n: int = 60, shape=(8, 8)) -> np.ndarray:
    """An unlabelled npz: x_train only, random uint8 images (n, *shape)."""
    x = RNG.integers(0, 256, (n, *shape), dtype=np.uint8)
    np.savez(path, x_train=x)
    return x


def write_folder(root, n: int = 40, size=(10, 12)) -> None:
    """`n` random colour PNGs of `size` (W, H) directly in root: no class folders."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{i:03d}.png")


def prepare(out, source: str, path, val: float = 0.2, test: float = 0.2) -> dict:
    """What pipeline/prepare.py does, in-process."""
    raw = load_raw("custom", source, out.parent / "idx", out.parent / "dl", path)
    return write_prepared(out, split(raw, val, test, 0), raw, "custom")


# ------------------------------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("source", ["npz", "folder"])
def test_prepare_records_no_classes_and_splits_seeded_without_labels(tmp_path, source):
    path = tmp_path / "u.npz"
    if source == "npz":
        write_npz(path)
    else:
        path = tmp_path / "imgs"
        write_folder(path, n=60)
    manifest = prepare(tmp_path / "a", source, path)
    assert manifest["classes"] == manifest["class_names"] == [] and not manifest_labelled(manifest)
    assert manifest_classes(manifest).names == ()
    assert {s: c for s, c in manifest["counts"].items()} == {
        "train": {"total": 38},
        "val": {"total": 10},
        "test": {"total": 12},
    }
    assert not list((tmp_path / "a").glob("*_labels.npy")) and "train_labels.npy" not in manifest["sha256"]
    again = prepare(tmp_path / "b", source, path)
    for name in ("train", "val", "test"):
        one, two = load_split(name, tmp_path / "a"), load_split(name, tmp_path / "b")
        assert one.labels is None
        np.testing.assert_array_equal(one.images, two.images)  # seeded: the same split twice
    assert again["data_sha256"] == manifest["data_sha256"]
    every = np.concatenate([load_split(s, tmp_path / "a").images for s in ("train", "val", "test")])
    assert len({im.tobytes() for im in every}) == 60  # each image in exactly one split


def test_labelled_manifests_keep_their_classes(tmp_path):
    np.savez(tmp_path / "l.npz", x_train=RNG.integers(0, 256, (30, 8, 8), dtype=np.uint8), y_train=np.arange(30) % 3)
    manifest = prepare(tmp_path / "p", "npz", tmp_path / "l.npz")
    assert manifest_labelled(manifest) and manifest["counts"]["train"]["per_class"]
    assert load_split("test", tmp_path / "p").labels is not None


@pytest.mark.parametrize("n, what", [(4, "test"), (7, "val")])
def test_too_few_unlabelled_images_is_one_line_naming_the_fraction(tmp_path, n, what):
    write_npz(tmp_path / "few.npz", n=n)
    with pytest.raises(UserError) as info:
        prepare(tmp_path / "p", "npz", tmp_path / "few.npz", val=0.2, test=0.2)
    assert_one_line(str(info.value))
    assert f"data.{what}_fraction" in str(info.value) and "at least 2" in str(info.value)
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def unlabelled_evaluation():
    """One tiny untrained VAE evaluated on unlabelled colour data (no labels, no classifier)."""
    torch.manual_seed(0)
    x, xt = (RNG.integers(0, 256, (n, 3, 12, 10), dtype=np.uint8) for n in (80, 30))
    model = build_model(ModelParams(kind="vae", hidden=[16], latent_dim=2), (3, 12, 10)).eval()
    return metrics.evaluate(model, x, None, xt, None, None, FAST)


def test_metrics_that_need_labels_are_nan_and_the_rest_are_measured(unlabelled_evaluation):
    values = unlabelled_evaluation.metrics
    assert list(values) == list(metric_registry.KEYS)
    assert LABEL_KEYS and all(math.isnan(values[k]) for k in LABEL_KEYS)
    measured = [k for k in values if k not in LABEL_KEYS and not k.startswith("test/moment")]
    assert measured and all(math.isfinite(values[k]) for k in measured), values
    assert "test/recon_mse_per_pixel" in measured and "interp/smoothness_ratio" in measured


def test_unlabelled_interpolation_joins_two_different_images_and_saves_no_labels(unlabelled_evaluation, tmp_path):
    interp = unlabelled_evaluation.interpolation
    assert interp.pair_labels is None and (interp.pairs[:, 0] != interp.pairs[:, 1]).all()
    metrics.save_arrays(tmp_path / "m.npz", unlabelled_evaluation)
    arrays = metrics.load_arrays(tmp_path / "m.npz")
    assert "interp_pair_labels" not in arrays and arrays["interp_strips"].shape == (4, 3, 3, 12, 10)


def test_labelled_pairs_are_of_different_classes():
    labels = np.array([0, 0, 0, 1, 1, 2])
    pairs = metrics.interpolation_pairs(len(labels), labels, 20, seed=3)
    assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()


# --------------------------------------------------------------------------------------------------- study


def _records(seeds=(0, 1, 2)) -> list[SeedRecord]:
    """AE and VAE β=1 at latent size 2: the VAE's holes fewer in every seed; label metrics NaN, as evaluate writes."""
    out = []
    for seed in seeds:
        for member, kind, holes in (("ae", "ae", 0.2 + 0.01 * seed), ("vae-beta1", "vae", 0.02 + 0.001 * seed)):
            values = {"test/holes_fraction_own_gaussian": holes, **dict.fromkeys(LABEL_KEYS, math.nan)}
            out.append(SeedRecord(member, 2, seed, kind, "relu", 1.0, values))
    return out


UNAVAILABLE = dict.fromkeys(LABEL_KEYS, NO_LABELS)


def test_a_claim_resting_partly_on_label_metrics_is_judged_on_the_rest():
    holes = next(c for c in study.CLAIMS if c.id == "holes")  # holes fraction and the classifier's confident share
    out = study.judge_claim(holes, _records(), 2, UNAVAILABLE)
    assert out["verdict"] == study.SUPPORTED, out
    left_out = [c for c in out["comparisons"].values() if c["verdict"] == study.UNTESTABLE]
    assert [c["a_metric"] for c in left_out] == ["prior/confident_fraction"] and left_out[0]["reason"] == NO_LABELS
    assert "judged without" in out["reason"] and NO_LABELS in out["reason"]


def test_a_claim_resting_only_on_label_metrics_is_untestable_with_the_reason():
    only = study.Claim(
        "gen",
        "prior samples are recognisable",
        (
            study.Comparison(
                study.Operand(study.VAE_BETA1, "prior/classifier_fid"),
                study.Operand(study.AE, "prior/classifier_fid"),
                True,
            ),
        ),
    )
    out = study.judge_claim(only, _records(), 2, UNAVAILABLE)
    assert out["verdict"] == study.UNTESTABLE and out["reason"] == NO_LABELS
    # Without `unavailable` the same NaNs read as a metric null in every seed: inconclusive, not untestable.
    assert study.judge_claim(only, _records(), 2)["verdict"] == study.INCONCLUSIVE


def test_claims_file_states_the_rule_only_where_it_applied_and_is_strict_json():
    labelled = study.claims_file(_records())
    assert "unavailable" not in labelled["rules"]
    unlabelled = study.claims_file(_records(), unavailable=UNAVAILABLE)
    assert unlabelled["rules"]["unavailable"] == study.UNAVAILABLE_RULE
    from aevae.atomic import strict

    json.dumps(strict(unlabelled), allow_nan=False)  # NaN effects become null


# ------------------------------------------------------------------------------------------ figures, card


def test_figures_without_labels_draw_codes_in_one_colour_and_name_no_class():
    spec = RunSpec(name="vae", model=ModelParams(kind="vae", latent_dim=2), train={"epochs": 1})
    codes = RNG.standard_normal((100, 2))
    fig = figures.latent_scatter(spec, codes, None, classes=manifest_classes({"class_names": []}))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == []  # no class name at a cluster's median
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["95% of N(0, I)"]
    assert figures.encode(fig)[8:12] == b"WEBP"
    images = RNG.random((10, 3, 8, 8))
    fig = figures.reconstructions(spec, images, images, None)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [] and fig.axes[0].get_xlabel() == ""
    strips = RNG.random((3, 4, 3, 8, 8))
    fig = figures.interpolation_strips(spec, strips, None, RNG.random((3, 2, 3, 8, 8)))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == []
    z6 = RunSpec(name="ae-z6", model=ModelParams(kind="ae", latent_dim=6), train={"epochs": 1})
    for fig in (
        figures.latent_side_by_side([spec, z6], [codes, RNG.standard_normal((100, 6))], None),
        figures.latent_scatter(z6, RNG.standard_normal((100, 6)), None),
    ):
        assert figures.encode(fig)[8:12] == b"WEBP"


def test_the_model_card_says_the_data_has_no_classes():
    spec = RunSpec(name="vae", model=ModelParams(kind="vae", hidden=[64]), train={"epochs": 1})
    manifest = {
        "dataset": "custom",
        "source": "folder",
        "data_sha256": "ef" * 32,
        "counts": {"train": {"total": 30}},
        "image_shape": [3, 8, 8],
        "class_noun": "image",
        "class_names": [],
    }
    text = model_card.describe(spec, Params.model_validate(SMALL_PARAMS), manifest, "run1", {"epoch": 1})
    assert f"no classes ({NO_LABELS}" in text and "0 classes" not in text


# ------------------------------------------------------------------------------------ end to end (slow)


def _params(source: str, path: str) -> dict:
    """SMALL_PARAMS on own unlabelled data: one epoch, two seeds (so intervals and verdicts exist)."""
    params = copy.deepcopy(SMALL_PARAMS)
    params["data"] = {"dataset": "custom", "source": source, "path": path, "val_fraction": 0.1, "test_fraction": 0.2}
    params["train"]["epochs"] = 1
    params["sweep"]["seeds"] = [0, 1]
    return params


def _strict(path) -> dict:
    """A stage's JSON, refusing NaN and infinities (strict JSON)."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["npz", "folder"])
def test_dvc_repro_on_unlabelled_data(tmp_path, source):
    root = tmp_path / "p"
    path = "data/raw/u.npz" if source == "npz" else "data/raw/images"
    make_project(root, _params(source, path))
    if source == "npz":
        write_npz(root / path, n=200, shape=(10, 10))
    else:
        write_folder(root / path, n=200, size=(10, 10))
    out = dvc(["repro"], root, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"no reference classifier: {NO_LABELS}" in out.stdout
    assert _strict(root / "classifier" / "skipped.json") == {"trained": False, "reason": NO_LABELS}
    assert _strict(root / "metrics" / "classifier.json")["test/accuracy"] is None
    for model in ("ae-s0", "vae-beta1-s1"):
        values = _strict(root / "metrics" / "models" / f"{model}.json")
        assert {k: values["null_reasons"][k] for k in LABEL_KEYS} == dict.fromkeys(LABEL_KEYS, NO_LABELS)
        assert all(values[k] is None for k in LABEL_KEYS) and values["test/recon_mse_per_pixel"] > 0
    summary = _strict(root / "metrics" / "summary.json")
    assert summary["vae-beta1"]["prior/classifier_fid"]["mean"] is None
    assert summary["vae-beta1"]["test/holes_fraction_own_gaussian"]["n_seeds"] == 2
    claims = _strict(root / "metrics" / "claims.json")["claims"]["z2"]
    assert claims["holes"]["verdict"] != study.UNTESTABLE and NO_LABELS in claims["holes"]["reason"]
    page = (root / "reports" / "index.html").read_text()
    assert "The data has no labels." in page and "no labels</td>" in page and "class 0" not in page
