"""Stage `evaluate`: every claim of the article as numbers -> metrics/models/<model>.json, metrics/summary.json.

The same keys go to each model's MLflow child run. Each model is evaluated in its own Ray task, on a
local instance or the cluster at RAY_ADDRESS, with one torch thread per CPU it reserves
(ray.cpus_per_model); this driver gathers the results and alone writes files and talks to MLflow.
"""

import math
from pathlib import Path

from aevae import atomic, classifier, metrics, model_store
from aevae.config import load_params
from aevae.data.prepared import load_split
from aevae.distributed import map_tasks
from aevae.errors import UserError, run_cli
from aevae.models import as_images
from aevae.progress import Progress
from aevae.tracking import log_evaluation

OUT = Path("metrics")
RUN_FACTS = Path("logs/evaluate_run.json")


def _json_safe(values: dict) -> dict:
    # NaN is not JSON: a metric that does not apply (an AE's KL) is written as null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def main() -> None:
    params = load_params()
    p = params.evaluate
    settings = metrics.EvalSettings(n_prior_samples=p.n_prior_samples, iw_samples=p.iw_samples,
                                    interp_pairs=p.interp_pairs, interp_steps=p.interp_steps,
                                    confidence_threshold=p.confidence_threshold)
    train, test = load_split("train"), load_split("test")
    scorer, _ = classifier.load(Path("classifier/model.pt"))
    names = model_store.trained_names()
    models = {name: model_store.load(name) for name in names}
    # One Ray task per model (local instance or RAY_ADDRESS, as for training); the driver alone writes and logs.
    shared = dict(train_images=train.images, train_labels=train.labels, test_images=test.images,
                  test_labels=test.labels, classifier=scorer, seed=p.seed, settings=settings,
                  reference_features=scorer.features(as_images(test.images)))  # once for all models
    progress = Progress("evaluate", len(names), "models")
    results, runs = {}, {}

    def on_done(outcome) -> None:
        if outcome.error:
            raise UserError(f"evaluating model {outcome.error}; rerun the evaluate stage (dvc repro evaluate)")
        results[outcome.key] = outcome.value
        runs[outcome.key] = {"node_id": outcome.node_id, "seconds": round(outcome.seconds, 3)}
        progress.update(len(results), f"{outcome.key} done in {outcome.seconds:.1f}s", force=True)

    cluster = map_tasks(metrics.evaluate_model, {name: (models[name][0],) for name in names}, shared,
                        params.ray.cpus_per_model, params.ray.max_retries, on_done,
                        on_wait=lambda running: progress.update(len(results), f"running: {', '.join(running)}"))
    pca = {}
    for name in names:
        dim = models[name][1].model.latent_dim
        if dim not in pca:
            pca[dim] = metrics.pca_baseline(train.images, test.images, dim, seed=p.seed)
        results[name].update(pca[dim])
        atomic.write_json(OUT / "models" / f"{name}.json", _json_safe(results[name]))
    # Where each model was evaluated: facts about the run, not results, so not a DVC output.
    atomic.write_json(RUN_FACTS, {**cluster, "models": runs})
    atomic.write_json(OUT / "summary.json", {name: _json_safe(results[name]) for name in names})
    log_evaluation(results)
    width = max(map(len, names))
    for name, v in results.items():
        print(f"{name:<{width}}  recon mse/px {v['test/recon_mse_per_pixel']:.4f}  "
              f"holes {v['test/holes_fraction_own_gaussian']:.2f}  classifier-FID {v['prior/classifier_fid']:8.2f}  "
              f"kNN acc {v['test/knn_accuracy']:.3f}")


if __name__ == "__main__":
    run_cli(main)
