"""MLflow runs: one parent run per pipeline run, a child run per model and seed, an aggregate child per group.

Child runs are named like models/<name> and tagged `model` (the group aggregated over seeds),
`member`, `seed` and `latent_dim` (mlflow_store.model_tags); the evaluate stage adds one aggregate
child per group holding the mean and 95% interval over seeds under the seed children's metric keys
(log_aggregates; why not parent metrics: see AGGREGATE_TAG) and puts the claims' verdicts on the
parent as tags (verdict_tags). Each trained model is also registered (aevae.ops.model_registry); the
store itself (where it is, a client) is aevae.ops.mlflow_store.

Only the stage's driver process talks to MLflow: Ray workers send their per-epoch records back
to it, so workers on a cluster need no route to the tracking server and an outage is handled in
one place.

The train stage opens the parent run and, once every model is trained and
tracked, records its id in logs/mlflow_run.json; later stages (evaluate,
report) log into that same parent and its children, and only when the models
in models/ are the ones it trained. A stage restored from DVC's cache does not
run, so it logs nothing twice; a train stage that runs again opens a new
parent run. A train stage that ends early (error, signal) ends its open runs
as FAILED or KILLED and leaves no run file behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aevae import atomic
from aevae.config import Params, RunSpec, check_unchanged
from aevae.data import array_shape, manifest_shape
from aevae.errors import UserError
from aevae.ops import model_card
from aevae.ops.mlflow_store import client, experiment_id, first_line, model_tags, server_errors, tracking_uri
from aevae.ops.model_registry import describe_test_metrics, register_model
from aevae.provenance import git_state, sha256_file

RUN_FILE = Path("logs/mlflow_run.json")
_PACKAGES = ("aevae", "torch", "torchvision", "ray", "mlflow", "dvc", "scikit-learn", "numpy")


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
        "sweep.seeds": json.dumps(params.sweep.seeds),  # each child's own seed is its `seed` tag (model_tags)
        "sweep.latent_dims": json.dumps(params.sweep.latent_dims),
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


# Who owns a RUNNING run: SIGKILL (kill -9, the OOM killer, a lost node) ends a stage without ending its runs,
# so the next stage to open the store ends the runs whose owner is gone (end_orphaned_runs).
OWNER_TAGS = ("aevae.owner.host", "aevae.owner.pid", "aevae.owner.started")


def owner_tags() -> dict[str, str]:
    """This process as a run's owner: host name, pid and start time (seconds since the epoch; pids are reused)."""
    import psutil

    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(os.getpid()), f"{psutil.Process().create_time():.3f}")))


def _owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's owner tags (on this host) still runs."""
    import psutil

    try:
        proc = psutil.Process(int(tags[OWNER_TAGS[1]]))
        return abs(proc.create_time() - float(tags[OWNER_TAGS[2]])) < 1.0
    except (psutil.Error, KeyError, ValueError):
        return False


def end_orphaned_runs(mlflow_client, experiment: str) -> list[str]:
    """End as KILLED every RUNNING run of `experiment` owned by a process of this host that no longer runs.

    Runs of other hosts are left alone (their process cannot be seen from here), and so are runs without
    owner tags. Prints one warning line when it ends any; returns their ids.
    """
    host = socket.gethostname().replace("'", "")
    found = mlflow_client.search_runs(
        [experiment], f"attributes.status = 'RUNNING' and tags.`{OWNER_TAGS[0]}` = '{host}'", max_results=1000
    )
    dead = [r for r in found if not _owner_alive(r.data.tags)]
    for r in dead:
        mlflow_client.set_tag(
            r.info.run_id,
            "aevae.error",
            f"its process (pid {r.data.tags.get(OWNER_TAGS[1])}) died without ending it (SIGKILL?)",
        )
        mlflow_client.set_terminated(r.info.run_id, "KILLED")
    if dead:
        pids = sorted({r.data.tags.get(OWNER_TAGS[1], "?") for r in dead})
        print(
            f"warning: ended {len(dead)} MLflow runs left RUNNING by a killed process (pid {', '.join(pids)})"
            " as KILLED",
            file=sys.stderr,
            flush=True,
        )
    return [r.info.run_id for r in dead]


def _log_params(mlflow_client, run_id: str, values: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in values.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[i : i + 100])


def _metrics(values: dict[str, float], step: int) -> tuple[list, dict[str, str]]:
    """MLflow Metric records, and a tag per value that is not a finite number.

    MLflow stores +inf as 1.8e308, a number that looks real: such a value is logged as NaN
    (shown as NaN, and every child keeps the same metric keys) and its tag says what it was.
    """
    from mlflow.entities import Metric

    now, metrics, tags = int(time.time() * 1000), [], {}
    for key, value in values.items():
        value = float("nan") if value is None else float(value)
        if math.isinf(value):
            tags[f"aevae.nonfinite.{key}"] = f"{value} (logged as NaN)"
            value = float("nan")
        metrics.append(Metric(key, value, now, step))
    return metrics, tags


def _log_metrics(mlflow_client, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import RunTag

    metrics, tags = _metrics(values, step)
    mlflow_client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])


class SweepTracker:
    """The train stage's view of MLflow: a parent run, a child per model, live epoch metrics.

    Use it as a context manager: whatever ends the stage early (an error, Ctrl-C, SIGTERM) ends the
    parent and every open child as FAILED (an error) or KILLED (a signal), so no run stays RUNNING.
    The run file (logs/mlflow_run.json) is removed when the stage starts and written only when
    the parent ends FINISHED, so it never points at an aborted run.

    The first tracking error (e.g. the server stops) is kept and tracking stops,
    so training goes on and its outputs are written; the stage reports it at the end.
    """

    def __init__(self, params: Params, specs: list[RunSpec], manifest: dict, params_file: Path, example_images=None):
        self.params, self.manifest, self.error, self.status = params, manifest, None, None
        self.example_images = example_images  # (k, H, W) or (k, C, H, W) uint8: the registered versions' input example
        self.client = client()
        RUN_FILE.unlink(missing_ok=True)  # models/ is about to change: the old run no longer describes it
        self.parent_id, self.children, self.open = None, {}, set()
        try:
            self._open_runs(specs, manifest, params_file)
        except BaseException as exc:
            self._end(_status_for(exc))
            if isinstance(exc, OSError) or type(exc).__module__.startswith("mlflow"):
                raise UserError(
                    f"MLflow failed while opening the pipeline run ({type(exc).__name__}:"
                    f" {first_line(exc)}); check the server at {tracking_uri()} and rerun"
                ) from None
            raise
        self.logged_epochs = {spec.name: set() for spec in specs}
        self.model_sha256: dict[str, str] = {}

    def _open_runs(self, specs: list[RunSpec], manifest: dict, params_file: Path) -> None:
        self.exp = experiment_id(self.client)
        end_orphaned_runs(self.client, self.exp)
        tags = {**repro_tags(manifest, self.params, "train"), **owner_tags()}
        parent = self.client.create_run(
            self.exp, run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}", tags={**tags, "aevae.role": "pipeline"}
        )
        self.parent_id = parent.info.run_id
        self.client.log_artifact(self.parent_id, str(params_file))
        for spec in specs:
            run = self.client.create_run(
                self.exp,
                run_name=spec.name,
                tags={**tags, "mlflow.parentRunId": self.parent_id, "aevae.role": "model", **model_tags(spec)},
            )
            self.children[spec.name] = run.info.run_id
            self.open.add(spec.name)
            _log_params(self.client, run.info.run_id, flat_params(spec, self.params))
            log_dataset(self.client, run.info.run_id, manifest)

    def __enter__(self) -> SweepTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._end(_status_for(exc))

    def _write_run_file(self) -> None:
        atomic.write_json(
            RUN_FILE,
            {
                "tracking_uri": tracking_uri(),
                "parent_run_id": self.parent_id,
                "experiment_id": self.exp,
                "children": self.children,
                "model_sha256": self.model_sha256,
            },
        )

    def _safely(self, fn, *args, **kwargs) -> Any:
        if self.error:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # keep training; report once at the end
            self.error = f"MLflow tracking failed ({type(exc).__name__}: {first_line(exc)[:200]})"
            return None

    def epoch(self, name: str, record: dict) -> None:
        """Log one epoch's record (train/, val/ metrics; loss in nats per image for BCE) to model `name`'s run."""
        self._safely(self._log_epoch, name, record)

    def _log_epoch(self, name: str, record: dict) -> None:
        _log_metrics(
            self.client, self.children[name], {k: v for k, v in record.items() if k != "epoch"}, record["epoch"]
        )
        self.logged_epochs[name].add(record["epoch"])

    def model_done(self, spec: RunSpec, history: list[dict], model_dir: Path) -> None:
        """Log model `spec`'s artifacts, register it and end its run FINISHED.

        Raises: UserError when params.yaml changed since the stage read it: such a model was trained with
        values DVC will not record, so it is neither registered nor its run called finished.
        """
        check_unchanged()
        self._safely(self._finish_model, spec, history, model_dir)

    def _finish_model(self, spec: RunSpec, history: list[dict], model_dir: Path) -> None:
        for record in history:  # epochs restored from a checkpoint were not seen live
            if record["epoch"] not in self.logged_epochs[spec.name]:
                self._log_epoch(spec.name, record)
        run_id = self.children[spec.name]
        self.client.log_artifacts(run_id, str(model_dir), artifact_path="model_files")
        description = model_card.describe(spec, self.params, self.manifest, run_id, history[-1])
        register_model(self.client, run_id, model_dir, spec, description, self.example_images)
        self.client.set_terminated(run_id, "FINISHED")
        self.open.discard(spec.name)
        self.model_sha256[spec.name] = sha256_file(model_dir / "model.pt")

    def model_failed(self, name: str, error: str) -> None:
        """Mark model `name`'s child run FAILED with the error as a tag."""
        self._safely(self.client.set_tag, self.children[name], "aevae.error", error[:500])
        self._safely(self.client.set_terminated, self.children[name], "FAILED")
        self.open.discard(name)

    def close(self, ok: bool) -> None:
        """End the parent: FINISHED (and write the run file for the later stages) or FAILED.

        Raises: UserError when params.yaml changed since the stage read it (the parent then ends FAILED).
        """
        if ok and not self.error:
            try:
                check_unchanged()
            except UserError:
                self.close(ok=False)
                raise
            self._safely(self.client.set_terminated, self.parent_id, "FINISHED")
            if not self.error:
                self.status = "FINISHED"
                self._write_run_file()
                return
        self._end("FAILED")

    def _end(self, status: str) -> None:
        """Best effort: end the open children and the parent as `status`; the server may be the reason we end."""
        if self.status is not None:
            return
        self.status = status
        runs = [self.children[name] for name in sorted(self.open)] + ([self.parent_id] if self.parent_id else [])
        self.open.clear()
        for run_id in runs:
            try:
                self.client.set_terminated(run_id, status)
            except Exception:  # the server is gone: do not wait on it once per run
                return


def _status_for(exc: BaseException) -> str:
    """KILLED for a signal (Ctrl-C, SIGTERM, Ray's sys.exit on SIGTERM), FAILED for anything else."""
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"


def log_dataset(mlflow_client, run_id: str, manifest: dict) -> None:
    """The prepared data as the run's training dataset input: the UI shows which data trained which model.

    MLflow stores at most 36 characters of a digest: the first 16 of the data sha256 (the full one is in
    the dataset's profile and the run's data.sha256 tag).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    shape = list(array_shape(manifest_shape(manifest)))  # one image as stored: (H, W) grey, (C, H, W) colour
    schema = {
        "mlflow_tensorspec": {
            "features": json.dumps(
                [{"name": "images", "type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, *shape]}}]
            ),
            "targets": None,
        }
    }
    profile = {
        "data_sha256": manifest["data_sha256"],
        "source": manifest["source"],
        "origin": manifest.get("origin"),
        "images": {k: v["total"] for k, v in manifest.get("counts", {}).items()},
    }
    dataset = Dataset(
        name=f"{manifest['dataset']}-prepared",
        digest=manifest["data_sha256"][:16],
        source_type="local",
        source=json.dumps({"uri": (Path.cwd().resolve() / "data" / "prepared").as_uri()}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )
    mlflow_client.log_inputs(
        run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    )


def recorded_run(models_dir: Path = Path("models")) -> tuple[dict | None, str]:
    """(the parent run the train stage recorded, "") or (None, why no stage may log into it).

    The run's "children" keep only models whose model.pt in `models_dir` is the file that run trained,
    and "complete" says whether every model in `models_dir` is one of them. When DVC restores the
    train stage from its cache (params A, then B, then A again), models/ holds A's weights while the
    run file names B's run: no model matches and nothing may be logged into B.
    """
    if not RUN_FILE.is_file():
        return None, f"no finished MLflow pipeline run is recorded ({RUN_FILE} is missing; rerun: dvc repro -f train)"
    try:
        run = json.loads(RUN_FILE.read_text())
        recorded = dict(run["children"])
    except (ValueError, KeyError, TypeError):
        return None, f"{RUN_FILE} is corrupt; rerun the train stage (dvc repro -f train)"
    if run.get("tracking_uri") != tracking_uri():
        return None, (
            f"the pipeline run was recorded in another MLflow store, not {tracking_uri()}; set"
            " MLFLOW_TRACKING_URI as the train stage had it"
        )
    shas = run.get("model_sha256", {})
    on_disk = {p.parent.name: p for p in Path(models_dir).glob("*/model.pt")}
    run["children"] = {
        name: run_id
        for name, run_id in recorded.items()
        if name in on_disk and shas.get(name) == sha256_file(on_disk[name])
    }
    if not run["children"]:
        return None, (
            f"no model in {models_dir}/ was trained by the recorded MLflow run {run['parent_run_id']}"
            " (DVC restored them from its cache?); to track them, retrain: dvc repro -f train"
        )
    run["complete"] = set(run["children"]) == set(on_disk)
    return run, ""


def pipeline_run(models_dir: Path = Path("models")) -> dict | None:
    """The recorded parent run with the children that trained models/ (see recorded_run); None if none."""
    return recorded_run(models_dir)[0]


def _run_to_log_into(what: str) -> dict | None:
    """The recorded run, or None after one warning line saying why `what` is not tracked."""
    run, why = recorded_run()
    if run is None:
        print(f"warning: {why}; {what} not tracked", file=sys.stderr)
    elif not run["complete"]:
        print(
            f"warning: only {', '.join(sorted(run['children']))} of models/ were trained by the recorded MLflow"
            f" run; {what} of the others, and the pipeline-wide files, not tracked",
            file=sys.stderr,
        )
    return run


def log_evaluation(
    results: dict[str, dict[str, float]],
    specs: list[RunSpec],
    summary_file: Path = Path("metrics/summary.json"),
    claims_file: Path = Path("metrics/claims.json"),
) -> None:
    """The evaluate stage's numbers into the pipeline run: per seed, per group, and the claims' verdicts.

    `results` is {run name: {metric key: value}} (one per trained seed, metrics/models/<name>.json),
    `specs` the sweep's RunSpecs. Each seed's metrics go to its child run, with the same keys for
    every child, and complete its registered version's description. Only into children that trained
    the weights now in models/ (see recorded_run). When every model is one of them, the pipeline-wide
    files follow: summary.json becomes one aggregate child run per group (log_aggregates) and an
    artifact of the parent; claims.json an artifact of the parent and its verdicts the parent's tags
    (verdict_tags). Non-finite values are logged as NaN with a tag.
    Raises: UserError (one line) when the server fails midway; the metrics files are written by then.
    """
    from mlflow.entities import RunTag

    run = _run_to_log_into("metrics")
    if run is None:
        return
    groups = {spec.name: spec.group for spec in specs}
    mlflow_client = client()
    with server_errors("logging the evaluation", "the metrics files are written"):
        end_orphaned_runs(mlflow_client, run["experiment_id"])
        for name, values in results.items():
            if name in run["children"]:
                _log_metrics(mlflow_client, run["children"][name], values, 0)
                describe_test_metrics(mlflow_client, groups.get(name, name), run["children"][name], values)
        if not run["complete"]:
            return
        if summary_file.is_file():
            mlflow_client.log_artifact(run["parent_run_id"], str(summary_file))
            log_aggregates(mlflow_client, run, specs, json.loads(summary_file.read_text()))
        if claims_file.is_file():
            mlflow_client.log_artifact(run["parent_run_id"], str(claims_file))
            tags = verdict_tags(json.loads(claims_file.read_text()))
            mlflow_client.log_batch(run["parent_run_id"], tags=[RunTag(k, v) for k, v in tags.items()])


# Why aggregate child runs and not parent metrics: MLflow's compare view and runs table line runs up by
# metric key. A child per group holding the mean under the seed children's own keys puts the mean in the
# same column as the seeds it summarises (filter `tags.model = 'ae-z2'`: three seeds and their mean), and
# the groups' means side by side (filter `tags.aevae.aggregate = 'true'`). Parent metrics would need the
# group in the key (`ae-z2/test/...`: hundreds of keys on one run) and could not be charted across groups.
AGGREGATE_TAG = "aevae.aggregate"


def aggregate_keys(stats: dict[str, dict]) -> dict[str, float]:
    """summary.json's {key: {"mean", "ci_low", "ci_high", "n_seeds"}} of one group as flat metrics:
    `<key>` = the mean over seeds (the seed children's key, same unit), `<key>/ci_low` and `<key>/ci_high`
    = its 95% Student-t interval (NaN with one seed, or when no seed has a finite value; see study.mean_ci)."""
    out: dict[str, float] = {}
    for key, stat in stats.items():
        for suffix, field in (("", "mean"), ("/ci_low", "ci_low"), ("/ci_high", "ci_high")):
            value = stat.get(field)
            out[key + suffix] = math.nan if value is None else float(value)
    return out


def log_aggregates(mlflow_client, run: dict, specs: list[RunSpec], summary: dict[str, dict]) -> dict[str, str]:
    """One aggregate child run per group of summary.json under the pipeline run; returns {group: run id}.

    Named `<group>-mean`, tagged `aevae.aggregate=true`, `model`, `member`, `latent_dim`, `seeds`
    (the seeds it summarises, JSON) and `n_seeds`, with the group's params (all but train.seed) and
    the metrics of aggregate_keys. An evaluate stage that runs again logs into the same aggregate runs.
    """
    from mlflow.entities import RunTag

    parent = run["parent_run_id"]
    ids = aggregate_runs(mlflow_client, run)
    parent_tags = mlflow_client.get_run(parent).data.tags
    for group, stats in summary.items():
        members = [s for s in specs if s.group == group]
        if not members:  # summary.json of another sweep: nothing here to describe it
            continue
        spec, seeds = members[0], [s.seed for s in members if s.name in run["children"]]
        if group not in ids:
            tags = {k: v for k, v in parent_tags.items() if not k.startswith(("mlflow.", "aevae."))}
            tags.update({k: v for k, v in model_tags(spec).items() if k != "seed"})
            tags.update(owner_tags())
            tags.update(
                {
                    "mlflow.parentRunId": parent,
                    "aevae.role": "aggregate",
                    AGGREGATE_TAG: "true",
                    "dvc.stage": "evaluate",
                    "seeds": json.dumps(seeds),
                    "n_seeds": str(len(seeds)),
                }
            )
            ids[group] = mlflow_client.create_run(run["experiment_id"], run_name=f"{group}-mean", tags=tags).info.run_id
            seed_child = run["children"].get(spec.name)  # the params the seeds share: all but train.seed
            if seed_child:
                shared = mlflow_client.get_run(seed_child).data.params
                _log_params(mlflow_client, ids[group], {k: v for k, v in shared.items() if k != "train.seed"})
        else:
            _reclaim(mlflow_client, ids[group])
        metrics, nonfinite = _metrics(aggregate_keys(stats), 0)
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            mlflow_client.log_batch(
                ids[group],
                metrics=metrics[i : i + 1000],
                tags=[RunTag(k, v) for k, v in nonfinite.items()] if i == 0 else [],
            )
        mlflow_client.set_terminated(ids[group], "FINISHED")
    return ids


def _reclaim(mlflow_client, run_id: str) -> None:
    """An aggregate run whose stage was killed mid-way (ended KILLED by end_orphaned_runs) is completed by this
    process: its error tag would call a finished run dead, and its owner tags name the dead process."""
    if "aevae.error" not in mlflow_client.get_run(run_id).data.tags:
        return
    mlflow_client.delete_tag(run_id, "aevae.error")
    for key, value in owner_tags().items():
        mlflow_client.set_tag(run_id, key, value)


def aggregate_runs(mlflow_client, run: dict) -> dict[str, str]:
    """{group: run id} of the aggregate children of the recorded pipeline run (see recorded_run)."""
    found = mlflow_client.search_runs(
        [run["experiment_id"]], f"tags.mlflow.parentRunId = '{run['parent_run_id']}' and tags.{AGGREGATE_TAG} = 'true'"
    )
    return {r.data.tags.get("model"): r.info.run_id for r in found}


def verdict_tags(claims: dict) -> dict[str, str]:
    """metrics/claims.json as parent tags: `aevae.verdict.<claim>.z<size>` = supported | contradicted |
    inconclusive | untestable (study.claims_file), plus `aevae.verdict.level` (the interval's level)."""
    tags = {"aevae.verdict.level": str(claims.get("level"))}
    for dim, by_claim in claims.get("claims", {}).items():
        for claim_id, verdict in by_claim.items():
            tags[f"aevae.verdict.{claim_id}.{dim}"] = str(verdict["verdict"])
    return tags


def log_report(report_dir: Path, figures_by_model: dict[str, list[Path]]) -> None:
    """The report stage's outputs: index.html and summary.md to the parent run, each model's figures to its run.

    `figures_by_model` is keyed by run name (a seed's child run) or by group (its aggregate run, when
    every model is tracked). Same guard as log_evaluation: only runs that trained the weights now in models/.
    """
    run = _run_to_log_into("the report")
    if run is None:
        return
    mlflow_client = client()
    with server_errors("logging the report", "the report files are written"):
        for name in ("index.html", "summary.md") if run["complete"] else ():
            path = Path(report_dir) / name
            if path.is_file():
                mlflow_client.log_artifact(run["parent_run_id"], str(path), artifact_path="report")
        aggregates = aggregate_runs(mlflow_client, run) if run["complete"] else {}
        for name, files in figures_by_model.items():
            run_id = run["children"].get(name) or aggregates.get(name)
            for path in files if run_id else ():
                mlflow_client.log_artifact(run_id, str(path), artifact_path="figures")
