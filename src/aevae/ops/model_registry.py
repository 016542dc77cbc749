"""The MLflow Model Registry: one registered model per group (aevae-<group>), a version per trained seed,
and the champion / challenger aliases that retraining moves (aevae.ops.retrain).

Each version is self-contained (models from code: aevae.ops.pyfunc_model, weights loaded with
weights_only=True) and described by aevae.ops.model_card; `make serve` checks the reference it is given
(check_registered) before MLflow starts.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from pathlib import Path

from aevae.config import RunSpec
from aevae.errors import UserError
from aevae.ops import model_card
from aevae.ops.mlflow_store import client, first_line, model_tags, sqlite_path, tracking_uri

PREFIX = "aevae-"  # registered names are PREFIX + group (registered_name); other models in the registry are not ours


def check_registered(model_uri: str) -> None:
    """`make serve`'s check before MLflow starts: models:/<name>@<alias> or models:/<name>/<version|latest> exists.

    Uses tracking_uri() (the Makefile sets the project's store). Raises UserError, one line naming the
    models that are registered or how to get the alias, instead of MLflow's traceback.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow_client = _existing_store_client()
    ref = model_uri.removeprefix("models:/")
    name, alias = ref.split("@", 1) if "@" in ref else (ref.split("/", 1)[0], None)
    version = None if alias is not None else (ref.split("/", 1) + [""])[1]
    if alias == "" or version == "":
        raise UserError(
            f"{model_uri} names no {'alias' if alias == '' else 'version'}; give ALIAS=champion or"
            " VERSION=<number>|latest"
        )
    known = sorted(m.name.removeprefix(PREFIX) for m in mlflow_client.search_registered_models())
    if name not in {registered_name(k) for k in known}:
        raise UserError(
            f"no registered model '{name}' in {uri}; MODEL= one of: {', '.join(known) or 'none yet'}"
            " (make repro registers one per model)"
        )
    try:
        if alias:
            mlflow_client.get_model_version_by_alias(name, alias)
        elif version != "latest":
            mlflow_client.get_model_version(name, version)
        elif not mlflow_client.search_model_versions(f"name = '{name}'", max_results=1):
            raise MlflowException("no version")
    except MlflowException:
        have = model_aliases(mlflow_client, name.removeprefix(PREFIX))
        listed = ", ".join(f"{a} (v{v})" for a, v in sorted(have.items())) or "none"
        fix = (
            "`make retrain` sets champion; serve a version meanwhile: VERSION=latest"
            if alias == "champion"
            else "pick an existing alias or VERSION=latest"
        ) + f"; its aliases: {listed}"
        raise UserError(
            f"'{name}' has no {'alias ' + repr(alias) if alias else 'version ' + version} in {uri}; {fix}"
        ) from None


def _existing_store_client():
    """client() on a store that exists: a mistyped SQLite path would otherwise become a new, empty store.
    Raises UserError when the SQLite file is missing or a server does not answer."""
    uri = tracking_uri()
    store = sqlite_path(uri)
    if store is not None and not store.is_file():
        raise UserError(
            f"no MLflow store at {store}; run the pipeline first (make repro creates mlflow.db) or fix"
            " MLFLOW_TRACKING_URI"
        )
    return client()


def registered_name(group: str) -> str:
    """The Model Registry name of a group (RunSpec.group: the member, plus -z<size>): aevae-<group>.

    One registered model per group, one version per trained seed (tagged `seed`): the seeds are
    interchangeable draws of the same recipe, so they are versions of one model, not models of their own.
    """
    return PREFIX + group


def register_model(
    mlflow_client, run_id: str, model_dir: Path, spec: RunSpec, description: str, example_images=None
) -> str:
    """Log models/<name>/ as an MLflow pyfunc (aevae.ops.pyfunc_model) and register it as a new version of
    aevae-<group> tagged with model_tags (seed, latent_dim, ...); returns the new version.

    The version is self-contained: its code is pyfunc_model.py (models from code, nothing pickled) plus
    the aevae modules it imports (code_paths), its weights are model.pt loaded with weights_only=True,
    its requirements are pinned public packages. It carries a signature, an input example (the first
    `example_images`, (k, H, W) or (k, C, H, W) uint8, as float32 (k, C*H*W) in [0, 1]) and `description`.
    A server that fails raises MlflowException or OSError (SweepTracker keeps the first and reports it).
    """
    import mlflow
    import mlflow.pyfunc
    import numpy as np

    from aevae.core import model_store
    from aevae.ops import pyfunc_model

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    example = None
    if example_images is not None:
        example = (
            np.asarray(example_images, dtype=np.float32).reshape(len(example_images), -1) / 255.0,
            {"method": "reconstruct"},
        )
    # MLflow prints "Successfully registered..." and its example validation: keep the stage's output to one line.
    with (
        tempfile.TemporaryDirectory(prefix="aevae-code-") as tmp,
        mlflow.start_run(run_id=run_id),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,
            code_paths=[str(pyfunc_model.code_dir(Path(tmp)))],
            artifacts={pyfunc_model.ARTIFACT: str(model_dir)},
            signature=pyfunc_model.signature(spec.model, model_store.image_shape(model_dir.name, model_dir.parent)),
            input_example=example,
            pip_requirements=pyfunc_model.pip_requirements(),
            registered_model_name=registered_name(spec.group),
            await_registration_for=30,
        )
    version_id = str(info.registered_model_version)
    mlflow_client.update_model_version(registered_name(spec.group), version_id, description=description)
    for key, value in {**model_tags(spec), "run_name": spec.name}.items():
        mlflow_client.set_model_version_tag(registered_name(spec.group), version_id, key, value)
    return version_id


def describe_test_metrics(mlflow_client, model_name: str, run_id: str, values: dict[str, float]) -> None:
    """Evaluate runs after train registered the version: complete that version's description with test metrics."""
    version_id = version_from_run(mlflow_client, model_name, run_id)
    if version_id is None:  # registration failed in the train stage; it said so there
        return
    current = mlflow_client.get_model_version(registered_name(model_name), version_id).description or ""
    mlflow_client.update_model_version(
        registered_name(model_name), version_id, description=model_card.with_test_metrics(current, values)
    )


CHAMPION, CHALLENGER = "champion", "challenger"
FINGERPRINT_TAG = "aevae.ops.retrain.fingerprint"  # on the registered model: what the last retrain saw


def _registered_model(mlflow_client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(registered_name(model_name))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def model_aliases(mlflow_client, model_name: str) -> dict[str, str]:
    """{alias: version} of aevae-<model>; {} when it is not registered yet."""
    model = _registered_model(mlflow_client, model_name)
    return {alias: str(v) for alias, v in model.aliases.items()} if model else {}


def retrain_fingerprint(mlflow_client, model_name: str) -> str | None:
    """The fingerprint (data, code, params) the last retrain of this model recorded; None if never."""
    model = _registered_model(mlflow_client, model_name)
    return model.tags.get(FINGERPRINT_TAG) if model else None


def version_from_run(mlflow_client, model_name: str, run_id: str) -> str | None:
    """The newest version of aevae-<model> registered from `run_id` (the train stage's child run)."""
    name = registered_name(model_name)
    versions = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return max((str(v.version) for v in versions), key=int, default=None)


def version_count(mlflow_client, model_name: str) -> int:
    """How many versions aevae-<model> has in the registry (0 when it is not registered)."""
    return len(mlflow_client.search_model_versions(f"name='{registered_name(model_name)}'"))


def download_model_files(mlflow_client, model_name: str, version: str, dst: Path) -> Path:
    """The version's model_files/ (model.pt + config.json, as the train stage logged them) -> dst/model_files."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in a scheduled job's log
    run_id = mlflow_client.get_model_version(registered_name(model_name), version).run_id
    folder = Path(mlflow_client.download_artifacts(run_id, "model_files", str(dst)))
    if not (folder / "model.pt").is_file() or not (folder / "config.json").is_file():
        raise UserError(
            f"version {version} of {registered_name(model_name)} (run {run_id}) has no"
            " model_files/model.pt and config.json; move its aliases by hand or delete the version"
        )
    return folder


def apply_retrain(mlflow_client, changes: list[dict]) -> None:
    """Apply decided alias moves and tags; on any failure undo what was applied, then raise a UserError.

    Each change: {"model": name, "set": {alias: version}, "delete": [alias], "version": v,
    "version_tags": {...}, "model_tags": {...}}. All of them are decided before this is called,
    so a server that stops midway leaves every alias as it was (best effort: the undo needs the server too).
    """
    from mlflow.exceptions import MlflowException

    undo = []
    try:
        for change in changes:
            name = registered_name(change["model"])
            before = model_aliases(mlflow_client, change["model"])
            for alias, version in change.get("set", {}).items():
                mlflow_client.set_registered_model_alias(name, alias, version)
                undo.append(_restore_alias(mlflow_client, name, alias, before.get(alias)))
            for alias in change.get("delete", []):
                if alias in before:
                    mlflow_client.delete_registered_model_alias(name, alias)
                    undo.append(_restore_alias(mlflow_client, name, alias, before[alias]))
        # Tags last: they describe aliases that are already in place.
        for change in changes:
            name = registered_name(change["model"])
            for key, value in change.get("version_tags", {}).items():
                mlflow_client.set_model_version_tag(name, change["version"], key, str(value))
                undo.append(functools.partial(mlflow_client.delete_model_version_tag, name, change["version"], key))
            old_tags = _registered_model(mlflow_client, change["model"]).tags
            for key, value in change.get("model_tags", {}).items():
                mlflow_client.set_registered_model_tag(name, key, str(value))
                undo.append(
                    functools.partial(mlflow_client.set_registered_model_tag, name, key, old_tags[key])
                    if key in old_tags
                    else functools.partial(mlflow_client.delete_registered_model_tag, name, key)
                )
    except (MlflowException, OSError) as exc:
        failed = 0
        for step in reversed(undo):
            try:
                step()
            except (MlflowException, OSError):
                failed += 1
        state = "every alias and tag is as it was" if not failed else f"{failed} change(s) could not be undone"
        raise UserError(
            f"MLflow failed while moving aliases ({type(exc).__name__}: {first_line(exc)[:200]}); {state};"
            f" check the server at {tracking_uri()} and rerun"
        ) from None


def _restore_alias(mlflow_client, name: str, alias: str, version: str | None):
    def restore() -> None:
        if version is None:
            mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, version)

    return restore


def listing(mlflow_client) -> list[list[str]]:
    """`make models`: a row per registered version of every aevae-<group> model: [registered name, version,
    seed, run name, run id, aliases ("-" when none)], models by name, versions newest first. The run id tells
    apart the versions a retrain registers under the same seed and run name.
    Raises MlflowException or OSError when the store fails (the caller turns it into one line).
    """
    rows = []
    for model in sorted(mlflow_client.search_registered_models(), key=lambda m: m.name):
        if not model.name.startswith(PREFIX):
            continue
        aliases: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name = '{model.name}'")
        for v in sorted(versions, key=lambda v: -int(v.version)):
            tags = v.tags or {}
            rows.append(
                [
                    model.name,
                    f"v{v.version}",
                    tags.get("seed", "?"),
                    tags.get("run_name", "?"),
                    v.run_id or "-",
                    ", ".join(sorted(aliases.get(str(v.version), []))) or "-",
                ]
            )
    return rows


def main() -> None:
    """Print every registered version and its aliases (see listing), or say that none is registered yet."""
    from aevae.ops.mlflow_store import server_errors

    with server_errors("listing the registered models", "nothing was changed"):
        rows = listing(_existing_store_client())
    if not rows:
        print(f"no aevae model is registered in {tracking_uri()} yet (make repro registers one per model)")
        return
    rows.insert(0, ["registered model", "version", "seed", "run", "run id", "aliases"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))


if __name__ == "__main__":
    from aevae.errors import run_cli

    run_cli(main)
