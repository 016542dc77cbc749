"""The report's size: the figures as WebP (aevae.report.figures.encode) against the PNGs the report embedded
before, side by side in one process on the same figures; appends a section to bench/RESULTS.md.

    python bench/report_size.py                   # the project here (the bundled default's outputs): ~2 min
    python bench/report_size.py --project DIR     # another one, e.g. bench/pipeline_full_size.py --keep DIR

It needs the report stage's inputs in the project (`dvc repro evaluate` run there). Two measurements:

1. The whole report (build.make_report: every figure drawn, the page rendered) once, each figure encoded both
   ways, alternately first: page MB, each kind of figure's bytes, the seconds savefig + encoding took.
2. The figures whose bytes grow with the test split (the scatter plots: `ReportSettings.max_scatter` codes
   drawn; a bundled run has 1,000 test images, the full MNIST 10,000, of which 5,000 are drawn), redrawn at
   5,000 codes from the bundled digits (train + val + test, encoded by the same models): the page at full
   size estimated as the page of (1) with those figures' bytes replaced by theirs.
Goal (issue 24): a page of at most 5 MB at full size.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import REPO, append_section, fmt_s, log, machine_info, table  # noqa: E402

GOAL_MB = 5.0
PICTURES = {"manifold", "reconstructions", "prior-samples", "gmm-samples", "interpolation"}  # encode(picture=True)
FULL_SIZE_SCATTER = 5_000  # ReportSettings.max_scatter: what a 10,000-image test split draws


def png_baseline(fig, picture: bool = False) -> bytes:
    """The report's encoding before WebP: one PNG per figure, as figures.png wrote it."""
    import matplotlib.pyplot as plt

    from aevae.report import figures

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=figures.DPI, bbox_inches="tight", pad_inches=0.12, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _kind(slug: str) -> str:
    """ "vae-beta1-z2-s0-prior-samples" -> "prior-samples"; "metrics-gmm" -> "metrics (bar charts)"."""
    if slug.startswith("metrics-"):
        return "metrics (bar charts)"
    return re.sub(r"^.*-z\d+-s\d+-", "", slug)


class BothEncoders:
    """Stands in for figures.encode: encodes each figure it is given as PNG (the baseline) and as WebP, the one
    first on odd figures and the other on even ones, so neither always meets a cold cache; returns the WebP."""

    def __init__(self, webp):
        self.webp = webp
        self.seconds = {"png": 0.0, "webp": 0.0}
        self.png_bytes: dict[bytes, int] = {}  # WebP bytes -> that figure's PNG size
        self.calls = 0

    def _timed(self, name: str, encoder, fig, picture: bool) -> bytes:
        t = time.perf_counter()
        data = encoder(fig, picture)
        self.seconds[name] += time.perf_counter() - t
        return data

    def __call__(self, fig, picture: bool = False) -> bytes:
        # Each encoder runs savefig (the Agg draw included) on the same figure; plt.close does not stop a second one.
        self.calls += 1
        order = [("png", png_baseline), ("webp", self.webp)]
        out = {}
        for name, enc in order if self.calls % 2 else order[::-1]:
            out[name] = self._timed(name, enc, fig, picture)
        self.png_bytes[out["webp"]] = len(out["png"])
        return out["webp"]


def section_page(project: Path) -> tuple[list[str], object]:
    """Section 1's lines, and the report (section 2 starts from it)."""
    from aevae.config import load_params
    from aevae.report import build, figures

    params = load_params(project / "params.yaml")
    settings = build.ReportSettings(seed=params.evaluate.seed, figure_seed=params.sweep.seeds[0])
    both = BothEncoders(figures.encode)
    log("page: every figure drawn once, encoded as PNG and as WebP")
    figures.encode = both
    cwd = Path.cwd()
    os.chdir(project)  # the report reads its inputs relative to the project root, as under `dvc repro`
    try:
        t0 = time.perf_counter()
        report = build.make_report(build.ReportPaths(), settings, evaluate_params=params.evaluate)
        wall = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
        figures.encode = both.webp
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # kind -> [figures, PNG bytes, WebP bytes]
    for f in report.figures:
        row = sizes[_kind(f.slug)]
        row[0] += 1
        row[1] += both.png_bytes[f.image]
        row[2] += len(f.image)
    rows = [
        [
            k,
            n,
            "lossy" if k in PICTURES else "lossless, 256-colour palette",
            f"{png / 1e3:.0f}",
            f"{webp / 1e3:.0f}",
            f"{png / webp:.2f}x",
        ]
        for k, (n, png, webp) in sorted(sizes.items(), key=lambda kv: -kv[1][1])
    ]
    page = len(report.html.encode())
    png_page = page + 4 * sum(v[1] - v[2] for v in sizes.values()) / 3  # base64 of the PNGs instead
    t_png, t_webp = both.seconds["png"], both.seconds["webp"]
    stage_png, stage_webp = wall - t_webp, wall - t_png  # the build as it would run with one encoder
    lines = [
        f"The report of the project in {project} ({len(report.figures)} figures) built once by `build.make_report`, "
        "each figure drawn once and encoded twice, alternately first: with the PNG encoding the report had "
        "(bench/report_size.png_baseline) and with `figures.encode` (WebP: charts lossless on a 256-colour "
        f"palette, grids of images lossy at quality {figures.PICTURE_QUALITY}). Sizes are the encoded figures; "
        "the page holds them as base64 (4/3 of that). The PNG page's size is the WebP page's with the "
        "PNGs' base64 instead.",
        "",
        *table(
            ["figure kind", "figures", "WebP", "PNG kB", "WebP kB", "PNG / WebP"],
            rows
            + [
                [
                    "**page (index.html)**",
                    len(report.figures),
                    "",
                    f"{png_page / 1e3:.0f}",
                    f"{page / 1e3:.0f}",
                    f"**{png_page / page:.2f}x**",
                ]
            ],
        ),
        "",
        *table(
            ["", "PNG (before)", "WebP (now)", "before / now"],
            [
                ["savefig + encoding, all figures, s", fmt_s(t_png), fmt_s(t_webp), f"{t_png / t_webp:.2f}"],
                [
                    "make_report with that encoder alone, s",
                    fmt_s(stage_png),
                    fmt_s(stage_webp),
                    f"{stage_png / stage_webp:.2f}",
                ],
            ],
        ),
    ]
    return lines, report


def section_full_size(project: Path, after) -> list[str]:
    """Redraw the scatter figures at FULL_SIZE_SCATTER codes; the page's estimate at full size, MB."""
    import torch

    from aevae.core import model_store
    from aevae.core.models import as_images
    from aevae.data import manifest_classes
    from aevae.data.prepared import load_manifest, load_split
    from aevae.evaluation import metrics
    from aevae.report import build, figures

    prepared = project / "data" / "prepared"
    splits = [load_split(s, prepared) for s in ("train", "val", "test")]
    drawn = min(len(splits[2].labels), build.ReportSettings.max_scatter)  # what section 1's scatters drew
    images = np.concatenate([s.images for s in splits])[:FULL_SIZE_SCATTER]
    labels = np.concatenate([s.labels for s in splits]).astype(np.int64)[:FULL_SIZE_SCATTER]
    classes = manifest_classes(load_manifest(prepared))
    scatter = {f.slug: f for f in after.figures if f.kind in ("latent", "latent-all")}
    specs, codes = [], []
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # kind -> [now, PNG at 5,000, WebP at 5,000]
    with torch.no_grad():
        for f in (f for f in after.figures if f.kind == "latent"):
            model, spec = model_store.load(f.spec.name, project / "models")
            z = metrics.encode(model, as_images(images))[0]  # posterior means, as the evaluate stage's test codes
            codes.append(z.cpu().numpy())
            specs.append(build._group_spec(spec))
            for encoder, col in ((png_baseline, 1), (figures.encode, 2)):
                fig = figures.latent_scatter(spec, codes[-1], labels, classes=classes)
                sizes["latent"][col] += len(encoder(fig))
            sizes["latent"][0] += len(f.image)
    order = sorted(range(len(specs)), key=lambda i: build._order(specs[i]))
    for encoder, col in ((png_baseline, 1), (figures.encode, 2)):
        fig = figures.latent_side_by_side([specs[i] for i in order], [codes[i] for i in order], labels, classes=classes)
        sizes["latent-all"][col] += len(encoder(fig))
    sizes["latent-all"][0] = len(scatter["latent-all"].image)
    page = len(after.html.encode())
    grown = sum(v[2] - v[0] for v in sizes.values())
    estimate = (page + 4 * grown / 3) / 1e6
    lines = [
        f"The scatter plots redrawn at {FULL_SIZE_SCATTER:,} codes (what a full-MNIST run draws of its 10,000 test "
        "images; the bundled run draws its 1,000) from the bundled digits, encoded by the same models; every other "
        "figure draws a fixed number of images whatever the data's size. Page at full size, estimated: the page above "
        "with these figures' base64 grown by the difference.",
        "",
        *table(
            ["figure kind", f"WebP kB at {drawn:,} (section 1)", "PNG kB at 5,000", "WebP kB at 5,000"],
            [[k, f"{v[0] / 1e3:.0f}", f"{v[1] / 1e3:.0f}", f"{v[2] / 1e3:.0f}"] for k, v in sizes.items()],
        ),
        "",
        f"Page at full size, estimated: **{estimate:.2f} MB** (goal <= {GOAL_MB:g} MB: "
        f"{'met' if estimate <= GOAL_MB else '**missed**'}).",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=REPO, help="a project with the report stage's inputs")
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as the report stage runs on a 2-core machine beside other work
    t0 = time.monotonic()
    start = os.getloadavg()
    page_lines, after = section_page(args.project.resolve())
    full_lines = section_full_size(args.project.resolve(), after)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    end = os.getloadavg()
    lines = [
        f"## {now} — report size (`python bench/report_size.py`)",
        "",
        *machine_info(1),
        f"- Load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in start)}, at end "
        f"{'/'.join(f'{x:.1f}' for x in end)}; total benchmark time {time.monotonic() - t0:.0f} s",
        "",
        "### 1. The page, PNG against WebP",
        "",
        *page_lines,
        "",
        "### 2. At full size",
        "",
        *full_lines,
        "",
    ]
    append_section(args.out, lines)


if __name__ == "__main__":
    main()
