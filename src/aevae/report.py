"""The comparison report: figures + one self-contained HTML page + a Markdown summary.

make_report() reads the trained models, the evaluate stage's metrics and the
prepared test split, draws every figure (aevae.plots) and writes:

    reports/index.html      one file, PNGs embedded as base64 data URIs, no external CSS/JS
    reports/summary.md      the summary table in Markdown (for PRs)
    reports/figures/*.png   every figure on its own
    reports/curves/<m>.csv  each model's history.csv, for `dvc plots show`

Every output is written atomically. Nothing here knows MLflow (tracking.log_report does).
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aevae import atomic, metrics, model_store, plots
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import UserError
from aevae.models import as_images
from aevae.plots import Metric, ModelInfo

TITLE = "AutoEncoder vs Variational AutoEncoder: the comparison report"
DEFAULT_TEST_SPLIT = "the source's own test set"


@dataclass(frozen=True)
class ReportPaths:
    """Where the inputs are read and the report is written; relative to the project root by default."""

    models: Path = Path("models")
    summary: Path = Path("metrics/summary.json")
    classifier: Path = Path("metrics/classifier.json")
    prepared: Path = Path("data/prepared")
    out: Path = Path("reports")


@dataclass(frozen=True)
class ReportSettings:
    seed: int = 0  # the evaluate stage's seed: the same prior samples and interpolation pairs
    interp_pairs: int = 8  # strips drawn per model
    interp_steps: int = 10  # decoded images per strip, endpoints included
    recon_per_class: int = 2  # test inputs per digit in the reconstruction figure
    prior_images: int = 100  # decoded prior samples shown per model
    manifold_side: int = 20  # tiles per side of the decoded latent plane
    max_scatter: int = 5000  # test codes drawn per scatter (seeded sample, the same for every model)


# ------------------------------------------------------------- the claims

# The article's claims (design.md), in the order the report tests them.
CLAIMS = {
    "compress": "An AE compresses: encoder e(x) → z, decoder d(z) → x, trained on reconstruction error.",
    "pca": "A linear AE's latent space is close to PCA; non-linearity compresses better.",
    "holes": "An AE's latent space has gaps; random latent vectors decode to garbage.",
    "reparam": "A VAE's encoder outputs a mean and a std; z is sampled with the reparameterization trick.",
    "loss": "VAE loss = reconstruction + KL(q(z|x) ‖ N(0, I)).",
    "regular": "A VAE's latent space is regular: clusters overlap, no gaps.",
    "interp": "Moving between clusters decodes to smooth transitions.",
    "beta0": "Without the KL term a VAE behaves like an AE.",
    "roles": "An AE is for compression, a VAE for generation.",
}

# Summary table: (key, header with unit, better direction or None, format), in column groups.
SUMMARY_GROUPS = (
    ("reconstruction", (("test/recon_mse_per_pixel", "MSE per pixel", "lower", ".4f"),
                        ("test/recon_bce_nats_per_pixel", "BCE nats / pixel", "lower", ".4f"))),
    ("VAE objective", (("test/kl_nats_per_image", "KL nats / image", None, ".2f"),
                       ("test/neg_elbo_nats_per_image", "−ELBO nats / image", "lower", ".1f"),
                       ("test/iw_nll_nats_per_image", "IW-NLL nats / image", "lower", ".1f"))),
    ("latent codes", (("test/mmd_to_prior", "MMD² vs N(0, I)", "lower", ".4f"),
                      ("test/holes_fraction_own_gaussian", "holes in own range (share)", "lower", ".3f"))),
    ("prior samples z ~ N(0, I)", (("prior/holes_fraction", "holes (share)", "lower", ".3f"),
                                   ("prior/classifier_fid", "classifier-FID", "lower", ".1f"),
                                   ("prior/confident_fraction", "confident (share)", "higher", ".3f"),
                                   ("prior/class_coverage", "classes covered (share)", "higher", ".2f"))),
    ("structure", (("test/knn_accuracy", "kNN accuracy", "higher", ".3f"),)),
    ("interpolation", (("interp/smoothness_ratio", "max / mean step", "lower", ".2f"),
                       ("interp/mean_confidence", "confidence", "higher", ".3f"))),
)
SUMMARY_COLUMNS = tuple(col for _, cols in SUMMARY_GROUPS for col in cols)

# Every metric with its unit, for the full table and the bar charts.
METRICS = {
    "test/recon_mse_per_pixel": Metric("test/recon_mse_per_pixel", "recon MSE per pixel", "lower",
                                       reference="pca/recon_mse_per_pixel"),
    "test/recon_bce_nats_per_pixel": Metric("test/recon_bce_nats_per_pixel", "recon BCE (nats per pixel)", "lower",
                                            reference="pca/recon_bce_nats_per_pixel"),
    "test/kl_nats_per_image": Metric("test/kl_nats_per_image", "KL to N(0, I) (nats per image)"),
    "test/neg_elbo_nats_per_image": Metric("test/neg_elbo_nats_per_image", "−ELBO (nats per image)", "lower"),
    "test/iw_nll_nats_per_image": Metric("test/iw_nll_nats_per_image", "IW-NLL bound (nats per image)", "lower"),
    "test/active_units": Metric("test/active_units", "active units (count)"),
    "test/mmd_to_prior": Metric("test/mmd_to_prior", "MMD² codes vs N(0, I) (unitless)", "lower"),
    "test/moment_kl_to_prior_nats": Metric("test/moment_kl_to_prior_nats",
                                           "moment KL codes vs N(0, I) (nats, log scale)", "lower", log=True),
    "prior/holes_fraction": Metric("prior/holes_fraction", "holes (share of prior samples)", "lower"),
    "test/holes_fraction_own_gaussian": Metric("test/holes_fraction_own_gaussian",
                                               "holes in the codes' own range (share)", "lower"),
    "prior/classifier_fid": Metric("prior/classifier_fid", "classifier-FID (feature units²)", "lower"),
    "prior/mean_confidence": Metric("prior/mean_confidence", "mean classifier confidence", "higher"),
    "prior/confident_fraction": Metric("prior/confident_fraction", "confident share", "higher"),
    "prior/class_coverage": Metric("prior/class_coverage", "class coverage (share of 10)", "higher"),
    "test/knn_accuracy": Metric("test/knn_accuracy", "kNN accuracy of digit from z", "higher"),
    "test/linear_probe_accuracy": Metric("test/linear_probe_accuracy", "linear-probe accuracy", "higher"),
    "test/silhouette": Metric("test/silhouette", "silhouette of digits in z (−1..1)", "higher"),
    "interp/smoothness_ratio": Metric("interp/smoothness_ratio", "largest / mean step (1 = even)", "lower"),
    "interp/mean_confidence": Metric("interp/mean_confidence", "classifier confidence on paths", "higher"),
}

# Bar-chart groups: (slug, title, metric keys, caption, claims)
GROUPS = (
    ("compression", "Compression: test reconstruction error, with PCA at the same latent size",
     ("test/recon_mse_per_pixel", "test/recon_bce_nats_per_pixel"),
     "Reconstruction error of the test set from the mean code. The dashed line is PCA with as many components as "
     "the latent size. Look for: <b>ae-linear</b> on the PCA line (a linear AE finds PCA's subspace), the "
     "non-linear AE below it, and VAEs paying a little reconstruction for their regular code.",
     ("compress", "pca")),
    ("generation", "Generation: decoded prior samples z ~ N(0, I), scored by the reference classifier",
     ("prior/holes_fraction", "prior/classifier_fid", "prior/confident_fraction", "prior/class_coverage"),
     "Each model decodes the same random codes z ~ N(0, I). <b>holes</b>: share of those codes farther from every "
     "encoded test image than 99% of test codes are from their nearest neighbour. Look for: AEs with more holes, "
     "a higher FID and fewer confident digits than the VAEs with β ≥ 1.",
     ("holes", "roles")),
    ("regularity", "Latent regularity: how close the encoded test set is to the prior N(0, I)",
     ("test/mmd_to_prior", "test/moment_kl_to_prior_nats", "test/holes_fraction_own_gaussian", "test/active_units"),
     "MMD² and the moment KL compare the test codes (posterior means) with N(0, I); ~0 means the code fills the "
     "prior. <b>holes in own range</b>: share of samples from a Gaussian fit to the codes themselves that land far "
     "from every code — gaps inside the region a model uses, whatever its scale (N(0, I) probes only a VAE's). "
     "Look for: VAEs near 0, falling as β grows; AEs and the β=0 VAE far from it, with more holes.",
     ("regular", "beta0")),
    ("structure", "Latent structure: how well z separates the digits",
     ("test/knn_accuracy", "test/linear_probe_accuracy", "test/silhouette"),
     "Label accuracy predicted from z alone (fit on train codes, scored on test codes) and the silhouette of the "
     "digit clusters. Look for: the price of regularity — overlapping VAE clusters separate digits less well.",
     ("regular",)),
    ("objective", "The VAE objective on test data (AEs have no posterior: n/a)",
     ("test/kl_nats_per_image", "test/neg_elbo_nats_per_image", "test/iw_nll_nats_per_image"),
     "KL(q(z|x) ‖ N(0, I)), the negative ELBO (reconstruction + KL) and the importance-weighted NLL bound, "
     "nats per image. Look for: KL shrinking as β grows, and IW-NLL ≤ −ELBO for every VAE.",
     ("loss", "beta0")),
    ("interpolation", "Interpolation between test codes of different digits",
     ("interp/smoothness_ratio", "interp/mean_confidence"),
     "Along straight lines between two test codes: the largest pixel-space step over the mean step (1 = even "
     "morphing) and the classifier's confidence on the images along the way. Look for: VAEs with smaller jumps.",
     ("interp",)),
)


# ------------------------------------------------------------- the figures


@dataclass
class Figure:
    slug: str  # file name without .png
    title: str
    caption: str  # HTML
    png: bytes
    model: str | None = None  # None: a figure across the sweep
    claims: tuple[str, ...] = ()
    wide: bool = False  # per-model figure that takes a whole row of the page


@dataclass
class Report:
    figures: list[Figure]
    html: str
    markdown: str
    curves: dict[str, str] = field(default_factory=dict)  # model -> history.csv text

    def figures_by_model(self, figures_dir: Path) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for f in self.figures:
            if f.model is not None:
                out.setdefault(f.model, []).append(figures_dir / f"{f.slug}.png")
        return out


def _info(spec) -> ModelInfo:
    m = spec.model
    return ModelInfo(name=spec.name, kind=m.kind, beta=m.beta, latent_dim=m.latent_dim, recon=m.recon)


def _order(info: ModelInfo) -> tuple:
    # AEs first, then VAEs by beta: the sweep reads left to right from "no KL" to "strong KL".
    return (info.latent_dim, info.kind == "vae", info.beta, info.name)


def _read_history(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _as_float(values: dict) -> dict[str, float]:
    # The evaluate stage writes NaN (a metric that does not apply) as null.
    return {k: (float("nan") if v is None else float(v)) for k, v in values.items()}


def _recon_examples(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` test images of each class, laid out class 0..9, then again."""
    firsts = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.array([f[r] for r in range(per_class) for f in firsts if len(f) > r])


@torch.no_grad()
def model_figures(info: ModelInfo, model, test_images: np.ndarray, test_labels: np.ndarray, history: list[dict],
                  values: dict[str, float], s: ReportSettings, scatter_idx: np.ndarray,
                  scored: tuple[int, float] | None = None) -> tuple[list[Figure], np.ndarray]:
    """The six figures of one model, and its test codes (N, latent) for the sweep figures.

    scored: (prior samples the evaluate stage scored, its confidence threshold), to quote beside the samples.
    """
    name = info.name
    codes = metrics.encode(model, test_images)[0].cpu().numpy()  # (N, latent) posterior means
    figs = []

    fig = plots.latent_scatter(info, codes[scatter_idx], test_labels[scatter_idx], seed=s.seed)
    cap = ("Each dot is a test image at its code (the AE's z, the VAE's posterior mean μ). The dashed circle "
           "holds 95% of the prior N(0, I), where prior samples land. Look for gaps between clusters and codes "
           "far outside the circle (AE) vs clusters packed inside it (VAE).") if info.latent_dim == 2 else (
           "PCA keeps distances, t-SNE keeps neighbourhoods. Look for whether the digits form separated groups.")
    figs.append(Figure(f"{name}-latent", "Latent space", cap, plots.png(fig), name, ("holes", "regular"),
                       wide=info.latent_dim != 2))

    if info.latent_dim == 2:
        z1, z2, how = plots.manifold_grid(info, codes, s.manifold_side)
        zz = torch.tensor([[a, b] for b in z2[::-1] for a in z1], dtype=torch.float32)  # top row = highest z2
        decoded = metrics.decode(model, zz).cpu().numpy().reshape(len(z2), len(z1), 28, 28)
        fig = plots.manifold(info, decoded, z1, z2, how)
        cap = ("The decoder's output at evenly spaced codes. " + (
            "For the VAE the grid follows N(0, 1) quantiles, so every tile is a likely prior sample." if
            info.kind == "vae" else "For the AE the grid spans its own test codes (it has no prior), so blank or "
            "smeared tiles are codes between clusters that decode to no digit.") +
            " Look for smooth morphing between neighbouring tiles and for tiles that are not digits.")
        figs.append(Figure(f"{name}-manifold", "Decoded latent plane", cap, plots.png(fig), name,
                           ("holes", "regular", "interp")))

    idx = _recon_examples(test_labels, s.recon_per_class)
    x = as_images(test_images[idx])
    recon = metrics.decode(model, metrics.encode(model, x)[0]).cpu().numpy().reshape(-1, 28, 28)
    fig = plots.reconstructions(info, x.numpy().reshape(-1, 28, 28), recon, test_labels[idx])
    cap = (f"Test recon MSE per pixel {values['test/recon_mse_per_pixel']:.4f} over the whole test set. Look for "
           "strokes kept (identity, slant) and lost (thickness, small loops), and digits reconstructed as another.")
    figs.append(Figure(f"{name}-reconstructions", "Reconstructions", cap, plots.png(fig), name, ("compress",)))

    _, samples = metrics.prior_samples(model, s.prior_images, s.seed)
    confident = values.get("prior/confident_fraction")
    conf = (confident, *scored) if scored and confident is not None and math.isfinite(confident) else None
    fig = plots.prior_samples(info, samples.cpu().numpy().reshape(-1, 28, 28), confident=conf)
    cap = ("Random codes from N(0, I) through the decoder — how a VAE generates. Every model of the same latent "
           "size decodes the same codes. Look for recognisable digits of every class vs blurs and hybrids.")
    figs.append(Figure(f"{name}-prior-samples", "Prior samples", cap, plots.png(fig), name, ("holes", "roles")))

    interp = metrics.interpolate(model, test_images, test_labels, s.interp_pairs, s.interp_steps, s.seed)
    ends = test_images[interp.pairs].astype(np.float32) / 255.0  # (pairs, 2, 28, 28)
    fig = plots.interpolation_strips(info, interp.strips, interp.pair_labels, ends)
    cap = (f"The same pairs of test images for every model. Smoothness ratio "
           f"{values['interp/smoothness_ratio']:.2f} (1 = even steps). Look for a gradual morph vs a sudden "
           "switch, and for non-digits half-way.")
    figs.append(Figure(f"{name}-interpolation", "Interpolation", cap, plots.png(fig), name, ("interp",),
                       wide=True))

    fig = plots.training_curves(info, history)
    cap = ("Per-epoch means from history.csv: train (on the training split, in train mode) and validation. "
           + ("The KL panel is the unweighted KL; the loss adds β·KL." if info.kind == "vae" else
              "The AE's loss is its reconstruction error alone."))
    figs.append(Figure(f"{name}-training", "Training curves", cap, plots.png(fig), name, ("loss",),
                       wide=True))
    return figs, codes


def sweep_figures(infos: list[ModelInfo], codes: dict[str, np.ndarray], labels: np.ndarray,
                  values: dict[str, dict[str, float]], scatter_idx: np.ndarray) -> list[Figure]:
    figs = []
    fig = plots.latent_side_by_side(infos, [codes[i.name][scatter_idx] for i in infos], labels[scatter_idx])
    cap = ("The article's central picture: every model's test codes, one colour per digit, the dashed circle "
           "holding 95% of N(0, I). Look for AE clusters spread far beyond the circle with empty space between "
           "them, VAE clusters packed into it and overlapping, and the β=0 VAE looking like an AE.")
    figs.append(Figure("latent-all", "Latent spaces side by side", cap, plots.png(fig), None,
                       ("holes", "regular", "beta0")))
    if any(i.kind == "vae" for i in infos):
        fig = plots.rate_distortion(infos, values)
        cap = ("Rate (KL nats per image) against distortion (test reconstruction error in nats per image) for "
               "each VAE, labelled with its KL weight β; dashed lines are the AEs, which have no KL term. Look for "
               "the trade-off: raising β lowers the rate and raises the distortion, and β=0 reaching the AEs' "
               "distortion with a large rate.")
        figs.append(Figure("rate-distortion", "Rate–distortion across β", cap, plots.png(fig), None,
                           ("loss", "beta0")))
    for slug, title, keys, caption, claims in GROUPS:
        fig = plots.metric_bars(title, [METRICS[k] for k in keys], infos, values)
        figs.append(Figure(f"metrics-{slug}", title, caption, plots.png(fig), None, claims))
    return figs


# ----------------------------------------------------------- provenance


def git_state(cwd: Path | None = None) -> dict:
    """{"commit": sha or "unknown", "dirty": bool | None, "changed": [paths]} of the working tree."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return {"commit": "unknown", "dirty": None, "changed": []}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


# ---------------------------------------------------------------- tables


def _best(values: dict[str, dict[str, float]], key: str, better: str | None) -> set[str]:
    if better is None:
        return set()
    finite = {n: v[key] for n, v in values.items() if math.isfinite(v.get(key, float("nan")))}
    if len(finite) < 2:
        return set()
    target = (min if better == "lower" else max)(finite.values())
    return {n for n, v in finite.items() if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}


def _cell(v: float, fmt: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def _pca_row(infos: list[ModelInfo], values: dict[str, dict[str, float]]) -> dict[int, dict[str, float]]:
    """The PCA baseline per latent size, in the summary's keys (recon columns only)."""
    out: dict[int, dict[str, float]] = {}
    for i in infos:
        v = values[i.name]
        if "pca/recon_mse_per_pixel" in v:
            out.setdefault(i.latent_dim, {"test/recon_mse_per_pixel": v["pca/recon_mse_per_pixel"],
                                          "test/recon_bce_nats_per_pixel": v.get("pca/recon_bce_nats_per_pixel",
                                                                                 float("nan"))})
    return out


def markdown_summary(infos: list[ModelInfo], values: dict[str, dict[str, float]], classifier: dict,
                     manifest: dict, git: dict) -> str:
    prefix = {"reconstruction": "recon ", "codes vs N(0, I)": "codes vs N(0, I): ", "prior samples z ~ N(0, I)":
              "prior ", "interpolation": "interp. "}
    arrow = {"lower": " ↓", "higher": " ↑", None: ""}
    head = ["model", "kind", "β", "latent"] + [f"{prefix.get(g, '')}{h}{arrow[b]}" for g, cols in SUMMARY_GROUPS
                                               for _, h, b, _ in cols]
    lines = [f"# {TITLE}", "",
             f"Data: {manifest.get('dataset')} from {manifest.get('source')} "
             f"(sha256 `{str(manifest.get('data_sha256', ''))[:12]}`); commit `{git['commit'][:12]}`"
             f"{' (dirty)' if git['dirty'] else ''}; reference classifier test accuracy "
             f"{_cell(classifier.get('test/accuracy', float('nan')), '.4f')}.", "",
             "Best value per column in **bold** (↓ lower is better, ↑ higher is better; KL has no better direction).",
             "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(SUMMARY_COLUMNS)) + "|"]
    best = {k: _best(values, k, b) for k, _, b, _ in SUMMARY_COLUMNS}
    for i in infos:
        cells = [i.name, i.kind, f"{i.beta:g}" if i.kind == "vae" else "–", str(i.latent_dim)]
        for key, _, _, fmt in SUMMARY_COLUMNS:
            c = _cell(values[i.name].get(key, float("nan")), fmt)
            cells.append(f"**{c}**" if i.name in best[key] else c)
        lines.append("| " + " | ".join(cells) + " |")
    for dim, row in _pca_row(infos, values).items():
        cells = ["PCA baseline", "pca", "–", str(dim)]
        cells += [_cell(row[k], fmt) if k in row else "" for k, _, _, fmt in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Units: recon per pixel (MSE of [0, 1] pixels; BCE in nats); KL, −ELBO, IW-NLL in nats per image; "
              "holes, confident share, class coverage, accuracies as shares in [0, 1]; classifier-FID in the "
              "reference classifier's feature units squared (comparable within this project only).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fff;
     line-height:1.45;font-size:15px}
main{max-width:1300px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:27px;margin:8px 0 4px}h2{font-size:21px;margin:38px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:17px;margin:22px 0 6px}
.sub{color:#555;margin:0 0 16px}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(270px,1fr));gap:10px 24px;background:#f6f7f9;
       border:1px solid #e3e5e8;border-radius:8px;padding:12px 16px;font-size:14px}
.facts .k{display:block;color:#555;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
code{font-family:Menlo,Consolas,monospace;font-size:12.5px;background:#f1f2f4;padding:1px 4px;border-radius:3px;
     word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dcdfe3;padding:4px 6px;text-align:right;white-space:nowrap}
th{background:#f1f3f6;font-weight:600;white-space:normal;vertical-align:bottom}
th.g{text-align:center;background:#e6eaf0;font-size:12px}
td.l,th.l{text-align:left}
td.best{background:#d7f2dc;font-weight:700}
tr.pca td{color:#555;font-style:italic;background:#fafafa}
.scroll{overflow-x:auto}
figure{margin:14px 0 26px}
figure img{max-width:100%;height:auto;border:1px solid #eee;display:block}
figcaption{font-size:14px;color:#333;margin-top:6px;max-width:980px}
.claim{display:inline-block;font-size:11.5px;background:#eef3fb;color:#234;border:1px solid #cfdcf0;
       border-radius:10px;padding:0 8px;margin:0 4px 0 0}
.measured{font-size:13.5px;background:#fffbe8;border-left:3px solid #e6c34a;padding:6px 10px;margin:8px 0}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:0 28px;align-items:start}
.grid2 figure.wide{grid-column:1/-1}
figure img{width:auto}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
nav ol{columns:2;font-size:14px}
details{margin:8px 0}summary{cursor:pointer;color:#234}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_html(f: Figure, number: int) -> str:
    tags = "".join(f'<a class="claim" href="#claim-{c}">claim: {_e(c)}</a>' for c in f.claims)
    wide = ' class="wide"' if f.wide else ""
    return (f'<figure id="fig-{_e(f.slug)}"{wide}><img src="{_data_uri(f.png)}" alt="{_e(f.title)}'
            f'{" — " + _e(f.model) if f.model else ""}" data-file="figures/{_e(f.slug)}.png">'
            f"<figcaption><b>Figure {number}. {_e(f.title)}"
            f"{' — ' + _e(f.model) if f.model else ''}.</b> {f.caption} {tags}</figcaption></figure>")


def _summary_table_html(infos: list[ModelInfo], values: dict[str, dict[str, float]]) -> str:
    best = {k: _best(values, k, b) for k, _, b, _ in SUMMARY_COLUMNS}
    arrow = {"lower": " ↓", "higher": " ↑", None: ""}
    groups = "".join(f'<th class="g" colspan="{len(cols)}">{_e(g)}</th>' for g, cols in SUMMARY_GROUPS)
    head = "".join(f"<th>{_e(h)}{arrow[b]}</th>" for _, h, b, _ in SUMMARY_COLUMNS)
    rows = []
    for i in infos:
        cells = "".join(
            f'<td class="{"best" if i.name in best[k] else ""}">{_cell(values[i.name].get(k, float("nan")), fmt)}</td>'
            for k, _, _, fmt in SUMMARY_COLUMNS)
        beta = f"{i.beta:g}" if i.kind == "vae" else "–"
        rows.append(f'<tr><td class="l"><a href="#model-{_e(i.name)}">{_e(i.name)}</a></td><td class="l">{i.kind}'
                    f"</td><td>{beta}</td><td>{i.latent_dim}</td>{cells}</tr>")
    for dim, row in _pca_row(infos, values).items():
        cells = "".join(f"<td>{_cell(row[k], fmt) if k in row else ''}</td>" for k, _, _, fmt in SUMMARY_COLUMNS)
        rows.append(f'<tr class="pca"><td class="l">PCA baseline</td><td class="l">pca</td><td>–</td><td>{dim}</td>'
                    f"{cells}</tr>")
    return (f'<div class="scroll"><table id="summary-table"><thead><tr><th colspan="4"></th>{groups}</tr>'
            f'<tr><th class="l">model</th><th class="l">kind</th><th>β</th><th>latent size</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _all_metrics_table_html(infos: list[ModelInfo], values: dict[str, dict[str, float]]) -> str:
    head = "".join(f"<th>{_e(i.name)}</th>" for i in infos)
    rows = []
    for key in metrics.METRIC_KEYS + ("pca/recon_mse_per_pixel", "pca/recon_bce_nats_per_pixel"):
        m = METRICS.get(key)
        label = m.label if m else key.split("/", 1)[1].replace("_", " ")
        cells = "".join(f"<td>{_cell(values[i.name].get(key, float('nan')), '.4g')}</td>" for i in infos)
        rows.append(f'<tr><td class="l"><code>{_e(key)}</code></td><td class="l">{_e(label)}</td>{cells}</tr>')
    return (f'<div class="scroll"><table><thead><tr><th class="l">key</th><th class="l">meaning (unit)</th>{head}'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _specs_table_html(specs: list) -> str:
    cols = (("kind", lambda s: s.model.kind), ("arch", lambda s: s.model.arch),
            ("hidden / channels", lambda s: s.model.hidden if s.model.arch == "mlp" else s.model.channels),
            ("activation", lambda s: s.model.activation), ("latent", lambda s: s.model.latent_dim),
            ("recon loss", lambda s: s.model.recon),
            ("β", lambda s: f"{s.model.beta:g}" if s.model.kind == "vae" else "–"),
            ("KL warm-up (epochs)", lambda s: s.model.kl_warmup_epochs if s.model.kind == "vae" else "–"),
            ("free bits (nats)", lambda s: f"{s.model.free_bits:g}" if s.model.kind == "vae" else "–"),
            ("epochs", lambda s: s.train.epochs), ("batch", lambda s: s.train.batch_size),
            ("lr", lambda s: f"{s.train.lr:g}"), ("seed", lambda s: s.train.seed))
    head = "".join(f"<th>{_e(c)}</th>" for c, _ in cols)
    rows = "".join(f'<tr><td class="l">{_e(s.name)}</td>' + "".join(f"<td>{_e(fn(s))}</td>" for _, fn in cols)
                   + "</tr>" for s in specs)
    return (f'<div class="scroll"><table><thead><tr><th class="l">model</th>{head}</tr></thead><tbody>{rows}'
            f"</tbody></table></div>")


def _measured(infos: list[ModelInfo], values: dict[str, dict[str, float]], keys: tuple[str, ...]) -> str:
    """One neutral line per metric: every model's value, so a claim's evidence sits beside it."""
    lines = []
    for key in keys:
        m = METRICS[key]
        parts = " · ".join(f"{_e(i.name)} <b>{_cell(values[i.name].get(key, float('nan')), '.4g')}</b>"
                           for i in infos)
        lines.append(f"{_e(m.label.replace(' (nats, log scale)', ' (nats)'))}: {parts}")
        if m.reference and any(m.reference in values[i.name] for i in infos):
            ref = sorted({(i.latent_dim, values[i.name][m.reference]) for i in infos if m.reference in values[i.name]})
            lines[-1] += " · " + " · ".join(f"PCA (latent {d}) <b>{_cell(v, '.4g')}</b>" for d, v in ref)
    return '<div class="measured">Measured — ' + "<br>".join(lines) + "</div>"


# Claims -> (figure slugs across the sweep, metric keys quoted beside them)
CLAIM_SECTIONS = (
    ("compress", ("metrics-compression",), ("test/recon_mse_per_pixel",),
     "Per-model reconstructions are under <a href=\"#per-model\">each model</a>."),
    ("pca", ("metrics-compression",), ("test/recon_bce_nats_per_pixel",),
     "Compare ae-linear with the dashed PCA line, and the non-linear ae with both."),
    ("holes", ("latent-all", "metrics-generation"), ("prior/holes_fraction", "prior/confident_fraction"),
     "Per-model decoded latent planes and prior samples are under <a href=\"#per-model\">each model</a>."),
    ("reparam", (), (), "Not a figure: tests/test_models.py checks that z = μ + σ·ε has the moments of "
     "N(μ, σ²) and that gradients flow through the sampling step to the encoder."),
    ("loss", ("metrics-objective",), ("test/kl_nats_per_image",),
     "Each VAE's training curves show the two terms per epoch under <a href=\"#per-model\">each model</a>."),
    ("regular", ("latent-all", "metrics-regularity", "metrics-structure"), ("test/mmd_to_prior", "test/knn_accuracy"),
     ""),
    ("interp", ("metrics-interpolation",), ("interp/smoothness_ratio",),
     "The strips themselves are under <a href=\"#per-model\">each model</a>."),
    ("beta0", ("rate-distortion",), ("test/moment_kl_to_prior_nats",), ""),
    ("roles", (), (), "The summary table above puts the two side by side: reconstruction columns against the "
     "prior-sample columns."),
)


LEAD = ("latent-all",)  # shown right under the summary table: the article's central picture


def _page_order(figures: list[Figure], infos: list[ModelInfo]) -> list[Figure]:
    """Figures in the order the page shows them: under the claims first, then any other sweep figure, then per model."""
    by_slug = {f.slug: f for f in figures}
    slugs = [slug for slug in LEAD if slug in by_slug]
    slugs += [slug for _, claim_slugs, _, _ in CLAIM_SECTIONS for slug in claim_slugs if slug in by_slug]
    slugs = list(dict.fromkeys(slugs))  # a figure cited under two claims is shown under the first
    slugs += [f.slug for f in figures if f.model is None and f.slug not in slugs]
    slugs += [f.slug for i in infos for f in figures if f.model == i.name]
    return [by_slug[s] for s in slugs]


def render_html(infos: list[ModelInfo], specs: list, values: dict[str, dict[str, float]], figures: list[Figure],
                classifier: dict, manifest: dict, git: dict, evaluate_params: dict, summary_md: str) -> str:
    by_slug = {f.slug: f for f in figures}
    number = {f.slug: n for n, f in enumerate(_page_order(figures, infos), start=1)}
    counts = manifest.get("counts", {})
    count_text = ", ".join(f"{_e(s)} {c.get('total', '?'):,}" for s, c in counts.items())
    acc = classifier.get("test/accuracy")
    dirty = {True: "yes — uncommitted changes to tracked files", False: "no", None: "unknown (not a git checkout)"}
    changed = (f"<br><small>changed: {_e(', '.join(git['changed'][:8]))}"
               f"{' …' if len(git['changed']) > 8 else ''}</small>") if git.get("changed") else ""
    eval_text = ", ".join(f"{_e(k)}={_e(v)}" for k, v in evaluate_params.items()) or "defaults"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
             f"content=\"width=device-width,initial-scale=1\"><title>{_e(TITLE)}</title><style>{CSS}</style></head>"
             f"<body><main><h1>{_e(TITLE)}</h1>",
             f'<p class="sub">{len(infos)} models trained on {_e(manifest.get("dataset", "?"))}, evaluated on the '
             f"test split; every number and picture below is produced by <code>dvc repro</code> from the inputs "
             f"listed here.</p>",
             '<div class="facts">'
             f"<div><span class='k'>Data</span>{_e(manifest.get('dataset', '?'))} · source {_e(manifest.get('source', '?'))}"
             f"{' (' + _e(manifest['origin']) + ')' if manifest.get('origin') else ''}<br>{count_text} images</div>"
             f"<div><span class='k'>Data sha256</span><code>{_e(manifest.get('data_sha256', '?'))}</code></div>"
             f"<div><span class='k'>Git commit</span><code>{_e(git['commit'])}</code><br>dirty: {dirty[git['dirty']]}{changed}</div>"
             f"<div><span class='k'>Reference classifier</span>test accuracy "
             f"<b>{_cell(acc if acc is not None else float('nan'), '.2%')}</b> — it scores prior samples and "
             f"interpolations, never trains an autoencoder</div>"
             f"<div><span class='k'>Evaluate params</span>{eval_text}</div>"
             f"<div><span class='k'>Test split</span>{_e(manifest.get('test_split', DEFAULT_TEST_SPLIT))}</div>"
             "</div>",
             "<nav><h2>Contents</h2><ol><li><a href=\"#summary\">Summary table</a></li>"
             "<li><a href=\"#central\">The central picture: latent spaces side by side</a></li>"
             + "".join(f'<li><a href="#claim-{c}">{_e(CLAIMS[c])}</a></li>' for c, *_ in CLAIM_SECTIONS)
             + '<li><a href="#per-model">Figures per model</a></li><li><a href="#params">Models and params</a></li>'
             "</ol></nav>",
             '<h2 id="summary">Summary</h2>',
             "<p>Test-set metrics per model (the evaluate stage's <code>metrics/summary.json</code>). "
             "<span style=\"background:#d7f2dc;padding:0 4px\"><b>Green</b></span> marks the best value per column "
             "(↓ lower is better, ↑ higher is better; KL has no better direction). The PCA row is the linear "
             "baseline at the same latent size.</p>",
             _summary_table_html(infos, values),
             f"<details><summary>All metrics, with their keys</summary>{_all_metrics_table_html(infos, values)}"
             "</details>"]
    shown: set[str] = set()
    lead = [by_slug[slug] for slug in LEAD if slug in by_slug]
    if lead:
        parts.append('<h2 id="central">The central picture: AE and VAE latent spaces side by side</h2>')
        for f in lead:
            parts.append(_figure_html(f, number[f.slug]))
            shown.add(f.slug)
    for claim, slugs, keys, note in CLAIM_SECTIONS:
        parts.append(f'<h2 id="claim-{claim}">Claim: {_e(CLAIMS[claim])}</h2>')
        if keys:
            parts.append(_measured(infos, values, keys))
        for slug in slugs:
            if slug in by_slug and slug not in shown:
                parts.append(_figure_html(by_slug[slug], number[slug]))
                shown.add(slug)
            elif slug in by_slug:
                parts.append(f'<p>See <a href="#fig-{slug}">Figure {number[slug]}</a>.</p>')
        if note:
            parts.append(f"<p>{note}</p>")
    for f in figures:  # anything not placed under a claim still appears
        if f.model is None and f.slug not in shown:
            parts.append(_figure_html(f, number[f.slug]))
            shown.add(f.slug)
    parts.append('<h2 id="per-model">Figures per model</h2>')
    for i in infos:
        own = [f for f in figures if f.model == i.name]
        parts.append(f'<h3 id="model-{_e(i.name)}">{_e(i.label)} — {i.kind.upper()}, latent size {i.latent_dim}</h3>'
                     '<div class="grid2">' + "".join(_figure_html(f, number[f.slug]) for f in own) + "</div>")
    parts.append('<h2 id="params">Models and params</h2><p>The resolved settings each model was trained with '
                 "(models/&lt;name&gt;/config.json).</p>" + _specs_table_html(specs))
    parts.append(f"<details><summary>summary.md (the same table in Markdown)</summary><pre>{_e(summary_md)}</pre>"
                 "</details></main></body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------- runner


def make_report(paths: ReportPaths = ReportPaths(), settings: ReportSettings = ReportSettings(),
                evaluate_params: dict | None = None, git: dict | None = None,
                on_model: Callable[[int, int, str], None] | None = None) -> Report:
    """Read the models, metrics and test split; draw every figure; return the report (nothing written yet).

    evaluate_params: the evaluate stage's params (params.yaml `evaluate:`), shown on the page and quoted
    in captions. git: git_state() of the checkout (computed when None). on_model(done, total, name) after
    each model's figures are drawn (progress).
    """
    evaluate_params = dict(evaluate_params or {})
    scored = None
    if "n_prior_samples" in evaluate_params and "confidence_threshold" in evaluate_params:
        scored = (int(evaluate_params["n_prior_samples"]), float(evaluate_params["confidence_threshold"]))
    summary = {name: _as_float(v) for name, v in atomic.read_json(paths.summary, "evaluate").items()}
    if not summary:
        raise UserError(f"{paths.summary} lists no models; rerun the evaluate stage (dvc repro evaluate)")
    classifier = atomic.read_json(paths.classifier, "classifier")
    manifest = load_manifest(paths.prepared)
    test = load_split("test", paths.prepared)
    labels = test.labels.astype(np.int64)
    loaded = {name: model_store.load(name, paths.models) for name in summary}
    specs = {name: spec for name, (_, spec) in loaded.items()}
    infos = sorted((_info(s) for s in specs.values()), key=_order)
    rng = np.random.default_rng(settings.seed)
    n = len(labels)
    scatter_idx = np.sort(rng.choice(n, settings.max_scatter, replace=False)) if n > settings.max_scatter \
        else np.arange(n)

    figures: list[Figure] = []
    codes: dict[str, np.ndarray] = {}
    curves: dict[str, str] = {}
    per_model: list[Figure] = []
    for info in infos:
        model, _ = loaded[info.name]
        history_file = paths.models / info.name / "history.csv"
        history = _read_history(history_file)
        curves[info.name] = history_file.read_text()
        figs, codes[info.name] = model_figures(info, model, test.images, labels, history, summary[info.name],
                                               settings, scatter_idx, scored)
        per_model += figs
        if on_model:
            on_model(len(codes), len(infos), info.name)
    figures += sweep_figures(infos, codes, labels, summary, scatter_idx)
    figures += per_model
    git = git_state() if git is None else git
    md = markdown_summary(infos, summary, classifier, manifest, git)
    page = render_html(infos, [specs[i.name] for i in infos], summary, figures, classifier, manifest, git,
                       evaluate_params, md)
    return Report(figures=figures, html=page, markdown=md, curves=curves)


def write_report(report: Report, out: Path = Path("reports")) -> dict[str, list[Path]]:
    """Write figures/, curves/, summary.md, then index.html last; returns each model's figure files."""
    out = Path(out)
    with atomic.atomic_dir(out / "figures") as tmp:
        for f in report.figures:
            (tmp / f"{f.slug}.png").write_bytes(f.png)
    with atomic.atomic_dir(out / "curves") as tmp:
        for name, text in report.curves.items():
            (tmp / f"{name}.csv").write_text(text)
    atomic.write_text(out / "summary.md", report.markdown)
    atomic.write_text(out / "index.html", report.html)
    return report.figures_by_model(out / "figures")


_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def embedded_images(page: str) -> list[bytes]:
    """The PNGs embedded in a report page, decoded (for checks)."""
    return [base64.b64decode(m) for m in _IMG.findall(page)]
