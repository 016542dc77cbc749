"""MLflow tracking end to end: a real server (and the default local store), the real pipeline."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from mlflow_server import mlflow_server
from project import copy_project, dvc, free_port, make_project, stage

pytestmark = pytest.mark.slow

MODELS = ("ae", "vae-beta1")
REPRO_TAGS = (
    "git.commit",
    "git.dirty",
    "data.sha256",
    "data.source",
    "sweep.seeds",
    "version.torch",
    "version.ray",
    "version.mlflow",
    "dvc.stage",
)
MODEL_TAGS = ("model", "member", "seed", "latent_dim")


def _check_runs(client: MlflowClient) -> None:
    exp = client.get_experiment_by_name("aevae")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("aevae.role") == "pipeline"]
    assert len(parents) == 1, "one parent run per pipeline run"
    parent = parents[0]
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags.get("aevae.role") == "model"
    ]
    aggregates = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags.get("aevae.aggregate") == "true"
    ]
    assert sorted(r.info.run_name for r in children) == sorted(MODELS)
    assert sorted(r.info.run_name for r in aggregates) == sorted(f"{m}-mean" for m in MODELS)  # one seed: n = 1
    assert len(runs) == 1 + 2 * len(MODELS)
    param_keys = {frozenset(r.data.params) for r in children}
    metric_keys = {frozenset(r.data.metrics) for r in children}
    assert len(param_keys) == 1 and len(metric_keys) == 1, "identical key sets across children"
    assert {"model.kind", "model.beta", "model.latent_dim", "train.lr", "train.epochs"} <= set(next(iter(param_keys)))
    assert {
        "train/loss_per_image",
        "val/recon_per_image",
        "val/kl_nats_per_image",  # from training
        "test/recon_mse_per_pixel",
        "prior/classifier_fid",
        "test/knn_accuracy",  # from evaluation
    } <= set(next(iter(metric_keys)))
    for run in [parent, *children]:
        missing = [t for t in REPRO_TAGS if t not in run.data.tags]
        assert not missing, f"{run.info.run_name} lacks tags {missing}"
        assert run.info.status == "FINISHED"
    for child in children:
        assert all(t in child.data.tags for t in MODEL_TAGS) and child.data.tags["seed"] == "0"
        history = client.get_metric_history(child.info.run_id, "val/loss_per_image")
        assert [m.step for m in history] == [1, 2, 3]  # per-epoch metrics with their step
        versions = client.search_model_versions(f"name='aevae-{child.info.run_name}'")
        assert [v.run_id for v in versions] == [child.info.run_id]
        assert "model_files/model.pt" in [f.path for f in client.list_artifacts(child.info.run_id, "model_files")]
    assert "params.yaml" in [f.path for f in client.list_artifacts(parent.info.run_id)]


def test_pipeline_against_a_real_mlflow_server(tmp_path):
    root = make_project(tmp_path / "p")
    with mlflow_server(tmp_path / "server") as (uri, _):
        dvc(["repro"], root, MLFLOW_TRACKING_URI=uri)
        _check_runs(MlflowClient(uri))
        # Nothing changed: DVC runs nothing, so nothing is logged twice.
        out = dvc(["repro"], root, MLFLOW_TRACKING_URI=uri)
        assert "didn't change" in out.stdout
        _check_runs(MlflowClient(uri))
    assert not (root / "mlflow.db").exists(), "with a server set, nothing is tracked locally"


def test_pipeline_with_the_default_local_store(small_run, tmp_path):
    uri = f"sqlite:///{small_run.root / 'mlflow.db'}"
    _check_runs(MlflowClient(uri, registry_uri=uri))
    # A forced rerun trains again: a new parent run; the old one is left as it was.
    root = copy_project(small_run.root, tmp_path / "p")
    dvc(["repro", "-f", "train"], root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parents = [r for r in MlflowClient(uri).search_runs(["1"]) if r.data.tags.get("aevae.role") == "pipeline"]
    assert len(parents) == 2


def test_unreachable_server_fails_within_seconds(tmp_path):
    root = make_project(tmp_path / "p", git=False)
    stage("prepare", root)
    t0 = time.monotonic()
    proc = stage("train", root, check=False, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and time.monotonic() - t0 < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLflow server" in lines[0] and "does not answer" in lines[0]


def test_serve_check_names_the_registered_models_and_the_missing_alias(tmp_path, monkeypatch):
    """`make serve`'s check against a real SQLite store: one line instead of MLflow's traceback."""
    from aevae.errors import UserError
    from aevae.ops.model_registry import check_registered

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient(uri).create_registered_model("aevae-ae-z2")
    with pytest.raises(UserError, match=r"no registered model 'aevae-vae'.*one of: ae-z2"):
        check_registered("models:/aevae-vae@champion")
    with pytest.raises(UserError, match=r"has no alias 'champion'.*make retrain.*VERSION=latest"):
        check_registered("models:/aevae-ae-z2@champion")
    with pytest.raises(UserError, match=r"has no version 3"):
        check_registered("models:/aevae-ae-z2/3")
    with pytest.raises(UserError, match=r"has no version latest"):
        check_registered("models:/aevae-ae-z2/latest")  # registered, but no version yet
    with pytest.raises(UserError, match=r"names no alias; give ALIAS=champion"):
        check_registered("models:/aevae-ae-z2@")  # `make serve ALIAS=`
    client = MlflowClient(uri, registry_uri=uri)
    client.create_model_version("aevae-ae-z2", source=str(tmp_path), tags={"seed": "0", "run_name": "ae-z2-s0"})
    client.set_registered_model_alias("aevae-ae-z2", "champion", "1")
    with pytest.raises(UserError, match=r"has no alias 'challenger'.*its aliases: champion \(v1\)"):
        check_registered("models:/aevae-ae-z2@challenger")
    check_registered("models:/aevae-ae-z2@champion")  # exists: no error
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'typo.db'}")
    with pytest.raises(UserError, match=r"no MLflow store at .*typo.db"):
        check_registered("models:/aevae-ae-z2@champion")
    assert not (tmp_path / "typo.db").exists(), "a mistyped store path must not become a new empty store"


def test_make_models_lists_every_version_with_its_aliases(tmp_path, monkeypatch, capsys):
    from aevae.ops import model_registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("aevae-vae-beta1")
    exp = client.create_experiment("aevae")
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    for seed, run_id in zip((0, 1, 0), runs):  # the third: a retrain of seed 0, same run name
        client.create_model_version(
            "aevae-vae-beta1",
            source=str(tmp_path),
            run_id=run_id,
            tags={"seed": str(seed), "run_name": f"vae-beta1-s{seed}"},
        )
    client.set_registered_model_alias("aevae-vae-beta1", "champion", "2")
    model_registry.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["registered", "model", "version", "seed", "run", "run", "id", "aliases"]
    assert lines[1].split() == ["aevae-vae-beta1", "v3", "0", "vae-beta1-s0", runs[2], "-"]
    assert lines[2].split() == ["aevae-vae-beta1", "v2", "1", "vae-beta1-s1", runs[1], "champion"]
    assert lines[3].split() == ["aevae-vae-beta1", "v1", "0", "vae-beta1-s0", runs[0], "-"]
