"""The metric registry: every record well formed, and every reader consistent with it (fast, no models)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from aevae import metric_registry
from aevae.config import ModelParams, Params
from aevae.errors import UserError
from aevae.metric_registry import BASELINES, METRICS
from aevae.ops import retrain
from aevae.report import build

REPO = Path(__file__).resolve().parents[1]
KINDS = set(get_args(ModelParams.model_fields["kind"].annotation))
ALL = METRICS + BASELINES


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.key)
def test_every_record_is_well_formed(metric):
    assert re.fullmatch(r"(test|prior|gmm|interp|pca)/[a-z0-9_]+", metric.key)
    assert metric.direction in ("min", "max", None)
    assert metric.unit and metric.label and metric.description
    assert metric.kinds and set(metric.kinds) <= KINDS
    if metric.summary:
        assert metric.header, "a summary column needs a header"
        format(1.5, metric.fmt)  # a valid number format
    if metric.reference:
        assert metric.reference in {b.key for b in BASELINES}
    if metric.evidence:
        assert metric.evidence in build.CLAIMS
    if metric.chart:
        assert metric.chart in {g.slug for g in build.GROUPS}


def test_keys_are_unique_and_every_group_and_role_resolves():
    keys = [m.key for m in ALL]
    assert len(keys) == len(set(keys))
    assert metric_registry.KEYS == tuple(m.key for m in METRICS)
    assert set(metric_registry.grouped("chart")) == {g.slug for g in build.GROUPS}  # every chart has metrics
    for role in ("reconstructions", "prior-samples", "gmm-samples", "interpolation", "rate", "distortion"):
        assert metric_registry.for_figure(role).figure == role
    with pytest.raises(KeyError):
        metric_registry.for_figure("no-such-figure")
    assert [m.key for m in metric_registry.evidence("holes")] == ["prior/holes_fraction", "prior/confident_fraction"]
    assert metric_registry.by_key("pca/recon_mse_per_pixel") is BASELINES[0]


def test_docs_metrics_table_is_the_registry_output():
    page = (REPO / "docs" / "metrics.md").read_text()
    assert metric_registry.markdown_table() in page
    printed = subprocess.run(
        [sys.executable, "-m", "aevae.metric_registry"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == metric_registry.markdown_table()


def _params(kind: str, key: str) -> Params:
    other = "vae" if kind == "ae" else "ae"
    fine = {"ae": "test/recon_bce_nats_per_pixel", "vae": "test/neg_elbo_nats_per_image"}[other]
    return Params.model_validate(
        {"sweep": {"models": [{"name": "ae"}]}, "retrain": {kind: [{"metric": key}], other: [{"metric": fine}]}}
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.key)
def test_retrain_policy_accepts_exactly_the_metrics_defined_for_a_kind(metric, kind):
    params = _params(kind, metric.key)  # every key passes the params schema's pattern
    if metric.applies(kind):
        assert [c.metric for c in retrain.policy(params)[kind]] == [metric.key]
    else:
        with pytest.raises(UserError, match=f"undefined for an {kind.upper()}"):
            retrain.policy(params)
