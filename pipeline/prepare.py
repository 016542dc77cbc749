"""Stage `prepare`: read the dataset from its source, write data/prepared/."""

from pathlib import Path

from aevae.config import load_params
from aevae.data.prepare import split, write_prepared
from aevae.data.prepared import PREPARED_DIR
from aevae.data.sources import load_raw
from aevae.errors import run_cli


def main() -> None:
    p = load_params().data
    raw = load_raw(p.dataset, p.source, Path(p.idx_dir), Path(p.download_dir))
    splits = split(raw, p.val_fraction, p.test_fraction, p.seed)
    manifest = write_prepared(PREPARED_DIR, splits, raw, p.dataset)
    counts = ", ".join(f"{s} {c['total']}" for s, c in manifest["counts"].items())
    print(f"prepared {p.dataset} from {manifest['source']}: {counts}")


if __name__ == "__main__":
    run_cli(main)
