"""The report stage on a small real run, its figures, and its MLflow logging.

A throwaway project gets real prepared digits (the bundled 5,000, split as the
prepare stage splits them), two tiny models trained in-process for 2 epochs,
a 1-epoch reference classifier and the evaluate stage's metrics files; then
pipeline/report.py runs there as its __main__ (in this process, which has torch
and matplotlib imported already: ~10 s less than a fresh one on a busy 2-core
machine), and the outputs are checked as a reader would meet them: every figure
decodes, the page embeds every image and needs no other file, and the summary
lists every model. (The end-to-end tests that run `dvc repro` run this stage too.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import runpy

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from aevae import atomic
from aevae.config import EvaluateParams, ModelParams, RunSpec, TrainParams
from aevae.core import model_store
from aevae.core.training import train_model
from aevae.data import CLASS_NAMES
from aevae.data.prepare import split, write_prepared
from aevae.data.prepared import load_split
from aevae.data.sources import from_bundled
from aevae.evaluation import metrics as M
from aevae.evaluation import study
from aevae.report import build, figures
from conftest import cached_classifier
from project import make_project

MODELS = {"ae": {"kind": "ae"}, "vae-beta1": {"kind": "vae", "beta": 1.0}}
PER_MODEL = ("latent", "manifold", "reconstructions", "prior-samples", "gmm-samples", "interpolation", "training")
SWEEP = ("latent-all", "rate-distortion", *(f"metrics-{g.slug}" for g in build.GROUPS))
FAST = EvaluateParams(seed=0, n_prior_samples=200, iw_samples=4, interp_pairs=4, interp_steps=6)
PARAMS = {
    "data": {"source": "bundled", "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0},
    "model": {"hidden": [64]},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.002},
    "sweep": {"latent_dims": [2], "seeds": [0], "models": [{"name": n, "model": m} for n, m in MODELS.items()]},
    "evaluate": FAST.model_dump(),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small work on a busy 2-core machine: one thread beats spinning ones (PCA's SVD: 1 s instead of 25 s).

    Torch, BLAS and OpenMP pools are process-wide: restored after the module.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def _json_safe(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, _one_thread, request):
    """A project holding everything the report stage reads, and the stage's finished run in it."""
    root = make_project(tmp_path_factory.mktemp("report") / "p", PARAMS, git=False)
    raw = from_bundled()
    manifest = write_prepared(root / "data" / "prepared", split(raw, 0.1, 0.2, 0), raw, "mnist")
    train, val, test = (load_split(s, root / "data" / "prepared") for s in ("train", "val", "test"))
    for name, overrides in MODELS.items():
        spec = RunSpec(
            name=name,
            model=ModelParams(hidden=[64], latent_dim=2, **overrides),
            train=TrainParams(epochs=2, batch_size=128, lr=2e-3, seed=0),
        )
        result = train_model(spec, train.images, val.images)
        model_store.save(
            root / "models",
            spec,
            result.model.state_dict(),
            result.history,
            {"data_sha256": manifest["data_sha256"]},
            image_shape=(1, 28, 28),
        )
    scorer = cached_classifier(request.config, train.images, train.labels, max_epochs=1, seed=0)
    accuracy = scorer.accuracy(test.images, test.labels)
    atomic.write_json(root / "metrics" / "classifier.json", {"test/accuracy": accuracy})
    results, specs = {}, []
    pca = M.pca_baseline(train.images, test.images, 2)
    for name in MODELS:
        model, spec = model_store.load(name, root / "models")
        evaluation = M.evaluate(model, train.images, train.labels, test.images, test.labels, scorer, FAST)
        M.save_arrays(root / "metrics" / "arrays" / f"{name}.npz", evaluation)  # as the evaluate stage does
        results[name] = {**evaluation.metrics, **pca}
        atomic.write_json(root / "metrics" / "models" / f"{name}.json", _json_safe(results[name]))
        specs.append(spec)
    records = study.from_results(results, specs)  # as the evaluate stage writes them: one seed, no intervals
    atomic.write_json(root / "metrics" / "summary.json", study.aggregate(records))
    atomic.write_json(root / "metrics" / "claims.json", study.claims_file(records))
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(io.StringIO()) as stderr:
        mp.chdir(root)  # the stage reads and writes relative to the project root, as under `dvc repro`
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        runpy.run_path(str(root / "pipeline" / "report.py"), run_name="__main__")
    return {"root": root, "stderr": stderr.getvalue(), "manifest": manifest, "accuracy": accuracy}


def _image_ok(data: bytes) -> tuple[int, int]:
    """Decode every pixel with Pillow (a truncated or corrupt file raises); return the image's size."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP" and image.mode == "RGB"
    image.load()
    return image.size


def test_every_figure_is_a_valid_webp(run):
    figures = run["root"] / "reports" / "figures"
    expected = {f"{m}-{kind}.webp" for m in MODELS for kind in PER_MODEL} | {f"{s}.webp" for s in SWEEP}
    assert {p.name for p in figures.iterdir()} == expected
    for path in figures.iterdir():
        width, height = _image_ok(path.read_bytes())
        assert 300 <= width <= 1500 and 200 <= height <= 1500, f"{path.name} is {width}x{height}"


def test_page_is_self_contained_and_embeds_every_figure(run):
    page = (run["root"] / "reports" / "index.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/webp;base64,") for s in sources)
    assert not re.search(r'<(link|script)\b|url\(|\ssrc="(?!data:)|href="(?!#)', page), "refers to another file"
    embedded = build.embedded_images(page)
    assert len(embedded) == len(sources)
    for data in embedded:
        _image_ok(data)
    files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (run["root"] / "reports" / "figures").iterdir()}
    assert {hashlib.sha256(d).hexdigest() for d in embedded} == files  # the page shows exactly the figure files
    for ref in re.findall(r'data-file="([^"]+)"', page):
        assert (run["root"] / "reports" / ref).is_file()


# The goal of issue 24: at most 5 MB of page for the default sweep's 74 figures at full size (~68 kB a figure).
MAX_PAGE_BYTES_PER_FIGURE = 68_000


def test_page_stays_within_its_size_per_figure(run):
    page = (run["root"] / "reports" / "index.html").read_bytes()
    n = len(build.embedded_images(page.decode()))
    assert len(page) <= n * MAX_PAGE_BYTES_PER_FIGURE, f"{len(page) / 1e6:.2f} MB for {n} figures"


def test_same_inputs_give_the_same_page_and_figures_byte_for_byte(run, monkeypatch):
    """Drawn and encoded again in this process from the same inputs, as pipeline/report.py calls it."""
    monkeypatch.chdir(run["root"])
    again = build.make_report(
        build.ReportPaths(), build.ReportSettings(seed=FAST.seed, figure_seed=0), evaluate_params=FAST
    )
    assert again.html == (run["root"] / "reports" / "index.html").read_text()
    for f in again.figures:
        assert f.image == (run["root"] / "reports" / "figures" / f.file).read_bytes(), f.file


def test_page_states_provenance_and_summarises_every_model(run):
    page = (run["root"] / "reports" / "index.html").read_text()
    table = re.search(r'<table id="summary-table">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r'<a href="#model-([^"]+)">', table) == list(MODELS)  # AE first, then VAEs by beta
    assert "PCA baseline" in table and table.count('class="best"') >= 1
    for name in MODELS:
        assert f'id="model-{name}"' in page  # each row links to the model's own figures
    manifest = run["manifest"]
    assert manifest["data_sha256"] in page and "bundled" in page
    assert f"{run['accuracy']:.2%}" in page  # the reference classifier's test accuracy
    assert re.search(r"<code>([0-9a-f]{40}|unknown)</code><br>dirty: (yes|no|unknown)", page)  # commit + dirty flag
    for claim in build.CLAIMS:
        assert f'id="claim-{claim}"' in page
    md = (run["root"] / "reports" / "summary.md").read_text().split("## Summary")[1]
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == [*MODELS, "PCA baseline"]
    assert "n/a" in rows[0]  # the AE has no KL: written as n/a, not nan


def test_page_reads_prior_against_gmm_samples_for_every_model(run):
    """The generation section's sentence: each model's prior/ score beside its gmm/ twin, from summary.json."""
    page = (run["root"] / "reports" / "index.html").read_text()
    summary = json.loads((run["root"] / "metrics" / "summary.json").read_text())
    sentence = re.search(r"Decoder or density\?(.*?)</p>", page, re.S).group(1)
    for name in MODELS:
        fid = " → <b>".join(format(summary[name][f"{data}/classifier_fid"]["mean"], ".1f") for data in ("prior", "gmm"))
        assert f"<b>{name}</b> classifier-FID {fid}</b>" in sentence
    assert page.index("Decoder or density?") < page.index('id="claim-reparam"')  # under the holes claim


def test_stage_writes_curves_for_dvc_plots_and_warns_without_a_run(run):
    root = run["root"]
    for name in MODELS:
        assert (root / "reports" / "curves" / f"{name}.csv").read_text() == (
            root / "models" / name / "history.csv"
        ).read_text()
    warnings = [line for line in run["stderr"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "mlflow_run.json" in warnings[0]
    assert not (root / "mlflow.db").exists()
    assert [p.name for p in (root / "reports").iterdir() if p.name.startswith(".")] == []  # no temp leftovers


# ------------------------------------------------------------ figure units


def _spec(name: str, kind: str, latent_dim: int) -> RunSpec:
    return RunSpec(name=name, model=ModelParams(kind=kind, beta=1.0, latent_dim=latent_dim), train=TrainParams())


def test_latent_figures_for_codes_of_one_and_more_than_two_dimensions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    codes = rng.standard_normal((300, 6)) + labels[:, None] * 0.5  # (N, 6)
    info = _spec("vae-z6", "vae", 6)
    width, _ = _image_ok(figures.encode(figures.latent_scatter(info, codes, labels)))  # PCA beside t-SNE
    assert width > 900
    ae2, vae1 = _spec("ae", "ae", 2), _spec("vae-z1", "vae", 1)
    _image_ok(figures.encode(figures.latent_scatter(vae1, codes[:, :1], labels)))
    _image_ok(
        figures.encode(figures.latent_side_by_side([ae2, info, vae1], [codes[:, :2] * 5, codes, codes[:, :1]], labels))
    )


def test_manifold_grid_uses_quantiles_for_the_vae_and_the_code_range_for_the_ae():
    codes = np.random.default_rng(0).uniform(-8, 3, size=(500, 2))
    z1, z2, how = figures.manifold_grid(_spec("v", "vae", 2), codes, n=11)
    assert z1[5] == pytest.approx(0.0, abs=1e-12) and z1[-1] == pytest.approx(2.576, abs=1e-3) and "quantile" in how
    z1, _, how = figures.manifold_grid(_spec("a", "ae", 2), codes, n=11)
    assert -8 <= z1[0] < -7.8 and 2.8 < z1[-1] <= 3 and "percentile" in how


def test_best_value_per_column_ignores_missing_values_and_direction_free_metrics():
    values = {"a": {"x": 1.0, "y": float("nan")}, "b": {"x": 2.0, "y": 3.0}, "c": {"x": 1.0, "y": 5.0}}
    assert build._best(values, "x", "min") == {"a", "c"}
    assert build._best(values, "y", "max") == {"c"}
    assert build._best(values, "x", None) == set()


# ------------------------------------------------- intervals and verdicts


STUDY_MEMBERS = {
    "ae": {"kind": "ae"},
    "ae-linear": {"kind": "ae", "activation": "linear"},
    "vae-beta0": {"kind": "vae", "beta": 0.0},
    "vae-beta1": {"kind": "vae", "beta": 1.0},
}
GIT = {"commit": "0" * 40, "dirty": False, "changed": []}


def _study(tmp_path, seeds: tuple[int, ...], dims: tuple[int, ...] = (2, 16)):
    """A study as the evaluate stage writes it (summary.json, claims.json) from made-up per-seed metrics; and
    one spec per group, named by the group, as the report lays them out."""
    from aevae.metric_registry import BASELINES, KEYS

    rng = np.random.default_rng(0)
    specs, results = [], {}
    for member, overrides in STUDY_MEMBERS.items():
        for dim in dims:
            for seed in seeds:
                spec = RunSpec(
                    name=f"{member}-z{dim}-s{seed}",
                    member=member,
                    group=f"{member}-z{dim}",
                    model=ModelParams(latent_dim=dim, **overrides),
                    train=TrainParams(seed=seed),
                )
                specs.append(spec)
                results[spec.name] = {k: float(rng.uniform(0.01, 1.0)) for k in KEYS + tuple(b.key for b in BASELINES)}
    records = study.from_results(results, specs)
    atomic.write_json(tmp_path / "summary.json", study.aggregate(records))
    atomic.write_json(tmp_path / "claims.json", study.claims_file(records))
    groups = [build._group_spec(s) for s in specs if s.seed == seeds[0]]
    return build.read_study(tmp_path / "summary.json", tmp_path / "claims.json"), groups


def _render(tmp_path, seeds: tuple[int, ...], dataset: str = "mnist") -> tuple[str, str]:
    results, groups = _study(tmp_path, seeds)
    return build.render(
        groups,
        results,
        [],
        {"test/accuracy": 0.9},
        {"dataset": dataset, "image_shape": [1, 28, 28]},
        GIT,
        {},
        {g.name: list(seeds) for g in groups},
        seeds[0],
        CLASS_NAMES[dataset],
    )


def test_report_opens_with_a_verdict_per_claim_and_latent_size_and_shows_intervals(tmp_path):
    page, md = _render(tmp_path, seeds=(0, 1, 2))
    verdicts = re.search(r'<table id="verdicts">(.*?)</table>', page, re.S)
    assert verdicts.start() < page.index('id="summary-table"')  # the page opens with the verdicts
    header, body = verdicts.group(1).split("</thead>")
    assert re.findall(r"<th[^>]*>latent (\d+)</th>", header) == ["2", "16"]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    assert [re.search(r'href="#claim-([^"]+)"', r).group(1) for r in rows] == [c.id for c in study.CLAIMS]
    for row in rows:  # a badge per latent size, its comparisons on hover
        assert len(re.findall(r'class="badge v-(supported|contradicted|inconclusive|untestable)"', row)) == 2
    assert "(within ±5%)" in verdicts.group(1) and "untestable" in verdicts.group(1)  # hover text; definitions
    for claim in study.CLAIMS:  # each claim's section repeats its verdicts
        section = page.split(f'<h2 id="claim-{claim.id}">')[1].split("<h2")[0]
        assert section.count('class="verdictbox"') == 2
    summary = re.search(r'<table id="summary-table">(.*?)</table>', page, re.S).group(1)
    assert "mean ± 95% CI half-width (Student t over 3 seeds)" in summary
    assert re.search(r"<td[^>]*>\d\.\d{4} ± \d\.\d{4}</td>", summary)  # MSE per pixel: mean ± half-width
    assert "## Verdicts" in md and "Student t over 3 seeds" in md
    md_rows = [line for line in md.split("## Summary")[0].splitlines() if line.startswith("| ") and ": " in line]
    assert len(md_rows) == len(study.CLAIMS)
    assert all(len(re.split(r"(?<!\\)\|", row)[1:-1]) == 3 for row in md_rows)  # claim + 2 sizes; q(z\|x) escaped
    assert sum(
        line.startswith("| ")
        and ("supported" in line or "inconclusive" in line or "untestable" in line or "contradicted" in line)
        for line in md.splitlines()
    ) == len(study.CLAIMS)


def test_one_seed_says_so_and_draws_no_interval(tmp_path):
    page, md = _render(tmp_path, seeds=(0,))
    summary = re.search(r'<table id="summary-table">(.*?)</table>', page, re.S).group(1)
    assert "one seed (no interval)" in summary and " ± " not in summary
    assert "One seed gives no interval" in page and "one seed (no interval)" in md


def test_bars_draw_the_interval_as_error_bars_and_none_for_one_seed():
    from matplotlib.container import ErrorbarContainer

    from aevae.metric_registry import by_key

    m = by_key("test/recon_mse_per_pixel")
    infos = [_spec("a", "ae", 2), _spec("b", "vae", 2)]
    means = {"a": {m.key: 0.05}, "b": {m.key: 0.06}}
    fig = figures.metric_bars("t", [m], infos, means, {"a": {m.key: (0.04, 0.06)}, "b": {m.key: (0.055, 0.065)}})
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    extents = sorted(tuple(np.round(seg[:, 1], 6)) for c in bars for seg in c.lines[2][0].get_segments())
    assert extents == [(0.04, 0.06), (0.055, 0.065)]
    fig = figures.metric_bars("t", [m], infos, means, {n: {m.key: (math.nan, math.nan)} for n in means})
    assert not [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]


def test_fashion_mnist_figures_and_text_name_the_classes(tmp_path):
    fashion = CLASS_NAMES["fashion-mnist"]
    labels = np.repeat(np.arange(10), 20)
    codes = np.random.default_rng(0).standard_normal((200, 2)) + labels[:, None]  # (N, 2)
    fig = figures.latent_scatter(_spec("vae", "vae", 2), codes, labels, classes=fashion)
    legend = fig.axes[0].get_legend()
    assert legend.get_title().get_text() == "class"
    assert [t.get_text() for t in legend.get_texts()][:10] == list(fashion.names)
    images = np.zeros((10, 28, 28))
    fig = figures.reconstructions(_spec("ae", "ae", 2), images, images, np.arange(10), classes=fashion)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(fashion.names)
    assert "class (label of the input)" == fig.axes[0].get_xlabel()
    page, _ = _render(tmp_path, seeds=(0, 1), dataset="fashion-mnist")
    assert "digit" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S).lower()


# --------------------------------------------------------------- tracking


def test_log_report_files_the_page_under_the_parent_and_figures_under_each_child(tmp_path, monkeypatch, capsys):
    from aevae.ops import mlflow_store, tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "index.html").write_text("<html></html>")
    (tmp_path / "reports" / "summary.md").write_text("| model |\n")
    figure = tmp_path / "reports" / "figures" / "ae-latent.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")

    tracking.log_report(tmp_path / "reports", {"ae": [figure]})  # no run recorded: one warning, nothing logged
    assert "warning:" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()

    client = mlflow_store.client()
    exp = mlflow_store.experiment_id(client)
    parent = client.create_run(exp).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    # The run recorded the weights it trained: only a child whose model file is still those weights is logged to.
    (tmp_path / "models" / "ae").mkdir(parents=True)
    (tmp_path / "models" / "ae" / "model.pt").write_bytes(b"weights")
    (tmp_path / "models" / "stale").mkdir(parents=True)
    (tmp_path / "models" / "stale" / "model.pt").write_bytes(b"retrained since")
    stale = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    atomic.write_json(
        tracking.RUN_FILE,
        {
            "tracking_uri": mlflow_store.tracking_uri(),
            "parent_run_id": parent,
            "experiment_id": exp,
            "children": {"ae": child, "stale": stale},
            "model_sha256": {
                "ae": hashlib.sha256(b"weights").hexdigest(),
                "stale": hashlib.sha256(b"old weights").hexdigest(),
            },
        },
    )
    tracking.log_report(tmp_path / "reports", {"ae": [figure], "stale": [figure], "not-in-this-run": [figure]})
    # The report also shows `stale`, which that run did not train: the pipeline-wide page is not its to hold.
    assert client.list_artifacts(parent, "report") == []
    assert "only ae of models/" in capsys.readouterr().err
    assert [f.path for f in client.list_artifacts(child, "figures")] == ["figures/ae-latent.png"]
    assert client.list_artifacts(stale, "figures") == [], "weights retrained since the run: not its figures"
    json.loads(tracking.RUN_FILE.read_text())  # left as it was
