"""Stage `evaluate`: every claim of the article as numbers -> metrics/models/<model>.json, metrics/summary.json.

The same keys (aevae.metric_registry) go to each model's MLflow child run. The arrays the
report's figures need (test codes, prior samples, interpolation strips) go to
metrics/arrays/<model>.npz, so the report does not run the models again for them.
"""

import math
from pathlib import Path

from tqdm import tqdm

from aevae import atomic, classifier, metric_registry, metrics, model_store
from aevae.config import load_params
from aevae.data.prepared import load_split
from aevae.errors import run_cli
from aevae.models import as_images
from aevae.tracking import log_evaluation

OUT = Path("metrics")
_KEYS = {m.key: m for m in metric_registry.METRICS}


def _null_reasons(values: dict, kind: str) -> dict[str, str]:
    """Why each non-finite metric is written as null (strict JSON has no NaN or inf; see atomic.write_json)."""
    reasons = {}
    for key, v in values.items():
        if math.isnan(v):
            applies = key not in _KEYS or _KEYS[key].applies(kind)
            reasons[key] = "not defined here (NaN)" if applies else f"not defined for a model of kind '{kind}'"
        elif math.isinf(v):
            why = _KEYS[key].infinite_when if key in _KEYS else ""
            reasons[key] = f"{v} ({why})" if why else f"{v}"
    return reasons


def main() -> None:
    params = load_params()
    p = params.evaluate
    train, test = load_split("train"), load_split("test")
    scorer, _ = classifier.load(Path("classifier/model.pt"))
    reference = scorer.features(as_images(test.images))  # once for all models
    names = model_store.trained_names()
    results, pca = {}, {}
    with atomic.atomic_dir(OUT / "arrays") as arrays:  # all models' arrays appear together, or none
        for name in tqdm(names, desc="evaluate", unit="model", ncols=80):
            model, spec = model_store.load(name)
            evaluation = metrics.evaluate(model, train.images, train.labels, test.images, test.labels,
                                          scorer, p, reference_features=reference)
            metrics.save_arrays(arrays / f"{name}.npz", evaluation)
            values = evaluation.metrics
            dim = spec.model.latent_dim
            if dim not in pca:
                pca[dim] = metrics.pca_baseline(train.images, test.images, dim, seed=p.seed)
            values.update(pca[dim])
            results[name] = values
            # summary.json stays one flat number-or-null per key (dvc metrics); each model's file says why a null is one.
            atomic.write_json(OUT / "models" / f"{name}.json",
                              {**values, "null_reasons": _null_reasons(values, spec.model.kind)})
    atomic.write_json(OUT / "summary.json", results)
    log_evaluation(results)
    width = max(map(len, names))
    shown = [m for m in metric_registry.METRICS if m.console]
    for name, v in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{m.header} {format(v[m.key], m.fmt)}" for m in shown))


if __name__ == "__main__":
    run_cli(main)
