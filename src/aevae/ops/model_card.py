"""The Model Registry's description of a version: what a reader downstream of training needs to know.

Markdown, written by the train stage when it registers a version (data, params, the run, how to
call it) and completed by the evaluate stage, which runs after train, with the key test metrics
(`with_test_metrics` replaces the pending section). Plain text in, plain text out: no MLflow here.
"""

from __future__ import annotations

import json
import math

from aevae import metric_registry
from aevae.config import DataParams, ModelParams, Params, RunSpec, TrainParams
from aevae.data import NO_LABELS, ClassNames, manifest_classes, manifest_shape

TEST_HEADING = "**Test metrics**"
PENDING = "pending: the evaluate stage writes them here when it has run."


def call(image_shape: tuple[int, int, int]) -> str:
    """How to call a version whose images are (C, H, W) `image_shape`."""
    c, h, w = image_shape
    return (
        '`mlflow.pyfunc.load_model(uri).predict(x, params={"method": m})`: `x` float32'
        f" (B, {c * h * w}) images in [0, 1] ({c}x{h}x{w}, each row flattened in (C, H, W) order)"
        " for `encode` / `reconstruct`, (B, latent) codes for `decode`, ignored by `sample` (params `n`, `seed`)."
    )


def changed_params(spec: RunSpec, params: Params) -> dict[str, object]:
    """Flat `section.key: value` of every setting of this model that differs from aevae's defaults."""
    pairs = ((spec.model, ModelParams()), (spec.train, TrainParams()), (params.data, DataParams()))
    out = {}
    for actual, default in pairs:
        section = {ModelParams: "model", TrainParams: "train", DataParams: "data"}[type(default)]
        base = default.model_dump()
        out.update({f"{section}.{k}": v for k, v in actual.model_dump().items() if v != base[k]})
    return out


def describe(spec: RunSpec, params: Params, manifest: dict, run_id: str, last_epoch: dict) -> str:
    """The version's description at registration; the test metrics follow once evaluate has run."""
    counts = ", ".join(f"{split} {c['total']}" for split, c in manifest.get("counts", {}).items())
    changed = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in changed_params(spec, params).items()) or "none"
    val = last_epoch.get("val/loss_per_image")
    loss_unit = "squared error" if spec.model.recon == "mse" else "nats"
    shape, classes = manifest_shape(manifest), manifest_classes(manifest)
    c, h, w = shape
    return "\n\n".join(
        [
            f"**{spec.name}**: {spec.model.kind.upper()}, {spec.model.arch}, latent size {spec.model.latent_dim}, "
            f"trained by run `{run_id}` ({last_epoch.get('epoch', '?')} epochs"
            + (f"; last validation loss {val:.4g} {loss_unit} per image" if val is not None else "")
            + ").",
            f"**Data**: {manifest['dataset']} from source `{manifest['source']}`"
            + (f" ({manifest['origin']})" if manifest.get("origin") else "")
            + f"; {c}x{h}x{w} {'grey' if c == 1 else 'colour'} images {counts}; {_classes(classes)}"
            + f"; sha256 `{manifest['data_sha256']}`.",
            f"**Params that differ from the defaults**: {changed}.",
            f"**Call**: {call(shape)}",
            f"{TEST_HEADING}: {PENDING}",
        ]
    )


def _classes(classes: ClassNames) -> str:
    """ "3 classes (cat, dog, owl)", or that unlabelled data has none (its label-based metrics are null)."""
    if not classes.names:
        return f"no classes ({NO_LABELS}: the metrics that need labels are null)"
    return f"{len(classes.names)} classes ({', '.join(classes.names)})"


def with_test_metrics(description: str, values: dict[str, float]) -> str:
    """`description` with its test-metrics section (pending, or an earlier evaluation) replaced by `values`."""
    head = description.split(TEST_HEADING)[0].rstrip()
    rows = [
        f"- `{m.key}` = {values[m.key]:.6g} ({m.unit})"
        for m in metric_registry.METRICS
        if m.card and values.get(m.key) is not None and math.isfinite(values[m.key])
    ]  # an AE has no KL or ELBO
    body = "\n".join(rows) if rows else "none computed."
    return f"{head}\n\n{TEST_HEADING} (evaluate stage):\n\n{body}" if head else f"{TEST_HEADING}:\n\n{body}"
