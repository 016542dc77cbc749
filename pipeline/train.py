"""Stage `train`: the sweep on Ray (local, or the cluster at RAY_ADDRESS) -> models/<name>/."""

import shutil
from pathlib import Path

from aevae import atomic, model_store
from aevae.config import load_params, resolve_sweep
from aevae.data.prepared import load_manifest, load_split
from aevae.distributed import checkpoint_dir, train_sweep
from aevae.errors import UserError, run_cli
from aevae.progress import SweepProgress

RUN_FACTS = Path("logs/train_run.json")


def main() -> None:
    params = load_params()
    specs = resolve_sweep(params)
    manifest = load_manifest()
    train, val = load_split("train"), load_split("val")
    progress = SweepProgress(specs)
    failures, runs = [], {}

    def on_done(outcome) -> None:
        if outcome.error:
            failures.append(outcome.error)
            progress.failed(outcome.spec.name, outcome.error)
            return
        model_store.save(model_store.MODELS_DIR, outcome.spec, outcome.state_dict, outcome.history,
                         {"data_sha256": manifest["data_sha256"]})
        runs[outcome.spec.name] = {"device": outcome.device, "epochs_run": outcome.epochs_run,
                                   "seconds": round(outcome.seconds, 3)}
        progress.done(outcome.spec.name, outcome.epochs_run, outcome.seconds)

    cluster = train_sweep(
        specs, train.images, val.images, Path(params.ray.storage_path), params.ray, manifest["data_sha256"],
        on_epoch=progress.epoch, on_done=on_done,
    )
    # How this run went (cluster, devices, resumes): facts about the run, not results, so not a DVC output.
    atomic.write_json(RUN_FACTS, {**cluster, "models": runs, "failed": failures})
    if failures:  # keep every checkpoint: the rerun resumes instead of starting over
        raise UserError(f"{len(failures)} of {len(specs)} models failed (the others are saved): {failures[0]}")
    # Checkpoints exist to resume unfinished work; once the whole sweep is saved, a rerun retrains.
    for spec in specs:
        shutil.rmtree(checkpoint_dir(Path(params.ray.storage_path).resolve(), spec, manifest["data_sha256"]), ignore_errors=True)


if __name__ == "__main__":
    run_cli(main)
