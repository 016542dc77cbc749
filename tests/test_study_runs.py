"""The study end to end on tiny real runs: intervals over seeds, strict claims.json, verdict reasons, dvc metrics diff.

One project trains an AE and a VAE (β = 1) at latent size 2 with seeds 0, 1, 2 through the real
`dvc repro evaluate` (prepare, train on Ray, classifier, evaluate) in a git repo; a copy of it, committed,
is rerun with seed 0 alone (dvc retrains the two models and reuses the data and the classifier), which
gives both the one-seed case and a `dvc metrics diff` between the two.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml
from scipy import stats

from aevae.evaluation import study
from project import SEEDED_RUN_SEEDS, dvc, run, write_params

pytestmark = pytest.mark.slow

SEEDS = SEEDED_RUN_SEEDS
VERDICTS = {study.SUPPORTED, study.CONTRADICTED, study.INCONCLUSIVE, study.UNTESTABLE}
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (RFC 8259 has none of them)."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def seeded(seeded_run):
    """(project root, the evaluate stage's console output) of the shared three-seed run (conftest.py)."""
    return seeded_run.root, seeded_run.stdout


@pytest.fixture(scope="module")
def one_seed(seeded, tmp_path_factory):
    """The seeded project committed to git, then rerun with seed 0 only (`dvc repro evaluate` retrains the two
    models, now named without -s<seed>): (root, the stage's console output, `dvc metrics diff --json`)."""
    root = tmp_path_factory.mktemp("one-seed") / "project"
    shutil.copytree(seeded[0], root, symlinks=True)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "three seeds"], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sweep"]["seeds"] = [0]
    write_params(root, params)
    out = dvc(["repro", "evaluate"], root, timeout=1500)
    return root, out.stdout, _strict(dvc(["metrics", "diff", "--json"], root).stdout)


def _per_seed(root, group: str, key: str) -> list[float]:
    return [_strict((root / "metrics" / "models" / f"{group}-s{s}.json").read_text())[key] for s in SEEDS]


def test_agreeing_seeds_give_a_zero_width_interval_and_varying_seeds_a_wide_one(seeded):
    root, _ = seeded
    summary = _strict((root / "metrics" / "summary.json").read_text())
    assert set(summary) == {"ae", "vae-beta1"}  # one group per member: the seeds are aggregated
    # The PCA baseline does not depend on the training seed: every seed has the same value.
    pca = summary["ae"]["pca/recon_mse_per_pixel"]
    assert pca["n_seeds"] == 3 and pca["ci_low"] == pca["ci_high"] == pytest.approx(pca["mean"], abs=1e-15)
    # Training from another seed moves the reconstruction error and the codes' distance to the prior.
    for group in ("ae", "vae-beta1"):
        for key in ("test/recon_mse_per_pixel", "test/mmd_to_prior"):
            values, iv = _per_seed(root, group, key), summary[group][key]
            assert len(set(values)) == 3, f"{group} {key}: seeds agree ({values}); the test needs a varying metric"
            half = stats.t.ppf(0.975, 2) * stats.tstd(values) / math.sqrt(3)
            assert iv["n_seeds"] == 3 and iv["mean"] == pytest.approx(sum(values) / 3)
            assert (iv["ci_low"], iv["ci_high"]) == pytest.approx((iv["mean"] - half, iv["mean"] + half))
            # Wide: with 3 seeds the interval (± 2.48 s) always spans every seed's value (at most 1.15 s away).
            assert iv["ci_low"] < min(values) and max(values) < iv["ci_high"]


def test_claims_file_is_strict_json_and_every_verdict_follows_its_rule(seeded):
    root, _ = seeded
    claims = _strict((root / "metrics" / "claims.json").read_text())
    assert (
        claims["level"] == 0.95 and claims["seeds"] == SEEDS and set(claims["rules"]) >= {"directional", "equivalence"}
    )
    judged = claims["claims"]["z2"]
    assert set(judged) == {c.id for c in study.CLAIMS}  # written with sorted keys
    for claim in judged.values():
        assert claim["verdict"] in VERDICTS
        for cmp in claim["comparisons"].values():
            effect = cmp["effect"]
            assert cmp["verdict"] in VERDICTS - {study.UNTESTABLE} and effect["n_seeds"] == 3
            if "≈" not in cmp["statistic"]:  # directional: an interval straddling 0 decides nothing
                straddles = effect["ci_low"] <= 0.0 <= effect["ci_high"]
                assert (cmp["verdict"] == study.INCONCLUSIVE) == straddles, cmp


def test_a_sweep_without_a_linear_ae_cannot_test_the_pca_claim(seeded):
    root, _ = seeded
    pca = _strict((root / "metrics" / "claims.json").read_text())["claims"]["z2"]["pca"]
    assert pca["verdict"] == study.UNTESTABLE
    assert pca["reason"] == "the sweep has no linear AE at latent size 2"


def test_evaluate_prints_one_row_per_group_then_the_verdicts(seeded):
    _, stdout = seeded
    lines = stdout.splitlines()
    assert any("interval over seeds 0, 1, 2" in line for line in lines)
    rows = [line for line in lines if line.split()[:1] in (["ae"], ["vae-beta1"])]
    assert len(rows) == 2 and all(row.count("±") == 4 for row in rows)
    header = lines.index(next(line for line in lines if line.split() == ["claim", "z2"]))
    assert [line.split()[0] for line in lines[header + 1 : header + 1 + len(study.CLAIMS)]] == [
        c.id for c in study.CLAIMS
    ]
    assert not any(line.startswith("ae-s0") for line in lines)  # no longer one line per model and seed


def test_one_seed_gives_means_without_intervals_and_inconclusive_claims(one_seed):
    root, stdout, _ = one_seed
    assert sorted(p.name for p in (root / "models").iterdir()) == ["ae", "vae-beta1"]
    summary = _strict((root / "metrics" / "summary.json").read_text())
    mse = summary["ae"]["test/recon_mse_per_pixel"]
    assert mse["n_seeds"] == 1 and mse["ci_low"] is None and mse["ci_high"] is None and mse["mean"] > 0
    claims = _strict((root / "metrics" / "claims.json").read_text())
    assert claims["seeds"] == [0]
    for claim in claims["claims"]["z2"].values():
        if claim["verdict"] != study.UNTESTABLE:
            assert claim["verdict"] == study.INCONCLUSIVE
            assert claim["reason"] == "one seed gives no interval; add seeds (sweep.seeds)"
    assert "seed 0 only: no interval" in stdout and "±" not in stdout


def test_dvc_metrics_diff_compares_the_means(seeded, one_seed):
    """Three seeds (HEAD) against seed 0 alone (workspace): the means, their bounds and n_seeds, per group."""
    diff = one_seed[2]["metrics/summary.json"]
    key = "test/recon_mse_per_pixel"
    old_mean = sum(_per_seed(seeded[0], "ae", key)) / 3
    mean = diff[f"ae.{key}.mean"]
    assert mean["old"] == pytest.approx(old_mean) and mean["diff"] == pytest.approx(mean["new"] - mean["old"])
    assert diff[f"ae.{key}.n_seeds"] == {"old": 3, "new": 1, "diff": -2}
    assert diff[f"ae.{key}.ci_low"]["new"] is None  # one seed: no interval
    assert "ae.pca/recon_mse_per_pixel.mean" not in diff  # unchanged (the PCA baseline ignores seeds): not listed
    # claims.json keeps comparisons in a mapping, so the effects are in the diff too (DVC skips lists).
    claims = one_seed[2]["metrics/claims.json"]
    effect = (
        "claims.z2.holes.comparisons.vae-beta1:test/holes_fraction_own_gaussian-vs-ae:test/holes_fraction_own_gaussian"
    )
    assert claims[f"{effect}.effect.n_seeds"] == {"old": 3, "new": 1, "diff": -2}
    assert claims[f"{effect}.effect.mean"]["new"] is not None
