"""Stage `evaluate`: every claim of the article as numbers -> metrics/models/<model>.json, metrics/summary.json.

The same keys go to each model's MLflow child run.
"""

import math
from pathlib import Path

from tqdm import tqdm

from aevae import atomic, classifier, metrics, model_store
from aevae.config import load_params
from aevae.data.prepared import load_split
from aevae.errors import run_cli
from aevae.models import as_images
from aevae.tracking import log_evaluation

OUT = Path("metrics")


def _null_reasons(values: dict, kind: str) -> dict[str, str]:
    """Why each non-finite metric is written as null (strict JSON has no NaN or inf; see atomic.write_json)."""
    reasons = {}
    for key, v in values.items():
        if math.isnan(v):
            reasons[key] = f"not defined for a model of kind '{kind}'" if kind == "ae" else "not defined here (NaN)"
        elif math.isinf(v):
            reasons[key] = (f"{v} (a singular covariance: fewer test images than latent dimensions, or a collapsed"
                            " code)" if key == "test/moment_kl_to_prior_nats" else f"{v}")
    return reasons


def main() -> None:
    params = load_params()
    p = params.evaluate
    settings = metrics.EvalSettings(n_prior_samples=p.n_prior_samples, iw_samples=p.iw_samples,
                                    interp_pairs=p.interp_pairs, interp_steps=p.interp_steps,
                                    confidence_threshold=p.confidence_threshold)
    train, test = load_split("train"), load_split("test")
    scorer, _ = classifier.load(Path("classifier/model.pt"))
    reference = scorer.features(as_images(test.images))  # once for all models
    names = model_store.trained_names()
    results, pca = {}, {}
    for name in tqdm(names, desc="evaluate", unit="model", ncols=80):
        model, spec = model_store.load(name)
        values = metrics.evaluate_model(model, train.images, train.labels, test.images, test.labels,
                                        scorer, seed=p.seed, settings=settings, reference_features=reference)
        dim = spec.model.latent_dim
        if dim not in pca:
            pca[dim] = metrics.pca_baseline(train.images, test.images, dim, seed=p.seed)
        values.update(pca[dim])
        results[name] = values
        # summary.json stays one flat number-or-null per key (dvc metrics); each model's file says why a null is one.
        atomic.write_json(OUT / "models" / f"{name}.json", {**values, "null_reasons": _null_reasons(values, spec.model.kind)})
    atomic.write_json(OUT / "summary.json", results)
    log_evaluation(results)
    width = max(map(len, names))
    for name, v in results.items():
        print(f"{name:<{width}}  recon mse/px {v['test/recon_mse_per_pixel']:.4f}  "
              f"holes {v['test/holes_fraction_own_gaussian']:.2f}  classifier-FID {v['prior/classifier_fid']:8.2f}  "
              f"kNN acc {v['test/knn_accuracy']:.3f}")


if __name__ == "__main__":
    run_cli(main)
