"""Stage `evaluate`: every claim of the article as numbers and verdicts.

Writes metrics/models/<model>.json (one per trained model, i.e. per seed), metrics/summary.json (each
group's metrics as a mean with a 95% interval over seeds) and metrics/claims.json (a verdict per claim
of the article and latent size; aevae.evaluation.study).

The same keys (aevae.metric_registry) go to each model's MLflow child run. Each model is evaluated
in its own Ray task, on a local instance or the cluster at RAY_ADDRESS, with one torch thread per CPU
it reserves (ray.cpus_per_model); this driver gathers the results and alone writes files and talks to
MLflow. The arrays the report's figures need (test codes, prior and GMM samples, interpolation strips) go to
metrics/arrays/<model>.npz, so the report does not run the models again for them.
"""

import math
from pathlib import Path

from aevae import atomic, metric_registry
from aevae.config import load_params, resolve_sweep
from aevae.core import model_store
from aevae.core.models import as_images
from aevae.core.training import device_bytes
from aevae.cpus import use_available_cpus
from aevae.data import NO_LABELS, manifest_labelled
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import UserError, run_cli
from aevae.evaluation import classifier, metrics, study
from aevae.ops.distributed import map_tasks
from aevae.ops.tracking import log_evaluation
from aevae.progress import Progress, say

OUT = Path("metrics")
RUN_FACTS = Path("logs/evaluate_run.json")
_KEYS = {m.key: m for m in metric_registry.METRICS}


def _null_reasons(values: dict, kind: str, labelled: bool) -> dict[str, str]:
    """Why each non-finite metric is written as null (strict JSON has no NaN or inf; see atomic.write_json)."""
    reasons = {}
    for key, v in values.items():
        if math.isnan(v):
            applies = key not in _KEYS or _KEYS[key].applies(kind)
            if not applies:
                reasons[key] = f"not defined for a model of kind '{kind}'"
            elif not labelled and _KEYS[key].needs_labels:
                reasons[key] = NO_LABELS
            else:
                reasons[key] = "not defined here (NaN)"
        elif math.isinf(v):
            why = _KEYS[key].infinite_when if key in _KEYS else ""
            reasons[key] = f"{v} ({why})" if why else f"{v}"
    return reasons


def _reference(test_images):
    """(the reference classifier, its features of the test images): computed once for all models."""
    say("evaluate", f"scoring the {len(test_images):,} test images with the reference classifier")
    scorer, _ = classifier.load(Path("classifier/model.pt"))
    return scorer, scorer.features(as_images(test_images))


def main() -> None:
    params = load_params()
    p = params.evaluate
    use_available_cpus()  # this driver's own work (reference features, the PCA baseline), not the tasks'
    train, test = load_split("train"), load_split("test")
    labelled = manifest_labelled(load_manifest())
    scorer, reference = _reference(test.images) if labelled else (None, None)
    if not labelled:
        say("evaluate", f"{NO_LABELS}: no reference classifier; the metrics that need labels are null")
    names = model_store.trained_names()
    models = {name: model_store.load(name) for name in names}
    # One Ray task per model (local instance or RAY_ADDRESS, as for training); the driver alone writes and logs.
    shared = dict(
        train_images=train.images,
        train_labels=train.labels,
        test_images=test.images,
        test_labels=test.labels,
        classifier=scorer,
        params=p,
        reference_features=reference,
    )
    progress = Progress("evaluate", len(names), "models")
    evaluations, runs = {}, {}

    def on_done(outcome) -> None:
        if outcome.error:
            raise UserError(f"evaluating model {outcome.error}; rerun the evaluate stage (dvc repro evaluate)")
        evaluations[outcome.key] = outcome.value
        runs[outcome.key] = {
            "node_id": outcome.node_id,
            "seconds": round(outcome.seconds, 3),
            "device": outcome.device,
            "resources": outcome.resources,
            "threads": outcome.threads,
        }
        progress.update(len(evaluations), f"{outcome.key} done in {outcome.seconds:.1f}s", force=True)

    # On GPUs, as many models per GPU as in training: a task holds about what training held (the data, one model).
    task_bytes = max(device_bytes(spec, train.images, len(test.images)) for _, spec in models.values())
    cluster = map_tasks(
        metrics.evaluate,
        {name: (models[name][0],) for name in names},
        shared,
        params.ray.cpus_per_model,
        params.ray.max_retries,
        on_done,
        on_wait=lambda _left: progress.update(len(evaluations)),  # queued ones too: no names
        on_status=progress.line,
        ray_params=params.ray,
        task_bytes=task_bytes,
    )
    results, pca = {}, {}
    with atomic.atomic_dir(OUT / "arrays") as arrays:  # all models' arrays appear together, or none
        for name in names:
            metrics.save_arrays(arrays / f"{name}.npz", evaluations[name])
            spec = models[name][1]
            dim = spec.model.latent_dim
            if dim not in pca:
                pca[dim] = metrics.pca_baseline(train.images, test.images, dim, seed=p.seed)
            results[name] = {**evaluations[name].metrics, **pca[dim]}
            # summary.json stays one flat number-or-null per key (dvc metrics); each model's file says why a null is one.
            atomic.write_json(
                OUT / "models" / f"{name}.json",
                {**results[name], "null_reasons": _null_reasons(results[name], spec.model.kind, labelled)},
            )
    # Where each model was evaluated: facts about the run, not results, so not a DVC output.
    atomic.write_json(RUN_FACTS, {**cluster, "models": runs})
    # Sweep order (member, size, seed) from params.yaml; models/ holds exactly this sweep (the train stage's output).
    specs = resolve_sweep(params)
    seed_records = study.from_results(results, specs)
    unavailable = {} if labelled else {m.key: NO_LABELS for m in metric_registry.needing_labels()}
    summary, claims = study.aggregate(seed_records), study.claims_file(seed_records, unavailable=unavailable)
    atomic.write_json(OUT / "summary.json", summary)
    atomic.write_json(OUT / "claims.json", claims)
    progress.line("logging the metrics to MLflow")
    log_evaluation(results, specs)
    shown = [m for m in metric_registry.METRICS if m.console]
    print("\n".join(study.console_lines(summary, claims, shown)))


if __name__ == "__main__":
    run_cli(main)
