"""The study: every metric as a mean with a 95% interval over seeds, and a verdict for each claim.

One seed gives one number per model; whether the article's claim holds needs
to know how much that number moves when only the seed changes. Every
(model, seed) is trained and evaluated on its own; this module turns those
per-seed values into

- an interval per metric and model: the mean over seeds with a Student-t 95%
  confidence interval (mean ± t_{0.975, n-1} · s / √n);
- an effect per comparison: the *paired* difference over seeds (the models
  trained with seed k share the data split and the evaluation's random draws,
  so pairing removes that shared noise), with its Student-t interval;
- a verdict per claim, decided by the rule written next to it:
  * a directional comparison ("A is better than B on metric m") is
    `supported` when the interval of A − B lies wholly on A's better side of 0
    (below 0 for a metric to minimise, above for one to maximise),
    `contradicted` when it lies wholly on the other side, else `inconclusive`;
  * an equivalence comparison ("A is about B") is `supported` when the whole
    interval of A − B lies within ±tolerance · |B|, `contradicted` when it lies
    wholly outside that band, else `inconclusive` (two one-sided tests, TOST:
    Schuirmann, J. Pharmacokinet. Biopharm. 15(6), 1987; a 95% interval inside
    the band is TOST at 2.5% per side, a little stricter than the usual 5%);
  * a claim with several comparisons is `supported` when all are, `contradicted`
    when any is, else `inconclusive`; one seed gives no interval, so
    `inconclusive`; a comparison whose models are not in the sweep makes the
    claim `untestable`, with the reason;
  * a comparison on a metric the data cannot have (`unavailable`: the metrics
    that need labels, for unlabelled data) is left out, with its reason, and
    the claim is judged on the others; a claim with none left is `untestable`
    with that reason.

Each comparison is judged at 95% on its own: a claim of k comparisons is not
corrected for multiplicity (its "supported" needs all k, which is conservative;
its "contradicted" needs any one, which is not).

Pure numpy/scipy: no torch, no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from aevae import atomic
from aevae.errors import UserError
from aevae.metric_registry import PCA_MSE, Metric, by_key

LEVEL = 0.95
SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE = "supported", "contradicted", "inconclusive", "untestable"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE)  # every verdict, in the report's badge order


@dataclass(frozen=True)
class Interval:
    """A mean over n seeds with its two-sided Student-t confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """{"mean", "ci_low", "ci_high", "n_seeds"}: one entry of summary.json and of an effect in claims.json."""
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n_seeds": self.n}


def t_factor(n: int, level: float = LEVEL) -> float:
    """The Student-t quantile a `level` interval of a mean over n >= 2 values spans on each side, in standard
    errors (12.7 for n = 2, 4.30 for n = 3 at 95%). Source: Wasserman, *All of Statistics* (2004), §10."""
    return float(stats.t.ppf(0.5 + level / 2.0, df=n - 1))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of `values` (one per seed) and its Student-t interval, in the values' own unit.

    Non-finite values and None (a metric that does not apply, a diverged seed) are left out
    and n counts the rest. n = 0 gives NaN everywhere; n = 1 a mean with NaN bounds (no spread
    to estimate); identical values a zero-width interval. Raises nothing.
    Source: the t interval for a mean, e.g. Wasserman, *All of Statistics* (2004), §10.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_factor(n, level) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """Interval of a − b over the seeds both have ({seed: value} each), in the values' unit.

    Unpaired seeds and non-finite differences are left out (n counts the rest). The paired
    t interval: Student, "The probable error of a mean", Biometrika 6(1), 1908.
    """
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds], level)


# ------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Role:
    """Which sweep member plays a part in a claim, by what it is rather than by its name."""

    label: str  # how the report names it, e.g. "non-linear AE"
    kind: str  # "ae" | "vae"
    linear: bool | None = None  # AE only: activation == "linear"; None: either
    beta: float | None = None  # VAE only: this KL weight exactly

    def matches(self, kind: str, activation: str, beta: float) -> bool:
        """Whether a model of this kind ("ae" | "vae"), activation and KL weight β plays the role."""
        if kind != self.kind:
            return False
        if self.linear is not None and (activation == "linear") != self.linear:
            return False
        return self.beta is None or (kind == "vae" and math.isclose(beta, self.beta))


AE = Role("non-linear AE", "ae", linear=False)
LINEAR_AE = Role("linear AE", "ae", linear=True)
VAE_BETA0 = Role("VAE β=0", "vae", beta=0.0)
VAE_BETA1 = Role("VAE β=1", "vae", beta=1.0)


@dataclass(frozen=True)
class Operand:
    """A metric of a role's models; `metric` may be a baseline every model carries (PCA at its latent size)."""

    role: Role
    metric: str


@dataclass(frozen=True)
class Comparison:
    """`a` against `b` on the same metric direction: `a` better (directional) or `a` ≈ `b` (equivalence)."""

    a: Operand
    b: Operand
    lower_is_better: bool
    equivalence_tolerance: float | None = None  # relative to |mean of b|; None: directional

    def describe(self, code: bool = False) -> str:
        """The statistic in words, e.g. "VAE β=1 test/mmd_to_prior lower than non-linear AE test/mmd_to_prior";
        `code`: metric keys in Markdown backticks (the claims table of docs/study.md)."""
        ka, kb = (f"`{op.metric}`" if code else op.metric for op in (self.a, self.b))
        if self.equivalence_tolerance is not None:
            return f"{self.a.role.label} {ka} ≈ {self.b.role.label} {kb} (within ±{self.equivalence_tolerance:.0%})"
        word = "lower" if self.lower_is_better else "higher"
        return f"{self.a.role.label} {ka} {word} than {self.b.role.label} {kb}"


@dataclass(frozen=True)
class Claim:
    """One claim of the article and how the study tests it (empty `comparisons`: not a measurable claim)."""

    id: str
    text: str
    comparisons: tuple[Comparison, ...] = ()
    not_measured: str = ""  # why a claim has no comparison (a definition, checked by the tests instead)


def comparison_verdict(cmp: Comparison, effect: Interval, reference: float) -> str:
    """The rule of the module docstring for one comparison: supported | contradicted | inconclusive.

    `effect` is the paired a − b over seeds, in the metric's unit; `reference` the mean of b,
    whose |·| scales an equivalence comparison's ±tolerance band. Fewer than two seeds, or a
    non-finite bound or reference, give `inconclusive`.
    """
    if effect.n < 2 or not math.isfinite(effect.low):
        return INCONCLUSIVE
    if cmp.equivalence_tolerance is not None:
        band = cmp.equivalence_tolerance * abs(reference)
        if -band <= effect.low and effect.high <= band:
            return SUPPORTED
        if effect.low > band or effect.high < -band:
            return CONTRADICTED
        return INCONCLUSIVE
    gain_low, gain_high = (-effect.high, -effect.low) if cmp.lower_is_better else (effect.low, effect.high)
    if gain_low > 0:
        return SUPPORTED
    if gain_high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons' (in any order).

    Any untestable (or none at all) -> untestable; else any contradicted -> contradicted;
    all supported -> supported; else inconclusive.
    """
    if not verdicts:
        return UNTESTABLE
    if UNTESTABLE in verdicts:
        return UNTESTABLE
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return SUPPORTED if all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


# The article's claims (../shared/design.md), in the order the report tests them. Each names the
# registry's metrics it compares (by_key raises KeyError at import for a key the registry lacks);
# the PCA baseline is in every model's record at its latent size.
_MSE, _PCA_MSE = by_key("test/recon_mse_per_pixel").key, PCA_MSE.key
_HOLES, _MMD = by_key("test/holes_fraction_own_gaussian").key, by_key("test/mmd_to_prior").key
_CONFIDENT, _FID = by_key("prior/confident_fraction").key, by_key("prior/classifier_fid").key
_SMOOTH = by_key("interp/smoothness_ratio").key


def _lower(a: Role, b: Role, metric: str) -> Comparison:
    return Comparison(Operand(a, metric), Operand(b, metric), lower_is_better=True)


def _higher(a: Role, b: Role, metric: str) -> Comparison:
    return Comparison(Operand(a, metric), Operand(b, metric), lower_is_better=False)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "compress",
        "An AE compresses: encoder e(x) → z, decoder d(z) → x, trained on reconstruction error.",
        (Comparison(Operand(AE, _MSE), Operand(AE, _PCA_MSE), lower_is_better=True),),
    ),
    Claim(
        "pca",
        "A linear AE's latent space is close to PCA; non-linearity compresses better.",
        (
            Comparison(
                Operand(LINEAR_AE, _MSE), Operand(LINEAR_AE, _PCA_MSE), lower_is_better=True, equivalence_tolerance=0.05
            ),
            _lower(AE, LINEAR_AE, _MSE),
        ),
    ),
    Claim(
        "holes",
        "An AE's latent space has gaps; random latent vectors decode to garbage.",
        (_lower(VAE_BETA1, AE, _HOLES), _higher(VAE_BETA1, AE, _CONFIDENT)),
    ),
    Claim(
        "reparam",
        "A VAE's encoder outputs a mean and a std; z is sampled with the reparameterization trick.",
        not_measured="a construction, not a measurable effect: the tests check that gradients flow through the"
        " sampling step (tests/test_models.py)",
    ),
    Claim(
        "loss",
        "VAE loss = reconstruction + KL(q(z|x) ‖ N(0, I)).",
        not_measured="a definition: the tests check −ELBO = reconstruction + KL and the analytic KL against"
        " Monte Carlo (tests/test_models.py, tests/test_metrics.py)",
    ),
    Claim(
        "regular",
        "A VAE's latent space is regular: clusters overlap, no gaps.",
        (_lower(VAE_BETA1, AE, _MMD), _lower(VAE_BETA1, AE, _HOLES)),
    ),
    Claim("interp", "Moving between clusters decodes to smooth transitions.", (_lower(VAE_BETA1, AE, _SMOOTH),)),
    Claim(
        "beta0",
        "Without the KL term a VAE behaves like an AE.",
        (_lower(VAE_BETA1, VAE_BETA0, _MMD), _lower(VAE_BETA1, VAE_BETA0, _SMOOTH)),
    ),
    Claim(
        "roles",
        "An AE is for compression, a VAE for generation.",
        (_lower(AE, VAE_BETA1, _MSE), _lower(VAE_BETA1, AE, _FID)),
    ),
)


@dataclass(frozen=True)
class SeedRecord:
    """One trained (member, latent size, seed) and its evaluation: what the study aggregates."""

    member: str  # the sweep member's name (the same for every seed and latent size)
    latent_dim: int
    seed: int
    kind: str
    activation: str
    beta: float
    metrics: Mapping[str, float]
    group: str = ""  # the model aggregated over seeds (member[-z<size>]); "": the member

    @property
    def model(self) -> str:
        return self.group or self.member


def from_results(results: Mapping[str, Mapping[str, float]], specs: Sequence) -> list[SeedRecord]:
    """One SeedRecord per trained model, in the order of `specs`.

    `results` is {run name: {metric key: value in the metric's unit}} (evaluate's per-seed numbers,
    PCA baseline keys included), `specs` the RunSpecs of the sweep (aevae.config.resolve_sweep):
    member, group, latent size, seed and the model's kind, activation and β come from the spec. A spec
    without results (not trained) is left out, and so is a result no spec names. Raises nothing.
    """
    return [
        SeedRecord(
            member=s.member,
            latent_dim=s.model.latent_dim,
            seed=s.seed,
            kind=s.model.kind,
            activation=s.model.activation,
            beta=s.model.beta,
            metrics=results[s.name],
            group=s.group,
        )
        for s in specs
        if s.name in results
    ]


def aggregate(seed_records: Sequence[SeedRecord]) -> dict[str, dict[str, dict[str, float | int]]]:
    """{group: {metric key: {"mean", "ci_low", "ci_high", "n_seeds"}}}: every metric over the group's seeds.

    The shape of metrics/summary.json: `dvc metrics diff` compares the leaves, the means among them.
    Units are each metric's own (aevae.metric_registry); a seed whose value is non-finite (a metric
    that does not apply, an infinite moment KL) is left out of n_seeds; no finite value -> NaN.
    """
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for group in dict.fromkeys(r.model for r in seed_records):
        members = [r for r in seed_records if r.model == group]
        keys = dict.fromkeys(k for r in members for k in r.metrics)
        out[group] = {k: mean_ci([none_to_nan(r.metrics.get(k)) for r in members]).as_dict() for k in keys}
    return out


def read_summary(path) -> dict[str, dict[str, dict]]:
    """metrics/summary.json as aggregate() wrote it: {group: {metric key: {"mean", "ci_low", "ci_high", "n_seeds"}}}.

    Raises: UserError (naming the evaluate stage to rerun) when the file is missing, corrupt, lists no
    group, or has another format (one number per key: a summary.json from before seeds).
    """
    raw = atomic.read_json(path, "evaluate")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path} lists no models; rerun the evaluate stage (dvc repro evaluate)")
    cells = [cell for group in raw.values() if isinstance(group, dict) for cell in group.values()]
    if not all(isinstance(g, dict) for g in raw.values()) or not all(
        isinstance(c, dict) and "mean" in c for c in cells
    ):
        raise UserError(
            f"{path} is not the study's format (mean and interval over seeds); "
            "rerun the evaluate stage (dvc repro -f evaluate)"
        )
    return raw


def none_to_nan(value) -> float:
    """A number as float, None as NaN: the study's JSON files write NaN (a metric that does not apply, a bound
    of one seed) as null, and reading them back turns null into NaN again."""
    return math.nan if value is None else float(value)


RULES = {
    "directional": "the effect shown is a − b, seed by seed; supported when its 95% interval lies wholly on a's"
    " better side of 0 (below 0 when lower is better, above 0 when higher is better), contradicted"
    " when it lies wholly on the other side, else inconclusive",
    "equivalence": "supported when the whole 95% interval of a − b lies within ±tolerance·|mean of b|,"
    " contradicted when it lies wholly outside that band, else inconclusive (TOST)",
    "claim": "supported when every comparison is, contradicted when any is, else inconclusive; untestable"
    " when a model it needs is not in the sweep or the claim is a definition",
}


# The rule for data that cannot have some metrics, stated (in claims.json's "rules") only where it applied.
UNAVAILABLE_RULE = (
    "a comparison on a metric the data cannot have (one that needs labels, for unlabelled data) is left out with"
    " its reason and the claim is judged on the others; a claim with none left is untestable"
)


def claims_file(
    seed_records: Sequence[SeedRecord], claims: Sequence[Claim] = CLAIMS, unavailable: Mapping[str, str] | None = None
) -> dict:
    """metrics/claims.json: {"level", "seeds", "rules", "claims": {"z<size>": {claim id: judge_claim(...)}}}.

    "level" is the intervals' confidence (0.95), "seeds" every training seed in `seed_records`,
    "rules" the verdict rules in words (RULES, and UNAVAILABLE_RULE when `unavailable` names any metric).
    unavailable: {metric key: why the data cannot have it} (judge_claim). Holds NaN (the bounds of a one-seed
    effect) until written with aevae.atomic.write_json, which writes them as null (strict JSON). Raises nothing.
    """
    by_dim: dict[str, dict[str, dict]] = {}
    for verdict in judge_claims(seed_records, claims, unavailable):
        by_dim.setdefault(f"z{verdict['latent_dim']}", {})[verdict["claim"]] = verdict
    rules = {**RULES, "unavailable": UNAVAILABLE_RULE} if unavailable else RULES
    return {"level": LEVEL, "seeds": sorted({r.seed for r in seed_records}), "rules": rules, "claims": by_dim}


def _find(role: Role, records: Sequence[SeedRecord], latent_dim: int) -> str | None:
    """The first sweep member at `latent_dim` that plays `role` (sweep order), or None."""
    for r in records:
        if r.latent_dim == latent_dim and role.matches(r.kind, r.activation, r.beta):
            return r.model
    return None


def _per_seed(records: Sequence[SeedRecord], member: str, latent_dim: int, metric: str) -> dict[int, float]:
    return {
        r.seed: float(r.metrics[metric])
        for r in records
        if r.model == member and r.latent_dim == latent_dim and r.metrics.get(metric) is not None
    }


def judge_claim(
    claim: Claim, records: Sequence[SeedRecord], latent_dim: int, unavailable: Mapping[str, str] | None = None
) -> dict:
    """A claim's verdict at one latent size: {"claim", "text", "latent_dim", "verdict", "comparisons", "reason"?}.

    "comparisons" maps a key `<a>:<a metric>-vs-<b>:<b metric>` to the comparison's place in the claim
    ("order": files are written with sorted keys), the statistic, the groups compared ("a", "b"), their
    metric keys, which side of the effect is a's better one ("better": lower, higher or equivalent), the
    paired effect a − b in the metric's unit with its 95% interval over seeds, and its own verdict: a
    mapping, not a list, so `dvc metrics show/diff` list every effect (DVC skips lists).
    unavailable: {metric key: reason} of metrics the data cannot have (unlabelled data: those that need labels);
    a comparison on one is kept in "comparisons" as untestable with its "reason" and left out of the claim's
    verdict, which comes from the other comparisons (none left: untestable with that reason).
    "reason" says why a claim is untestable (a definition, a role missing from the sweep at this size, named, or
    metrics the data cannot have), inconclusive for want of seeds, or judged without some comparisons. Raises nothing.
    """
    out: dict = {"claim": claim.id, "text": claim.text, "latent_dim": latent_dim, "comparisons": {}}
    if not claim.comparisons:
        return {**out, "verdict": UNTESTABLE, "reason": claim.not_measured}
    unavailable = unavailable or {}
    verdicts, missing, left_out = [], [], {}
    for cmp in claim.comparisons:
        a, b = _find(cmp.a.role, records, latent_dim), _find(cmp.b.role, records, latent_dim)
        if a is None or b is None:
            missing += [op.role.label for op, m in ((cmp.a, a), (cmp.b, b)) if m is None]
            verdicts.append(UNTESTABLE)
            continue
        why = next((unavailable[m] for m in (cmp.a.metric, cmp.b.metric) if m in unavailable), None)
        entry = _comparison_entry(cmp, records, a, b, latent_dim, why)
        out["comparisons"][f"{a}:{cmp.a.metric}-vs-{b}:{cmp.b.metric}"] = {"order": len(out["comparisons"]), **entry}
        if why is None:
            verdicts.append(entry["verdict"])
        else:
            left_out[cmp.describe()] = why
    out["verdict"] = combine(verdicts)
    if missing:
        notes = [f"the sweep has no {' and no '.join(dict.fromkeys(missing))} at latent size {latent_dim}"]
    elif left_out and not verdicts:
        notes = list(dict.fromkeys(left_out.values()))
    else:
        notes = [note for note in (_thin_reason(out, records, latent_dim),) if note]
        notes += (
            ["judged without " + "; ".join(f"{what} ({why})" for what, why in left_out.items())] if left_out else []
        )
    if notes:
        out["reason"] = "; ".join(notes)
    return out


def _comparison_entry(
    cmp: Comparison, records: Sequence[SeedRecord], a: str, b: str, latent_dim: int, unavailable: str | None
) -> dict:
    """One comparison of judge_claim: the statistic, groups, metrics, a's better side, effect and verdict; a
    comparison on a metric the data cannot have is untestable, with that `reason` and no effect (NaN)."""
    better = "equivalent" if cmp.equivalence_tolerance is not None else ("lower" if cmp.lower_is_better else "higher")
    entry = {
        "statistic": cmp.describe(),
        "a": a,
        "b": b,
        "a_metric": cmp.a.metric,
        "b_metric": cmp.b.metric,
        "better": better,
    }
    if unavailable is not None:
        return {**entry, "effect": mean_ci([]).as_dict(), "verdict": UNTESTABLE, "reason": unavailable}
    va, vb = _per_seed(records, a, latent_dim, cmp.a.metric), _per_seed(records, b, latent_dim, cmp.b.metric)
    effect = paired_difference(va, vb)
    verdict = comparison_verdict(cmp, effect, mean_ci(list(vb.values())).mean)
    return {**entry, "effect": effect.as_dict(), "verdict": verdict}


def _thin_reason(out: dict, records: Sequence[SeedRecord], latent_dim: int) -> str | None:
    """Why an inconclusive claim could not be decided for want of seeds (None: not for that reason)."""
    if out["verdict"] != INCONCLUSIVE:
        return None
    if len({r.seed for r in records if r.latent_dim == latent_dim}) < 2:
        return "one seed gives no interval; add seeds (sweep.seeds)"
    judged = [c for c in out["comparisons"].values() if c["verdict"] != UNTESTABLE]
    thin = [c for c in judged if c["effect"]["n_seeds"] < 2]
    if thin:
        # Several seeds, but a metric is null (not defined, or infinite) in all but one of them.
        return "fewer than two seeds with a finite value of " + ", ".join(
            dict.fromkeys(f"{c['a_metric']} ({c['a']}) − {c['b_metric']} ({c['b']})" for c in thin)
        )
    return None


def judge_claims(
    records: Sequence[SeedRecord], claims: Sequence[Claim] = CLAIMS, unavailable: Mapping[str, str] | None = None
) -> list[dict]:
    """Every claim at every latent size in `records`, in claim order then latent size (`unavailable`: judge_claim)."""
    dims = sorted({r.latent_dim for r in records})
    return [judge_claim(c, records, d, unavailable) for c in claims for d in dims]


# ------------------------------------------------------------------- console


def plus_minus(mean, low, high, fmt: str, missing: str = "n/a") -> str:
    """ "0.0461 ± 0.0012": the mean and the half-width of its (symmetric, Student-t) interval, each in `fmt`;
    the mean alone without an interval (one seed), `missing` without a mean. None counts as missing."""
    if mean is None or not math.isfinite(mean):
        return missing
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format((high - low) / 2.0, fmt)}"


def _cell(entry: Mapping[str, float | int | None], fmt: str) -> str:
    """ "mean ± half-width" of one summary entry; the mean alone without an interval (one seed), "–" without a value."""
    return plus_minus(*(entry.get(k) for k in ("mean", "ci_low", "ci_high")), fmt, missing="–")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def console_lines(summary: Mapping[str, Mapping[str, Mapping]], claims: Mapping, shown: Sequence[Metric]) -> list[str]:
    """The evaluate stage's console report: one row per group, then one row per claim.

    `summary` is aggregate()'s output, `claims` claims_file()'s, `shown` the metrics to print
    (metric_registry `console=True`). A group's cell is "mean ± half-width of the 95% interval"
    over seeds, in the metric's unit and number format; the claim rows give each claim's verdict
    per latent size (the effects and reasons are in metrics/claims.json).
    """
    seeds = claims["seeds"]
    spread = (
        f"mean ± half-width of the {claims['level']:.0%} interval over seeds {', '.join(map(str, seeds))}"
        if len(seeds) > 1
        else f"seed {seeds[0]} only: no interval (add seeds: sweep.seeds)"
    )
    rows = [["group", *(m.short_header for m in shown)]]
    rows += [[group, *(_cell(values.get(m.key, {}), m.fmt) for m in shown)] for group, values in summary.items()]
    sizes = list(claims["claims"])
    verdicts = [["claim", *sizes]]
    ids = dict.fromkeys(claim for z in sizes for claim in claims["claims"][z])
    verdicts += [[claim, *(claims["claims"][z].get(claim, {}).get("verdict", "–") for z in sizes)] for claim in ids]
    return [spread, *_table(rows), "", "verdicts (metrics/claims.json says why)", *_table(verdicts)]


def markdown_table(claims: Sequence[Claim] = CLAIMS) -> str:
    """The claims table of docs/study.md: id, the article's claim, and each comparison with its rule (or why none)."""
    lines = ["| id | claim of the article | tested by (each comparison over paired seeds) |", "| --- | --- | --- |"]
    for c in claims:
        tests = "; ".join(cmp.describe(code=True) for cmp in c.comparisons) or f"not measured: {c.not_measured}"
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in (f"`{c.id}`", c.text, tests)) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # `python -m aevae.evaluation.study` prints the claims table of docs/study.md
    print(markdown_table(), end="")
