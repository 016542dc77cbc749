"""The study's statistics and verdict rules, on hand-made per-seed values with known answers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from aevae import metric_registry
from aevae.errors import UserError
from aevae.evaluation import study
from aevae.evaluation.study import SeedRecord

REPO = Path(__file__).resolve().parents[1]
VERDICTS = (study.SUPPORTED, study.CONTRADICTED, study.INCONCLUSIVE, study.UNTESTABLE)


def test_mean_ci_matches_the_t_interval():
    x = [0.10, 0.12, 0.14]
    iv = study.mean_ci(x)
    half = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3)
    assert iv.n == 3 and iv.mean == pytest.approx(0.12)
    assert (iv.low, iv.high) == pytest.approx((0.12 - half, 0.12 + half))


def test_agreeing_seeds_give_a_tight_interval_and_varying_seeds_a_wide_one():
    tight, wide = study.mean_ci([1.0, 1.0001, 0.9999]), study.mean_ci([0.5, 1.0, 1.5])
    assert tight.high - tight.low < 0.001 < 1.0 < wide.high - wide.low


def test_one_seed_has_no_interval_and_non_finite_values_are_left_out():
    assert math.isnan(study.mean_ci([2.0]).low)
    iv = study.mean_ci([1.0, float("nan"), 3.0, None, float("inf")])
    assert iv.n == 2 and iv.mean == 2.0
    assert study.mean_ci([]).n == 0


def test_paired_difference_uses_only_shared_seeds():
    iv = study.paired_difference({0: 3.0, 1: 4.0, 2: 9.0}, {0: 1.0, 1: 2.0})
    assert iv.n == 2 and iv.mean == 2.0 and iv.low == iv.high == 2.0


CMP = study.Comparison(study.Operand(study.VAE_BETA1, "m"), study.Operand(study.AE, "m"), lower_is_better=True)
EQ = study.Comparison(study.Operand(study.LINEAR_AE, "m"), study.Operand(study.LINEAR_AE, "p"), True, 0.05)


@pytest.mark.parametrize(
    "effect, verdict",
    [
        (study.Interval(-2.0, -3.0, -1.0, 3), study.SUPPORTED),  # a lower, interval below 0
        (study.Interval(2.0, 1.0, 3.0, 3), study.CONTRADICTED),  # a higher, interval above 0
        (study.Interval(0.5, -1.0, 2.0, 3), study.INCONCLUSIVE),  # straddles 0
        (study.Interval(-2.0, math.nan, math.nan, 1), study.INCONCLUSIVE),  # one seed
    ],
)
def test_directional_rule(effect, verdict):
    assert study.comparison_verdict(CMP, effect, reference=10.0) == verdict


@pytest.mark.parametrize(
    "effect, verdict",
    [
        (study.Interval(0.0, -0.2, 0.3, 3), study.SUPPORTED),  # within ±5% of 10
        (study.Interval(1.0, 0.8, 1.2, 3), study.CONTRADICTED),  # wholly outside the band
        (study.Interval(0.4, 0.2, 0.7, 3), study.INCONCLUSIVE),  # crosses the band's edge
    ],
)
def test_equivalence_rule(effect, verdict):
    assert study.comparison_verdict(EQ, effect, reference=10.0) == verdict


def test_combine():
    s, c, i, u = study.SUPPORTED, study.CONTRADICTED, study.INCONCLUSIVE, study.UNTESTABLE
    assert study.combine([s, s]) == s
    assert study.combine([s, i]) == i
    assert study.combine([i, c]) == c
    assert study.combine([s, u]) == u


def _records(ae_holes, vae_holes, with_linear=True):
    out = []
    for seed, (a, v) in enumerate(zip(ae_holes, vae_holes)):
        out.append(SeedRecord("ae", 2, seed, "ae", "relu", 1.0, {"test/holes_fraction_own_gaussian": a}))
        out.append(SeedRecord("vae-beta1", 2, seed, "vae", "relu", 1.0, {"test/holes_fraction_own_gaussian": v}))
        if with_linear:
            out.append(SeedRecord("ae-linear", 2, seed, "ae", "linear", 1.0, {}))
    return out


HOLES = study.Claim(
    "h",
    "holes",
    (
        study.Comparison(
            study.Operand(study.VAE_BETA1, "test/holes_fraction_own_gaussian"),
            study.Operand(study.AE, "test/holes_fraction_own_gaussian"),
            lower_is_better=True,
        ),
    ),
)


def first(verdict: dict) -> dict:
    """The first comparison of a claim's verdict (claims.json keeps them in a mapping, for dvc metrics)."""
    return min(verdict["comparisons"].values(), key=lambda c: c["order"])


def test_claim_verdicts_from_records():
    supported = study.judge_claim(HOLES, _records([0.13, 0.12, 0.14], [0.02, 0.03, 0.02]), 2)
    assert supported["verdict"] == study.SUPPORTED
    effect = first(supported)["effect"]
    assert effect["ci_high"] < 0 and first(supported)["a"] == "vae-beta1"
    assert list(supported["comparisons"]) == [
        "vae-beta1:test/holes_fraction_own_gaussian-vs-ae:test/holes_fraction_own_gaussian"
    ]
    assert first(supported)["order"] == 0 and first(supported)["better"] == "lower"
    straddles = study.judge_claim(HOLES, _records([0.13, 0.02, 0.10], [0.02, 0.12, 0.11]), 2)
    assert straddles["verdict"] == study.INCONCLUSIVE
    assert first(straddles)["effect"]["ci_low"] < 0 < first(straddles)["effect"]["ci_high"]
    one_seed = study.judge_claim(HOLES, _records([0.13], [0.02]), 2)
    assert one_seed["verdict"] == study.INCONCLUSIVE and "one seed" in one_seed["reason"]


def test_a_claim_without_its_models_is_untestable_and_says_why():
    no_vae = [r for r in _records([0.1, 0.2], [0.0, 0.1]) if r.kind == "ae"]
    out = study.judge_claim(HOLES, no_vae, 2)
    assert out["verdict"] == study.UNTESTABLE and "VAE β=1" in out["reason"]


def test_every_article_claim_is_judged_per_latent_size_and_serialises_strictly():
    records = _records([0.1, 0.2], [0.0, 0.1])
    records += [SeedRecord(r.member, 16, r.seed, r.kind, r.activation, r.beta, r.metrics) for r in records]
    out = study.judge_claims(records)
    assert [(c["claim"], c["latent_dim"]) for c in out] == [(c.id, d) for c in study.CLAIMS for d in (2, 16)]
    for c in out:
        assert c["verdict"] in VERDICTS
        if c["verdict"] == study.UNTESTABLE:
            assert c["reason"]


def test_a_null_metric_with_several_seeds_is_not_blamed_on_the_seed_count():
    records = _records([0.13, math.nan, math.nan], [0.02, 0.03, 0.02])  # the AE's metric is null in two seeds
    out = study.judge_claim(HOLES, records, 2)
    assert out["verdict"] == study.INCONCLUSIVE
    assert "one seed" not in out["reason"] and "test/holes_fraction_own_gaussian (ae)" in out["reason"]


SHOWN = [m for m in metric_registry.METRICS if m.console]


def _console(seeds):
    records = [
        SeedRecord(
            member, 2, seed, kind, "relu", beta, {m.key: value + seed * spread for m in SHOWN}, group=f"{member}-z2"
        )
        for seed in seeds
        for member, kind, beta, value, spread in (("ae", "ae", 1.0, 0.5, 0.0), ("vae-beta1", "vae", 1.0, 0.2, 0.1))
    ]
    return study.console_lines(study.aggregate(records), study.claims_file(records), SHOWN)


def test_console_prints_one_row_per_group_with_the_interval_then_the_verdicts():
    lines = _console([0, 1, 2])
    assert "seeds 0, 1, 2" in lines[0]
    ae, vae = (next(line for line in lines if line.startswith(f"{g}-z2 ")) for g in ("ae", "vae-beta1"))
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # values 0.2, 0.3, 0.4: s = 0.1
    assert ae.split()[1:4] == ["0.5000", "±", "0.0000"]  # seeds agree: zero half-width
    assert vae.split()[1:4] == ["0.3000", "±", f"{half:.4f}"]
    header = next(i for i, line in enumerate(lines) if line.startswith("claim "))
    assert lines[header].split() == ["claim", "z2"]
    assert [line.split()[0] for line in lines[header + 1 :]] == [c.id for c in study.CLAIMS]
    assert all(line.split()[1] in VERDICTS for line in lines[header + 1 :])


def test_console_with_one_seed_prints_means_and_says_there_is_no_interval():
    lines = _console([0])
    assert "no interval" in lines[0] and "sweep.seeds" in lines[0]
    assert not any("±" in line for line in lines)


def test_docs_claims_table_is_the_study_output():
    assert study.markdown_table() in (REPO / "docs" / "study.md").read_text()
    printed = subprocess.run(
        [sys.executable, "-m", "aevae.evaluation.study"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == study.markdown_table()
    for claim in study.CLAIMS:
        assert f"| `{claim.id}` |" in printed


@pytest.mark.parametrize(
    "content, says",
    [
        ('{"ae": {"test/recon_mse_per_pixel": 0.03}}', "not the study's format"),  # one number per key: before seeds
        ("{}", "lists no models"),
        ('{"ae": {"test/recon_mse_per_pixel": {"mean"', "corrupt"),
    ],
)
def test_read_summary_refuses_what_the_evaluate_stage_would_not_write(tmp_path, content, says):
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(UserError, match=says) as err:
        study.read_summary(path)
    assert "evaluate" in str(err.value)


def test_read_summary_reads_what_aggregate_wrote(tmp_path):
    summary = {"ae": {"test/recon_mse_per_pixel": {"mean": 0.03, "ci_low": 0.02, "ci_high": 0.04, "n_seeds": 3}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert study.read_summary(tmp_path / "summary.json") == summary
