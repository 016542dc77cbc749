"""The comparison report: figures + one self-contained HTML page + a Markdown summary.

make_report() reads the trained models, the evaluate stage's study (metrics/summary.json: every
metric of every group as a mean with a Student-t 95% interval over seeds; metrics/claims.json: a
verdict per claim and latent size, aevae.evaluation.study) and arrays (metrics/arrays/<model>.npz: test codes,
prior and GMM samples, interpolation strips) and the prepared test split, draws every figure (aevae.report.figures)
and renders two Jinja2 templates
(aevae/report/templates/report.html.j2, summary.md.j2) from one context: figure records and
pandas DataFrames. Tables and bar charts are per group (a sweep member at one latent size, over
its seeds); the figures of one model are drawn for one seed per group (ReportSettings.figure_seed).
The prose that is data (claims, chart groups) is in
templates/report.yaml; the metrics' keys, labels and directions in aevae.metric_registry.
write_report() writes:

    reports/index.html      one file, figures embedded as base64 WebP data URIs, no external CSS/JS
    reports/summary.md      the summary table in Markdown (for PRs)
    reports/figures/*.webp  every figure on its own, the same bytes as embedded (figures.encode)
    reports/curves/<m>.csv  each model's history.csv (every seed), for `dvc plots show`

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

from aevae import atomic, metric_registry
from aevae.config import EvaluateParams, RunSpec
from aevae.core import model_store
from aevae.core.models import as_images, conv_channels
from aevae.data import NO_LABELS, ClassNames, array_shape, manifest_classes, manifest_labelled, manifest_shape
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import UserError
from aevae.evaluation import metrics
from aevae.evaluation.study import CLAIMS as CLAIM_ORDER
from aevae.evaluation.study import VERDICTS, none_to_nan, plus_minus, read_summary
from aevae.metric_registry import Metric
from aevae.provenance import git_state
from aevae.report import figures

TITLE = "AutoEncoder vs Variational AutoEncoder: the comparison report"
TEMPLATES = "templates"  # folder of this package holding the templates and report.yaml


@dataclass(frozen=True)
class ReportPaths:
    """Where the inputs are read and the report is written; relative to the project root by default."""

    models: Path = Path("models")
    summary: Path = Path("metrics/summary.json")  # {group: {key: {mean, ci_low, ci_high, n_seeds}}}
    claims: Path = Path("metrics/claims.json")  # aevae.evaluation.study.claims_file
    per_model: Path = Path("metrics/models")  # <model>.json: one seed's metrics, quoted under its figures
    arrays: Path = Path("metrics/arrays")  # the evaluate stage's <model>.npz (metrics.save_arrays)
    classifier: Path = Path("metrics/classifier.json")
    prepared: Path = Path("data/prepared")
    out: Path = Path("reports")


@dataclass(frozen=True)
class ReportSettings:
    seed: int = 0  # scatter subsample and t-SNE
    figure_seed: int | None = None  # the training seed whose model draws each group's figures; None: the smallest
    interp_pairs: int = 8  # strips drawn per model (the first of the evaluate stage's pairs)
    recon_per_class: int = 2  # test inputs per class in the reconstruction figure
    prior_images: int = 100  # decoded prior samples shown per model (the first of the evaluate stage's)
    manifold_side: int = 20  # tiles per side of the decoded latent plane
    max_scatter: int = 5000  # test codes drawn per scatter (seeded sample, the same for every model)


# ------------------------------------------------------------- the claims


class ClaimSection(NamedTuple):
    """How the report shows a claim of aevae.evaluation.study.CLAIMS (whose `text` is the one copy of its wording)."""

    id: str
    text: str
    figures: tuple[str, ...]  # slugs of sweep figures shown under it
    note: str  # may hold inline HTML (links to sections)


class Chart(NamedTuple):
    slug: str  # reports/figures/metrics-<slug>.webp; metric_registry records with chart == slug
    title: str
    claims: tuple[str, ...]
    caption: str  # may hold inline HTML


def _text() -> dict:
    # Package data: found wherever aevae is installed or imported from.
    return yaml.safe_load((importlib.resources.files("aevae.report") / TEMPLATES / "report.yaml").read_text())


_TEXT = _text()
_CLAIM_TEXT = {c.id: c.text for c in CLAIM_ORDER}
CLAIMS: dict[str, ClaimSection] = {
    c["id"]: ClaimSection(c["id"], _CLAIM_TEXT[c["id"]], tuple(c["figures"]), c["note"]) for c in _TEXT["claims"]
}
GROUPS: tuple[Chart, ...] = tuple(
    Chart(c["slug"], c["title"], tuple(c["claims"]), c["caption"]) for c in _TEXT["charts"]
)
LEAD: tuple[str, ...] = tuple(_TEXT["lead"])


# -------------------------------------------------------------- the study


@dataclass(frozen=True)
class StudyResults:
    """The evaluate stage's study, as the report reads it: means, intervals and verdicts over seeds."""

    means: dict[str, dict[str, float]]  # group -> metric key -> mean over seeds (NaN: does not apply)
    bounds: dict[str, dict[str, tuple[float, float]]]  # group -> key -> 95% (low, high); NaN with one seed
    seeds: tuple[int, ...]  # the training seeds the intervals are over
    claims: dict  # metrics/claims.json (aevae.evaluation.study.claims_file)

    @property
    def interval(self) -> bool:
        """Whether there are intervals at all (two seeds or more)."""
        return len(self.seeds) > 1

    @property
    def header(self) -> str:
        """What a table cell holds, for table headers."""
        if not self.interval:
            return "one seed (no interval): the value of that seed"
        return f"mean ± 95% CI half-width (Student t over {len(self.seeds)} seeds)"

    @property
    def bars_note(self) -> str:
        """What a bar and its error bar are, for chart titles."""
        if not self.interval:
            return "(one seed: no interval, no error bars)"
        return f"(bars: mean over {len(self.seeds)} seeds; error bars: 95% CI, Student t)"


def read_study(summary: Path, claims: Path) -> StudyResults:
    """Read metrics/summary.json ({group: {key: {"mean", "ci_low", "ci_high", "n_seeds"}}}) and metrics/claims.json.

    Raises UserError when either is missing or in another format (a summary.json of one number per key is
    from before seeds: rerun the evaluate stage).
    """
    raw = read_summary(summary)
    claims_data = atomic.read_json(claims, "evaluate")
    if "claims" not in claims_data:
        raise UserError(
            f"{claims} is not the study's format (a verdict per claim and latent size); "
            "rerun the evaluate stage (dvc repro -f evaluate)"
        )
    means = {g: {k: none_to_nan(c["mean"]) for k, c in v.items()} for g, v in raw.items()}
    bounds = {
        g: {k: (none_to_nan(c["ci_low"]), none_to_nan(c["ci_high"])) for k, c in v.items()} for g, v in raw.items()
    }
    seeds = tuple(claims_data.get("seeds") or ())
    return StudyResults(means, bounds, seeds, claims_data)


def latent_sizes(study: StudyResults) -> list[int]:
    """The latent sizes claims.json gives verdicts at, smallest first ("z2", "z16" -> [2, 16])."""
    return sorted(int(k.lstrip("z")) for k in study.claims["claims"])


def verdict_rows(study: StudyResults) -> list[dict]:
    """One row per claim, in the study's order (aevae.evaluation.study.CLAIMS; the JSON's keys are sorted):
    {"id", "text", "cells": {latent size: the claim's verdict there (aevae.evaluation.study.judge_claim)}}."""
    rows: dict[str, dict] = {c.id: {"id": c.id, "text": c.text, "cells": {}} for c in CLAIM_ORDER}
    for dim in latent_sizes(study):
        for cid, verdict in study.claims["claims"][f"z{dim}"].items():
            rows.setdefault(cid, {"id": cid, "text": verdict["text"], "cells": {}})["cells"][dim] = verdict
    return [row for row in rows.values() if row["cells"]]


# ------------------------------------------------------------- the figures


@dataclass
class Figure:
    slug: str  # file name without its suffix (figures.SUFFIX)
    title: str
    kind: str  # which caption report.html.j2 writes: "latent", "manifold", ..., "metrics"
    image: bytes  # figures.encode's WebP
    spec: RunSpec | None = None  # None: a figure across the sweep
    claims: tuple[str, ...] = ()
    wide: bool = False  # per-model figure that takes a whole row of the page
    quoted: float | None = None  # the metric its caption quotes (metric_registry.for_figure(kind))
    chart: Chart | None = None  # bar charts: their group
    number: int = 0  # position on the page, set when the page is laid out

    @property
    def file(self) -> str:
        """Its file name under reports/figures/."""
        return self.slug + figures.SUFFIX

    @property
    def model(self) -> str | None:
        """The model (one seed) that drew it; None for a figure across the sweep."""
        return self.spec.name if self.spec else None

    @property
    def group(self) -> str | None:
        """The group (member at one latent size, over seeds) whose figure it is; None across the sweep."""
        return self.spec.group if self.spec else None


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
                out.setdefault(f.model, []).append(figures_dir / f.file)
        return out


def _order(spec: RunSpec) -> tuple:
    # AEs first, then VAEs by beta: the sweep reads left to right from "no KL" to "strong KL".
    m = spec.model
    return (m.latent_dim, m.kind == "vae", m.beta, m.activation == "linear", spec.name)


def _read_history(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# Test images in the reconstruction figure of unlabelled data: as many rows of ten as labelled data of ten classes.
RECON_ROW = 10


def _recon_examples(labels: np.ndarray | None, per_class: int, n_images: int) -> np.ndarray:
    """Indices of the first `per_class` test images of each class, laid out class 0..9, then again; unlabelled
    data (labels None): the first per_class × RECON_ROW of its n_images test images."""
    if labels is None:
        return np.arange(min(n_images, per_class * RECON_ROW))
    firsts = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.array([f[r] for r in range(per_class) for f in firsts if len(f) > r])


def _quoted(role: str, values: dict[str, float]) -> float:
    return values[metric_registry.for_figure(role).key]


@torch.no_grad()
def model_figures(
    spec: RunSpec,
    model,
    arrays: dict[str, np.ndarray],
    test_images: np.ndarray,
    test_labels: np.ndarray | None,
    history: list[dict],
    values: dict[str, float],
    s: ReportSettings,
    scatter_idx: np.ndarray,
    scored: tuple[int, float] | None = None,
    classes: ClassNames = figures.MNIST,
    other_seeds: dict[int, list[dict]] | None = None,
) -> list[Figure]:
    """The figures of one model (six for a 2-d code, five otherwise: no decoded plane). The model itself is run
    only for the latent plane and the reconstructions; codes (N, latent), prior samples and interpolation strips
    come from the evaluate stage's `arrays` (metrics.load_arrays).

    values: this model's metrics (one seed), quoted in captions. scored: (prior samples the evaluate stage
    scored, its confidence threshold), to quote beside the samples. classes: how labels are named; test_labels
    None (unlabelled data): figures without classes.
    other_seeds: {seed: history} of the same group's other seeds, drawn faintly in the training curves.
    """
    name, dim = spec.name, spec.model.latent_dim
    codes = arrays["test_codes"]  # (N, latent) posterior means
    figs = []

    scatter_labels = None if test_labels is None else test_labels[scatter_idx]
    fig = figures.latent_scatter(spec, codes[scatter_idx], scatter_labels, seed=s.seed, classes=classes)
    figs.append(
        Figure(
            f"{name}-latent", "Latent space", "latent", figures.encode(fig), spec, ("holes", "regular"), wide=dim != 2
        )
    )

    if dim == 2:
        z1, z2, how = figures.manifold_grid(spec, codes, s.manifold_side)
        zz = torch.tensor([[a, b] for b in z2[::-1] for a in z1], dtype=torch.float32)  # top row = highest z2
        decoded = metrics.decode(model, zz).cpu().numpy().reshape(len(z2), len(z1), *array_shape(model.image_shape))
        fig = figures.manifold(spec, decoded, z1, z2, how, classes=classes)
        figs.append(
            Figure(
                f"{name}-manifold",
                "Decoded latent plane",
                "manifold",
                figures.encode(fig, picture=True),
                spec,
                ("holes", "regular", "interp"),
            )
        )

    idx = _recon_examples(test_labels, s.recon_per_class, len(test_images))
    x = as_images(test_images[idx])
    shape = array_shape(model.image_shape)
    recon = metrics.decode(model, metrics.encode(model, x)[0]).cpu().numpy().reshape(-1, *shape)
    recon_labels = None if test_labels is None else test_labels[idx]
    fig = figures.reconstructions(spec, x.numpy().reshape(-1, *shape), recon, recon_labels, classes=classes)
    figs.append(
        Figure(
            f"{name}-reconstructions",
            "Reconstructions",
            "reconstructions",
            figures.encode(fig, picture=True),
            spec,
            ("compress",),
            quoted=_quoted("reconstructions", values),
        )
    )

    confident = values.get(metric_registry.for_figure("prior-samples").key)
    conf = (confident, *scored) if scored and confident is not None and math.isfinite(confident) else None
    fig = figures.prior_samples(spec, arrays["prior_images"][: s.prior_images], confident=conf, classes=classes)
    figs.append(
        Figure(
            f"{name}-prior-samples",
            "Prior samples",
            "prior-samples",
            figures.encode(fig, picture=True),
            spec,
            ("holes", "roles"),
        )
    )

    figs.append(gmm_figure(spec, arrays, values, s, scored, classes))

    pairs = arrays["interp_pairs"][: s.interp_pairs]
    ends = test_images[pairs].astype(np.float32) / 255.0  # (pairs, 2, H, W) or (pairs, 2, C, H, W)
    pair_labels = arrays.get("interp_pair_labels")  # absent for unlabelled data
    fig = figures.interpolation_strips(
        spec,
        arrays["interp_strips"][: s.interp_pairs],
        None if pair_labels is None else pair_labels[: s.interp_pairs],
        ends,
        classes=classes,
    )
    figs.append(
        Figure(
            f"{name}-interpolation",
            "Interpolation",
            "interpolation",
            figures.encode(fig, picture=True),
            spec,
            ("interp",),
            wide=True,
            quoted=_quoted("interpolation", values),
        )
    )

    fig = figures.training_curves(spec, history, other_seeds or {})
    figs.append(
        Figure(f"{name}-training", "Training curves", "training", figures.encode(fig), spec, ("loss",), wide=True)
    )
    return figs


def gmm_figure(
    spec: RunSpec,
    arrays: dict[str, np.ndarray],
    values: dict[str, float],
    s: ReportSettings,
    scored: tuple[int, float] | None = None,
    classes: ClassNames = figures.MNIST,
) -> Figure:
    """Prior samples beside samples of the GMM fit to the training codes (metrics.gmm_samples), both decoded by
    the evaluate stage; captions quote both confident shares. scored: as for `model_figures`; classes: how the
    data names what its images show."""
    shares = [values.get(metric_registry.for_figure(role).key) for role in ("prior-samples", "gmm-samples")]
    finite = scored and all(v is not None and math.isfinite(v) for v in shares)
    fig = figures.prior_vs_gmm(
        spec,
        arrays["prior_images"][: s.prior_images],
        arrays["gmm_images"][: s.prior_images],
        confident=(*shares, *scored) if finite else None,
        classes=classes,
    )
    return Figure(
        f"{spec.name}-gmm-samples",
        "Prior vs fitted-density samples",
        "gmm-samples",
        figures.encode(fig, picture=True),
        spec,
        ("holes", "roles"),
        wide=True,
        quoted=_quoted("gmm-samples", values),
    )


def gmm_reading(specs: list[RunSpec], values: dict[str, dict[str, float]], labelled: bool = True) -> list[dict]:
    """Per model, each gmm/ summary metric beside its prior/ twin: [{"model", "pairs": [(Metric, prior, gmm)]}].

    The data of the report's sentence on where poor prior samples come from (decoder or density); none for
    unlabelled data, which has no classifier to score either set of samples.
    """
    if not labelled:
        return []
    gmm = [m for m in metric_registry.METRICS if m.key.startswith("gmm/") and m.summary]
    twins = [(metric_registry.by_key("prior/" + m.key.split("/", 1)[1]), m) for m in gmm]
    return [
        {
            "model": spec.name,
            "pairs": [
                (g, values[spec.name].get(p.key, math.nan), values[spec.name].get(g.key, math.nan)) for p, g in twins
            ],
        }
        for spec in specs
    ]


def sweep_figures(
    specs: list[RunSpec],
    codes: dict[str, np.ndarray],
    labels: np.ndarray | None,
    study: StudyResults,
    scatter_idx: np.ndarray,
    classes: ClassNames,
    pixels: int,
) -> list[Figure]:
    """The figures across the sweep: latent spaces side by side, rate–distortion (VAEs only), a bar chart per group.

    pixels: C*H*W of the data's images (MNIST's 784), to draw the distortion per image. labels None (unlabelled
    data): codes uncoloured, and the bar charts leave out the metrics that need labels (a chart of only those
    is not drawn).
    specs: one per group, named by the group (`_group_spec`); codes: group -> (N, latent) of its figure seed.
    Bars are the means over seeds with their 95% interval as error bars (none with one seed).
    """
    values = study.means
    figs = []
    fig = figures.latent_side_by_side(
        specs,
        [codes[s.name][scatter_idx] for s in specs],
        None if labels is None else labels[scatter_idx],
        classes=classes,
    )
    figs.append(
        Figure(
            "latent-all",
            "Latent spaces side by side",
            "latent-all",
            figures.encode(fig),
            None,
            ("holes", "regular", "beta0"),
        )
    )
    if any(s.model.kind == "vae" for s in specs):
        fig = figures.rate_distortion(specs, values, study.bounds, pixels=pixels)
        figs.append(
            Figure(
                "rate-distortion",
                "Rate–distortion across β",
                "rate-distortion",
                figures.encode(fig),
                None,
                ("loss", "beta0"),
            )
        )
    members = metric_registry.grouped("chart")
    for chart in GROUPS:
        drawn = [m for m in members[chart.slug] if labels is not None or not m.needs_labels]
        if not drawn:
            continue
        title = f"{chart.title}\n{study.bars_note}"
        fig = figures.metric_bars(title, drawn, specs, values, study.bounds)
        figs.append(
            Figure(
                f"metrics-{chart.slug}", chart.title, "metrics", figures.encode(fig), None, chart.claims, chart=chart
            )
        )
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
    """The summary table: registry metrics with a `summary` group, one row per group, and the PCA baseline."""

    groups: dict[str, tuple[Metric, ...]]  # column group -> its metrics, in page order
    values: pd.DataFrame  # group x metric key: means over seeds, floats (NaN: does not apply)
    best: pd.DataFrame  # the same shape, True where the mean is the column's best
    pca: pd.DataFrame  # latent size x metric key: the baseline of the columns that have one
    low: pd.DataFrame  # the same shape as values: the 95% interval's bounds (NaN with one seed)
    high: pd.DataFrame

    @property
    def columns(self) -> tuple[Metric, ...]:
        return tuple(m for members in self.groups.values() for m in members)


def summary_table(specs: list[RunSpec], study: StudyResults) -> SummaryTable:
    """The summary table's data, one row per group (specs named by their group); best per column judged on
    the means, by each metric's direction (`_best`)."""
    values = study.means
    groups = metric_registry.grouped("summary")
    columns = [m for members in groups.values() for m in members]
    names = [s.name for s in specs]
    frame = pd.DataFrame(
        {m.key: [values[n].get(m.key, math.nan) for n in names] for m in columns}, index=names, dtype=float
    )

    def bound(i: int) -> pd.DataFrame:
        return pd.DataFrame(
            {m.key: [study.bounds[n].get(m.key, (math.nan, math.nan))[i] for n in names] for m in columns},
            index=names,
            dtype=float,
        )

    best = pd.DataFrame({m.key: [n in _best(values, m.key, m.direction) for n in names] for m in columns}, index=names)
    pca: dict[int, dict[str, float]] = {}
    for s in specs:  # one baseline per latent size
        v = values[s.name]
        if any(m.reference in v for m in columns if m.reference):
            pca.setdefault(s.model.latent_dim, {m.key: v.get(m.reference, math.nan) for m in columns if m.reference})
    return SummaryTable(groups, frame, best, pd.DataFrame.from_dict(pca, orient="index"), bound(0), bound(1))


def settings_table(
    specs: list[RunSpec], seeds: dict[str, list[int]], image_shape: tuple[int, int, int]
) -> pd.DataFrame:
    """The resolved settings each group was trained with, one row per group (strings, "–" where not a VAE's).

    seeds: group -> the training seeds of its models; image_shape (C, H, W) resolves conv channels `auto`."""

    def vae_only(s: RunSpec, value):
        return value if s.model.kind == "vae" else "–"

    rows = {
        s.name: {
            "kind": s.model.kind,
            "arch": s.model.arch,
            "hidden / channels": s.model.hidden if s.model.arch == "mlp" else conv_channels(s.model, *image_shape[1:]),
            "activation": s.model.activation,
            "latent": s.model.latent_dim,
            "recon loss": s.model.recon,
            "β": vae_only(s, f"{s.model.beta:g}"),
            "KL warm-up (epochs)": vae_only(s, s.model.kl_warmup_epochs),
            "free bits (nats)": vae_only(s, f"{s.model.free_bits:g}"),
            "epochs": s.train.epochs,
            "batch": s.train.batch_size,
            "lr": f"{s.train.lr:g}",
            "seeds": ", ".join(map(str, seeds.get(s.name, [s.seed]))),
        }
        for s in specs
    }
    return pd.DataFrame.from_dict(rows, orient="index").astype(str)


# ------------------------------------------------------------------ page


def _number(v, fmt: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)


def _effect(effect: dict) -> str:
    """A claims.json effect {"mean", "ci_low", "ci_high", "n_seeds"} as "−0.0123 [−0.02, −0.004]" (a − b)."""
    mean, low, high = (none_to_nan(effect.get(k)) for k in ("mean", "ci_low", "ci_high"))
    if not math.isfinite(mean):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.3g} (one seed: no interval)"
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aevae.report", TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        number=_number,
        pm=plus_minus,
        effect=_effect,
        data_uri=lambda data: f"data:{figures.MIME};base64," + base64.b64encode(data).decode("ascii"),
        beta=lambda beta, kind: f"{beta:g}" if kind == "vae" else "–",
        label=figures.label,
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
    slugs += [f.slug for s in specs for f in figures if f.group == s.name]
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


def _measured(specs: list[RunSpec], study: StudyResults, claim: str) -> list[dict]:
    """One neutral line per metric the claim quotes: every group's (mean, low, high), and the PCA baseline."""
    values, bounds = study.means, study.bounds
    lines = []
    for m in metric_registry.evidence(claim):
        pca = sorted(
            {
                (s.model.latent_dim, values[s.name][m.reference])
                for s in specs
                if m.reference and m.reference in values[s.name]
            }
        )
        models = [
            (s.name, values[s.name].get(m.key, math.nan), *bounds[s.name].get(m.key, (math.nan, math.nan)))
            for s in specs
        ]
        lines.append({"metric": m, "models": models, "pca": pca})
    return lines


def render(
    specs: list[RunSpec],
    study: StudyResults,
    figures: list[Figure],
    classifier: dict,
    manifest: dict,
    git: dict,
    evaluate_params: dict,
    seeds: dict[str, list[int]] | None = None,
    figure_seed: int | None = None,
    classes: ClassNames = figures.MNIST,
) -> tuple[str, str]:
    """(index.html, summary.md) rendered from one context.

    specs: one per group, named by the group, in page order. seeds: group -> its training seeds (settings
    table); figure_seed: the seed whose models drew the per-model figures (said on the page).
    """
    lead, sections, unplaced = _layout(figures, specs)
    labelled = manifest_labelled(manifest)
    verdicts = {row["id"]: row for row in verdict_rows(study)}
    for section in sections:
        section["measured"] = _measured(specs, study, section["id"])
        section["verdicts"] = verdicts.get(section["id"], {}).get("cells", {})
    context = {
        "title": TITLE,
        "specs": specs,
        "values": study.means,
        "bounds": study.bounds,
        "study": study,
        "manifest": manifest,
        "git": git,
        "classes": classes,
        "classifier_accuracy": classifier.get("test/accuracy", math.nan),
        "evaluate_params": evaluate_params,
        "summary": summary_table(specs, study),
        "all_metrics": metric_registry.METRICS + metric_registry.BASELINES,
        "settings_table": settings_table(specs, seeds or {}, manifest_shape(manifest)),
        "lead": lead,
        "claims": sections,
        "unplaced": unplaced,
        "per_model": [(s, [f for f in figures if f.group == s.name]) for s in specs],
        "verdict_rows": verdict_rows(study),
        "latent_sizes": latent_sizes(study),
        "verdicts": VERDICTS,
        "rules": study.claims.get("rules", {}),
        "figure_seed": figure_seed,
        "gmm_reading": gmm_reading(specs, study.means, labelled),
        # Unlabelled data: the keys of the metrics it cannot have, whose cells say why instead of a number.
        "labelled": labelled,
        "no_labels": set() if labelled else {m.key for m in metric_registry.needing_labels()},
        "no_labels_reason": NO_LABELS,
    }
    env = _environment()
    markdown = env.get_template("summary.md.j2").render(context)
    page = env.get_template("report.html.j2").render(context, summary_md=markdown)
    return page, markdown


# ------------------------------------------------------------------- runner


def make_report(
    paths: ReportPaths = ReportPaths(),
    settings: ReportSettings = ReportSettings(),
    evaluate_params: EvaluateParams | None = None,
    git: dict | None = None,
    on_model: Callable[[int, int, str], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Report:
    """Read the models, metrics, arrays and test split; draw every figure; return the report (nothing written yet).

    evaluate_params: the evaluate stage's params (params.yaml `evaluate:`), shown on the page and quoted
    in captions (None: the page says "defaults" and quotes no sample sizes). git: git_state() of the checkout (computed when None). on_model(done, total, name) after
    each group's figures are drawn (progress); on_step(text) before each later step, which can take tens of
    seconds (t-SNE, embedding the figures). Raises UserError when an input is missing (summary.json
    naming no group, a group without a trained model, a model's arrays absent: rerun the evaluate stage).
    """
    scored = None
    if evaluate_params is not None:
        scored = (evaluate_params.n_prior_samples, evaluate_params.confidence_threshold)
    study = read_study(paths.summary, paths.claims)
    classifier = atomic.read_json(paths.classifier, "classifier")
    manifest = load_manifest(paths.prepared)
    classes = manifest_classes(manifest)
    test = load_split("test", paths.prepared)
    labels = None if test.labels is None else test.labels.astype(np.int64)
    by_group = _models_by_group(paths.models, study)
    figure_seed = (
        settings.figure_seed
        if settings.figure_seed is not None
        else min(s.seed for models in by_group.values() for s in models)
    )
    drawn = {g: _pick_seed(models, figure_seed) for g, models in by_group.items()}  # group -> its figure's spec
    specs = sorted(drawn.values(), key=_order)
    rng = np.random.default_rng(settings.seed)
    n = len(test.images)
    scatter_idx = (
        np.sort(rng.choice(n, settings.max_scatter, replace=False)) if n > settings.max_scatter else np.arange(n)
    )

    codes: dict[str, np.ndarray] = {}
    curves = {s.name: (paths.models / s.name / "history.csv").read_text() for ms in by_group.values() for s in ms}
    per_model: list[Figure] = []
    for spec in specs:
        model, _ = model_store.load(spec.name, paths.models)
        arrays = _arrays(paths.arrays / f"{spec.name}.npz")
        codes[spec.group] = arrays["test_codes"]
        others = {
            s.seed: _read_history(paths.models / s.name / "history.csv")
            for s in by_group[spec.group]
            if s.name != spec.name
        }
        values = _seed_values(paths.per_model / f"{spec.name}.json", study.means[spec.group])
        per_model += model_figures(
            spec,
            model,
            arrays,
            test.images,
            labels,
            _read_history(paths.models / spec.name / "history.csv"),
            values,
            settings,
            scatter_idx,
            scored,
            classes,
            others,
        )
        if on_model:
            on_model(len(codes), len(specs), spec.group)
    step = on_step or (lambda _text: None)
    groups = [_group_spec(s) for s in specs]
    step("figures across the sweep (latent spaces side by side, t-SNE above 2 dims, bar charts)")
    pixels = math.prod(manifest_shape(manifest))
    figures = sweep_figures(groups, codes, labels, study, scatter_idx, classes, pixels) + per_model
    git = git_state() if git is None else git
    seeds = {g: sorted(s.seed for s in models) for g, models in by_group.items()}
    step(f"rendering the page ({len(figures)} figures)")
    shown = {} if evaluate_params is None else evaluate_params.model_dump()
    page, md = render(groups, study, figures, classifier, manifest, git, shown, seeds, figure_seed, classes)
    return Report(figures=figures, html=page, markdown=md, curves=curves)


def _models_by_group(root: Path, study: StudyResults) -> dict[str, list[RunSpec]]:
    """group -> the specs of its trained models under root (every seed), for each group of summary.json."""
    by_group: dict[str, list[RunSpec]] = {}
    for name in model_store.trained_names(root):
        spec = model_store.load_spec(name, root)
        if spec.group in study.means:
            by_group.setdefault(spec.group, []).append(spec)
    missing = [g for g in study.means if g not in by_group]
    if missing:
        raise UserError(
            f"no trained model in {root} for {', '.join(missing)} of the summary; rerun the pipeline (dvc repro)"
        )
    return by_group


def _pick_seed(specs: list[RunSpec], seed: int) -> RunSpec:
    """The spec trained with `seed`, else the one with the smallest seed."""
    return next((s for s in specs if s.seed == seed), min(specs, key=lambda s: s.seed))


def _group_spec(spec: RunSpec) -> RunSpec:
    """The spec standing for its group in tables and sweep figures: named by the group (e.g. "ae-z2")."""
    return spec.model_copy(update={"name": spec.group})


def _seed_values(path: Path, fallback: dict[str, float]) -> dict[str, float]:
    """One model's own metrics (metrics/models/<name>.json) for its figures' captions; the group means without it."""
    if not path.is_file():
        return fallback
    return {k: none_to_nan(v) for k, v in atomic.read_json(path, "evaluate").items() if not isinstance(v, dict)}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} not found; rerun the evaluate stage (dvc repro evaluate)")
    return metrics.load_arrays(path)


def write_report(report: Report, out: Path = Path("reports")) -> dict[str, list[Path]]:
    """Write figures/, curves/, summary.md, then index.html last; returns each model's figure files."""
    out = Path(out)
    with atomic.atomic_dir(out / "figures") as tmp:
        for f in report.figures:
            (tmp / f.file).write_bytes(f.image)
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
        if tag == "img" and src.startswith(f"data:{figures.MIME};base64,"):
            self.sources.append(src.split(",", 1)[1])


def embedded_images(page: str) -> list[bytes]:
    """The images embedded in a report page (figures.MIME), decoded from base64 (for checks)."""
    parser = _ImageSources()
    parser.feed(page)
    return [base64.b64decode(s) for s in parser.sources]
