"""The report's figures: small matplotlib functions, one figure each, Agg backend.

One look across every figure:
- one colour per class (tab10, DIGIT_COLORS[c]) wherever a class is coloured; classes are named by the
  dataset's aevae.data.ClassNames (MNIST: "digit" 0-9; Fashion-MNIST: "T-shirt/top", ...; IDX: "class 0", ...);
- one colour per model (model_colors: AEs in greys, VAEs along a colour ramp by beta),
  never a tab10 colour, so a model is not mistaken for a class;
- axes say their units; titles say what a reader should notice.

Each function returns a Figure; `encode(fig, picture)` renders it as WebP (and closes it): charts
losslessly, pictures of decoded images lossy (see `encode`). Inputs are
plain arrays: codes (N, latent), labels (N,) (None for unlabelled data: codes in one neutral colour, no class
names), images (N, H, W) grey or (N, C, H, W) colour in [0, 1]; a model
is described by its resolved config.RunSpec (name, kind, beta, latent size, recon loss),
a metric by its aevae.metric_registry record. Nothing here raises on user input.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from aevae import metric_registry  # noqa: E402
from aevae.config import RunSpec  # noqa: E402
from aevae.data import CLASS_NAMES, ClassNames  # noqa: E402
from aevae.metric_registry import Metric  # noqa: E402

DPI = 110
SUFFIX = ".webp"  # what `encode` writes: Chromium, Firefox and Safari show it; one self-contained file stays small
MIME = "image/webp"
CHART_COLOURS = 256  # the most a palette holds: exact for bars, lines and text; scatter blends snap to the nearest
# libwebp's lossy quality for grids of images: at 3x zoom the digits keep their shape and grey levels and only
# lose the nearest-neighbour blockiness; 80 costs 13% more bytes, and lossless 1.5 times (bench/report_size.py)
PICTURE_QUALITY = 75
DIGIT_COLORS = plt.get_cmap("tab10").colors  # class c -> DIGIT_COLORS[c], in every figure
MNIST = CLASS_NAMES["mnist"]  # the default naming of labels: digits
UNCOLOURED = "#3b5b7a"  # the codes of unlabelled data: one colour, neither a class's (tab10) nor a model's
PRIOR_95_RADIUS = math.sqrt(-2.0 * math.log(0.05))  # 2-d N(0, I): 95% of the mass lies inside r = 2.45
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlelocation": "left",
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}


def styled(fn):
    """Draw under the report's style without touching the caller's matplotlib settings."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def encode(fig: Figure, picture: bool = False) -> bytes:
    """The figure as WebP bytes (SUFFIX); the figure is closed (no pyplot state builds up).

    A chart (picture=False: lines, bars, scatter dots, text) is stored lossless after reducing it to a
    CHART_COLOURS palette: exact where it has no more colours (bars, lines and text on white), the nearest of
    them for the blends of overlapping translucent dots. A picture (grids of decoded or test images) is
    stored lossy at PICTURE_QUALITY: its bytes are the images' grey levels, which lossless coding keeps to
    the last invisible step at 1.5 times the size.
    Same figure, same bytes: no metadata is written, and libwebp is deterministic at a given version
    (Pillow's wheel, pinned in requirements.lock).
    """
    buf = io.BytesIO()
    # An intermediate PNG, for savefig's tight bounding box; compress_level 1: it is decoded right away.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.12, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    image = Image.open(buf).convert("RGB")  # the figure's background is opaque: its alpha channel carries nothing
    out = io.BytesIO()
    if picture:
        image.save(out, format="WEBP", quality=PICTURE_QUALITY, method=6)
    else:
        palette = image.quantize(CHART_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        palette.save(out, format="WEBP", lossless=True, method=4)
    return out.getvalue()


def label(spec: RunSpec) -> str:
    """The model's name, with its KL weight for a VAE: "vae-beta1 (β=1)"."""
    return f"{spec.name} (β={spec.model.beta:g})" if spec.model.kind == "vae" else spec.name


def model_colors(models: Sequence[RunSpec]) -> dict[str, tuple]:
    """AEs in greys, VAEs from light to dark along a colour ramp as beta grows; never tab10."""
    aes = [m for m in models if m.model.kind != "vae"]
    vaes = sorted(
        (m for m in models if m.model.kind == "vae"), key=lambda m: (m.model.beta, m.model.latent_dim, m.name)
    )
    grey = plt.get_cmap("Greys")
    ramp = plt.get_cmap("plasma")
    out = {m.name: grey(0.85 - 0.4 * i / max(1, len(aes) - 1)) for i, m in enumerate(aes)}
    out.update({m.name: ramp(0.15 + 0.65 * i / max(1, len(vaes) - 1)) for i, m in enumerate(vaes)})
    return out


def _plural(noun: str) -> str:
    """ "digit" -> "digits", "class" -> "classes"."""
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _grid_image(images: np.ndarray, nrow: int, padding: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """(N, H, W) grey or (N, C, H, W) images in [0, 1] -> (H', W', 3) tiled by torchvision's make_grid, `nrow`
    images per row (grey repeated into the three channels)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    x = (x.unsqueeze(1) if x.dim() == 3 else x).clamp(0, 1)
    return make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value).permute(1, 2, 0).numpy()


def _class_legend(ax, labels: np.ndarray | None, with_prior: bool, classes: ClassNames, **kwargs) -> None:
    """One marker per class (unlabelled data: none) and the prior's circle; no legend when that leaves nothing."""
    classes_shown = () if labels is None else np.unique(labels)
    handles = [
        Line2D([], [], ls="", marker="o", ms=7, color=DIGIT_COLORS[c % 10], label=classes.name(c))
        for c in classes_shown
    ]
    if with_prior:
        handles.append(Line2D([], [], ls="--", color="black", lw=1.2, label="95% of N(0, I)"))
    if handles:
        ax.legend(handles=handles, title=classes.noun if labels is not None else None, frameon=False, **kwargs)


def _code_colors(labels: np.ndarray | None):
    """A colour per code: its class's (tab10), or UNCOLOURED for every code of unlabelled data."""
    return UNCOLOURED if labels is None else np.asarray(DIGIT_COLORS)[np.asarray(labels) % 10]


def _scatter_codes(
    ax,
    codes: np.ndarray,
    labels: np.ndarray | None,
    prior_circle: bool,
    point_size: float = 4,
    classes: ClassNames = MNIST,
) -> None:
    """Codes coloured by class, the class name written at its median (unlabelled: one colour, no names), equal axes
    (no stretched geometry)."""
    colors = _code_colors(labels)
    ax.scatter(codes[:, 0], codes[:, 1], c=colors, s=point_size, alpha=0.55, linewidths=0, rasterized=True)
    for c in () if labels is None else np.unique(labels):
        cx, cy = np.median(codes[labels == c], axis=0)
        ax.text(
            cx,
            cy,
            classes.name(c),
            ha="center",
            va="center",
            fontsize=13 if classes is MNIST else 9,
            fontweight="bold",
            color=DIGIT_COLORS[c % 10],
            path_effects=[pe.withStroke(linewidth=3, foreground="white")],
        )
    if prior_circle:
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(PRIOR_95_RADIUS * np.cos(t), PRIOR_95_RADIUS * np.sin(t), "k--", lw=1.2)
    ax.set_aspect("equal", adjustable="datalim")


def _strip_codes(
    ax, codes: np.ndarray, labels: np.ndarray | None, point_size: float = 4, classes: ClassNames = MNIST
) -> None:
    """A 1-d code: z on x, the class (jittered) on y; unlabelled data: jitter alone, no class axis."""
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(codes))
    rows = jitter if labels is None else labels + jitter
    ax.scatter(codes[:, 0], rows, c=_code_colors(labels), s=point_size, alpha=0.55, linewidths=0, rasterized=True)
    ax.axvspan(-1.96, 1.96, color="black", alpha=0.06, lw=0)  # 95% of N(0, 1)
    ax.set_xlabel("z (latent units; shaded: 95% of N(0, 1))")
    if labels is None:
        ax.set_yticks([])
        return
    ax.set_yticks(np.unique(labels), [classes.name(c) for c in np.unique(labels)])
    ax.set_ylabel(classes.noun)


def project_2d(codes: np.ndarray, method: str, seed: int = 0, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(2-d points, indices into codes) by "pca" or "tsne"; t-SNE runs on at most max_points (seeded sample).

    1,000 points show every class's cluster; t-SNE on 2,000 cost ~16 s per model on one core (full MNIST's
    10k test codes), half the report stage's time at full size."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    codes = np.asarray(codes, dtype=np.float64)
    idx = np.arange(len(codes))
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(codes), idx
    if len(codes) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(codes), max_points, replace=False))
    perplexity = min(30.0, max(2.0, (len(idx) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: on a busy machine t-SNE's spinning threads run 20x slower, not faster (and 1 is seeded-exact).
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(codes[idx]), idx


# ---------------------------------------------------------------- per model


@styled
def latent_scatter(
    info: RunSpec, codes: np.ndarray, labels: np.ndarray | None, seed: int = 0, classes: ClassNames = MNIST
) -> Figure:
    """The test codes coloured by class (unlabelled: uncoloured): the plane itself for a 2-d code, else PCA and
    t-SNE side by side."""
    labels = None if labels is None else np.asarray(labels)
    if info.model.latent_dim == 1:
        by = f"by {classes.noun}" if labels is not None else "(unlabelled)"
        fig, ax = plt.subplots(figsize=(6.4, 5.0))
        _strip_codes(ax, codes, labels, classes=classes)
        ax.set_title(
            f"{label(info)}: the 1-d code of each test image, {by}\n"
            f"Look for {_plural(classes.noun)} that share a stretch of the line",
            fontsize=11,
        )
        return fig
    if info.model.latent_dim == 2:
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
        _scatter_codes(ax, codes, labels, prior_circle=True, classes=classes)
        ax.set_xlabel("z₁ (latent units)")
        ax.set_ylabel("z₂ (latent units)")
        what = "the code z" if info.model.kind == "ae" else "the posterior mean μ(x)"
        ax.set_title(
            f"{label(info)}: {what} of each test image\n"
            f"Look for gaps between {_cluster_noun(labels, classes)}clusters and how far they sit from N(0, I)",
            fontsize=11,
        )
        _class_legend(ax, labels, with_prior=True, classes=classes, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.4))
    for ax, method in zip(axes, ("pca", "tsne")):
        points, idx = project_2d(codes, method, seed)
        _scatter_codes(ax, points, _subset(labels, idx), prior_circle=False, point_size=5, classes=classes)
        if method == "tsne":
            ax.set_aspect("auto")  # t-SNE distances mean nothing: no need to keep them square
        name = "PCA" if method == "pca" else "t-SNE"
        ax.set_title(f"{name} of the {info.model.latent_dim}-d code ({len(idx)} test images)", fontsize=11)
        unit = "(latent units)" if method == "pca" else "(no units: t-SNE keeps neighbours, not distances)"
        ax.set_xlabel(f"{name} 1 {unit}", fontsize=9 if method == "tsne" else None)
        ax.set_ylabel(f"{name} 2")
    _class_legend(axes[1], labels, with_prior=False, classes=classes, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(
        f"{label(info)}: test codes {_coloured_by(labels, classes)} — look for separated, gap-free clusters",
        x=0.02,
        ha="left",
    )
    return fig


def _subset(labels: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if labels is None else labels[idx]


def _cluster_noun(labels: np.ndarray | None, classes: ClassNames) -> str:
    """ "digit " before "clusters" for labelled data; "" for unlabelled (its clusters are the codes' own)."""
    return "" if labels is None else f"{classes.noun} "


def _coloured_by(labels: np.ndarray | None, classes: ClassNames) -> str:
    return f"coloured by {classes.noun}" if labels is not None else "(unlabelled data: one colour)"


def manifold_grid(info: RunSpec, codes: np.ndarray, n: int = 20) -> tuple[np.ndarray, np.ndarray, str]:
    """(z1 values (n,), z2 values (n,), how they were chosen) for decoding a 2-d latent plane.

    VAE: Gaussian quantiles 0.5%..99.5% of N(0, 1) (about ±2.58), so the grid covers the prior
    evenly by probability. AE: the 0.5..99.5 percentiles of its test codes per axis, since its
    code has no prior to take quantiles from.
    """
    from scipy.stats import norm

    if info.model.kind == "vae":
        q = norm.ppf(np.linspace(0.005, 0.995, n))
        return q, q, f"Gaussian quantiles 0.5%–99.5% of N(0, 1) (±{q[-1]:.2f})"
    lo, hi = np.percentile(codes, [0.5, 99.5], axis=0)
    return (
        np.linspace(lo[0], hi[0], n),
        np.linspace(lo[1], hi[1], n),
        "evenly spaced over the 0.5–99.5 percentile range of the AE's test codes",
    )


@styled
def manifold(
    info: RunSpec, decoded: np.ndarray, z1: np.ndarray, z2: np.ndarray, how: str, classes: ClassNames = MNIST
) -> Figure:
    """decoded: (len(z2), len(z1), H, W) or (len(z2), len(z1), C, H, W), row 0 at the highest z2 (up in the picture is up in z).

    Evenly spaced grids (the AE's) get true latent axes; quantile grids (the VAE's) are even in
    probability, not in z, so their ticks name the z of a few tiles instead.
    """
    rows, cols = decoded.shape[:2]
    grid = _grid_image(decoded.reshape(-1, *decoded.shape[2:]), nrow=cols, padding=0)
    fig, ax = plt.subplots(figsize=(6.3, 6.7))
    even = np.allclose(np.diff(z1), np.diff(z1)[0]) and np.allclose(np.diff(z2), np.diff(z2)[0])
    if even:
        d1, d2 = z1[1] - z1[0], z2[1] - z2[0]
        ax.imshow(
            grid,
            interpolation="nearest",
            aspect="auto",
            extent=(z1[0] - d1 / 2, z1[-1] + d1 / 2, z2[0] - d2 / 2, z2[-1] + d2 / 2),
        )
        ax.set_xlabel("z₁ (latent units)")
        ax.set_ylabel("z₂ (latent units)")
    else:
        ax.imshow(grid, interpolation="nearest", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
        ticks = np.unique(np.linspace(0, cols - 1, 5).round().astype(int))
        ax.set_xticks(ticks, [f"{z1[i]:.2f}" for i in ticks])
        ax.set_yticks(ticks, [f"{z2[::-1][i]:.2f}" for i in ticks])
        ax.set_xlabel("z₁ (latent units; tiles evenly spaced in probability)")
        ax.set_ylabel("z₂ (latent units; tiles evenly spaced in probability)")
    ax.set_title(
        f"{label(info)}: the decoder over a {cols}×{rows} grid of the latent plane\n"
        f"Look for smooth morphing between {_plural(classes.noun)}, and for tiles that decode to no {classes.noun}",
        fontsize=11,
    )
    ax.text(0.0, -0.13, f"Grid: {how}.", transform=ax.transAxes, fontsize=9.5, style="italic", ha="left", va="top")
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    return fig


@styled
def reconstructions(
    info: RunSpec,
    originals: np.ndarray,
    recons: np.ndarray,
    labels: np.ndarray | None,
    per_row: int = 10,
    classes: ClassNames = MNIST,
) -> Figure:
    """Rows alternate input / reconstruction: each reconstruction sits right under its input; the first row's
    columns are named by the inputs' classes (unlabelled data: not named)."""
    n = len(originals)
    rows = -(-n // per_row)
    stacked = []
    for r in range(rows):
        for part in (originals[r * per_row : (r + 1) * per_row], recons[r * per_row : (r + 1) * per_row]):
            blank = np.ones((per_row - len(part), *part.shape[1:]), dtype=part.dtype)  # a short last row: white
            stacked.append(np.concatenate([part, blank]) if len(blank) else part)
    grid = _grid_image(np.concatenate(stacked), nrow=per_row, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(7.4, 0.74 * 2 * rows + 0.9))
    ax.imshow(grid, interpolation="nearest")
    tile_h, tile = originals.shape[-2] + 2, originals.shape[-1] + 2  # an image's pixels + 2 of padding (MNIST: 30)
    ax.set_yticks([tile_h * (i + 0.5) + 1 for i in range(2 * rows)], ["input", "recon"] * rows)
    cols = min(per_row, n)  # a test split of few classes fills less than one row
    if labels is None:
        ax.set_xticks([])
    else:
        names = [classes.name(c) for c in labels[:cols]]
        ax.set_xticks(
            [tile * (i + 0.5) + 1 for i in range(cols)],
            names,
            rotation=0 if classes is MNIST else 40,
            ha="center" if classes is MNIST else "right",
        )
        ax.set_xlabel(f"{classes.noun} (label of the input)")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(
        f"{label(info)}: test inputs and their reconstructions from the mean code\n"
        f"Look for which details a {info.model.latent_dim}-number code keeps and which it blurs",
        fontsize=11,
    )
    return fig


@styled
def prior_samples(
    info: RunSpec,
    images: np.ndarray,
    per_row: int = 10,
    confident: tuple[float, int, float] | None = None,
    classes: ClassNames = MNIST,
) -> Figure:
    """Decoded z ~ N(0, I); the same z for every model of the same latent size.

    confident: (share of the evaluate stage's prior samples the classifier is confident on,
    how many it scored, the top-class probability it takes to count as confident).
    """
    rows = -(-len(images) // per_row)
    grid = _grid_image(images, nrow=per_row, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(6.0, 0.6 * rows + 1.1))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if confident is not None:
        share, n, threshold = confident
        ax.set_xlabel(
            f"The reference classifier is confident (top-class p > {threshold:g})\n"
            f"on {share:.0%} of the {n} prior samples the evaluate stage scored",
            fontsize=10.5,
        )
    ax.set_title(
        f"{label(info)}: {len(images)} random codes z ~ N(0, I), decoded\n"
        f"Look for {_plural(classes.noun)} vs blurs: a blur is a code\nthat fell where no {classes.noun} was encoded",
        fontsize=11,
    )
    return fig


@styled
def prior_vs_gmm(
    info: RunSpec,
    prior_images: np.ndarray,
    gmm_images: np.ndarray,
    per_row: int = 10,
    confident: tuple[float, float, int, float] | None = None,
    classes: ClassNames = MNIST,
) -> Figure:
    """Decoded z ~ N(0, I) (left) beside decoded codes of a GMM fit to the training codes (right).

    images: (n, H, W) or (n, C, H, W) in [0, 1], the same number on both sides. confident: (prior share, GMM share
    the classifier is confident on, how many samples each share is over, the top-class probability
    it takes to count). Ex-post density estimation: Ghosh et al. (2020), section 4.
    """
    rows = -(-len(prior_images) // per_row)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 0.55 * rows + 1.6))
    shares = confident[:2] if confident else (None, None)
    for ax, images, what, share in zip(
        axes, (prior_images, gmm_images), ("z ~ N(0, I)", "z ~ GMM fit to the training codes"), shares
    ):
        ax.imshow(_grid_image(images, nrow=per_row, padding=2, pad_value=1.0), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(what, fontsize=11, loc="center")
        if share is not None:
            ax.set_xlabel(
                f"classifier confident (top-class p > {confident[3]:g}) on {share:.0%} of {confident[2]}", fontsize=10.5
            )
    fig.suptitle(
        f"{label(info)}: {len(prior_images)} decoded codes from the prior (left) and from a 10-component GMM\n"
        f"fit to its own training codes (right). Look for {_plural(classes.noun)} on the right where the left has blurs:\n"
        "then the decoder is fine and N(0, I) is the wrong density to sample",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


@styled
def interpolation_strips(
    info: RunSpec,
    strips: np.ndarray,
    pair_labels: np.ndarray | None,
    endpoints: np.ndarray | None = None,
    classes: ClassNames = MNIST,
) -> Figure:
    """strips: (pairs, steps, H, W) or (pairs, steps, C, H, W) decoded along straight lines between the codes of two test images.

    pair_labels: (pairs, 2) their classes, named beside each strip; None (unlabelled data): not named.

    endpoints: (pairs, 2, H, W) or (pairs, 2, C, H, W) the two test images themselves, drawn left and right of each strip.
    """
    pairs, steps = strips.shape[:2]
    tile_h, tile = strips.shape[-2] + 2, strips.shape[-1] + 2  # an image's pixels + 2 of padding (MNIST: 30)
    strip_px, end_px = tile * steps + 2, tile + 2  # widths of the tiled images, so all share one scale
    ratios = [end_px, strip_px, end_px] if endpoints is not None else [strip_px]
    height = 0.5 * pairs * tile_h / tile + 1.3
    fig, axes = plt.subplots(
        1,
        len(ratios),
        figsize=(0.5 * sum(ratios) / tile + 1.2, height),
        gridspec_kw={"width_ratios": ratios, "wspace": 0.06},
        squeeze=False,
    )
    fig.subplots_adjust(top=1 - 0.85 / height, bottom=0.5 / height)
    axes = axes[0]
    mid = axes[1] if endpoints is not None else axes[0]
    mid.imshow(_grid_image(strips.reshape(-1, *strips.shape[2:]), nrow=steps, pad_value=1.0), interpolation="nearest")
    mid.set_xticks([])
    mid.set_yticks([])
    mid.set_title("decoded along the line between their codes", fontsize=10.5, loc="center")
    mid.set_xlabel(f"{steps} points, evenly spaced from the code of x₁ (left) to the code of x₂ (right)", fontsize=10)
    if endpoints is not None:
        for ax, k, name in ((axes[0], 0, "x₁"), (axes[2], 1, "x₂")):
            ax.imshow(_grid_image(endpoints[:, k], nrow=1, pad_value=1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_title(name, fontsize=10.5, loc="center")
            ax.set_yticks([])
    if pair_labels is not None:
        axes[0].set_yticks(
            [tile_h * (i + 0.5) + 1 for i in range(pairs)],
            [f"{classes.name(a)} → {classes.name(b)}" for a, b in pair_labels],
        )
    for ax in axes:
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(
        f"{label(info)}: straight lines between the codes of two test images x₁ and x₂\n"
        f"Look for gradual morphing vs sudden jumps or non-{_plural(classes.noun)} mid-way",
        x=0.02,
        ha="left",
        fontsize=11,
    )
    return fig


@styled
def training_curves(info: RunSpec, history: list[dict], other_seeds: dict[int, list[dict]] | None = None) -> Figure:
    """Train and validation loss per epoch from history.csv; a VAE also gets its KL term.

    other_seeds: {seed: history} of the same member and latent size trained with other seeds, drawn as
    thin faint lines behind this model's, so a reader sees how much the curves move with the seed.
    """
    epochs = [int(float(r["epoch"])) for r in history]

    def col(key: str, rows: list[dict] = history) -> list[float]:
        return [float(r[key]) for r in rows]

    def others(ax, key: str, color: str, legend: bool) -> None:
        for n, rows in enumerate((other_seeds or {}).values()):
            ax.plot(
                [int(float(r["epoch"])) for r in rows],
                col(key, rows),
                "-",
                lw=0.9,
                alpha=0.45,
                color=color,
                label=f"other seeds ({', '.join(map(str, other_seeds))})" if legend and n == 0 else None,
            )

    unit = "squared error summed over pixels, per image" if info.model.recon == "mse" else "nats per image"
    panels = 2 if info.model.kind == "vae" else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.9 * panels, 3.8), squeeze=False)
    ax = axes[0, 0]
    others(ax, "train/loss_per_image", "#444444", legend=False)
    others(ax, "val/loss_per_image", "#d95f02", legend=True)
    ax.plot(epochs, col("train/loss_per_image"), "-o", ms=3, color="#444444", label="train")
    ax.plot(epochs, col("val/loss_per_image"), "-o", ms=3, color="#d95f02", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({unit})" if info.model.kind == "ae" else f"loss = recon + β·KL\n({unit})")
    ax.set_title("Total loss", fontsize=11)
    ax.legend(frameon=False)
    if info.model.kind == "vae":
        ax = axes[0, 1]
        others(ax, "train/kl_nats_per_image", "#444444", legend=False)
        others(ax, "val/kl_nats_per_image", "#d95f02", legend=False)
        ax.plot(epochs, col("train/kl_nats_per_image"), "-o", ms=3, color="#444444", label="train")
        ax.plot(epochs, col("val/kl_nats_per_image"), "-o", ms=3, color="#d95f02", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("KL(q(z|x) ‖ N(0, I)) (nats per image)")
        ax.set_title("KL term (unweighted)", fontsize=11)
        ax.legend(frameon=False)
    for a in axes[0]:
        a.xaxis.get_major_locator().set_params(integer=True)
        a.grid(alpha=0.3)
    seed = f" (seed {info.seed}; faint: the other seeds)" if other_seeds else ""
    fig.suptitle(
        f"{label(info)}: training curves{seed} — validation close to train means no overfitting",
        x=0.02,
        ha="left",
        fontsize=12,
    )
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ across the sweep


@styled
def latent_side_by_side(
    infos: Sequence[RunSpec],
    codes: Sequence[np.ndarray],
    labels: np.ndarray | None,
    max_cols: int = 3,
    classes: ClassNames = MNIST,
) -> Figure:
    """Every model's test codes in one grid, same colour per class (unlabelled: one colour); >2-d codes are shown
    by PCA."""
    n = len(infos)
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols + 1.3, 3.6 * rows + 0.6), squeeze=False)
    for ax, info, z in zip(axes.flat, infos, codes):
        if info.model.latent_dim == 1:
            _strip_codes(ax, z, labels, point_size=3, classes=classes)
            ax.set_title(f"{label(info)} (1-d code)", fontsize=11, loc="center")
        elif info.model.latent_dim == 2:
            _scatter_codes(ax, z, labels, prior_circle=True, point_size=3, classes=classes)
            ax.set_xlabel("z₁")
            ax.set_ylabel("z₂")
            ax.set_title(label(info), fontsize=11, loc="center")
        else:
            points, _ = project_2d(z, "pca")
            _scatter_codes(ax, points, labels, prior_circle=False, point_size=3, classes=classes)
            ax.set_xlabel("PCA 1")
            ax.set_ylabel("PCA 2")
            ax.set_title(f"{label(info)}\nPCA of the {info.model.latent_dim}-d code", fontsize=11, loc="center")
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    _class_legend(
        axes[0, -1],
        labels,
        with_prior=any(i.model.latent_dim == 2 for i in infos),
        classes=classes,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    fig.suptitle(
        f"Test codes of every model, {_coloured_by(labels, classes)} (latent units; each panel has its own scale)\n"
        "Look for: AE clusters spread beyond the dashed N(0, I) circle with gaps between them;\n"
        "VAE clusters packed inside it and overlapping, more so as β grows",
        x=0.01,
        ha="left",
        fontsize=12,
    )
    fig.tight_layout()
    return fig


@styled
def rate_distortion(
    infos: Sequence[RunSpec],
    metrics: dict[str, dict[str, float]],
    bounds: dict[str, dict[str, tuple[float, float]]] | None,
    pixels: int,
) -> Figure:
    """One point per VAE (x: KL nats per image, y: recon nats per image), labelled with beta; AEs as lines.

    The axes' metrics are the registry's "rate" and "distortion" roles; the distortion is per pixel
    in metrics and drawn per image (x `pixels`, C*H*W of the data's images; MNIST's 784). metrics: model name -> {key: value} (means over seeds);
    bounds: model name -> {key: (low, high)}, the 95% intervals drawn as error bars in both directions
    (none where a bound is NaN: one seed).
    """
    colors = model_colors(infos)
    fig, ax = plt.subplots(figsize=(7.6, 5.2))

    rate_key, distortion_key = metric_registry.for_figure("rate").key, metric_registry.for_figure("distortion").key

    def distortion(name: str) -> float:
        return metrics[name][distortion_key] * pixels  # per pixel -> per image

    vaes = [i for i in infos if i.model.kind == "vae" and _finite(metrics[i.name].get(rate_key))]
    dims = sorted({i.model.latent_dim for i in vaes})
    markers = "osD^v<>"
    for k, dim in enumerate(dims):
        series = sorted((i for i in vaes if i.model.latent_dim == dim), key=lambda i: i.model.beta)
        x = [metrics[i.name][rate_key] for i in series]
        y = [distortion(i.name) for i in series]
        ax.plot(x, y, "-", color="#999999", lw=1, zorder=1)
        for i, xi, yi in zip(series, x, y):
            b = (bounds or {}).get(i.name, {})
            xb, yb = b.get(rate_key, (math.nan, math.nan)), b.get(distortion_key, (math.nan, math.nan))
            if all(_finite(v) for v in (*xb, *yb)):
                ax.errorbar(
                    [xi],
                    [yi],
                    xerr=[[xi - xb[0]], [xb[1] - xi]],
                    yerr=[[yi - yb[0] * pixels], [yb[1] * pixels - yi]],
                    fmt="none",
                    ecolor="#555555",
                    elinewidth=1,
                    capsize=3,
                    zorder=2,
                )
            ax.scatter(
                [xi],
                [yi],
                s=70,
                marker=markers[k % len(markers)],
                color=colors[i.name],
                zorder=3,
                edgecolors="black",
                linewidths=0.6,
            )
            ax.annotate(f"β={i.model.beta:g}", (xi, yi), textcoords="offset points", xytext=(7, 6), fontsize=10)
        if len(dims) > 1:
            ax.scatter([], [], marker=markers[k % len(markers)], color="#777777", label=f"VAE, latent {dim}")
    xs = [metrics[i.name][rate_key] for i in vaes]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("rate: KL(q(z|x) ‖ N(0, I)) (nats per image, log scale)")
    else:
        ax.set_xlabel("rate: KL(q(z|x) ‖ N(0, I)) (nats per image)")
    for i in infos:
        if i.model.kind != "vae":
            ax.axhline(
                distortion(i.name),
                color=colors[i.name],
                ls="--",
                lw=1.6,
                zorder=2,
                label=f"{i.name}: no KL term, so no rate",
            )
    ax.set_ylabel("distortion: test reconstruction error\n(BCE from the mean code, nats per image)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=True, framealpha=0.9, edgecolor="none", loc="best", fontsize=9.5)
    ax.set_title(
        "Rate–distortion across the KL weight β\nLook for: lower β buys a lower distortion with a "
        "costlier code; β=0 reaching the AE",
        fontsize=11,
    )
    return fig


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


@styled
def metric_bars(
    title: str,
    metrics_list: Sequence[Metric],
    infos: Sequence[RunSpec],
    metrics: dict[str, dict[str, float]],
    bounds: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> Figure:
    """One small bar chart per metric, one bar per model (model colours), values written on the bars.

    metrics: model name -> {key: value} (the mean over seeds); NaN or missing draws an "n/a" stub.
    bounds: model name -> {key: (low, high)}, the 95% interval drawn as an error bar; a NaN bound
    (one seed) draws none. A metric with a `reference` (a PCA baseline key) gets it as a dashed
    line; `log` metrics a log axis.
    """
    colors = model_colors(infos)
    n = len(metrics_list)
    cols = n if n <= 3 else -(-n // 2)  # at most 3 across, so the figure is not shrunk on the page
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(3.3, 0.55 * len(infos) + 1.3) * cols, 3.5 * rows + 0.5), squeeze=False
    )
    x = np.arange(len(infos))
    has_reference = False
    for ax, m in zip(axes.flat, metrics_list):
        vals = [metrics[i.name].get(m.key) for i in infos]
        ok = [_finite(v) for v in vals]
        finite = [v for v, good in zip(vals, ok) if good]
        log = m.log and bool(finite) and min(finite) > 0
        floor = min(finite) / 3 if log else 0.0
        heights = [v if good else floor for v, good in zip(vals, ok)]
        ax.bar(
            x,
            [h - floor for h in heights],
            bottom=floor,
            color=[colors[i.name] for i in infos],
            edgecolor="black",
            linewidth=0.5,
            width=0.75,
        )
        if log:
            ax.set_yscale("log")
        lows, highs = _error_bar(ax, x, vals, [(bounds or {}).get(i.name, {}).get(m.key) for i in infos])
        for xi, v, good, lo, hi in zip(x, vals, ok, lows, highs):
            below = good and v < 0  # a negative bar hangs down: its label goes under it
            anchor = (lo if below else hi) if good else floor  # the label clears the error bar
            ax.annotate(
                _fmt(v) if good else "n/a",
                (xi, anchor),
                textcoords="offset points",
                xytext=(0, -2 if below else 2),
                ha="center",
                va="top" if below else "bottom",
                fontsize=9,
                color="black" if good else "#777777",
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            )
        tops = [h for h, good in zip(highs, ok) if good]
        top = max(tops) if tops else 1.0
        if m.reference:
            refs = [metrics[i.name].get(m.reference) for i in infos]
            if all(_finite(r) for r in refs):
                has_reference = True
                if len(set(refs)) == 1:
                    ax.axhline(refs[0], color="black", ls="--", lw=1.3)
                else:
                    for xi, r in zip(x, refs):
                        ax.hlines(r, xi - 0.45, xi + 0.45, color="black", ls="--", lw=1.3)
                top = max(top, *refs)
        if log:
            ax.set_ylim(floor, top * 4)
        else:
            bottom = min(0.0, min(lo for lo, good in zip(lows, ok) if good)) if finite else 0.0
            ax.set_ylim(bottom * 1.35 if bottom < 0 else 0.0, top * 1.2 if top > 0 else 1.0)
        notes = [{"min": "lower is better", "max": "higher is better"}.get(m.direction or "")] + ["log scale"] * log
        note = ", ".join(n for n in notes if n)
        ax.set_title(m.label + (f"\n({note})" if note else ""), fontsize=10.5, loc="center")
        ax.set_xticks(x, [i.name for i in infos], rotation=35, ha="right", fontsize=9.5)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    if has_reference:
        title += "\n(dashed line: PCA with as many components as the latent size)"
    fig.suptitle(title, x=0.01, ha="left", fontsize=12)
    fig.tight_layout()
    return fig


def _error_bar(ax, x: np.ndarray, vals: list, bounds: list) -> tuple[list[float], list[float]]:
    """Draw each finite (low, high) interval as a black error bar at its bar; return every bar's (lows, highs),
    the value itself where there is no interval (one seed, a metric that does not apply)."""
    lows, highs = [], []
    for xi, v, b in zip(x, vals, bounds):
        if _finite(v) and b is not None and _finite(b[0]) and _finite(b[1]):
            ax.errorbar(
                [xi],
                [v],
                yerr=[[v - b[0]], [b[1] - v]],
                fmt="none",
                ecolor="black",
                elinewidth=1.1,
                capsize=3.5,
                zorder=4,
            )
            lows.append(min(v, b[0]))
            highs.append(max(v, b[1]))
        else:
            lows.append(v)
            highs.append(v)
    return lows, highs


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"
