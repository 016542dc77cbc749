"""Stage `report`: figures, reports/index.html (self-contained), reports/summary.md, reports/curves/ (dvc plots).

The HTML goes to the MLflow parent run, each model's figures to its child run.
"""

from pathlib import Path

from aevae.config import load_params, resolve_sweep
from aevae.cpus import use_available_cpus
from aevae.errors import run_cli
from aevae.ops.tracking import log_report
from aevae.progress import Progress
from aevae.report import build

OUT = Path("reports")


def main() -> None:
    params = load_params()
    p = params.evaluate
    use_available_cpus()  # the figures' decoders, t-SNE and PCA run in this process
    # Each group's figures are drawn by its model of the first seed; tables and charts are over every seed.
    settings = build.ReportSettings(seed=p.seed, figure_seed=params.sweep.seeds[0])
    groups = dict.fromkeys(spec.group for spec in resolve_sweep(params))
    progress = Progress("report", len(groups), "groups")
    progress.line("reading the study, models and test split")
    result = build.make_report(
        build.ReportPaths(out=OUT),
        settings,
        evaluate_params=p,
        on_model=lambda done, total, name: progress.update(done, f"{name}'s figures"),
        on_step=progress.line,
    )
    figures_by_model = build.write_report(result, OUT)
    progress.line("logging the report and figures to MLflow")
    log_report(OUT, figures_by_model)
    print(
        f"report: {OUT / 'index.html'} ({len(result.figures)} figures, {len(result.html) / 1e6:.1f} MB), "
        f"{OUT / 'summary.md'}"
    )


if __name__ == "__main__":
    run_cli(main)
