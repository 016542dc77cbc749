"""MLflow: one parent run per pipeline run, a child run per model. The only module that knows MLflow.

The store is MLFLOW_TRACKING_URI when set (a remote server), else an SQLite
file in the project (mlflow.db, by absolute path) with artifacts beside it in
mlartifacts/. Only the stage's driver process talks to MLflow: Ray workers
send their per-epoch records back to it, so workers on a cluster need no
route to the tracking server and an outage is handled in one place.

The train stage opens the parent run and records its id in logs/mlflow_run.json;
later stages (evaluate, report) log into that same parent and its children.
A stage restored from DVC's cache does not run, so it logs nothing twice; a
train stage that runs again opens a new parent run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aevae import atomic
from aevae.config import Params, RunSpec
from aevae.errors import UserError
from aevae.provenance import git_state, sha256_file

EXPERIMENT = "aevae"
RUN_FILE = Path("logs/mlflow_run.json")
_PROBE_TIMEOUT_S = 5
_PACKAGES = ("aevae", "torch", "torchvision", "ray", "mlflow", "dvc", "scikit-learn", "numpy")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the project's SQLite store (mlflow.db, by absolute path). Never raises."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _configure() -> None:
    # MLflow's INFO lines and its pickle warning are not for the user of a pipeline: errors only.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    # MLflow's default is 7 retries with backoff: minutes of hanging on a dead server. Fail in seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def check_reachable(uri: str) -> None:
    """A remote server that does not answer is a clear error within seconds, before any work."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S) as resp:
            resp.read()
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy's 401 still means the server is up)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"the MLflow server at MLFLOW_TRACKING_URI={uri} does not answer ({reason}); start it, fix the URI,"
            " or unset it to track in the local mlflow.db"
        ) from None


def client():
    """An MlflowClient on tracking_uri() for tracking and the registry.

    Raises: UserError (one line, within seconds) when a remote server does not answer.
    """
    from mlflow import MlflowClient

    _configure()
    uri = tracking_uri()
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client) -> str:
    """Id of the "aevae" experiment, created on first use (local artifacts go to mlartifacts/)."""
    exp = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if tracking_uri().startswith("sqlite:///"):  # keep local artifacts in the project, by absolute path
        artifacts = (Path.cwd().resolve() / "mlartifacts").as_uri()
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=artifacts)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    out["version.python"] = platform.python_version()
    return out


def repro_tags(manifest: dict, params: Params, stage: str) -> dict[str, str]:
    """What it takes to reproduce a run: code, data, seed, versions. Never the environment's secrets."""
    git = git_state()
    return {
        "git.commit": git["commit"],
        "git.dirty": "unknown" if git["dirty"] is None else str(git["dirty"]).lower(),
        "data.sha256": manifest["data_sha256"],
        "data.source": manifest["source"],
        "data.dataset": manifest["dataset"],
        "seed": str(params.train.seed),
        "dvc.stage": stage,
        **_versions(),
    }


def flat_params(spec: RunSpec, params: Params) -> dict[str, str]:
    """Every param that shaped a model, as flat keys: the same keys for every model, so the UI lines them up."""
    out = {f"model.{k}": v for k, v in spec.model.model_dump().items()}
    out.update({f"train.{k}": v for k, v in spec.train.model_dump().items()})
    out.update({f"data.{k}": v for k, v in params.data.model_dump().items()})
    out["ray.workers_per_model"] = params.ray.workers_per_model
    return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in out.items()}


def _log_params(mlflow_client, run_id: str, values: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in values.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[i : i + 100])


class SweepTracker:
    """The train stage's view of MLflow: a parent run, a child per model, live epoch metrics.

    The first tracking error (e.g. the server stops) is kept and tracking stops,
    so training goes on and its outputs are written; the stage reports it at the end.
    """

    def __init__(self, params: Params, specs: list[RunSpec], manifest: dict, params_file: Path):
        self.params, self.error = params, None
        self.client = client()
        self.exp = experiment_id(self.client)
        tags = repro_tags(manifest, params, "train")
        parent = self.client.create_run(self.exp, run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
                                        tags={**tags, "aevae.role": "pipeline"})
        self.parent_id = parent.info.run_id
        self.client.log_artifact(self.parent_id, str(params_file))
        self.children = {}
        for spec in specs:
            run = self.client.create_run(self.exp, run_name=spec.name, tags={
                **tags, "mlflow.parentRunId": self.parent_id, "aevae.role": "model", "model.kind": spec.model.kind})
            self.children[spec.name] = run.info.run_id
            _log_params(self.client, run.info.run_id, flat_params(spec, params))
        self.logged_epochs = {spec.name: set() for spec in specs}
        self.model_sha256: dict[str, str] = {}
        self._write_run_file()

    def _write_run_file(self) -> None:
        atomic.write_json(RUN_FILE, {"tracking_uri": tracking_uri(), "parent_run_id": self.parent_id,
                                     "experiment_id": self.exp, "children": self.children,
                                     "model_sha256": self.model_sha256})

    def _safely(self, fn, *args, **kwargs) -> Any:
        if self.error:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # keep training; report once at the end
            self.error = f"MLflow tracking failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            return None

    def epoch(self, name: str, record: dict) -> None:
        """Log one epoch's record (train/, val/ metrics; loss in nats per image for BCE) to model `name`'s run."""
        self._safely(self._log_epoch, name, record)

    def _log_epoch(self, name: str, record: dict) -> None:
        from mlflow.entities import Metric

        step, now = record["epoch"], int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in record.items() if k != "epoch"]
        self.client.log_batch(self.children[name], metrics=metrics)
        self.logged_epochs[name].add(step)

    def model_done(self, spec: RunSpec, model, history: list[dict], model_dir: Path) -> None:
        """Finish a model's child run: missed epochs, its files, its registered version, the run file."""
        self._safely(self._finish_model, spec, model, history, model_dir)

    def _finish_model(self, spec: RunSpec, model, history: list[dict], model_dir: Path) -> None:
        for record in history:  # epochs restored from a checkpoint were not seen live
            if record["epoch"] not in self.logged_epochs[spec.name]:
                self._log_epoch(spec.name, record)
        run_id = self.children[spec.name]
        self.client.log_artifacts(run_id, str(model_dir), artifact_path="model_files")
        register_model(run_id, model, spec.name)
        self.client.set_terminated(run_id, "FINISHED")
        self.model_sha256[spec.name] = sha256_file(model_dir / "model.pt")
        self._write_run_file()

    def model_failed(self, name: str, error: str) -> None:
        """Mark model `name`'s child run FAILED with the error as a tag."""
        self._safely(self.client.set_tag, self.children[name], "aevae.error", error[:500])
        self._safely(self.client.set_terminated, self.children[name], "FAILED")

    def close(self, ok: bool) -> None:
        """End the parent run, FINISHED or FAILED. A tracking error is kept in self.error, never raised."""
        self._safely(self.client.set_terminated, self.parent_id, "FINISHED" if ok else "FAILED")


def registered_name(model_name: str) -> str:
    """The Model Registry name of a sweep member: aevae-<name>."""
    return f"aevae-{model_name}"


def register_model(run_id: str, model, model_name: str) -> str:
    """Log the model with mlflow.pytorch and register it; returns the new version.

    The registry copy uses MLflow's pickle format (torch.export's 'pt2' costs ~12 s a model here);
    aevae itself never loads it: its stages load the weights-only model.pt artifacts instead.
    """
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    reqs = [f"torch=={version('torch')}", f"aevae=={version('aevae')}"]
    # The registry prints "Successfully registered..." itself: keep the stage's output to one line per model.
    with mlflow.start_run(run_id=run_id), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        info = mlflow.pytorch.log_model(model, name="model", registered_model_name=registered_name(model_name),
                                        pip_requirements=reqs, await_registration_for=30,
                                        serialization_format="pickle")
    return str(info.registered_model_version)


def pipeline_run(models_dir: Path = Path("models")) -> dict | None:
    """The parent run the train stage opened, for the stages after it; None if none is recorded.

    Only children whose model file is the one now in models/ are kept: when DVC restores the train
    stage from its cache, the recorded run is the one that trained those exact weights or none.
    """
    if not RUN_FILE.is_file():
        return None
    run = json.loads(RUN_FILE.read_text())
    shas = run.get("model_sha256", {})
    run["children"] = {name: run_id for name, run_id in run["children"].items()
                       if (models_dir / name / "model.pt").is_file()
                       and shas.get(name) == sha256_file(models_dir / name / "model.pt")}
    return run


def log_evaluation(results: dict[str, dict[str, float]], summary_file: Path = Path("metrics/summary.json")) -> None:
    """The evaluate stage's metrics, same keys for every model, into the children of the pipeline run."""
    run = pipeline_run()
    if run is None:
        print("warning: no MLflow run recorded by the train stage (logs/mlflow_run.json); metrics not tracked",
              file=sys.stderr)
        return
    from mlflow.entities import Metric

    mlflow_client = client()
    now = int(time.time() * 1000)
    for name, values in results.items():
        run_id = run["children"].get(name)
        if run_id is None:
            continue
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        mlflow_client.log_batch(run_id, metrics=metrics)
    if summary_file.is_file():
        mlflow_client.log_artifact(run["parent_run_id"], str(summary_file))


# ------------------------------------------------- retrain: champion / challenger aliases (aevae.retrain)

CHAMPION, CHALLENGER = "champion", "challenger"
FINGERPRINT_TAG = "aevae.retrain.fingerprint"  # on the registered model: what the last retrain saw


@contextlib.contextmanager
def server_errors(doing: str):
    """An MLflow call that fails (server down, HTTP error) becomes one UserError line; bugs still raise."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MLflow failed while {doing} ({type(exc).__name__}: {reason}); no alias was changed;"
                        f" check the server at {tracking_uri()} and rerun") from None


def _registered_model(mlflow_client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(registered_name(model_name))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def model_aliases(mlflow_client, model_name: str) -> dict[str, str]:
    """{alias: version} of aevae-<model>; {} when it is not registered yet."""
    model = _registered_model(mlflow_client, model_name)
    return {alias: str(v) for alias, v in model.aliases.items()} if model else {}


def retrain_fingerprint(mlflow_client, model_name: str) -> str | None:
    """The fingerprint (data, code, params) the last retrain of this model recorded; None if never."""
    model = _registered_model(mlflow_client, model_name)
    return model.tags.get(FINGERPRINT_TAG) if model else None


def version_from_run(mlflow_client, model_name: str, run_id: str) -> str | None:
    """The newest version of aevae-<model> registered from `run_id` (the train stage's child run)."""
    name = registered_name(model_name)
    versions = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return max((str(v.version) for v in versions), key=int, default=None)


def download_model_files(mlflow_client, model_name: str, version: str, dst: Path) -> Path:
    """The version's model_files/ (model.pt + config.json, as the train stage logged them) -> dst/model_files."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in a scheduled job's log
    run_id = mlflow_client.get_model_version(registered_name(model_name), version).run_id
    folder = Path(mlflow_client.download_artifacts(run_id, "model_files", str(dst)))
    if not (folder / "model.pt").is_file() or not (folder / "config.json").is_file():
        raise UserError(f"version {version} of {registered_name(model_name)} (run {run_id}) has no"
                        " model_files/model.pt and config.json; move its aliases by hand or delete the version")
    return folder


def apply_retrain(mlflow_client, changes: list[dict]) -> None:
    """Apply decided alias moves and tags; on any failure undo what was applied, then raise a UserError.

    Each change: {"model": name, "set": {alias: version}, "delete": [alias], "version": v,
    "version_tags": {...}, "model_tags": {...}}. All of them are decided before this is called,
    so a server that stops midway leaves every alias as it was (best effort: the undo needs the server too).
    """
    from mlflow.exceptions import MlflowException

    undo = []
    try:
        for change in changes:
            name = registered_name(change["model"])
            before = model_aliases(mlflow_client, change["model"])
            for alias, version in change.get("set", {}).items():
                mlflow_client.set_registered_model_alias(name, alias, version)
                undo.append(_restore_alias(mlflow_client, name, alias, before.get(alias)))
            for alias in change.get("delete", []):
                if alias in before:
                    mlflow_client.delete_registered_model_alias(name, alias)
                    undo.append(_restore_alias(mlflow_client, name, alias, before[alias]))
        # Tags last: they describe aliases that are already in place.
        for change in changes:
            name = registered_name(change["model"])
            for key, value in change.get("version_tags", {}).items():
                mlflow_client.set_model_version_tag(name, change["version"], key, str(value))
                undo.append(functools.partial(mlflow_client.delete_model_version_tag, name, change["version"], key))
            old_tags = _registered_model(mlflow_client, change["model"]).tags
            for key, value in change.get("model_tags", {}).items():
                mlflow_client.set_registered_model_tag(name, key, str(value))
                undo.append(functools.partial(mlflow_client.set_registered_model_tag, name, key, old_tags[key])
                            if key in old_tags else
                            functools.partial(mlflow_client.delete_registered_model_tag, name, key))
    except (MlflowException, OSError) as exc:
        failed = 0
        for step in reversed(undo):
            try:
                step()
            except (MlflowException, OSError):
                failed += 1
        state = "every alias and tag is as it was" if not failed else f"{failed} change(s) could not be undone"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MLflow failed while moving aliases ({type(exc).__name__}: {reason}); {state};"
                        f" check the server at {tracking_uri()} and rerun") from None


def _restore_alias(mlflow_client, name: str, alias: str, version: str | None):
    def restore() -> None:
        if version is None:
            mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, version)
    return restore


def log_report(report_dir: Path, figures_by_model: dict[str, list[Path]]) -> None:
    """The report stage's outputs: index.html and summary.md to the parent run, each model's figures to its child."""
    run = pipeline_run()
    if run is None:
        print("warning: no MLflow run recorded by the train stage (logs/mlflow_run.json); report not tracked",
              file=sys.stderr)
        return
    if run.get("tracking_uri") and run["tracking_uri"] != tracking_uri():
        print(f"warning: the pipeline run was recorded in {run['tracking_uri']}, not the current store "
              f"{tracking_uri()}; report not tracked (set MLFLOW_TRACKING_URI as the train stage had it)",
              file=sys.stderr)
        return
    mlflow_client = client()
    for name in ("index.html", "summary.md"):
        path = Path(report_dir) / name
        if path.is_file():
            mlflow_client.log_artifact(run["parent_run_id"], str(path), artifact_path="report")
    for name, files in figures_by_model.items():
        run_id = run["children"].get(name)
        if run_id is None:  # a model trained outside this pipeline run
            continue
        for path in files:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="figures")
