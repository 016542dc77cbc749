"""Seeds in MLflow: a child run per (model, seed) with its tags, one aggregate child per model holding the
mean and 95% interval under the seed children's keys, the claims' verdicts as the parent's tags, and a
registered model per group with one version per seed.

The fast tests check the flattening on hand-made values; the slow one runs the pipeline up to evaluate
(two members x two seeds) on the default local SQLite store and queries it with search_runs.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from mlflow import MlflowClient

from aevae.config import Params, resolve_sweep
from aevae.evaluation import study
from aevae.ops import mlflow_store, retrain, tracking
from project import SEEDED_RUN_SEEDS, SMALL_PARAMS, copy_project, dvc

VERDICTS = {study.SUPPORTED, study.CONTRADICTED, study.INCONCLUSIVE, study.UNTESTABLE}


def _seeded_params(seeds=(0, 1), epochs=2) -> dict:
    params = copy.deepcopy(SMALL_PARAMS)
    params["sweep"]["seeds"] = list(seeds)
    params["train"]["epochs"] = epochs
    return params


# ------------------------------------------------------------------ the pieces (fast)


def test_child_tags_place_each_seed_in_its_group():
    specs = resolve_sweep(
        Params.model_validate({**_seeded_params(), "sweep": {**_seeded_params()["sweep"], "latent_dims": [2, 16]}})
    )
    tags = {s.name: mlflow_store.model_tags(s) for s in specs}
    assert tags["ae-z16-s1"] == {"model": "ae-z16", "member": "ae", "seed": "1", "latent_dim": "16", "model.kind": "ae"}
    assert len({(t["model"], t["seed"]) for t in tags.values()}) == len(specs) == 8


def test_aggregate_keys_are_the_seed_keys_with_their_interval():
    stats = {
        "test/recon_mse_per_pixel": {"mean": 0.05, "ci_low": 0.04, "ci_high": 0.06, "n_seeds": 3},
        "test/kl_nats_per_image": {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": 0},
    }
    flat = tracking.aggregate_keys(stats)
    assert flat["test/recon_mse_per_pixel"] == 0.05  # the mean sits in the seed children's column
    assert (flat["test/recon_mse_per_pixel/ci_low"], flat["test/recon_mse_per_pixel/ci_high"]) == (0.04, 0.06)
    assert all(math.isnan(flat[f"test/kl_nats_per_image{s}"]) for s in ("", "/ci_low", "/ci_high"))


def test_verdict_tags_name_claim_and_size_with_strict_values():
    claims = {
        "level": 0.95,
        "claims": {
            "z2": {"holes": {"verdict": "supported"}, "loss": {"verdict": "untestable"}},
            "z16": {"holes": {"verdict": "inconclusive"}},
        },
    }
    assert tracking.verdict_tags(claims) == {
        "aevae.verdict.level": "0.95",
        "aevae.verdict.holes.z2": "supported",
        "aevae.verdict.loss.z2": "untestable",
        "aevae.verdict.holes.z16": "inconclusive",
    }


@pytest.mark.parametrize(
    ("goal", "stat", "judged"),
    [
        ("min", {"mean": 1.0, "ci_low": 0.8, "ci_high": 1.2, "n_seeds": 3}, 1.2),  # the worse end: the upper bound
        ("max", {"mean": 1.0, "ci_low": 0.8, "ci_high": 1.2, "n_seeds": 3}, 0.8),
        ("min", {"mean": 1.0, "ci_low": None, "ci_high": None, "n_seeds": 1}, 1.0),  # one seed: its value
    ],
)
def test_the_challenger_is_judged_on_the_worse_end_of_its_interval(goal, stat, judged):
    assert retrain.challenger_value(stat, goal) == judged
    assert math.isnan(retrain.challenger_value({"mean": None, "ci_low": None, "ci_high": None}, goal))


def test_the_challenger_of_each_group_is_its_first_seed():
    params = Params.model_validate(_seeded_params(seeds=(3, 1)))
    assert [(s.group, s.name, s.seed) for s in retrain.challengers(params)] == [
        ("ae", "ae-s3", 3),
        ("vae-beta1", "vae-beta1-s3", 3),
    ]


# ------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_seed_children_aggregates_and_verdicts_in_the_local_store(seeded_run, tmp_path):
    """The shared run of two members x seeds 0, 1, 2 up to evaluate (conftest.py's `seeded_run`)."""
    assert SEEDED_RUN_SEEDS == [0, 1, 2]
    root = seeded_run.root
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    [parent] = client.search_runs(["1"], "tags.aevae.role = 'pipeline'")
    seeds = client.search_runs(["1"], "tags.aevae.role = 'model'")
    assert sorted(r.info.run_name for r in seeds) == [
        "ae-s0",
        "ae-s1",
        "ae-s2",
        "vae-beta1-s0",
        "vae-beta1-s1",
        "vae-beta1-s2",
    ]
    for run in seeds:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"{tags['model']}-s{tags['seed']}" and tags["latent_dim"] == "2"

    # The UI's filter for one model: its seeds and their aggregate, the mean in the seeds' own column.
    ae = {r.info.run_name: r for r in client.search_runs(["1"], "tags.model = 'ae'")}
    assert sorted(ae) == ["ae-mean", "ae-s0", "ae-s1", "ae-s2"]
    agg, key = ae["ae-mean"], "test/recon_mse_per_pixel"
    assert agg.data.tags["aevae.aggregate"] == "true" and json.loads(agg.data.tags["seeds"]) == [0, 1, 2]
    values = [ae[f"ae-s{s}"].data.metrics[key] for s in (0, 1, 2)]
    assert agg.data.metrics[key] == pytest.approx(sum(values) / 3)
    assert agg.data.metrics[f"{key}/ci_low"] < min(values) <= max(values) < agg.data.metrics[f"{key}/ci_high"]
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert agg.data.metrics[f"{key}/ci_high"] == pytest.approx(summary["ae"][key]["ci_high"])
    assert "train.seed" not in agg.data.params and agg.data.params["model.kind"] == "ae"

    # The claims' verdicts on the parent, one tag per claim and size, and claims.json beside them.
    claims = json.loads((root / "metrics" / "claims.json").read_text())["claims"]
    verdicts = {
        k: v for k, v in parent.data.tags.items() if k.startswith("aevae.verdict.") and k != "aevae.verdict.level"
    }
    assert verdicts == {f"aevae.verdict.{c}.z2": claims["z2"][c]["verdict"] for c in claims["z2"]}
    assert set(verdicts.values()) <= VERDICTS and len(verdicts) == len(study.CLAIMS)
    assert {"claims.json", "summary.json"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}

    # One registered model per group, a version per seed, tagged with it.
    versions = client.search_model_versions("name='aevae-ae'")
    assert sorted(v.tags["seed"] for v in versions) == ["0", "1", "2"]
    assert {v.tags["run_name"]: v.run_id for v in versions} == {
        r.info.run_name: r.info.run_id for r in seeds if r.data.tags["model"] == "ae"
    }

    # evaluate alone again (-s: not train, which would open a new pipeline run), in a copy: the same aggregate
    # runs take the numbers, none is added.
    root = copy_project(root, tmp_path / "p")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
    dvc(["repro", "-f", "-s", "evaluate"], root)
    aggregates = client.search_runs(["1"], "tags.aevae.aggregate = 'true'")
    assert sorted(r.info.run_name for r in aggregates) == ["ae-mean", "vae-beta1-mean"]
    assert len(client.get_metric_history(agg.info.run_id, key)) == 2  # logged once per evaluation


def test_a_decision_over_seeds_records_the_bound_the_mean_and_the_seeds():
    stat = {"mean": 0.26, "ci_low": 0.24, "ci_high": 0.28, "n_seeds": 3}
    check = retrain._check(
        retrain.Criterion(metric="test/recon_bce_nats_per_pixel", goal="min", min_improvement=0.001),
        {"test/recon_bce_nats_per_pixel": stat},
        {"test/recon_bce_nats_per_pixel": 0.27},
    )
    assert (check.challenger, check.challenger_mean, check.n_seeds, check.passed) == (0.28, 0.26, 3, False)
    assert "upper 95% bound over 3 seeds 0.28 (mean 0.26) vs 0.27" in check.line()  # a better mean alone does not win
    tags = retrain.Decision("ae", "ae", "4", "1", "kept", [check], seed=0).change("fp", "r.json")["version_tags"]
    assert tags["aevae.challenger.test/recon_bce_nats_per_pixel"] == "0.28" and tags["aevae.n_seeds"] == "3"
