"""The MLflow store: where it is (a remote server or the project's SQLite file), a client on it that fails
in seconds when the server does not answer, and the names runs and registered versions share.

The store is MLFLOW_TRACKING_URI when set (a remote server), else an SQLite file in the project
(mlflow.db, by absolute path) with artifacts beside it in mlartifacts/. Three modules know MLflow:
this one, tracking (the runs) and model_registry (the registered models); pyfunc_model is the code
MLflow itself runs wherever a registered model is loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from aevae.config import RunSpec
from aevae.errors import UserError

EXPERIMENT = "aevae"
_PROBE_TIMEOUT_S = 5


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the project's SQLite store (mlflow.db, by absolute path). Never raises."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _configure() -> None:
    # MLflow's INFO lines and its pickle warning are not for the user of a pipeline: errors only.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    # MLflow's default is 7 retries with backoff: minutes of hanging on a dead server. Fail in seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


# Schemes MLflow's tracking store accepts; anything else (a typo, "localhost:5000") fails here, not in MLflow.
_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def sqlite_path(uri: str) -> Path | None:
    """The file of an `sqlite:///rel.db` or `sqlite:////abs.db` store (the slash after the empty host dropped,
    any ?query too); None for any other store or an in-memory SQLite."""
    scheme, sep, rest = uri.partition("://")
    path = rest[1:].split("?")[0] if sep and scheme == "sqlite" else ""
    return Path(path) if path else None


def check_reachable(uri: str) -> None:
    """MLFLOW_TRACKING_URI must lead to a working MLflow store: a clear UserError within seconds otherwise.

    Checks the scheme, an SQLite file's folder, and that an http(s) server answers MLflow's REST API
    (not merely that something listens: an ordinary web server, a proxy's error page or a port that
    accepts and never answers all fail here). Raises UserError; returns None when the store will do.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep and ":" not in uri:
        return  # a plain path: MLflow's file store
    if not sep or scheme.split("+")[0] not in _SCHEMES:
        raise UserError(
            f"MLFLOW_TRACKING_URI={uri} has no scheme MLflow knows (one of {', '.join(_SCHEMES)});"
            f" for a server write http://host:port, or unset it to track in the local mlflow.db"
        )
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None and not path.parent.is_dir():
            raise UserError(
                f"the folder of the SQLite store in MLFLOW_TRACKING_URI={uri} does not exist; create it or fix the URI"
            )
        return
    if scheme in ("http", "https"):
        _probe_server(uri)


def _probe_server(uri: str) -> None:
    fix = "start it, fix the URI, or unset it to track in the local mlflow.db"
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
    try:
        with urllib.request.urlopen(probe, timeout=_PROBE_TIMEOUT_S) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # an auth proxy in front of MLflow: the client sends the credentials the probe lacks
        body = exc.read(65536) if exc.code == 404 else b""  # MLflow's 404 for a missing experiment is JSON
        if exc.code != 404:
            raise UserError(
                f"the server at MLFLOW_TRACKING_URI={uri} answers HTTP {exc.code} to MLflow's API;"
                f" is it an MLflow server? {fix}"
            ) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, no such host, or a timeout
        reason = getattr(exc, "reason", exc)
        raise UserError(f"the MLflow server at MLFLOW_TRACKING_URI={uri} does not answer ({reason}); {fix}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("experiment" in answer or "error_code" in answer):
        raise UserError(
            f"the server at MLFLOW_TRACKING_URI={uri} answers, but not as an MLflow tracking server"
            f" (no MLflow JSON at /api/2.0/mlflow); {fix}"
        )


def client():
    """An MlflowClient on tracking_uri() for tracking and the registry.

    Raises: UserError (one line, within seconds) when a remote server does not answer, or an SQLite
    store's schema is not the one this MLflow writes (check_schema).
    """
    from mlflow import MlflowClient

    _configure()
    uri = tracking_uri()
    check_reachable(uri)
    check_schema(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_schema(uri: str) -> None:
    """An existing SQLite store must have the schema revision this MLflow writes.

    MLflow's own check calls every other revision "out-of-date" and raises from deep inside the first
    call, a traceback after DVC has removed the stage's outputs. Here: an older revision (one this MLflow
    knows) gets the upgrade command; an unknown one was written by a newer (or another) MLflow.
    Raises: UserError naming the store, both revisions and the fix. A server checks its own store.
    """
    path = sqlite_path(uri)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return
    found = _store_revision(path)
    if found is None or found == _head_revision_from_source():
        return  # no MLflow tables yet (MLflow creates them), or the schema this MLflow writes
    head, known = _mlflow_revisions()
    if found == head:
        return
    import mlflow

    restore = _restore_note()
    if found in known:
        raise UserError(
            f"the MLflow store {path} was written by an older MLflow (schema {found}; MLflow"
            f" {mlflow.__version__} needs {head}); back it up, then run `mlflow db upgrade {uri}`,"
            f" and rerun{restore}"
        )
    raise UserError(
        f"the MLflow store {path} was written by a newer or another MLflow (schema {found} is unknown"
        f" to MLflow {mlflow.__version__}); use the MLflow that wrote it (requirements.lock), or move"
        f" {path.name} aside to start a new store, and rerun{restore}"
    )


def _store_revision(path: Path) -> str | None:
    """The alembic revision an SQLite store records; None when it has no MLflow tables.
    Raises: UserError when the file is not an SQLite database."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError:  # no alembic_version table: a new store
        return None
    except sqlite3.DatabaseError as exc:
        raise UserError(
            f"the MLflow store {path} is not an SQLite database ({exc}); move it aside to start a new"
            f" store, or fix MLFLOW_TRACKING_URI, and rerun{_restore_note()}"
        ) from None
    return rows[0][0] if rows else None


def _restore_note() -> str:
    """In a stage run by DVC, the words saying that the outputs DVC removed come back with `dvc checkout`."""
    if not os.environ.get("DVC_STAGE"):
        return ""
    return " (DVC removed this stage's outputs before it ran: `dvc checkout` restores them)"


def _head_revision_from_source() -> str | None:
    """The newest schema revision, read from the text of MLflow's migration scripts (~10 ms) instead of by
    loading them all through alembic (~0.5 s, paid by every stage that tracks); None unless the scripts name
    exactly one revision that no other revises (then _mlflow_revisions decides)."""
    import mlflow

    revised, revisions = set(), set()
    for script in (Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8", errors="replace")
        revisions.update(re.findall(r"""(?m)^revision\s*=\s*["'](\w+)["']""", text))
        for down in re.findall(r"(?m)^down_revision\s*=\s*(.+)$", text):
            revised.update(re.findall(r"""["'](\w+)["']""", down))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def _mlflow_revisions() -> tuple[str, set[str]]:
    """(the schema revision this MLflow writes, every revision it can upgrade from), from its migrations."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config("sqlite://"))
    return scripts.get_current_head(), {rev.revision for rev in scripts.walk_revisions()}


# MLflow's UI opens an experiment without this tag on its GenAI view (traces, tokens, latency); model training
# gets the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(mlflow_client) -> str:
    """Id of the "aevae" experiment, created on first use (local artifacts go to mlartifacts/), tagged as
    model training (EXPERIMENT_KIND) when it is created and when an existing one lacks the tag."""
    exp = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        if EXPERIMENT_KIND[0] not in exp.tags:
            mlflow_client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    artifacts = None
    if tracking_uri().startswith("sqlite:///"):  # keep local artifacts in the project, by absolute path
        artifacts = (Path.cwd().resolve() / "mlartifacts").as_uri()
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=dict([EXPERIMENT_KIND]))


AGGREGATE_FILTER = "tags.`aevae.aggregate` = 'true'"  # the aggregate child runs (aevae.ops.tracking.AGGREGATE_TAG)


def ui_url(port: int, host: str = "127.0.0.1") -> str:
    """The MLflow UI's runs table of the "aevae" experiment: its aggregate runs (each group's mean over seeds)
    when the evaluate stage has logged any, else every run; the experiment root when there is none yet.
    Tags an existing experiment as model training on the way (experiment_id). Raises: UserError as client()."""
    base = f"http://{host}:{port}/#/experiments"
    path = sqlite_path(tracking_uri())
    if path is not None and not path.is_file():
        return base
    mlflow_client = client()
    if mlflow_client.get_experiment_by_name(EXPERIMENT) is None:
        return base
    exp = experiment_id(mlflow_client)
    # The UI's own switch between its GenAI and Model training views (a browser setting, GenAI by default).
    query = {"workflowType": "machine_learning"}
    if mlflow_client.search_runs([exp], AGGREGATE_FILTER, max_results=1):
        query["searchFilter"] = AGGREGATE_FILTER
    return f"{base}/{exp}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def check_port_free(port: int, fix: str) -> None:
    """A server about to listen on 127.0.0.1:`port` (the UI, `make serve`) must find it free.

    MLflow's UI exits 0 and its model server prints a traceback when the port is taken; here it is one line.
    `fix` is the command that picks another port, e.g. "make ui UI_PORT". Raises: UserError naming both.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: a closing port is free
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UserError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}); stop what listens there, or choose another"
                f" port: {fix}=<port>"
            ) from None


def _print_ui_url(argv: list[str]) -> None:
    """`python -m aevae.ops.mlflow_store PORT`: the line `make ui` prints before the UI starts.
    Raises: UserError when the port is taken (check_port_free) or the store fails (client)."""
    port = int(argv[0]) if argv else 5000
    check_port_free(port, "make ui UI_PORT")
    print(f"MLflow UI: {ui_url(port)}  (training runs of experiment '{EXPERIMENT}'; Ctrl-C stops it)", flush=True)


def model_tags(spec: RunSpec) -> dict[str, str]:
    """The tags that place a child run in the study: filter the UI with e.g. `tags.model = 'ae-z2'`.

    `model` is the group aggregated over seeds (member, plus -z<size> with several latent sizes),
    `member` the sweep member, `seed` the training seed, `latent_dim` the latent size.
    """
    return {
        "model": spec.group,
        "member": spec.member,
        "seed": str(spec.seed),
        "latent_dim": str(spec.model.latent_dim),
        "model.kind": spec.model.kind,
    }


@contextlib.contextmanager
def server_errors(doing: str, outcome: str = "no alias was changed"):
    """An MLflow call that fails (server down, HTTP error) becomes one UserError line; bugs still raise."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        raise UserError(
            f"MLflow failed while {doing} ({type(exc).__name__}: {first_line(exc)[:200]}); {outcome};"
            f" check the server at {tracking_uri()} and rerun"
        ) from None


def first_line(exc: BaseException) -> str:
    """The exception's message up to its first line break (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    from aevae.errors import run_cli

    run_cli(lambda: _print_ui_url(sys.argv[1:]))
