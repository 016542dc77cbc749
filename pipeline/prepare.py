"""Stage `prepare`: read the dataset from its source, write data/prepared/."""

from pathlib import Path

from aevae.config import load_params
from aevae.data.prepare import dataset_classes, split, write_prepared
from aevae.data.prepared import PREPARED_DIR
from aevae.data.sources import load_raw
from aevae.errors import run_cli
from aevae.progress import Progress


def main() -> None:
    p = load_params().data
    # Three steps of a few seconds each even on the full 70k images: a line after each is enough.
    progress = Progress("prepare", 3, "steps", every=0.0)
    progress.line(f"reading {p.dataset} (data.source {p.source})")
    raw = load_raw(
        p.dataset,
        p.source,
        Path(p.idx_dir),
        Path(p.download_dir),
        Path(p.path) if p.path else None,
        p.size,
        p.channels,
        p.background,
    )
    n_test = 0 if raw.test_images is None else len(raw.test_images)
    progress.update(1, f"read {len(raw.train_images) + n_test} images from {raw.source}")
    dataset_classes(raw, p.dataset)  # a label the dataset has no class for is the error, not the split it upsets
    splits = split(raw, p.val_fraction, p.test_fraction, p.seed)
    progress.update(2, "split")
    manifest = write_prepared(PREPARED_DIR, splits, raw, p.dataset)
    progress.update(3, "written")
    counts = ", ".join(f"{s} {c['total']}" for s, c in manifest["counts"].items())
    progress.done(f"prepared {p.dataset} from {manifest['source']}: {counts}")


if __name__ == "__main__":
    run_cli(main)
