"""`make retrain` (`python -m aevae.ops.retrain [--force]`): rerun the pipeline when the data or the code
changed, and let a newly trained model take the `champion` alias only when it beats the current one.

One run, for a scheduler (cron, a systemd timer, a CI schedule):

1. takes logs/retrain.lock, so two scheduled runs never overlap;
2. runs `dvc repro prepare` to know the data, then compares a fingerprint (data sha256, a digest of
   the pipeline's code: src/, pipeline/, dvc.yaml, requirements.lock, and the validated params) with
   the one the last retrain recorded on each registered model: unchanged means "nothing to do"
   (unless --force);
3. runs the pipeline (`dvc repro --no-run-cache`: a stage whose inputs changed really runs, so the
   train stage registers a new version instead of restoring models/ of an older, already registered run);
4. per registered model (one per group: member, plus -z<size>; one version per seed): the challenger
   is the version this pipeline run registered for the sweep's first seed (sweep.seeds[0]); the
   champion's weights are re-evaluated on the current test split with the current classifier, so
   both sides are measured the same way; the challenger's recipe must pass every criterion of
   params.yaml `retrain.<kind>` on its worse 95% bound over seeds (metrics/summary.json: the upper
   bound for a metric to minimise, the lower for one to maximise; with one seed, its value), so a
   lucky seed alone never takes `champion`;
5. decides every alias first, then applies them (undoing what was applied if the server fails):
   a winner takes `champion` (the first version of a model always does), a loser gets `challenger`;
6. records the decision and its numbers as tags on the version and in reports/retrain/<time>.json.

The state lives in the registry (a tag on each registered model), so a CI runner with a fresh
checkout sees the same "last retrain" as the machine that ran it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import filelock

from aevae import atomic, metric_registry
from aevae.config import Criterion, Params, RunSpec, load_params, resolve_sweep
from aevae.data import manifest_labelled
from aevae.errors import UserError, end_child_with_parent, run_cli
from aevae.evaluation import study
from aevae.ops import mlflow_store, model_registry, tracking
from aevae.provenance import git_state, sha256_file

LOCK_FILE = Path("logs/retrain.lock")
RECORDS_DIR = Path("reports/retrain")
SUMMARY_FILE = Path("metrics/summary.json")
CODE_PATHS = ("src", "pipeline", "dvc.yaml", "requirements.lock")  # the code the pipeline runs


# -------------------------------------------------------------------- lock


@contextlib.contextmanager
def exclusive(path: Path = LOCK_FILE) -> Iterator[None]:
    """Hold a file lock on `path` for the whole run; a second run fails at once, naming the holder's pid.

    An flock (filelock): the kernel drops it when the holder exits, however it exits, so a killed run
    never leaves a stale lock behind. The file keeps the holder's pid for the message.
    Raises: UserError when another run holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, blocking=False, preserve_lock_file=True, on_acquired=_write_pid)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = path.read_text(errors="replace").strip() or "unknown"
        raise UserError(
            f"another retrain is running (pid {holder}); let it finish and run again"
            f" (the lock on {path} is released when that process exits)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


# ---------------------------------------------------------------- policy


def policy(params: Params) -> dict[str, list[Criterion]]:
    """params.yaml `retrain:` per model kind, checked against the metrics the evaluate stage computes.

    Raises UserError naming the criterion when its metric is not in metric_registry.METRICS, or
    is undefined for that kind (an AE has no posterior, so no KL, ELBO or likelihood).
    """
    out = {"ae": params.retrain.ae, "vae": params.retrain.vae}
    for kind, criteria in out.items():
        for i, c in enumerate(criteria):
            if c.metric not in metric_registry.KEYS:
                raise UserError(
                    f"params.yaml: retrain.{kind}.{i}.metric = {c.metric!r} is not a metric of the evaluate"
                    f" stage; use one of {', '.join(metric_registry.KEYS)}"
                )
            if not metric_registry.by_key(c.metric).applies(kind):
                raise UserError(
                    f"params.yaml: retrain.{kind}.{i}.metric = {c.metric!r} is undefined for an"
                    f" {kind.upper()} (no posterior); use a reconstruction, prior or latent metric"
                )
    return out


def check_labels(rules: dict[str, list[Criterion]], manifest: dict) -> None:
    """Refuse a criterion whose metric needs labels when the prepared data has none: it would be null for every
    challenger, so no version after the first could ever be promoted.

    Raises: UserError naming the criterion and the fix.
    """
    if manifest_labelled(manifest):
        return
    for kind, criteria in rules.items():
        for i, c in enumerate(criteria):
            if metric_registry.by_key(c.metric).needs_labels:
                raise UserError(
                    f"params.yaml: retrain.{kind}.{i}.metric = {c.metric!r} needs labels, and the data has none;"
                    " choose a metric without labels (docs/metrics.md marks those that need them), e.g."
                    f" {'test/neg_elbo_nats_per_image' if kind == 'vae' else 'test/recon_bce_nats_per_pixel'}"
                )


@dataclass
class Check:
    """One criterion applied: did the challenger improve `metric` by at least `min_improvement`?

    `challenger` is the value judged: the worse end of the challenger group's 95% interval over
    seeds (challenger_value), `challenger_mean` its mean over `n_seeds` seeds; `champion` the
    champion version's own value, re-evaluated. All in the metric's unit (metric_registry).
    """

    metric: str
    goal: str
    min_improvement: float
    challenger: float
    champion: float
    challenger_mean: float = math.nan
    n_seeds: int = 1

    @property
    def improvement(self) -> float:
        """How much better the challenger is, in the metric's unit: > 0 is better whatever the goal; NaN if undefined."""
        diff = self.champion - self.challenger
        return diff if self.goal == "min" else -diff

    @property
    def passed(self) -> bool:
        """True when the improvement is defined and at least min_improvement."""
        return not math.isnan(self.improvement) and self.improvement >= self.min_improvement

    def line(self) -> str:
        """One human-readable line: both values, the goal, the improvement, pass or fail."""
        mark = "pass" if self.passed else "fail"
        judged = (
            f"{'upper' if self.goal == 'min' else 'lower'} 95% bound over {self.n_seeds} seeds"
            f" {self.challenger:.6g} (mean {self.challenger_mean:.6g})"
            if self.n_seeds > 1
            else f"{self.challenger:.6g}"
        )
        hint = ""
        if not self.passed and 1 < self.n_seeds < 4:  # t(0.975) is 12.7 at 2 seeds, 4.3 at 3: a wide bound
            hint = (
                f"; with {self.n_seeds} seeds the bound is t = {study.t_factor(self.n_seeds):.1f}"
                " standard errors from the mean: more seeds (sweep.seeds) narrow it"
            )
        return (
            f"{self.metric} {judged} vs {self.champion:.6g} ({self.goal}; improved"
            f" {self.improvement:+.4g}, needs >= {self.min_improvement:g}: {mark}{hint})"
        )

    def as_dict(self) -> dict:
        """The check as JSON-safe values (NaN and inf become None)."""
        return {
            "metric": self.metric,
            "goal": self.goal,
            "min_improvement": self.min_improvement,
            "challenger": self.challenger,
            "champion": self.champion,  # NaN / inf: null (atomic.write_json)
            "challenger_mean": self.challenger_mean,
            "n_seeds": self.n_seeds,
            "improvement": self.improvement,
            "passed": self.passed,
        }


# ------------------------------------------------------------ fingerprint


def code_digest(paths: tuple[str, ...] = CODE_PATHS) -> str:
    """sha256 over the files of the code the pipeline runs (names and contents; caches skipped).

    By content, not by commit: a commit that touches only docs or tests retrains nothing, while an
    uncommitted edit of src/ does count.
    """
    digest = hashlib.sha256()
    for top in map(Path, paths):
        files = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for f in files:
            if (
                not f.is_file()
                or f.suffix == ".pyc"
                or any(part == "__pycache__" or part.endswith(".egg-info") or part.startswith(".") for part in f.parts)
            ):
                continue
            data = f.read_bytes()
            digest.update(f"{f.as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def fingerprint(params: Params, manifest: dict) -> dict[str, str]:
    """What a retrain depends on: the prepared data, the pipeline's code, the validated params."""
    return {
        "data_sha256": manifest["data_sha256"],
        "code_sha256": code_digest(),
        "params_sha256": hashlib.sha256(
            json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest(),
    }


# --------------------------------------------------------------- pipeline


DVC_LOCK = Path(".dvc/tmp/lock")


def check_dvc_lock(path: Path = DVC_LOCK) -> None:
    """DVC's project lock must be free: a clear line naming its holder instead of DVC's retries and message.

    The lock is an fcntl lock (zc.lockfile), released by the kernel when its holder dies, so a lock still
    held has a live holder: a dvc command running here, or one a killed retrain left behind.
    Raises: UserError naming the holder's pid and the fix.
    """
    import zc.lockfile

    if not path.parent.is_dir():
        return
    try:
        zc.lockfile.LockFile(str(path)).close()
    except zc.lockfile.LockError:
        holder = (path.read_text().strip() if path.is_file() else "") or "?"
        raise UserError(
            f"another dvc process (pid {holder}) holds this project's DVC lock ({path}); let it finish"
            f" or stop it (kill {holder}), then run `make retrain` again"
        ) from None


def dvc_repro(*args: str) -> None:
    """Run `dvc repro ...` with its output streamed; a failure is one line naming the command."""
    dvc = Path(sys.executable).with_name("dvc")
    cmd = [str(dvc) if dvc.is_file() else "dvc", "repro", *args]
    check_dvc_lock()
    print(f"$ dvc repro {' '.join(args)}".rstrip(), flush=True)
    try:
        code = subprocess.run(cmd, preexec_fn=end_child_with_parent).returncode
    except OSError as exc:
        raise UserError(f"cannot run dvc ({exc.strerror}); run `make setup` first") from None
    if code != 0:
        raise UserError(
            f"{' '.join(['dvc repro', *args])} failed (exit {code}; its output is above); no alias"
            " was changed; fix the cause and run `make retrain` again"
        )


# --------------------------------------------------------------- evaluation


class Scoring:
    """Evaluates a model on the current split exactly as the evaluate stage does (same settings, seed,
    classifier); the splits and the classifier are loaded on first use, once."""

    def __init__(self, params: Params):
        self.params = params
        self._data = None

    def _load(self):
        from aevae.core.models import as_images
        from aevae.data.prepared import load_split
        from aevae.evaluation import classifier

        train, test = load_split("train"), load_split("test")
        if test.labels is None:  # unlabelled data: no classifier was trained, its metrics are null (as in evaluate)
            return train, test, None, None
        scorer, _ = classifier.load(Path("classifier/model.pt"))
        return train, test, scorer, scorer.features(as_images(test.images))  # reference: once

    def evaluate(self, model_dir: Path) -> dict[str, float]:
        """Every metric (metric_registry.KEYS) of the model in model_dir (model.pt + config.json)."""
        from aevae.core import model_store
        from aevae.evaluation import metrics

        if self._data is None:
            self._data = self._load()
        train, test, scorer, reference = self._data
        model, _ = model_store.load(model_dir.name, root=model_dir.parent)  # weights_only=True
        return metrics.evaluate_model(
            model,
            train.images,
            train.labels,
            test.images,
            test.labels,
            scorer,
            self.params.evaluate,
            reference_features=reference,
        )


def group_stats(group: str) -> dict[str, dict]:
    """The evaluate stage's {metric key: {"mean", "ci_low", "ci_high", "n_seeds"}} of `group`
    (metrics/summary.json: a DVC output, so never stale). Raises: UserError when it is missing, in another
    format (study.read_summary) or lacks the group."""
    stats = study.read_summary(SUMMARY_FILE).get(group)
    if not isinstance(stats, dict):
        raise UserError(f"{SUMMARY_FILE} has no entry for model '{group}'; run `dvc repro -f evaluate` and retry")
    return stats


def challenger_value(stat: dict, goal: str) -> float:
    """The value a criterion judges: the worse end of the group's 95% interval over seeds (ci_high when
    the goal is min, ci_low when max), so the whole interval must clear the champion; with one seed
    (no interval) the mean, i.e. that seed's value; NaN when no seed has a finite value."""
    value = stat.get("ci_high" if goal == "min" else "ci_low")
    if value is None:
        value = stat.get("mean")
    return math.nan if value is None else float(value)


def _check(criterion: Criterion, stats: dict[str, dict], champion: dict[str, float]) -> Check:
    stat = stats.get(criterion.metric) or {}
    mean = stat.get("mean")
    return Check(
        criterion.metric,
        criterion.goal,
        criterion.min_improvement,
        challenger_value(stat, criterion.goal),
        champion[criterion.metric],
        math.nan if mean is None else float(mean),
        int(stat.get("n_seeds") or 0),
    )


# ------------------------------------------------------------------ decide


@dataclass
class Decision:
    """What happens to one registered model's aliases (model = the group, aevae-<group>)."""

    model: str
    kind: str
    challenger: str  # version
    champion_before: str | None
    decision: str  # promoted | kept | unchanged
    checks: list[Check] = field(default_factory=list)
    first: bool = False  # promoted without a champion: the model's first version (not a deleted champion's heir)
    seed: int | None = None  # the training seed of the challenger version

    @property
    def champion_after(self) -> str | None:
        """The version holding `champion` once this decision is applied (None: no champion yet)."""
        return self.challenger if self.decision == "promoted" else self.champion_before

    def line(self) -> str:
        """One line for the log: what happened to the aliases, and each check."""
        v, c = self.challenger, self.champion_before
        head = {
            "promoted": f"v{v} is the new champion"
            + (
                f" (was v{c})"
                if c
                else " (no champion yet)"
                if self.first
                else " (no champion was set; earlier versions exist)"
            ),
            "kept": f"champion v{c} stays; v{v} is the challenger",
            "unchanged": f"v{v} is already the champion; nothing new to compare",
        }[self.decision]
        return f"{self.model}: {head}" + (": " + "; ".join(ch.line() for ch in self.checks) if self.checks else "")

    def change(self, fp: str, record: str) -> dict:
        """The alias moves and tags this decision asks for (see model_registry.apply_retrain)."""
        change = {
            "model": self.model,
            "version": self.challenger,
            "set": {},
            "delete": [],
            "model_tags": {model_registry.FINGERPRINT_TAG: fp},
        }
        if self.decision == "promoted":
            change["set"][model_registry.CHAMPION] = self.challenger
            change["delete"].append(model_registry.CHALLENGER)  # a losing challenger of the old champion is moot
        elif self.decision == "kept":
            change["set"][model_registry.CHALLENGER] = self.challenger
        if self.decision != "unchanged":
            tags = {
                "aevae.decision": self.decision,
                "aevae.compared_to": self.champion_before or "none",
                "aevae.retrain_record": record,
            }
            for ch in self.checks:
                tags[f"aevae.challenger.{ch.metric}"] = f"{ch.challenger:.6g}"
                tags[f"aevae.champion.{ch.metric}"] = f"{ch.champion:.6g}"
                tags[f"aevae.passed.{ch.metric}"] = str(ch.passed).lower()
                tags[f"aevae.challenger_mean.{ch.metric}"] = f"{ch.challenger_mean:.6g}"
            if self.checks:  # the challenger's numbers are the worse 95% bound over this many seeds (challenger_value)
                tags["aevae.n_seeds"] = str(min(ch.n_seeds for ch in self.checks))
            change["version_tags"] = tags
        return change

    def as_dict(self) -> dict:
        """The decision for reports/retrain/<time>.json."""
        return {
            "kind": self.kind,
            "challenger_version": self.challenger,
            "challenger_seed": self.seed,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "decision": self.decision,
            "criteria": [ch.as_dict() for ch in self.checks],
        }


def challengers(params: Params) -> list[RunSpec]:
    """Per group (registered model), in sweep order, the spec whose version is the challenger: the first seed's."""
    first: dict[str, RunSpec] = {}
    for spec in resolve_sweep(params):
        first.setdefault(spec.group, spec)
    return list(first.values())


def decide(mlflow_client, params: Params, rules: dict[str, list[Criterion]]) -> list[Decision]:
    """One decision per registered model (group) of the sweep; reads the registry, changes nothing.

    Raises: UserError when the registry does not hold the weights in models/ or summary.json lacks a group.
    """
    run, why = tracking.recorded_run()
    if run is None:
        raise UserError(f"{why}; then retry")
    scoring = Scoring(params)
    decisions = []
    with tempfile.TemporaryDirectory(prefix="aevae-retrain-") as tmp:
        for spec in challengers(params):
            name, group, kind = spec.name, spec.group, spec.model.kind
            run_id = run["children"].get(name)
            version = model_registry.version_from_run(mlflow_client, group, run_id) if run_id else None
            if version is None:  # recorded_run already refused a run tracked in another store
                raise UserError(
                    f"model '{name}' of the last pipeline run has no registered version on"
                    f" {_safe_uri(mlflow_store.tracking_uri())}; run `dvc repro -f train` and retry"
                )
            # The challenger is what models/<name> holds: the registered weights must be those on disk.
            mine = model_registry.download_model_files(mlflow_client, group, version, Path(tmp) / f"{group}-v{version}")
            if sha256_file(mine / "model.pt") != sha256_file(Path("models") / name / "model.pt"):
                raise UserError(
                    f"models/{name} is not the model registered as version {version} of"
                    f" {model_registry.registered_name(group)}; run `dvc repro -f train` and retry"
                )
            champion = model_registry.model_aliases(mlflow_client, group).get(model_registry.CHAMPION)
            if champion is None:
                earlier = model_registry.version_count(mlflow_client, group) > len(
                    [s for s in resolve_sweep(params) if s.group == group]
                )  # this run registered one per seed
                decisions.append(Decision(group, kind, version, None, "promoted", first=not earlier, seed=spec.seed))
                continue
            if champion == version:
                decisions.append(Decision(group, kind, version, champion, "unchanged", seed=spec.seed))
                continue
            theirs = model_registry.download_model_files(
                mlflow_client, group, champion, Path(tmp) / f"{group}-v{champion}"
            )
            print(f"{group}: evaluating champion v{champion} on the current test split", flush=True)
            champ = scoring.evaluate(theirs)
            stats = group_stats(group)
            checks = [_check(c, stats, champ) for c in rules[kind]]
            verdict = "promoted" if all(ch.passed for ch in checks) else "kept"
            decisions.append(Decision(group, kind, version, champion, verdict, checks, seed=spec.seed))
    return decisions


# -------------------------------------------------------------------- main


def _safe_uri(uri: str) -> str:
    """The tracking URI without credentials, for the record."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    return urlunsplit(parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else "")))


def _field(fp_text: str | None, key: str) -> str | None:
    try:
        return json.loads(fp_text).get(key) if fp_text else None
    except (ValueError, AttributeError):  # a tag edited by hand
        return None


def retrain(force: bool = False) -> None:
    """One scheduled retrain, steps 2 to 6 of this module's docstring (the caller holds the lock).

    Raises: UserError for a bad params.yaml, an unreachable tracking server, a failed `dvc repro` or a
    registry that does not match models/; every alias is then as it was.
    """
    params = load_params()
    rules = policy(params)
    names = [s.group for s in challengers(params)]  # one registered model per group
    mlflow_client = mlflow_store.client()  # an unreachable server fails here, before any work
    dvc_repro("prepare")
    from aevae.data.prepared import load_manifest

    manifest = load_manifest()
    check_labels(rules, manifest)
    fp = fingerprint(params, manifest)
    fp_text = json.dumps(fp, sort_keys=True)
    with mlflow_store.server_errors("reading the last retrain's fingerprint"):
        last = {name: model_registry.retrain_fingerprint(mlflow_client, name) for name in names}
    if not force and all(v == fp_text for v in last.values()):
        print("nothing to do: data, code and params are those of the last retrain (--force to run anyway)")
        return
    changed = sorted(k for k in fp if any(_field(v, k) != fp[k] for v in last.values()))
    if all(v is None for v in last.values()):
        print("retrain: no earlier retrain recorded on this server", flush=True)
    else:
        print(f"retrain: {'changed: ' + ', '.join(changed) if changed else 'forced'}", flush=True)
    started = time.gmtime()
    dvc_repro("--no-run-cache")
    with mlflow_store.server_errors("comparing challengers with champions"):
        decisions = decide(mlflow_client, params, rules)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", started)
    record_path = RECORDS_DIR / f"{stamp}.json"
    run = tracking.pipeline_run() or {}
    atomic.write_json(
        record_path,
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "forced": force,
            "fingerprint": fp,
            "git_commit": git_state()["commit"],  # for the reader; the fingerprint hashes the code itself
            "tracking_uri": _safe_uri(mlflow_store.tracking_uri()),
            "pipeline_run_id": run.get("parent_run_id"),
            "models": {d.model: d.as_dict() for d in decisions},
        },
    )
    try:  # the record first, then the registry: a failure leaves neither a record nor a moved alias
        model_registry.apply_retrain(mlflow_client, [d.change(fp_text, record_path.name) for d in decisions])
    except BaseException:
        record_path.unlink(missing_ok=True)
        raise
    for d in decisions:
        print(d.line())
    print(f"recorded in {record_path}")


def main(argv: list[str] | None = None) -> None:
    """`python -m aevae.ops.retrain [--force]`: take the lock, then retrain. Raises: UserError (exit 2 via run_cli)."""
    parser = argparse.ArgumentParser(prog="python -m aevae.ops.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="run even if data, code and params are unchanged")
    args = parser.parse_args(argv)
    with exclusive():
        retrain(force=args.force)


if __name__ == "__main__":
    run_cli(main)
