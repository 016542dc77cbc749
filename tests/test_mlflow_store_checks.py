"""The local MLflow store: `make ui`'s URL and the experiment's kind (the UI opens on the training runs, not
its GenAI overview), and a store file MLflow cannot use."""

from __future__ import annotations

from mlflow import MlflowClient

from aevae.ops import mlflow_store


def test_the_experiment_is_model_training_and_the_url_opens_its_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_store.ui_url(5000) == "http://127.0.0.1:5000/#/experiments"  # no store yet: nothing created
    assert not (tmp_path / "mlflow.db").exists()
    uri = mlflow_store.tracking_uri()
    client = MlflowClient(uri)
    old = client.create_experiment(mlflow_store.EXPERIMENT)  # a store from before the tag
    assert mlflow_store.ui_url(5001) == f"http://127.0.0.1:5001/#/experiments/{old}/runs?workflowType=machine_learning"
    assert client.get_experiment(old).tags[mlflow_store.EXPERIMENT_KIND[0]] == "custom_model_development"
    run = client.create_run(old, tags={"aevae.aggregate": "true"})
    client.set_terminated(run.info.run_id)
    assert mlflow_store.ui_url(5001).endswith("&searchFilter=tags.%60aevae.aggregate%60%20%3D%20%27true%27")


def test_a_store_file_that_is_not_sqlite_is_one_line(tmp_path):
    import pytest

    from aevae.errors import UserError

    (tmp_path / "mlflow.db").write_text("not a database\n" * 100)
    with pytest.raises(UserError) as info:
        mlflow_store.check_schema(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "\n" not in str(info.value) and "is not an SQLite database" in str(info.value)


def test_the_quick_schema_head_is_alembics():
    """check_schema's fast path reads the newest revision from the migration scripts' text; alembic, loading
    every script, must name the same one, or MLflow's layout changed and the fast path would misjudge."""
    head, known = mlflow_store._mlflow_revisions()
    assert mlflow_store._head_revision_from_source() == head and head in known
