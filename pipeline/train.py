"""Stage `train`: the sweep on Ray (local, or the cluster at RAY_ADDRESS) -> models/<name>/.

Each (model, seed) is tracked as a child run of a new MLflow parent run, logged live
per epoch and registered in the Model Registry once it has trained, as a version of
aevae-<group> (one registered model per group, a version per seed).
"""

import shutil
from pathlib import Path

from aevae import atomic
from aevae.config import PARAMS_FILE, load_params, resolve_sweep
from aevae.core import model_store
from aevae.core.models import feature_sizes
from aevae.core.training import check_budget, planned_epochs, stopped_by
from aevae.data import manifest_shape
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import UserError, run_cli
from aevae.ops.distributed import check_address, checkpoint_dir, train_sweep
from aevae.ops.mlflow_store import tracking_uri
from aevae.ops.tracking import SweepTracker
from aevae.progress import SweepProgress, say

RUN_FACTS = Path("logs/train_run.json")


def main() -> None:
    params = load_params()
    specs = resolve_sweep(params)
    manifest = load_manifest()
    train, val = load_split("train"), load_split("val")
    world = params.ray.workers_per_model
    shape = manifest_shape(manifest)
    for spec in specs:  # a KL warm-up longer than the budget, or images too small for the convs, fail here
        check_budget(spec, len(train.images), world)
        if spec.model.arch == "conv":
            feature_sizes(spec.model, *shape[1:])
    check_address()  # a bad RAY_ADDRESS fails before any tracking run is opened
    say("train", f"opening the MLflow pipeline run and {len(specs)} child runs in {tracking_uri()}")
    # The tracker fails fast if the server is down; leaving the block early ends its runs FAILED / KILLED.
    # Two validation images become each registered version's input example.
    with SweepTracker(params, specs, manifest, Path(PARAMS_FILE), example_images=val.images[:2]) as tracker:
        failures, runs = _train(params, specs, manifest, train, val, tracker)
    if failures:  # keep every checkpoint: the rerun resumes instead of starting over
        others = "none was saved" if len(failures) == len(specs) else "the others are saved"
        raise UserError(f"{len(failures)} of {len(specs)} models failed ({others}): {failures[0]}")
    if tracker.error:
        raise UserError(f"{tracker.error}; the models are saved in models/, rerun to track them (training resumes)")
    # Checkpoints exist to resume unfinished work; once the whole sweep is saved and tracked, a rerun retrains.
    for spec in specs:
        shutil.rmtree(
            checkpoint_dir(Path(params.ray.storage_path).resolve(), spec, manifest["data_sha256"]), ignore_errors=True
        )
    groups = len({spec.group for spec in specs})
    say(
        "train",
        f"{len(specs)} models saved in models/ and registered as versions of {groups} registered models"
        f" (aevae-<model>); MLflow pipeline run {tracker.parent_id}",
    )


def _train(params, specs, manifest: dict, train, val, tracker: SweepTracker) -> tuple[list[str], dict]:
    """The sweep on Ray, saving each model as it finishes; returns (failure messages, facts per saved model)."""
    world, n_train = params.ray.workers_per_model, len(train.images)
    progress = SweepProgress(specs, epochs={s.name: planned_epochs(s.train, n_train, world) for s in specs})
    failures, runs = [], {}

    def on_epoch(name: str, record: dict) -> None:
        progress.epoch(name, record)
        tracker.epoch(name, record)

    def on_done(outcome) -> None:
        name = outcome.spec.name
        if outcome.error:
            failures.append(outcome.error)
            progress.failed(name, outcome.error)
            tracker.model_failed(name, outcome.error)
            return
        folder = model_store.save(
            model_store.MODELS_DIR,
            outcome.spec,
            outcome.state_dict,
            outcome.history,
            {"data_sha256": manifest["data_sha256"], "stopped_by": stopped_by(outcome.spec.train, n_train, world)},
            image_shape=manifest_shape(manifest),
        )
        runs[name] = {
            "device": outcome.device,
            "epochs_run": outcome.epochs_run,
            "seconds": round(outcome.seconds, 3),
            "node_id": outcome.node_id,
            "resources": outcome.resources,
            "threads": outcome.threads,
        }
        progress.done(name, outcome.epochs_run, outcome.seconds)
        tracker.model_done(outcome.spec, outcome.history, folder)

    cluster = train_sweep(
        specs,
        train.images,
        val.images,
        Path(params.ray.storage_path),
        params.ray,
        manifest["data_sha256"],
        on_epoch=on_epoch,
        on_done=on_done,
        on_status=lambda text: say("train", text),
    )
    tracker.close(ok=not failures)
    # How this run went (cluster, devices, resumes): facts about the run, not results, so not a DVC output.
    atomic.write_json(
        RUN_FACTS, {**cluster, "models": runs, "failed": failures, "mlflow_parent_run_id": tracker.parent_id}
    )
    return failures, runs


if __name__ == "__main__":
    run_cli(main)
