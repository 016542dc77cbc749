"""Stage `classifier`: the reference CNN that scores images -> classifier/model.pt, metrics/classifier.json."""

from pathlib import Path

from aevae import atomic, classifier
from aevae.config import load_params
from aevae.data.prepared import load_split
from aevae.errors import run_cli

OUT = Path("classifier/model.pt")
METRICS = Path("metrics/classifier.json")


def main() -> None:
    p = load_params().classifier
    train, val, test = load_split("train"), load_split("val"), load_split("test")
    result = classifier.train(train.images, train.labels, val.images, val.labels,
                              epochs=p.epochs, seed=p.seed, batch_size=p.batch_size, lr=p.lr)
    accuracy = result.model.accuracy(test.images, test.labels)
    classifier.save(OUT, result.model, {"test_accuracy": accuracy})
    atomic.write_json(METRICS, {"test/accuracy": accuracy, "val/accuracy": result.history[-1]["val/accuracy"]})
    print(f"reference classifier: test accuracy {accuracy:.4f} after {p.epochs} epochs")


if __name__ == "__main__":
    run_cli(main)
