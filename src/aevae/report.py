"""The comparison report: figures + one self-contained HTML page + a Markdown summary.

make_report() reads the trained models, the evaluate stage's metrics and arrays
(metrics/arrays/<model>.npz: test codes, prior and GMM samples, interpolation strips) and the
prepared test split, draws every figure (aevae.plots) and renders two Jinja2 templates
(aevae/templates/report.html.j2, summary.md.j2) from one context: figure records and
pandas DataFrames. The prose that is data (claims, chart groups) is in
templates/report.yaml; the metrics' keys, labels and directions in aevae.metric_registry.
write_report() writes:

    reports/index.html      one file, PNGs embedded as base64 data URIs, no external CSS/JS
    reports/summary.md      the summary table in Markdown (for PRs)
    reports/figures/*.png   every figure on its own
    reports/curves/<m>.csv  each model's history.csv, for `dvc plots show`

Every output is written atomically. Nothing here knows MLflow (tracking.log_report does).
"""

from __future__ import annotations

import base64
import csv
import html.parser
import importlib.resources
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jinja2
import numpy as np
import pandas as pd
import torch
import yaml

from aevae import atomic, metric_registry, metrics, model_store, plots
from aevae.config import RunSpec
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import UserError
from aevae.metric_registry import Metric
from aevae.models import as_images
from aevae.provenance import git_state

TITLE = "AutoEncoder vs Variational AutoEncoder: the comparison report"
TEMPLATES = "templates"  # package folder of aevae holding the templates and report.yaml


@dataclass(frozen=True)
class ReportPaths:
    """Where the inputs are read and the report is written; relative to the project root by default."""

    models: Path = Path("models")
    summary: Path = Path("metrics/summary.json")
    arrays: Path = Path("metrics/arrays")  # the evaluate stage's <model>.npz (metrics.save_arrays)
    classifier: Path = Path("metrics/classifier.json")
    prepared: Path = Path("data/prepared")
    out: Path = Path("reports")


@dataclass(frozen=True)
class ReportSettings:
    seed: int = 0  # scatter subsample and t-SNE
    interp_pairs: int = 8  # strips drawn per model (the first of the evaluate stage's pairs)
    recon_per_class: int = 2  # test inputs per digit in the reconstruction figure
    prior_images: int = 100  # decoded prior samples shown per model (the first of the evaluate stage's)
    manifold_side: int = 20  # tiles per side of the decoded latent plane
    max_scatter: int = 5000  # test codes drawn per scatter (seeded sample, the same for every model)


# ------------------------------------------------------------- the claims


class Claim(NamedTuple):
    id: str
    text: str
    figures: tuple[str, ...]  # slugs of sweep figures shown under it
    note: str  # may hold inline HTML (links to sections)


class Chart(NamedTuple):
    slug: str  # reports/figures/metrics-<slug>.png; metric_registry records with chart == slug
    title: str
    claims: tuple[str, ...]
    caption: str  # may hold inline HTML


def _text() -> dict:
    # Package data: found wherever aevae is installed or imported from.
    return yaml.safe_load((importlib.resources.files("aevae") / TEMPLATES / "report.yaml").read_text())


_TEXT = _text()
CLAIMS: dict[str, Claim] = {c["id"]: Claim(c["id"], c["text"], tuple(c["figures"]), c["note"]) for c in _TEXT["claims"]}
GROUPS: tuple[Chart, ...] = tuple(Chart(c["slug"], c["title"], tuple(c["claims"]), c["caption"])
                                  for c in _TEXT["charts"])
LEAD: tuple[str, ...] = tuple(_TEXT["lead"])


# ------------------------------------------------------------- the figures


@dataclass
class Figure:
    slug: str  # file name without .png
    title: str
    kind: str  # which caption report.html.j2 writes: "latent", "manifold", ..., "metrics"
    png: bytes
    spec: RunSpec | None = None  # None: a figure across the sweep
    claims: tuple[str, ...] = ()
    wide: bool = False  # per-model figure that takes a whole row of the page
    quoted: float | None = None  # the metric its caption quotes (metric_registry.for_figure(kind))
    chart: Chart | None = None  # bar charts: their group
    number: int = 0  # position on the page, set when the page is laid out

    @property
    def model(self) -> str | None:
        return self.spec.name if self.spec else None


@dataclass
class Report:
    """The rendered report, nothing written yet (`write_report` writes it)."""

    figures: list[Figure]
    html: str
    markdown: str
    curves: dict[str, str] = field(default_factory=dict)  # model -> history.csv text

    def figures_by_model(self, figures_dir: Path) -> dict[str, list[Path]]:
        """model name -> its figure files under figures_dir (for tracking.log_report)."""
        out: dict[str, list[Path]] = {}
        for f in self.figures:
            if f.model is not None:
                out.setdefault(f.model, []).append(figures_dir / f"{f.slug}.png")
        return out


def _order(spec: RunSpec) -> tuple:
    # AEs first, then VAEs by beta: the sweep reads left to right from "no KL" to "strong KL".
    m = spec.model
    return (m.latent_dim, m.kind == "vae", m.beta, spec.name)


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


def _quoted(role: str, values: dict[str, float]) -> float:
    return values[metric_registry.for_figure(role).key]


@torch.no_grad()
def model_figures(spec: RunSpec, model, arrays: dict[str, np.ndarray], test_images: np.ndarray,
                  test_labels: np.ndarray, history: list[dict], values: dict[str, float], s: ReportSettings,
                  scatter_idx: np.ndarray, scored: tuple[int, float] | None = None) -> list[Figure]:
    """The six figures of one model. The model itself is run only for the latent plane and the reconstructions;
    codes, prior samples and interpolation strips come from the evaluate stage's `arrays` (metrics.load_arrays).

    scored: (prior samples the evaluate stage scored, its confidence threshold), to quote beside the samples.
    """
    name, dim = spec.name, spec.model.latent_dim
    codes = arrays["test_codes"]  # (N, latent) posterior means
    figs = []

    fig = plots.latent_scatter(spec, codes[scatter_idx], test_labels[scatter_idx], seed=s.seed)
    figs.append(Figure(f"{name}-latent", "Latent space", "latent", plots.png(fig), spec, ("holes", "regular"),
                       wide=dim != 2))

    if dim == 2:
        z1, z2, how = plots.manifold_grid(spec, codes, s.manifold_side)
        zz = torch.tensor([[a, b] for b in z2[::-1] for a in z1], dtype=torch.float32)  # top row = highest z2
        decoded = metrics.decode(model, zz).cpu().numpy().reshape(len(z2), len(z1), 28, 28)
        fig = plots.manifold(spec, decoded, z1, z2, how)
        figs.append(Figure(f"{name}-manifold", "Decoded latent plane", "manifold", plots.png(fig), spec,
                           ("holes", "regular", "interp")))

    idx = _recon_examples(test_labels, s.recon_per_class)
    x = as_images(test_images[idx])
    recon = metrics.decode(model, metrics.encode(model, x)[0]).cpu().numpy().reshape(-1, 28, 28)
    fig = plots.reconstructions(spec, x.numpy().reshape(-1, 28, 28), recon, test_labels[idx])
    figs.append(Figure(f"{name}-reconstructions", "Reconstructions", "reconstructions", plots.png(fig), spec,
                       ("compress",), quoted=_quoted("reconstructions", values)))

    confident = values.get(metric_registry.for_figure("prior-samples").key)
    conf = (confident, *scored) if scored and confident is not None and math.isfinite(confident) else None
    fig = plots.prior_samples(spec, arrays["prior_images"][:s.prior_images], confident=conf)
    figs.append(Figure(f"{name}-prior-samples", "Prior samples", "prior-samples", plots.png(fig), spec,
                       ("holes", "roles")))

    figs.append(gmm_figure(spec, arrays, values, s, scored))

    pairs = arrays["interp_pairs"][:s.interp_pairs]
    ends = test_images[pairs].astype(np.float32) / 255.0  # (pairs, 2, 28, 28)
    fig = plots.interpolation_strips(spec, arrays["interp_strips"][:s.interp_pairs],
                                     arrays["interp_pair_labels"][:s.interp_pairs], ends)
    figs.append(Figure(f"{name}-interpolation", "Interpolation", "interpolation", plots.png(fig), spec,
                       ("interp",), wide=True, quoted=_quoted("interpolation", values)))

    fig = plots.training_curves(spec, history)
    figs.append(Figure(f"{name}-training", "Training curves", "training", plots.png(fig), spec, ("loss",),
                       wide=True))
    return figs


def gmm_figure(spec: RunSpec, arrays: dict[str, np.ndarray], values: dict[str, float], s: ReportSettings,
               scored: tuple[int, float] | None = None) -> Figure:
    """Prior samples beside samples of the GMM fit to the training codes (metrics.gmm_samples), both decoded by
    the evaluate stage; captions quote both confident shares. scored: as for `model_figures`."""
    shares = [values.get(metric_registry.for_figure(role).key) for role in ("prior-samples", "gmm-samples")]
    finite = scored and all(v is not None and math.isfinite(v) for v in shares)
    fig = plots.prior_vs_gmm(spec, arrays["prior_images"][:s.prior_images], arrays["gmm_images"][:s.prior_images],
                             confident=(*shares, *scored) if finite else None)
    return Figure(f"{spec.name}-gmm-samples", "Prior vs fitted-density samples", "gmm-samples", plots.png(fig), spec,
                  ("holes", "roles"), wide=True, quoted=_quoted("gmm-samples", values))


def gmm_reading(specs: list[RunSpec], values: dict[str, dict[str, float]]) -> list[dict]:
    """Per model, each gmm/ summary metric beside its prior/ twin: [{"model", "pairs": [(Metric, prior, gmm)]}].

    The data of the report's sentence on where poor prior samples come from (decoder or density).
    """
    gmm = [m for m in metric_registry.METRICS if m.key.startswith("gmm/") and m.summary]
    twins = [(metric_registry.by_key("prior/" + m.key.split("/", 1)[1]), m) for m in gmm]
    return [{"model": spec.name, "pairs": [(g, values[spec.name].get(p.key, math.nan),
                                            values[spec.name].get(g.key, math.nan)) for p, g in twins]}
            for spec in specs]


def sweep_figures(specs: list[RunSpec], codes: dict[str, np.ndarray], labels: np.ndarray,
                  values: dict[str, dict[str, float]], scatter_idx: np.ndarray) -> list[Figure]:
    """The figures across the sweep: latent spaces side by side, rate–distortion (VAEs only), a bar chart per group."""
    figs = []
    fig = plots.latent_side_by_side(specs, [codes[s.name][scatter_idx] for s in specs], labels[scatter_idx])
    figs.append(Figure("latent-all", "Latent spaces side by side", "latent-all", plots.png(fig), None,
                       ("holes", "regular", "beta0")))
    if any(s.model.kind == "vae" for s in specs):
        fig = plots.rate_distortion(specs, values)
        figs.append(Figure("rate-distortion", "Rate–distortion across β", "rate-distortion", plots.png(fig), None,
                           ("loss", "beta0")))
    members = metric_registry.grouped("chart")
    for chart in GROUPS:
        fig = plots.metric_bars(chart.title, members[chart.slug], specs, values)
        figs.append(Figure(f"metrics-{chart.slug}", chart.title, "metrics", plots.png(fig), None, chart.claims,
                           chart=chart))
    return figs


# ---------------------------------------------------------------- tables


def _best(values: dict[str, dict[str, float]], key: str, direction: str | None) -> set[str]:
    """Models holding the best finite value of `key` ("min" or "max"; None: no best); empty with fewer than 2."""
    column = pd.Series({name: v.get(key, math.nan) for name, v in values.items()}, dtype=float)
    column = column[np.isfinite(column)]
    if direction is None or len(column) < 2:
        return set()
    target = column.min() if direction == "min" else column.max()
    return set(column.index[np.isclose(column, target, rtol=1e-9, atol=1e-12)])


@dataclass
class SummaryTable:
    """The summary table: registry metrics with a `summary` group, one row per model, and the PCA baseline."""

    groups: dict[str, tuple[Metric, ...]]  # column group -> its metrics, in page order
    values: pd.DataFrame  # model name x metric key, floats (NaN: does not apply)
    best: pd.DataFrame  # the same shape, True where the value is the column's best
    pca: pd.DataFrame  # latent size x metric key: the baseline of the columns that have one

    @property
    def columns(self) -> tuple[Metric, ...]:
        return tuple(m for members in self.groups.values() for m in members)


def summary_table(specs: list[RunSpec], values: dict[str, dict[str, float]]) -> SummaryTable:
    """The summary table's data; best per column by each metric's direction (`_best`)."""
    groups = metric_registry.grouped("summary")
    columns = [m for members in groups.values() for m in members]
    names = [s.name for s in specs]
    frame = pd.DataFrame({m.key: [values[n].get(m.key, math.nan) for n in names] for m in columns}, index=names,
                         dtype=float)
    best = pd.DataFrame({m.key: [n in _best(values, m.key, m.direction) for n in names] for m in columns},
                        index=names)
    pca: dict[int, dict[str, float]] = {}
    for s in specs:  # one baseline per latent size
        v = values[s.name]
        if any(m.reference in v for m in columns if m.reference):
            pca.setdefault(s.model.latent_dim, {m.key: v.get(m.reference, math.nan) for m in columns if m.reference})
    return SummaryTable(groups, frame, best, pd.DataFrame.from_dict(pca, orient="index"))


def settings_table(specs: list[RunSpec]) -> pd.DataFrame:
    """The resolved settings each model was trained with, one row per model (strings, "–" where not a VAE's)."""

    def vae_only(s: RunSpec, value):
        return value if s.model.kind == "vae" else "–"

    rows = {s.name: {
        "kind": s.model.kind, "arch": s.model.arch,
        "hidden / channels": s.model.hidden if s.model.arch == "mlp" else s.model.channels,
        "activation": s.model.activation, "latent": s.model.latent_dim, "recon loss": s.model.recon,
        "β": vae_only(s, f"{s.model.beta:g}"), "KL warm-up (epochs)": vae_only(s, s.model.kl_warmup_epochs),
        "free bits (nats)": vae_only(s, f"{s.model.free_bits:g}"), "epochs": s.train.epochs,
        "batch": s.train.batch_size, "lr": f"{s.train.lr:g}", "seed": s.train.seed} for s in specs}
    return pd.DataFrame.from_dict(rows, orient="index").astype(str)


# ------------------------------------------------------------------ page


def _number(v, fmt: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("aevae", TEMPLATES),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
                             undefined=jinja2.StrictUndefined)
    env.filters.update(
        number=_number,
        data_uri=lambda data: "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
        beta=lambda beta, kind: f"{beta:g}" if kind == "vae" else "–",
        label=plots.label,
    )
    return env


def _layout(figures: list[Figure], specs: list[RunSpec]) -> tuple[list[Figure], list[dict], list[Figure]]:
    """Number the figures in page order; return (lead figures, claim sections, sweep figures under no claim).

    A figure cited under two claims is shown under the first and referred to under the next.
    """
    by_slug = {f.slug: f for f in figures}
    slugs = [slug for slug in LEAD if slug in by_slug]
    slugs += [slug for claim in CLAIMS.values() for slug in claim.figures if slug in by_slug]
    slugs = list(dict.fromkeys(slugs))
    slugs += [f.slug for f in figures if f.model is None and f.slug not in slugs]
    slugs += [f.slug for s in specs for f in figures if f.model == s.name]
    for n, slug in enumerate(slugs, start=1):
        by_slug[slug].number = n
    shown = set(LEAD) & set(by_slug)
    sections = []
    for claim in CLAIMS.values():
        items = []
        for slug in claim.figures:
            if slug in by_slug:
                items.append({"figure": by_slug[slug], "shown_here": slug not in shown})
                shown.add(slug)
        sections.append({"id": claim.id, "text": claim.text, "note": claim.note, "entries": items})
    lead = [by_slug[slug] for slug in LEAD if slug in by_slug]
    unplaced = [f for f in figures if f.model is None and f.slug not in shown]
    return lead, sections, unplaced


def _measured(specs: list[RunSpec], values: dict[str, dict[str, float]], claim: str) -> list[dict]:
    """One neutral line per metric the claim quotes: every model's value, and the PCA baseline where it has one."""
    lines = []
    for m in metric_registry.evidence(claim):
        pca = sorted({(s.model.latent_dim, values[s.name][m.reference]) for s in specs
                      if m.reference and m.reference in values[s.name]})
        lines.append({"metric": m, "models": [(s.name, values[s.name].get(m.key, math.nan)) for s in specs],
                      "pca": pca})
    return lines


def render(specs: list[RunSpec], values: dict[str, dict[str, float]], figures: list[Figure], classifier: dict,
           manifest: dict, git: dict, evaluate_params: dict) -> tuple[str, str]:
    """(index.html, summary.md) rendered from one context; specs in page order."""
    lead, sections, unplaced = _layout(figures, specs)
    for section in sections:
        section["measured"] = _measured(specs, values, section["id"])
    context = {
        "title": TITLE, "specs": specs, "values": values, "manifest": manifest, "git": git,
        "classifier_accuracy": classifier.get("test/accuracy", math.nan), "evaluate_params": evaluate_params,
        "summary": summary_table(specs, values), "all_metrics": metric_registry.METRICS + metric_registry.BASELINES,
        "settings_table": settings_table(specs), "lead": lead, "claims": sections, "unplaced": unplaced,
        "per_model": [(s, [f for f in figures if f.model == s.name]) for s in specs],
        "gmm_reading": gmm_reading(specs, values),
    }
    env = _environment()
    markdown = env.get_template("summary.md.j2").render(context)
    page = env.get_template("report.html.j2").render(context, summary_md=markdown)
    return page, markdown


# ------------------------------------------------------------------- runner


def make_report(paths: ReportPaths = ReportPaths(), settings: ReportSettings = ReportSettings(),
                evaluate_params: dict | None = None, git: dict | None = None,
                on_model: Callable[[int, int, str], None] | None = None) -> Report:
    """Read the models, metrics, arrays and test split; draw every figure; return the report (nothing written yet).

    evaluate_params: the evaluate stage's params (params.yaml `evaluate:`), shown on the page and quoted
    in captions. git: git_state() of the checkout (computed when None). on_model(done, total, name) after
    each model's figures are drawn (progress). Raises UserError when an input is missing (summary.json
    naming no model, a model's arrays absent: rerun the evaluate stage).
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
    specs = sorted((spec for _, spec in loaded.values()), key=_order)
    rng = np.random.default_rng(settings.seed)
    n = len(labels)
    scatter_idx = np.sort(rng.choice(n, settings.max_scatter, replace=False)) if n > settings.max_scatter \
        else np.arange(n)

    codes: dict[str, np.ndarray] = {}
    curves: dict[str, str] = {}
    per_model: list[Figure] = []
    for spec in specs:
        model, _ = loaded[spec.name]
        history_file = paths.models / spec.name / "history.csv"
        curves[spec.name] = history_file.read_text()
        arrays = _arrays(paths.arrays / f"{spec.name}.npz")
        codes[spec.name] = arrays["test_codes"]
        per_model += model_figures(spec, model, arrays, test.images, labels, _read_history(history_file),
                                   summary[spec.name], settings, scatter_idx, scored)
        if on_model:
            on_model(len(codes), len(specs), spec.name)
    figures = sweep_figures(specs, codes, labels, summary, scatter_idx) + per_model
    git = git_state() if git is None else git
    page, md = render(specs, summary, figures, classifier, manifest, git, evaluate_params)
    return Report(figures=figures, html=page, markdown=md, curves=curves)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} not found; rerun the evaluate stage (dvc repro evaluate)")
    return metrics.load_arrays(path)


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


class _ImageSources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src") or ""
        if tag == "img" and src.startswith("data:image/png;base64,"):
            self.sources.append(src.split(",", 1)[1])


def embedded_images(page: str) -> list[bytes]:
    """The PNGs embedded in a report page, decoded (for checks)."""
    parser = _ImageSources()
    parser.feed(page)
    return [base64.b64decode(s) for s in parser.sources]
