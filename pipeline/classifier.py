"""Stage `classifier`: the reference CNN that scores images -> classifier/model.pt, metrics/classifier.json.

It trains until validation accuracy stops improving (params `classifier:`), printing a progress line every
few seconds with an ETA (an upper bound: early stopping may end it sooner). Unlabelled data has no classes to
learn: the stage trains nothing and writes why, to classifier/skipped.json (so the stage's output exists for
DVC) and to metrics/classifier.json (accuracies null).
"""

from pathlib import Path

from aevae import atomic
from aevae.config import load_params
from aevae.cpus import use_available_cpus
from aevae.data import NO_LABELS, manifest_classes, manifest_labelled, manifest_shape
from aevae.data.prepared import load_manifest, load_split
from aevae.errors import run_cli
from aevae.evaluation import classifier
from aevae.progress import Progress, say

OUT = Path("classifier/model.pt")
SKIPPED = Path("classifier/skipped.json")
METRICS = Path("metrics/classifier.json")


def skip(reason: str) -> None:
    """Train nothing: write why in the stage's outputs (the accuracies null, no epochs)."""
    atomic.write_json(SKIPPED, {"trained": False, "reason": reason})
    atomic.write_json(
        METRICS, {"test/accuracy": None, "val/accuracy": None, "epochs": 0, "best_epoch": None, "reason": reason}
    )
    say("classifier", f"no reference classifier: {reason} (the metrics it scores are null)")


def main() -> None:
    p = load_params().classifier
    manifest = load_manifest()
    if not manifest_labelled(manifest):
        skip(NO_LABELS)
        return
    threads = use_available_cpus()  # torch sizes itself by the machine, not the CPUs this process may use
    train, val, test = load_split("train"), load_split("val"), load_split("test")
    config = classifier.ClassifierConfig(manifest_shape(manifest), len(manifest_classes(manifest).names))
    shift = classifier.augment_shift(p.augment, len(train.images), side=min(config.image_shape[1:]))
    steps = classifier.steps_per_epoch(len(train.images), p.batch_size)
    epochs = classifier.planned_epochs(p, len(train.images))
    progress = Progress("classifier", epochs * steps, "steps")
    progress.line(
        f"training on {len(train.images)} images with {threads} torch threads, at most {epochs} epochs of"
        f" {steps} steps, "
        f"patience {p.patience} (margin {p.min_delta}), random shift {shift} px"
    )

    def on_epoch(rec: dict) -> None:
        progress.update(
            rec["epoch"] * steps, f"epoch {rec['epoch']}: val accuracy {rec['val/accuracy']:.4f}", force=True
        )

    result = classifier.train(
        train.images,
        train.labels,
        val.images,
        val.labels,
        p,
        shift=shift,
        config=config,
        on_step=lambda epoch, step: progress.update((epoch - 1) * steps + step, f"epoch {epoch}"),
        on_epoch=on_epoch,
    )
    accuracy = result.model.accuracy(test.images, test.labels)
    best = result.history[result.best_epoch - 1]
    classifier.save(OUT, result.model, {"test_accuracy": accuracy})
    atomic.write_json(
        METRICS,
        {
            "test/accuracy": accuracy,
            "val/accuracy": best["val/accuracy"],
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
        },
    )
    progress.done(
        f"test accuracy {accuracy:.4f}, best of {len(result.history)} epochs: {result.best_epoch} "
        f"(stopped: {result.stopped})"
    )


if __name__ == "__main__":
    run_cli(main)
