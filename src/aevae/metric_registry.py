"""Every metric the evaluate stage reports, written once: key, unit, direction, labels, where it is shown.

One frozen record per metric. Readers iterate `METRICS` (or `BASELINES`, the PCA
reference numbers) instead of spelling keys:

- metrics.evaluate returns exactly the keys of `METRICS`, in this order, and NaN for
  a metric whose `kinds` exclude the model's kind (an AE has no posterior, so no KL);
- the report's summary table (`summary` group), bar charts (`chart` group), "measured"
  lines and all-metrics table;
- retrain's validation of the champion/challenger criteria (`by_key`, `applies`);
- pipeline/evaluate.py's console table (`console`; study.console_lines);
- the metrics table of docs/metrics.md (`markdown_table`, checked by tests/test_metric_registry.py);
- the tests, which parametrize over `METRICS`.

Keys name the data (`test/`, `prior/` z ~ N(0, I), `gmm/` codes drawn from a Gaussian mixture fit to
the training codes, `interp/`, `pca/`) and the unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["min", "max"] | None
BOTH = ("ae", "vae")


@dataclass(frozen=True)
class Metric:
    """One metric: what it is called, measured in, and where the report shows it."""

    key: str  # "<data>/<name with unit>": the key in metrics/*.json and in MLflow
    unit: str  # for the table in docs/metrics.md
    direction: Direction  # "min": lower is better, "max": higher is better, None: no better direction
    label: str  # short, with its unit: chart titles, "measured" lines, the all-metrics table
    description: str  # what it measures and which claim it serves (docs/metrics.md)
    header: str = ""  # summary-table column header (without the direction arrow)
    kinds: tuple[str, ...] = BOTH  # model kinds it is defined for; NaN (null in JSON) for the others
    summary: str | None = None  # summary-table column group; None: only in the all-metrics table
    chart: str | None = None  # bar-chart group slug (reports/figures/metrics-<chart>.webp)
    fmt: str = ".4g"  # summary-table number format
    log: bool = False  # bar chart on a log axis (values span orders of magnitude)
    reference: str | None = None  # a BASELINES key drawn as the dashed line on its bar chart
    console: bool = False  # printed per group (mean ± interval over seeds) by the evaluate stage
    evidence: str | None = None  # the report claim whose "Measured" line quotes it (report_text.yaml ids)
    figure: str | None = None  # the figure role that quotes or draws it: see `for_figure`
    judges: tuple[str, ...] = ()  # model kinds whose default retrain criterion it is (config.RetrainParams)
    card: bool = False  # quoted with its unit in each registered model version's description (model_card)
    infinite_when: str = ""  # why it can be ±inf (written as null with this reason in metrics/models/*.json)
    needs_labels: bool = False  # scored by the reference classifier or against the classes: null for unlabelled data

    @property
    def short_header(self) -> str:
        """The header with its column group's short name ("prior classifier-FID"), for tables without group rows."""
        return GROUP_PREFIX.get(self.summary, "") + self.header

    @property
    def arrow(self) -> str:
        """ " ↓" (lower is better), " ↑" (higher is better) or ""."""
        return {"min": " ↓", "max": " ↑", None: ""}[self.direction]

    def applies(self, kind: str) -> bool:
        """Whether a model of `kind` ("ae" | "vae") has this metric; evaluate gives the others NaN."""
        return kind in self.kinds


# The linear baseline (metrics.pca_baseline), one per latent size, merged into every model's numbers.
PCA_MSE = Metric(
    "pca/recon_mse_per_pixel",
    "squared error per pixel, [0,1] scale",
    "min",
    "PCA recon MSE per pixel",
    "PCA with as many components as the latent size (linear AE ≈ PCA)",
)
PCA_BCE = Metric(
    "pca/recon_bce_nats_per_pixel",
    "nats per pixel",
    "min",
    "PCA recon BCE (nats per pixel)",
    "the same, as Bernoulli NLL (reconstruction clipped into (1e-4, 1 - 1e-4))",
)
BASELINES: tuple[Metric, ...] = (PCA_MSE, PCA_BCE)
_GMM = "samples of a GMM fit to the training codes"  # summary-table column group of the gmm/ metrics
# Short names of the summary-table column groups, for tables that have no group row (console, markdown).
GROUP_PREFIX = {
    "reconstruction": "recon ",
    "prior samples z ~ N(0, I)": "prior ",
    _GMM: "GMM ",
    "interpolation": "interp. ",
}


METRICS: tuple[Metric, ...] = (
    Metric(
        "test/recon_mse_per_pixel",
        "squared error per pixel, [0,1] scale",
        "min",
        "recon MSE per pixel",
        "reconstruction, mean code (compression)",
        "MSE per pixel",
        summary="reconstruction",
        chart="compression",
        fmt=".4f",
        reference=PCA_MSE.key,
        console=True,
        evidence="compress",
        figure="reconstructions",
        card=True,
    ),
    Metric(
        "test/recon_bce_nats_per_pixel",
        "nats per pixel",
        "min",
        "recon BCE (nats per pixel)",
        "reconstruction as Bernoulli NLL (compression)",
        "BCE nats / pixel",
        summary="reconstruction",
        chart="compression",
        fmt=".4f",
        reference=PCA_BCE.key,
        evidence="pca",
        figure="distortion",
        judges=("ae",),
        card=True,
    ),
    Metric(
        "test/kl_nats_per_image",
        "nats per image",
        None,
        "KL to N(0, I) (nats per image)",
        "KL(q(z\\|x) ‖ N(0, I)) (VAE loss term)",
        "KL nats / image",
        kinds=("vae",),
        summary="VAE objective",
        chart="objective",
        fmt=".2f",
        evidence="loss",
        figure="rate",
        card=True,
    ),
    Metric(
        "test/neg_elbo_nats_per_image",
        "nats per image",
        "min",
        "−ELBO (nats per image)",
        "BCE reconstruction + KL: the VAE objective",
        "−ELBO nats / image",
        kinds=("vae",),
        summary="VAE objective",
        chart="objective",
        fmt=".1f",
        judges=("vae",),
        card=True,
    ),
    Metric(
        "test/iw_nll_nats_per_image",
        "nats per image",
        "min",
        "IW-NLL bound (nats per image)",
        "importance-weighted NLL estimate, k = `evaluate.iw_samples`, on `evaluate.iw_images` test images",
        "IW-NLL nats / image",
        kinds=("vae",),
        summary="VAE objective",
        chart="objective",
        fmt=".1f",
    ),
    Metric(
        "test/active_units",
        "count",
        None,
        "active units (count)",
        "latent dimensions whose mean code varies across images (Cov > 0.01)",
        chart="regularity",
    ),
    Metric(
        "test/mmd_to_prior",
        "MMD² (RBF kernels)",
        "min",
        "MMD² codes vs N(0, I) (unitless)",
        "encoded test set vs N(0, I) (regular latent space)",
        "MMD² vs N(0, I)",
        summary="latent codes",
        chart="regularity",
        fmt=".4f",
        evidence="regular",
    ),
    Metric(
        "test/moment_kl_to_prior_nats",
        "nats",
        "min",
        "moment KL codes vs N(0, I) (nats)",
        "KL from a Gaussian fit of the codes to N(0, I)",
        chart="regularity",
        log=True,
        evidence="beta0",
        infinite_when="a singular covariance: fewer test images than latent dimensions, or a collapsed code",
    ),
    Metric(
        "prior/holes_fraction",
        "share in [0, 1]",
        "min",
        "holes (share of prior samples)",
        "prior samples whose nearest code is farther than the codes' own 99th-percentile nearest-neighbour"
        " distance (gaps)",
        "holes (share)",
        summary="prior samples z ~ N(0, I)",
        chart="generation",
        fmt=".3f",
        evidence="holes",
    ),
    Metric(
        "test/holes_fraction_own_gaussian",
        "share in [0, 1]",
        "min",
        "holes in the codes' own range (share)",
        "the same, for samples from a Gaussian fit to the codes themselves: gaps within the region the model"
        " uses, whatever its scale (N(0, I) suits only a VAE)",
        "holes in own range (share)",
        summary="latent codes",
        chart="regularity",
        fmt=".3f",
        console=True,
    ),
    Metric(
        "prior/classifier_fid",
        "Fréchet distance",
        "min",
        "classifier-FID (feature units²)",
        "decoded prior samples vs test images in the reference classifier's feature space (a classifier-FID,"
        " not Inception FID)",
        "classifier-FID",
        summary="prior samples z ~ N(0, I)",
        chart="generation",
        fmt=".1f",
        console=True,
        card=True,
        needs_labels=True,
    ),
    Metric(
        "prior/mean_confidence",
        "probability",
        "max",
        "mean classifier confidence",
        "reference classifier's top-class probability on decoded prior samples",
        needs_labels=True,
    ),
    Metric(
        "prior/confident_fraction",
        "share",
        "max",
        "confident share",
        "prior samples classified with confidence > `evaluate.confidence_threshold`",
        "confident (share)",
        summary="prior samples z ~ N(0, I)",
        chart="generation",
        fmt=".3f",
        evidence="holes",
        figure="prior-samples",
        card=True,
        needs_labels=True,
    ),
    Metric(
        "prior/class_coverage",
        "share of classes",
        "max",
        "class coverage (share of 10)",
        "classes among the confident prior samples",
        "classes covered (share)",
        summary="prior samples z ~ N(0, I)",
        chart="generation",
        fmt=".2f",
        needs_labels=True,
    ),
    # Ex-post density estimation (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders", section 4):
    # the prior scores again, for codes drawn from a density fit to the model's own training codes.
    Metric(
        "gmm/classifier_fid",
        "Fréchet distance",
        "min",
        "GMM-sample classifier-FID (feature units²)",
        "decoded samples of a 10-component GMM fit to the model's training codes vs test images (ex-post density"
        " estimation, Ghosh et al. 2020 §4): is a poor prior sample the decoder's fault or the prior's?",
        "classifier-FID",
        summary=_GMM,
        chart="gmm",
        fmt=".1f",
        evidence="roles",
        needs_labels=True,
    ),
    Metric(
        "gmm/mean_confidence",
        "probability",
        "max",
        "GMM-sample mean classifier confidence",
        "reference classifier's top-class probability on those GMM samples",
        needs_labels=True,
    ),
    Metric(
        "gmm/confident_fraction",
        "share",
        "max",
        "GMM-sample confident share",
        "GMM samples classified with confidence > `evaluate.confidence_threshold`",
        "confident (share)",
        summary=_GMM,
        chart="gmm",
        fmt=".3f",
        evidence="roles",
        figure="gmm-samples",
        needs_labels=True,
    ),
    Metric(
        "gmm/class_coverage",
        "share of classes",
        "max",
        "GMM-sample class coverage (share of 10)",
        "classes among the confident GMM samples",
        "classes covered (share)",
        summary=_GMM,
        chart="gmm",
        fmt=".2f",
        needs_labels=True,
    ),
    Metric(
        "test/knn_accuracy",
        "accuracy",
        "max",
        "kNN accuracy of class from z",
        "5-NN digit label from z (codes fit on train)",
        "kNN accuracy",
        summary="structure",
        chart="structure",
        fmt=".3f",
        console=True,
        evidence="regular",
        card=True,
        needs_labels=True,
    ),
    Metric(
        "test/linear_probe_accuracy",
        "accuracy",
        "max",
        "linear-probe accuracy",
        "logistic regression digit label from z",
        chart="structure",
        needs_labels=True,
    ),
    Metric(
        "test/silhouette",
        "[-1, 1]",
        "max",
        "silhouette of classes in z (−1..1)",
        "silhouette of test codes by digit (cluster separation)",
        chart="structure",
        needs_labels=True,
    ),
    Metric(
        "interp/smoothness_ratio",
        "ratio ≥ 1",
        "min",
        "largest / mean step (1 = even)",
        "largest step over mean step (pixel L2) along a straight latent path between two test digits of"
        " different classes; 1 = even",
        "max / mean step",
        summary="interpolation",
        chart="interpolation",
        fmt=".2f",
        evidence="interp",
        figure="interpolation",
    ),
    Metric(
        "interp/mean_confidence",
        "probability",
        "max",
        "classifier confidence on paths",
        "classifier confidence along those paths (are the in-between images digits?)",
        "confidence",
        summary="interpolation",
        chart="interpolation",
        fmt=".3f",
        needs_labels=True,
    ),
)

KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)  # what metrics.evaluate returns, in this order
_BY_KEY = {m.key: m for m in METRICS + BASELINES}


def by_key(key: str) -> Metric:
    """The record of `key` (a METRICS or BASELINES key); KeyError for any other string."""
    return _BY_KEY[key]


def grouped(field: Literal["summary", "chart"]) -> dict[str, tuple[Metric, ...]]:
    """METRICS by their summary or chart group, groups in order of first appearance, members in registry order."""
    out: dict[str, list[Metric]] = {}
    for m in METRICS:
        group = getattr(m, field)
        if group is not None:
            out.setdefault(group, []).append(m)
    return {g: tuple(ms) for g, ms in out.items()}


def for_figure(role: str) -> Metric:
    """The metric a figure quotes or draws: "reconstructions", "prior-samples", "gmm-samples", "interpolation"
    (captions), "rate" and "distortion" (the rate–distortion plot's axes). KeyError for any other role."""
    return {m.figure: m for m in METRICS if m.figure}[role]


def judging(kind: str) -> str:
    """The key of the default champion/challenger criterion of a model kind ("ae" or "vae")."""
    return next(m.key for m in METRICS if kind in m.judges)


def evidence(claim: str) -> tuple[Metric, ...]:
    """The metrics the report quotes under `claim`, in registry order (may be empty)."""
    return tuple(m for m in METRICS if m.evidence == claim)


def needing_labels() -> tuple[Metric, ...]:
    """The metrics unlabelled data cannot have (`needs_labels`): the evaluate stage writes them as null."""
    return tuple(m for m in METRICS if m.needs_labels)


def markdown_table() -> str:
    """The metrics table of docs/metrics.md (key, unit, what it measures), one row per METRICS and BASELINES record."""
    lines = ["| key | unit | what it measures (claim) |", "| --- | --- | --- |"]
    for m in METRICS + BASELINES:
        only = "" if m.kinds == BOTH else f" ({', '.join(k.upper() for k in m.kinds)} only)"
        up = " ↑" if m.direction == "max" else ""
        neither = "; no better direction" if m.direction is None else ""
        labels = "; needs labels" if m.needs_labels else ""
        lines.append(f"| `{m.key}`{up} | {m.unit} | {m.description}{only}{neither}{labels} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # `python -m aevae.metric_registry` prints the table of docs/metrics.md
    print(markdown_table(), end="")
