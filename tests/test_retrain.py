"""`make retrain` (python -m aevae.ops.retrain): champion / challenger against a real MLflow server, end to end.

The fast tests check the pieces (the policy, the lock, undoing aliases when the server fails midway);
the slow one runs the whole story in a throwaway project: first champions, nothing to do, a worse
challenger that does not take `champion`, a failure midway and an overlapping run that change nothing,
then a better challenger that does.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from aevae.config import Params
from aevae.errors import UserError
from aevae.ops import mlflow_store, model_registry, retrain
from mlflow_server import mlflow_server
from project import SMALL_PARAMS, make_project, run, start, write_params

MODELS = ("ae", "vae-beta1")
POLICY = {
    "ae": [{"metric": "test/recon_bce_nats_per_pixel", "goal": "min", "min_improvement": 0.001}],
    "vae": [{"metric": "test/neg_elbo_nats_per_image", "goal": "min", "min_improvement": 0.5}],
}


# ------------------------------------------------------------------ the pieces (fast)


def _params(**retrain_section) -> Params:
    return Params.model_validate({**SMALL_PARAMS, "retrain": retrain_section or POLICY})


def test_policy_accepts_evaluate_metrics_and_names_the_bad_one():
    assert [c.metric for c in retrain.policy(_params())["vae"]] == ["test/neg_elbo_nats_per_image"]
    with pytest.raises(UserError, match=r"retrain\.vae\.0\.metric = 'test/recon_typo' is not a metric"):
        retrain.policy(_params(ae=POLICY["ae"], vae=[{"metric": "test/recon_typo"}]))
    with pytest.raises(UserError, match="undefined for an AE"):
        retrain.policy(_params(ae=[{"metric": "test/kl_nats_per_image"}], vae=POLICY["vae"]))


def test_a_criterion_that_needs_labels_is_refused_for_unlabelled_data():
    rules = retrain.policy(_params(ae=POLICY["ae"], vae=[{"metric": "prior/classifier_fid", "goal": "min"}]))
    retrain.check_labels(rules, {"class_names": ["0", "1"]})  # labelled: fine
    with pytest.raises(UserError) as info:
        retrain.check_labels(rules, {"class_names": []})
    message = str(info.value)
    assert "retrain.vae.0.metric = 'prior/classifier_fid' needs labels" in message and "\n" not in message
    assert "test/neg_elbo_nats_per_image" in message
    retrain.check_labels(retrain.policy(_params()), {"class_names": []})  # POLICY needs no labels


@pytest.mark.parametrize(
    ("goal", "challenger", "champion", "need", "passed"),
    [
        ("min", 1.0, 2.0, 0.5, True),  # lower and by enough
        ("min", 1.8, 2.0, 0.5, False),  # lower, not by enough
        ("min", 2.0, 2.0, 0.0, True),  # a tie passes a zero margin
        ("min", 3.0, 2.0, 0.0, False),  # worse
        ("max", 0.9, 0.8, 0.05, True),
        ("max", 0.8, 0.9, 0.0, False),
        ("min", math.nan, 2.0, 0.0, False),  # an undefined number never wins
    ],
)
def test_a_check_passes_only_on_a_large_enough_improvement(goal, challenger, champion, need, passed):
    check = retrain.Check("test/x", goal, need, challenger, champion)
    assert check.passed is passed
    assert json.dumps(check.as_dict())  # NaN becomes null: the record stays valid JSON


def test_the_lock_admits_one_run_and_names_the_holder(tmp_path):
    lock = tmp_path / "logs" / "retrain.lock"
    with retrain.exclusive(lock):
        with pytest.raises(UserError, match=rf"another retrain is running \(pid {os.getpid()}\)"):
            with retrain.exclusive(lock):
                pass
    with retrain.exclusive(lock):  # released on exit
        pass


def test_the_code_digest_sees_edits_to_the_code_but_not_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    before = retrain.code_digest()
    (tmp_path / "src" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "README.md").write_text("docs are not code\n")
    assert retrain.code_digest() == before
    (tmp_path / "src" / "pkg" / "a.py").write_text("x = 2\n")
    assert retrain.code_digest() != before


class _FlakyRegistry:
    """A stand-in MlflowClient holding aliases and tags; its Nth write fails like a stopped server."""

    def __init__(self, fail_at: int):
        self.aliases = {"aevae-ae": {"champion": "1"}, "aevae-vae": {"champion": "1", "challenger": "2"}}
        self.model_tags = {"aevae-ae": {}, "aevae-vae": {model_registry.FINGERPRINT_TAG: "old"}}
        self.version_tags: dict = {}
        self.writes, self.fail_at = 0, fail_at

    def _write(self) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise ConnectionError("connection refused")  # what requests raises: an OSError

    def get_registered_model(self, name):
        return SimpleNamespace(aliases=dict(self.aliases[name]), tags=dict(self.model_tags[name]))

    def set_registered_model_alias(self, name, alias, version):
        self._write()
        self.aliases[name][alias] = version

    def delete_registered_model_alias(self, name, alias):
        self._write()
        del self.aliases[name][alias]

    def set_model_version_tag(self, name, version, key, value):
        self._write()
        self.version_tags[(name, version, key)] = value

    def delete_model_version_tag(self, name, version, key):
        self.version_tags.pop((name, version, key))

    def set_registered_model_tag(self, name, key, value):
        self._write()
        self.model_tags[name][key] = value

    def delete_registered_model_tag(self, name, key):
        del self.model_tags[name][key]


_CHANGES = [
    {
        "model": "ae",
        "version": "2",
        "set": {"champion": "2"},
        "delete": ["challenger"],
        "version_tags": {"aevae.decision": "promoted"},
        "model_tags": {model_registry.FINGERPRINT_TAG: "new"},
    },
    {
        "model": "vae",
        "version": "3",
        "set": {"champion": "3"},
        "delete": ["challenger"],
        "version_tags": {"aevae.decision": "promoted"},
        "model_tags": {model_registry.FINGERPRINT_TAG: "new"},
    },
]


@pytest.mark.parametrize("fail_at", range(1, 8))  # every write of _CHANGES
def test_a_server_failure_while_applying_undoes_every_change(fail_at):
    registry = _FlakyRegistry(fail_at)
    before = copy.deepcopy((registry.aliases, registry.model_tags))
    with pytest.raises(UserError, match="every alias and tag is as it was"):
        model_registry.apply_retrain(registry, copy.deepcopy(_CHANGES))
    assert (registry.aliases, registry.model_tags) == before
    assert registry.version_tags == {}


def test_apply_moves_aliases_and_tags_when_the_server_answers():
    registry = _FlakyRegistry(fail_at=0)
    model_registry.apply_retrain(registry, copy.deepcopy(_CHANGES))
    assert registry.aliases == {"aevae-ae": {"champion": "2"}, "aevae-vae": {"champion": "3"}}
    assert registry.model_tags["aevae-vae"][model_registry.FINGERPRINT_TAG] == "new"
    assert registry.version_tags[("aevae-ae", "2", "aevae.decision")] == "promoted"


def test_a_promotion_without_a_champion_names_the_first_version_only_when_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow_store.client()  # a real local store
    client.create_registered_model("aevae-ae")
    for _ in range(2):
        client.create_model_version("aevae-ae", source=str(tmp_path))
    assert model_registry.version_count(client, "ae") == 2 and model_registry.version_count(client, "vae") == 0
    first = retrain.Decision("ae", "ae", "1", None, "promoted", first=True)
    heir = retrain.Decision("ae", "ae", "2", None, "promoted", first=False)
    assert first.line() == "ae: v1 is the new champion (no champion yet)"
    assert heir.line() == "ae: v2 is the new champion (no champion was set; earlier versions exist)"


# ------------------------------------------------------------- the whole story (slow)


def _retrain(root: Path, uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "aevae.ops.retrain", *args], root, check=check, MLFLOW_TRACKING_URI=uri)


def _aliases(uri: str) -> dict[str, dict[str, str]]:
    client = MlflowClient(uri, registry_uri=uri)
    return {m: dict(client.get_registered_model(f"aevae-{m}").aliases) for m in MODELS}


def _versions(uri: str, model: str) -> list[str]:
    return sorted((v.version for v in MlflowClient(uri).search_model_versions(f"name='aevae-{model}'")), key=int)


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "reports" / "retrain").glob("*.json"))]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_champion_moves_only_to_a_better_challenger(tmp_path):
    params = {**copy.deepcopy(SMALL_PARAMS), "retrain": POLICY}
    root = make_project(tmp_path / "p", params)
    server_root = tmp_path / "server"
    with mlflow_server(server_root) as (uri, server):
        # 1. The first retrain: every model's first version becomes its champion.
        out = _retrain(root, uri)
        assert _aliases(uri) == {m: {"champion": "1"} for m in MODELS}, out.stdout
        [first] = _records(root)
        assert {m: d["decision"] for m, d in first["models"].items()} == {m: "promoted" for m in MODELS}
        version = MlflowClient(uri).get_model_version("aevae-ae", "1")
        assert version.tags["aevae.decision"] == "promoted" and version.tags["aevae.compared_to"] == "none"

        # 2. Same data, code and params: nothing runs, nothing is registered or recorded.
        out = _retrain(root, uri)
        assert "nothing to do" in out.stdout and "Running stage 'train'" not in out.stdout
        assert _versions(uri, "ae") == ["1"] and len(_records(root)) == 1
        # --force compares anyway; the pipeline is up to date, so the champion is its own challenger.
        out = _retrain(root, uri, "--force")
        assert "already the champion" in out.stdout and _aliases(uri) == {m: {"champion": "1"} for m in MODELS}

        # 3. New data (a smaller validation share: more training images, the same test split)
        #    and a worse model (1 epoch instead of 3): the champion stays, v2 is the challenger.
        params["data"]["val_fraction"] = 0.05
        params["train"]["epochs"] = 1
        write_params(root, params)
        out = _retrain(root, uri)
        assert "changed: data_sha256, params_sha256" in out.stdout
        assert _aliases(uri) == {m: {"champion": "1", "challenger": "2"} for m in MODELS}, out.stdout
        worse = _records(root)[-1]
        for m in MODELS:
            decision = worse["models"][m]
            assert decision["decision"] == "kept" and decision["champion_after"] == "1"
            [check] = decision["criteria"]
            assert not check["passed"] and check["improvement"] < 0  # measurably worse, not just "not enough"
            tags = MlflowClient(uri).get_model_version(f"aevae-{m}", "2").tags
            assert tags["aevae.decision"] == "kept" and tags["aevae.compared_to"] == "1"
            assert float(tags[f"aevae.champion.{check['metric']}"]) == pytest.approx(check["champion"], rel=1e-5)

        # 4. A better model (8 epochs) - but a second retrain starts while it runs, and then the
        #    server stops mid-pipeline: the second is refused at once, the first fails, no alias moves.
        params["train"]["epochs"] = 8
        write_params(root, params)
        log = tmp_path / "first.log"
        first_run = start([sys.executable, "-m", "aevae.ops.retrain"], root, log, MLFLOW_TRACKING_URI=uri)
        try:
            _wait_for(log, "Running stage 'train'", first_run)
            t0 = time.monotonic()
            second = _retrain(root, uri, check=False)
            assert second.returncode == 2 and time.monotonic() - t0 < 30
            assert second.stderr.strip().splitlines() == [
                f"error: another retrain is running (pid {first_run.pid}); let it finish and run again"
                " (the lock on logs/retrain.lock is released when that process exits)"
            ]
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # stop the server
        assert first_run.wait(timeout=600) == 2
        last_line = log.read_text().strip().splitlines()[-1]
        assert last_line.startswith("error: dvc repro --no-run-cache failed") and "no alias was changed" in last_line
    with mlflow_server(server_root) as (uri, _):  # the same store, back up (on another port)
        assert _aliases(uri) == {m: {"champion": "1", "challenger": "2"} for m in MODELS}
        assert len(_records(root)) == 3

        # 5. The same better model, server up: it takes `champion`; the old challenger alias goes.
        out = _retrain(root, uri)
        better = _records(root)[-1]
        for m in MODELS:
            decision = better["models"][m]
            new = decision["challenger_version"]
            assert decision["decision"] == "promoted" and decision["champion_before"] == "1", out.stdout
            assert all(c["passed"] for c in decision["criteria"])
            assert _aliases(uri)[m] == {"champion": new}
            assert MlflowClient(uri).get_model_version(f"aevae-{m}", new).tags["aevae.decision"] == "promoted"
        assert better["fingerprint"]["data_sha256"] != first["fingerprint"]["data_sha256"]

        # 6. The champion alias is gone (its version deleted, say) while versions remain: not a "first version".
        MlflowClient(uri, registry_uri=uri).delete_registered_model_alias("aevae-ae", "champion")
        out = _retrain(root, uri, "--force")
        assert "(no champion was set; earlier versions exist)" in out.stdout and "(no champion yet)" not in out.stdout


def test_a_held_dvc_lock_is_one_line_naming_its_holder(tmp_path):
    import zc.lockfile

    from aevae.ops.retrain import check_dvc_lock

    path = tmp_path / ".dvc" / "tmp" / "lock"
    path.parent.mkdir(parents=True)
    check_dvc_lock(path)  # free
    held = zc.lockfile.LockFile(str(path))
    try:
        with pytest.raises(UserError) as info:
            check_dvc_lock(path)
    finally:
        held.close()
    message = str(info.value)
    assert "\n" not in message and f"pid {os.getpid()}" in message and f"kill {os.getpid()}" in message
    check_dvc_lock(path)  # released
