"""Evaluation metrics: small pure functions, each with its unit, and one runner.

Every claim of the article becomes a number here:

- compression: reconstruction error per pixel (MSE; BCE in nats), beside a PCA
  baseline at the same latent size;
- the VAE's objective on test data: KL (nats per image), negative ELBO and an
  importance-weighted NLL estimate (nats per image), active units;
- latent regularity: MMD² and a moment KL between the encoded test set and
  N(0, I), and a "holes" score (prior samples far from every encoded image);
- generation: prior samples z ~ N(0, I) decoded and scored by the reference
  classifier (aevae.evaluation.classifier): classifier-FID, confidence, class coverage; and the
  same scores for codes drawn from a Gaussian mixture fit to the model's own training
  codes (Ghosh et al. 2020's ex-post density estimation), which separates a poor
  decoder from a poorly matched prior;
- latent structure: kNN / linear-probe accuracy of the label from z, silhouette;
- interpolation: evenness of the decoded path between two codes, and its
  classifier confidence.

Unlabelled data has no reference classifier and no classes: the metrics that need them
(metric_registry.needing_labels) are NaN, and everything else is measured as for labelled data.

Images are float (N, C, H, W) in [0, 1] or uint8 (N, H, W) / (N, C, H, W) arrays; codes
are (N, latent) posterior means (the AE's code, the VAE's mu). Randomness
comes from explicit seeds only, so `evaluate_model` is deterministic.
"""

from __future__ import annotations

import math
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from aevae import atomic, metric_registry
from aevae.config import EvaluateParams
from aevae.core.losses import gaussian_nll, kl_per_dim
from aevae.core.models import EVAL_BATCH, AutoEncoder, as_images, reparameterize
from aevae.data import array_shape
from aevae.evaluation.classifier import DigitClassifier
from aevae.rng import purpose_generator

LOG_2PI = math.log(2.0 * math.pi)


# Internal knobs, not params: they bound memory or follow the papers, and no result claim depends on them.
IW_BATCH_ROWS = 16384  # decoder rows (images x samples) per importance-weighted batch
KNN_K = 5  # neighbours of the kNN probe
SILHOUETTE_MAX_POINTS = 2000  # seeded sample for the silhouette (quadratic in points)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), section 5.2
HOLES_PERCENTILE = 99.0  # nearest-neighbour radius of the encoded data that counts as "inside"
GMM_COMPONENTS = 10  # Ghosh et al. (2020), section 4: a 10-component full-covariance GMM on MNIST codes
# Sizes that keep a full-size (60k/10k) evaluation to seconds per model; the bundled 3,600 / 1,000 digits are
# below all of them, so its numbers do not change. Subsets are seeded by evaluate.seed alone, hence the same
# images for every model and seed: comparisons between models stay paired (common random numbers).
FIT_MAX_CODES = 10_000  # training codes the GMM, kNN and linear probe are fit on (a 54k fit costs 5x, buys ~nothing)
MMD_MAX_CODES = 2_000  # test codes MMD² compares with the prior samples: its kernel matrix is quadratic
# (10k codes: 1 GB per float64 copy and 25 s per model)


# ----------------------------------------------------------------- helpers


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def seeded_subset(n: int, at_most: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most `at_most` of n items; all n, in order, when n <= at_most
    or at_most is None. Depends on (n, at_most, seed) only, so every model evaluated with one seed sees the
    same items (paired comparisons)."""
    if at_most is None or n <= at_most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, at_most, replace=False))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


@torch.no_grad()
def encode(model: AutoEncoder, images) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mu (N, latent), logvar (N, latent) or None for the AE), eval mode, batched."""
    model.eval()
    x = as_images(images, _device(model))
    mus, logvars = [], []
    for i in range(0, len(x), EVAL_BATCH):
        post = model.encode(x[i : i + EVAL_BATCH])
        mus.append(post.mu.float())
        if post.logvar is not None:
            logvars.append(post.logvar.float())
    return torch.cat(mus), (torch.cat(logvars) if logvars else None)


@torch.no_grad()
def decode(model: AutoEncoder, z: torch.Tensor) -> torch.Tensor:
    """(N, latent) codes -> (N, C, H, W) images in [0, 1] (sigmoid of the logits), batched."""
    model.eval()
    z = z.to(_device(model)).float()
    return torch.cat([torch.sigmoid(model.decode(z[i : i + EVAL_BATCH]).float()) for i in range(0, len(z), EVAL_BATCH)])


# ---------------------------------------------------------- reconstruction


@torch.no_grad()
def reconstruction_error(model: AutoEncoder, images) -> dict[str, float]:
    """Test reconstruction from the mean code, per pixel: {"mse_per_pixel", "bce_nats_per_pixel"}.

    MSE is between sigmoid(logits) and x; BCE is the Bernoulli cross-entropy of
    x under the decoder's logits, in nats (x is grey-level, so this is the same
    "continuous BCE" the models train on, not a normalised likelihood).
    """
    model.eval()
    x = as_images(images, _device(model))
    mse = bce = 0.0
    for i in range(0, len(x), EVAL_BATCH):
        batch = x[i : i + EVAL_BATCH]
        logits = model.decode(model.encode(batch).mu).float()
        mse += float(((torch.sigmoid(logits) - batch) ** 2).sum())
        bce += float(F.binary_cross_entropy_with_logits(logits, batch, reduction="sum"))
    n = x[0].numel() * len(x)  # pixels: images x C*H*W
    return {"mse_per_pixel": mse / n, "bce_nats_per_pixel": bce / n}


def _flat64(images) -> np.ndarray:
    """(N, C*H*W) float64 pixels in [0, 1]; uint8 is divided in float64 so sklearn sees exact values."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images.reshape(len(images), -1).astype(np.float64) / 255.0
    x = as_images(images)
    return x.reshape(len(x), -1).double().numpy()


def pca_reconstruct(train_images, test_images, n_components: int, seed: int = 0) -> np.ndarray:
    """PCA fit on train, test projected and reconstructed: (N, C*H*W) floats (not clipped)."""
    train, test = _flat64(train_images), _flat64(test_images)
    # covariance_eigh: exact like "full" (same components), 10x faster when images outnumber pixels (54k x 784 on MNIST).
    pca = PCA(n_components=n_components, svd_solver="covariance_eigh", random_state=seed).fit(train)
    return pca.inverse_transform(pca.transform(test))


def pca_baseline(train_images, test_images, latent_dim: int, seed: int = 0, eps: float = 1e-4) -> dict[str, float]:
    """The linear baseline at one latent size: metric_registry.BASELINES' keys -> (MSE, BCE) per pixel.

    MSE per pixel of the PCA reconstruction; BCE per pixel (nats) with the
    reconstruction clipped into (eps, 1 - eps), since PCA is not confined to [0, 1].
    Compute once per latent size, not once per model.
    """
    x = _flat64(test_images)
    recon = pca_reconstruct(train_images, test_images, latent_dim, seed)
    p = np.clip(recon, eps, 1.0 - eps)
    bce = -(x * np.log(p) + (1.0 - x) * np.log1p(-p))
    mse, bce_nats = float(((recon - x) ** 2).mean()), float(bce.mean())
    return dict(zip((m.key for m in metric_registry.BASELINES), (mse, bce_nats), strict=True))


# --------------------------------------------------------------- VAE terms


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(N,) analytic KL(N(mu, sigma²) || N(0, I)) per image, nats, in float64 (losses.kl_per_dim's formula)."""
    return kl_per_dim(mu.double(), logvar.double()).sum(1)


@torch.no_grad()
def vae_terms(model: AutoEncoder, images, k: int = 64, seed: int = 0, batch_rows: int = 16384) -> dict[str, float]:
    """KL, negative ELBO and the k-sample importance-weighted NLL, nats per image (BCE decoder).

    With z_1..z_k ~ q(z|x) and log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x):
    - kl_nats_per_image: analytic KL(q(z|x) || N(0, I)), mean over images;
    - neg_elbo_nats_per_image: E_q[-log p(x|z)] (Monte Carlo, the k samples) + analytic KL;
    - iw_nll_nats_per_image: -log (1/k sum_i w_i) (Burda et al. 2016), an upper bound
      on -log p(x) that tightens as k grows; k = 1 is the ELBO.
    log p(x|z) = -BCE(logits, x) summed over pixels (x is grey-level: "continuous BCE"); for a model trained
    with recon "gaussian", log N(x; sigmoid(logits), sigma^2) with its learned sigma (nats on another scale:
    compare such models with each other only).
    The AE has no posterior: all three are NaN.
    """
    nan = float("nan")
    mu_all, logvar_all = encode(model, images)
    if logvar_all is None:
        return {"kl_nats_per_image": nan, "neg_elbo_nats_per_image": nan, "iw_nll_nats_per_image": nan}
    device = _device(model)
    x_all = as_images(images, device)
    gen = purpose_generator(seed, 1)
    chunk = max(1, batch_rows // k)
    recon_sum = iw_sum = 0.0
    for i in range(0, len(x_all), chunk):
        x, mu, logvar = x_all[i : i + chunk], mu_all[i : i + chunk], logvar_all[i : i + chunk]
        b, d = mu.shape
        eps = torch.randn(k, b, d, generator=gen).to(device)  # (k, B, latent)
        z = reparameterize(mu, logvar, eps)  # (k, B, latent)
        pixels = x[0].numel()  # C*H*W
        logits = model.decode(z.reshape(k * b, d)).float().reshape(k, b, pixels)
        if model.cfg.recon == "gaussian":  # the sigma-VAE's own likelihood, with its learned sigma
            log_px = (
                -gaussian_nll(
                    torch.sigmoid(logits).reshape(k * b, pixels),
                    x.reshape(1, b, pixels).expand(k, b, pixels).reshape(k * b, pixels),
                    model.log_sigma,
                )
                .reshape(k, b)
                .double()
            )  # (k, B)
        else:
            log_px = (
                -F.binary_cross_entropy_with_logits(
                    logits, x.reshape(1, b, pixels).expand(k, b, pixels), reduction="none"
                )
                .sum(2)
                .double()
            )  # (k, B)
        log_pz = -0.5 * (z.double().pow(2) + LOG_2PI).sum(2)  # (k, B)
        log_qz = -0.5 * (eps.double().pow(2) + logvar.double() + LOG_2PI).sum(2)  # (k, B)
        log_w = log_px + log_pz - log_qz
        iw_sum += float(-(torch.logsumexp(log_w, 0) - math.log(k)).sum())
        recon_sum += float(-log_px.mean(0).sum())
    n = len(x_all)
    kl = float(kl_to_prior(mu_all, logvar_all).mean())
    return {"kl_nats_per_image": kl, "neg_elbo_nats_per_image": recon_sum / n + kl, "iw_nll_nats_per_image": iw_sum / n}


def active_units(codes, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies over the data: Var_x(E_q[z_u]) > threshold.

    Burda et al. (2016). For the AE the "posterior mean" is the code itself, so
    the count depends on the code's (unregularised) scale.
    """
    codes = np.asarray(codes, dtype=np.float64)
    return int((codes.var(axis=0) > threshold).sum())


# ----------------------------------------------------- latent regularity


def mmd_rbf(x, y, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD² between samples x (N, d) and y (M, d); unitless, ~0 for equal distributions.

    Kernel: the mean of RBF kernels exp(-|a-b|² / (2 (s h)²)) over `scales` s,
    with h the median pairwise distance of the pooled sample (median heuristic).
    The unbiased estimate can be slightly negative when the distributions match.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    n, m = len(x), len(y)
    d2 = torch.cdist(torch.cat([x, y]), torch.cat([x, y])).pow(2)  # (N + M, N + M)
    off_diag = d2[~torch.eye(n + m, dtype=torch.bool)]
    h2 = float(off_diag.median()) or 1.0  # all points equal: any bandwidth gives 0
    k = sum(torch.exp(-d2 / (2.0 * s * s * h2)) for s in scales) / len(scales)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def moment_kl_to_prior(codes) -> float:
    """KL(N(m, S) || N(0, I)) in nats, with m, S the mean and covariance of `codes` (N, d).

    0.5 (tr S + |m|² - d - log det S). Uses only the first two moments of the
    aggregate codes (posterior means), so it is blind to holes and multi-modality;
    +inf when S is singular (a collapsed code).
    """
    codes = np.asarray(codes, dtype=np.float64)
    d = codes.shape[1]
    m = codes.mean(0)
    s = np.atleast_2d(np.cov(codes, rowvar=False))
    sign, logdet = np.linalg.slogdet(s)
    if sign <= 0:
        return float("inf")
    return float(0.5 * (np.trace(s) + m @ m - d - logdet))


def holes_fraction(codes, prior_samples, percentile: float = 99.0) -> float:
    """Share of prior samples that fall in a "hole" of the encoded data, in [0, 1].

    The radius is the `percentile` of the encoded points' distances to their own
    nearest other encoded point; a prior sample whose nearest encoded point is
    farther than that radius lies where no data was encoded. ~1 - percentile/100
    when codes and prior samples come from the same distribution.
    """
    return holes_fractions(codes, [prior_samples], percentile)[0]


def holes_fractions(codes, sample_sets, percentile: float = 99.0) -> list[float]:
    """`holes_fraction` of each (n, latent) array in `sample_sets` against the same codes (N, latent): the
    codes' neighbour index and radius are built once (the self-query over 10k codes is the costly part)."""
    codes = np.asarray(codes, dtype=np.float64)
    nn_index = NearestNeighbors(n_neighbors=2).fit(codes)
    own, _ = nn_index.kneighbors(codes)  # column 0 is the point itself
    radius = np.percentile(own[:, 1], percentile)
    out = []
    for samples in sample_sets:
        dist, _ = nn_index.kneighbors(np.asarray(samples, dtype=np.float64), n_neighbors=1)
        out.append(float((dist[:, 0] > radius).mean()))
    return out


# -------------------------------------------------------------- generation


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    w, v = scipy.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½): the Fréchet (W2²) distance of two Gaussians.

    Units: squared feature units; 0 for identical Gaussians. tr (S1 S2)^½ is
    computed as tr (S1^½ S2 S1^½)^½ (the same eigenvalues) from symmetric
    eigendecompositions, which stays exact when a covariance is singular (dead
    ReLU features), where scipy.linalg.sqrtm of the product warns and loses accuracy.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    r1 = _psd_sqrt(s1)
    middle = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of (N, d) features."""
    f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def classifier_fid(features_a, features_b) -> float:
    """Fréchet distance between the reference classifier's features of two image sets.

    Call it classifier-FID: the same formula as FID, but in this project's CNN's
    penultimate layer (aevae.evaluation.classifier), so it is comparable only within the project.
    """
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


@torch.no_grad()
def gaussian_fit_samples(codes, n: int, seed: int = 0) -> np.ndarray:
    """(n, latent) samples from a Gaussian with the codes' own mean and covariance.

    N(0, I) only suits a VAE: an AE's codes live on their own scale (often far wider), so
    prior samples land in its dense centre and find no holes. Samples from the codes' own
    Gaussian fit probe the gaps *within* the region the model uses, whatever its scale.
    """
    codes = np.asarray(codes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cov = np.atleast_2d(np.cov(codes, rowvar=False))
    return rng.multivariate_normal(codes.mean(0), cov, size=n, method="eigh")


def decode_prior_samples(model: AutoEncoder, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (n, latent) ~ N(0, I), decoded images (n, C, H, W) in [0, 1]); the same for AE and VAE."""
    z = torch.randn(n, model.cfg.latent_dim, generator=purpose_generator(seed, 2))
    return z, decode(model, z)


def gmm_samples(
    codes, n: int, seed: int = 0, n_components: int = GMM_COMPONENTS, max_codes: int = FIT_MAX_CODES
) -> np.ndarray:
    """(n, latent) float32 codes drawn from a Gaussian mixture fit to `codes` (N, latent), in random order.

    Ex-post density estimation (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders",
    section 4): instead of N(0, I), sample a density fit to the model's own training codes (posterior
    means), so a deterministic AE can generate too. Full covariances, k-means initialisation, fit on a
    seeded subsample of at most `max_codes` codes, with at most as many components as codes.
    Deterministic for a seed. Raises nothing a user can cause.
    """
    codes = np.asarray(codes, dtype=np.float64)[seeded_subset(len(codes), max_codes, seed)]
    rng = np.random.default_rng(seed)
    gmm = GaussianMixture(n_components=min(n_components, len(codes)), covariance_type="full", random_state=seed)
    # One BLAS/OpenMP thread: the fit is small (seconds), its result does not depend on the thread count, and
    # spare threads make the k-means initialisation spin on a busy machine (measured: 54 s vs 1.8 s, 3,600 codes).
    with threadpool_limits(limits=1):
        gmm.fit(codes)
    z, _ = gmm.sample(n)  # grouped by component: shuffled so any first k are a fair sample
    return z[rng.permutation(n)].astype(np.float32)


def generation_metrics(
    images, classifier: DigitClassifier, reference_features, threshold: float = 0.9
) -> dict[str, float]:
    """Scores of generated images by the reference classifier.

    - classifier_fid: vs the reference (test) features, squared feature units, lower is better;
    - mean_confidence: mean top-class probability, in [0, 1];
    - confident_fraction: share of images with top-class probability > threshold;
    - class_coverage: distinct classes among the confident images / number of classes, in [0, 1].
    """
    probs, features = classifier.scores(images)
    top, pred = probs.cpu().max(1)
    confident = top > threshold
    return {
        "classifier_fid": classifier_fid(features, reference_features),
        "mean_confidence": float(top.mean()),
        "confident_fraction": float(confident.float().mean()),
        "class_coverage": len(set(pred[confident].tolist())) / probs.shape[1],
    }


# -------------------------------------------------------- latent structure


def latent_structure(
    train_codes, train_labels, test_codes, test_labels, k: int = 5, max_points: int = 2000, seed: int = 0
) -> dict[str, float]:
    """How well z separates the digits: accuracies in [0, 1], silhouette in [-1, 1].

    - knn_accuracy: k-nearest-neighbour label of each test code among the train codes;
    - linear_probe_accuracy: logistic regression on standardised train codes, scored on test;
    - silhouette: of the test codes grouped by label (at most `max_points`, seeded sample).
    """
    train_codes, test_codes = np.asarray(train_codes, np.float64), np.asarray(test_codes, np.float64)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    knn = KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_codes, train_labels)
    n_labels = len(np.unique(test_labels))
    if 2 <= n_labels < len(test_codes):
        sample = min(len(test_codes), max_points)
        sil = float(silhouette_score(test_codes, test_labels, sample_size=sample, random_state=seed))
    else:
        sil = float("nan")
    return {
        "knn_accuracy": float(knn.score(test_codes, test_labels)),
        "linear_probe_accuracy": float(probe.score(test_codes, test_labels)),
        "silhouette": sil,
    }


# ------------------------------------------------------------ interpolation


@dataclass
class Interpolation:
    """Decoded straight latent paths between test pairs (see `interpolate`)."""

    strips: (
        np.ndarray
    )  # (pairs, steps, H, W) grey or (pairs, steps, C, H, W) colour, float32 decoded images in [0, 1], for figures
    pairs: np.ndarray  # (pairs, 2) indices into the test images
    pair_labels: np.ndarray | None  # (pairs, 2) their labels; None: unlabelled data


def interpolation_pairs(n_images: int, labels, n_pairs: int, seed: int = 0) -> np.ndarray:
    """(n_pairs, 2) seeded pairs of indices into n_images test images (distinct first indices when possible): of
    different classes when `labels` (N,) are given, else of two different images (unlabelled data)."""
    rng = np.random.default_rng(seed)
    first = rng.choice(n_images, size=n_pairs, replace=n_pairs > n_images)
    if labels is None:
        others = [np.flatnonzero(np.arange(n_images) != i) for i in first]
    else:
        labels = np.asarray(labels)
        others = [np.flatnonzero(labels != labels[i]) for i in first]
    second = np.array([rng.choice(candidates) for candidates in others], dtype=np.int64)
    return np.stack([first, second], axis=1)


@torch.no_grad()
def interpolate(model: AutoEncoder, images, labels, n_pairs: int = 32, steps: int = 10, seed: int = 0) -> Interpolation:
    """Decode the straight line between the mean codes of test pairs: of different classes, or of two different
    images when `labels` is None (unlabelled data).

    images uint8 (N, H, W) / (N, C, H, W) or (N, C, H, W) floats, labels (N,) or None; pairs from
    `interpolation_pairs` (seeded). Strips: (n_pairs, steps, *array_shape) in [0, 1], endpoints
    included (t = 0 and 1 decode the two codes themselves).
    """
    pairs = interpolation_pairs(len(images), labels, n_pairs, seed)
    mu, _ = encode(model, as_images(images)[torch.from_numpy(pairs.reshape(-1))])
    mu = mu.reshape(n_pairs, 2, -1)  # (P, 2, latent)
    t = torch.linspace(0.0, 1.0, steps, device=mu.device)[None, :, None]  # (1, S, 1)
    z = (1.0 - t) * mu[:, :1] + t * mu[:, 1:]  # (P, S, latent)
    strips = decode(model, z.reshape(n_pairs * steps, -1)).reshape(n_pairs, steps, *array_shape(model.image_shape))
    pair_labels = None if labels is None else np.asarray(labels)[pairs]
    return Interpolation(strips.cpu().numpy(), pairs, pair_labels)


def smoothness_ratio(strips) -> float:
    """Largest step / mean step along each path (L2 in pixel space), averaged over paths.

    strips: (pairs, steps, ...) images. 1.0 is perfectly even; a path that jumps
    (e.g. across a hole between clusters) scores high. A path that never moves counts as 1.
    """
    s = np.asarray(strips, dtype=np.float64)
    s = s.reshape(s.shape[0], s.shape[1], -1)
    step = np.linalg.norm(np.diff(s, axis=1), axis=2)  # (pairs, steps - 1)
    mean = step.mean(1)
    ratio = np.where(mean > 0, step.max(1) / np.where(mean > 0, mean, 1.0), 1.0)
    return float(ratio.mean())


def path_confidence(strips, classifier: DigitClassifier) -> float:
    """Mean top-class probability of the reference classifier over every image of every path."""
    x = torch.as_tensor(np.asarray(strips), dtype=torch.float32).reshape(-1, *classifier.cfg.image_shape)
    return float(classifier.predict_proba(x).max(1).values.mean())


# ------------------------------------------------------------------ runner


@dataclass
class Evaluation:
    """One model's evaluation: its metrics and the arrays the report's figures draw (`arrays`)."""

    metrics: dict[str, float]  # metric_registry.KEYS -> value, NaN where the metric does not apply
    interpolation: Interpolation
    prior_images: np.ndarray  # (n, H, W) grey / (n, C, H, W) colour decoded prior samples in [0, 1], for figures
    gmm_images: np.ndarray  # (n, H, W) / (n, C, H, W) decoded samples of the GMM fit to the training codes, for figures
    test_codes: np.ndarray  # (N, latent) posterior means of the test set, for scatter plots
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part

    def arrays(self) -> dict[str, np.ndarray]:
        """What the report's figures need, as float32 arrays (`save_arrays` / `load_arrays`); unlabelled data has no
        interp_pair_labels."""
        out = {
            "test_codes": self.test_codes.astype(np.float32),
            "prior_images": self.prior_images.astype(np.float32),
            "gmm_images": self.gmm_images.astype(np.float32),
            "interp_strips": self.interpolation.strips.astype(np.float32),
            "interp_pairs": self.interpolation.pairs,
        }
        if self.interpolation.pair_labels is not None:
            out["interp_pair_labels"] = self.interpolation.pair_labels
        return out


def save_arrays(path, evaluation: Evaluation) -> None:
    """Write `evaluation.arrays()` to a compressed .npz, atomically (the evaluate stage's metrics/arrays/<m>.npz).

    Byte-for-byte reproducible, unlike np.savez_compressed (which stamps each member with the
    current time): the same arrays give the same file, so dvc.lock's hash of it is stable.
    """
    with atomic.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as npz:
        for name, array in evaluation.arrays().items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with npz.open(member, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def load_arrays(path) -> dict[str, np.ndarray]:
    """The arrays `save_arrays` wrote: test_codes (N, latent), prior_images and gmm_images (n, H, W) or (n, C, H, W),
    interp_strips (pairs, steps, H, W) or (pairs, steps, C, H, W), interp_pairs and (labelled data only)
    interp_pair_labels (pairs, 2). No pickles."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def evaluate(
    model: AutoEncoder,
    train_images,
    train_labels,
    test_images,
    test_labels,
    classifier: DigitClassifier | None,
    params: EvaluateParams = EvaluateParams(),
    reference_features: torch.Tensor | None = None,
) -> Evaluation:
    """Every metric of one model, plus the arrays figures need. See `evaluate_model` for the keys.

    params: params.yaml `evaluate:` (seed, sample sizes, confidence threshold). Unlabelled data (labels None,
    no classifier): the metrics that need labels (metric_registry.needing_labels) are NaN, the rest as for
    labelled data, with interpolation between two different test images instead of two different classes.
    """
    p = params
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    was_training = model.training
    model.eval()
    try:
        test_x = as_images(test_images)
        # Each part's names, prefixed by the data they are measured on, are the registry's keys.
        test = {f"recon_{k}": v for k, v in reconstruction_error(model, test_x).items()}
        lap("recon")

        iw_x = test_x[torch.from_numpy(seeded_subset(len(test_x), p.iw_images, p.seed))]
        test.update(vae_terms(model, iw_x, k=p.iw_samples, seed=p.seed, batch_rows=IW_BATCH_ROWS))
        lap("vae_terms")

        test_codes = _np(encode(model, test_x)[0])
        fit = seeded_subset(len(train_images), FIT_MAX_CODES, p.seed)
        train_codes = _np(encode(model, train_images[fit])[0])  # index first: uint8 is 4x smaller
        z, prior_images = decode_prior_samples(model, p.n_prior_samples, p.seed)
        own = gaussian_fit_samples(test_codes, p.n_prior_samples, p.seed)
        mmd_codes = test_codes[seeded_subset(len(test_codes), MMD_MAX_CODES, p.seed)]
        holes_own, holes_prior = holes_fractions(test_codes, [own, _np(z)], HOLES_PERCENTILE)
        test.update(
            active_units=float(active_units(test_codes, ACTIVE_UNIT_THRESHOLD)),
            mmd_to_prior=mmd_rbf(mmd_codes, _np(z)),
            moment_kl_to_prior_nats=moment_kl_to_prior(test_codes),
            holes_fraction_own_gaussian=holes_own,
        )
        lap("regularity")

        gmm_images = decode(model, torch.from_numpy(gmm_samples(train_codes, p.n_prior_samples, p.seed)))
        lap("gmm")

        interp = interpolate(model, test_x, test_labels, p.interp_pairs, p.interp_steps, p.seed)
        lap("interpolation")
        parts = {
            "test": test,
            "prior": {"holes_fraction": holes_prior},
            "interp": {"smoothness_ratio": smoothness_ratio(interp.strips)},
        }
        measured = {f"{data}/{name}": v for data, part in parts.items() for name, v in part.items()}
        if test_labels is not None:
            codes = LabelledCodes(train_codes, np.asarray(train_labels)[fit], test_codes, test_labels)
            samples = {"prior": prior_images, "gmm": gmm_images}
            measured.update(label_metrics(classifier, p, test_x, samples, codes, interp.strips, reference_features))
            lap("labelled")
        else:
            measured.update({m.key: float("nan") for m in metric_registry.needing_labels()})
    finally:
        model.train(was_training)
    if set(measured) != set(metric_registry.KEYS):  # a part renamed without the registry: a bug, not a user error
        raise RuntimeError(
            f"evaluate measured {sorted(set(measured) ^ set(metric_registry.KEYS))} "
            "not matching metric_registry.METRICS"
        )
    kind = model.cfg.kind
    metrics = {m.key: float(measured[m.key]) if m.applies(kind) else float("nan") for m in metric_registry.METRICS}
    shape = array_shape(model.image_shape)
    images = {
        "prior_images": prior_images.reshape(-1, *shape).cpu().numpy(),
        "gmm_images": gmm_images.reshape(-1, *shape).cpu().numpy(),
    }
    return Evaluation(metrics, interp, test_codes=test_codes, timings=timings, **images)


@dataclass(frozen=True)
class LabelledCodes:
    """Codes (posterior means) with their labels, for the metrics of how z separates the classes."""

    train_codes: np.ndarray  # (N_fit, latent): the training codes the probes are fit on
    train_labels: np.ndarray  # (N_fit,)
    test_codes: np.ndarray  # (N, latent)
    test_labels: np.ndarray  # (N,)


def label_metrics(
    classifier: DigitClassifier,
    params: EvaluateParams,
    test_x: torch.Tensor,
    samples: dict[str, torch.Tensor],
    codes: LabelledCodes,
    strips: np.ndarray,
    reference_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every metric that needs labels (metric_registry.needing_labels): {registry key: value}.

    samples: {"prior": ..., "gmm": ...} decoded images (n, C, H, W) in [0, 1], scored by the reference classifier
    against its features of the test images test_x (N, C, H, W) (`reference_features`, computed here when None);
    the kNN, linear-probe and silhouette scores of the labelled codes; the classifier's confidence along the
    interpolation strips (pairs, steps, ...). Deterministic for params.seed; raises nothing a user can cause.
    """
    p = params
    if reference_features is None:
        reference_features = classifier.features(test_x)
    parts = {
        data: generation_metrics(images, classifier, reference_features, p.confidence_threshold)
        for data, images in samples.items()
    }
    c = codes
    parts["test"] = latent_structure(
        c.train_codes, c.train_labels, c.test_codes, c.test_labels, KNN_K, SILHOUETTE_MAX_POINTS, p.seed
    )
    parts["interp"] = {"mean_confidence": path_confidence(strips, classifier)}
    return {f"{data}/{name}": v for data, part in parts.items() for name, v in part.items()}


def evaluate_model(
    model: AutoEncoder,
    train_images,
    train_labels,
    test_images,
    test_labels,
    classifier: DigitClassifier | None,
    params: EvaluateParams = EvaluateParams(),
    reference_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """All metrics of one model: {key: value} for every metric_registry.METRICS key, in its order.

    test/*   on the test images: recon MSE / BCE per pixel (mean code), KL, negative ELBO and
             IW-NLL (nats per image; on at most params.iw_images of them), active units (count), MMD²
             (at most MMD_MAX_CODES codes) and moment KL (nats) of the test codes vs N(0, I), kNN /
             linear-probe accuracy (fit on at most FIT_MAX_CODES training codes), silhouette;
    prior/*  on z ~ N(0, I): holes fraction, and the decoded samples' classifier-FID (vs the
             test images), mean confidence, confident fraction, class coverage;
    gmm/*    the same four scores for as many codes drawn from a 10-component GMM fit to the
             training codes (`gmm_samples`; Ghosh et al. 2020, section 4);
    interp/* along straight lines between test codes of different classes (of two different test
             images for unlabelled data): smoothness ratio (1 = even), mean classifier confidence.

    Unlabelled data (train_labels and test_labels None, classifier None): the metrics that need labels
    (metric_registry.needing_labels: every classifier score, kNN, linear probe, silhouette) are NaN.

    A metric whose registry record excludes the model's kind is NaN: the AE gets NaN for the
    KL, negative ELBO and IW-NLL (it has no posterior, so no ELBO or likelihood); every other
    key is defined for it, with its code standing in for the posterior mean and its decoder
    fed the same prior samples as a VAE's.
    `reference_features`: the classifier's features of the test images, to compute once
    for many models. Deterministic for a given params.seed. Raises nothing a user can cause.
    """
    return evaluate(
        model, train_images, train_labels, test_images, test_labels, classifier, params, reference_features
    ).metrics
