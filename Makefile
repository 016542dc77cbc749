# The two commands: `make repro` runs the pipeline, `make test` runs the tests.
# Both set up .venv from requirements.lock first (fast when nothing changed).

# Relative paths, quoted in recipes: a checkout path may hold spaces, which make cannot take in a target name.
VENV  := .venv
PY    := "$(CURDIR)/$(VENV)/bin/python"
STAMP := $(VENV)/.installed
STORE := "sqlite:///$(CURDIR)/mlflow.db"
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test test-fast ui models serve retrain bench lock

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv "$(CURDIR)/$(VENV)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch "$(STAMP)"

# params.yaml is checked first by the stages' own reader: DVC parses it too, and its messages for a YAML error
# or a mistyped section are many lines; ours is one line naming the key and the fix.
repro: setup
	$(PY) -c "from aevae.errors import run_cli; from aevae.config import load_params, resolve_sweep; run_cli(lambda: resolve_sweep(load_params()))"
	dvc repro

# Every test, the end-to-end runs included (CI runs this), on TEST_JOBS pytest-xdist workers, in the order
# tests/conftest.py sets (--no-loadscope-reorder); a module with module-scoped fixtures stays on one worker
# (--dist loadgroup), so they are made once. Measured times: see README.
TEST_JOBS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder --durations=25

# The fast tier for development: unit tests only (no dvc repro, Ray cluster or MLflow server).
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder -m "not slow"

# Open the MLflow UI on the local store, bound to this machine only (UI_PORT=... for another port);
# first the URL of the training runs (each model's mean over seeds once the evaluate stage has run); a taken port
# is one line (MLflow's UI would exit 0). Without MLflow's GenAI job runner (online trace scoring): eight processes
# and ~0.5 GB that a training-run store never uses.
UI_PORT ?= 5000
ui: setup
	@MLFLOW_TRACKING_URI=$(STORE) $(PY) -m aevae.ops.mlflow_store $(UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri $(STORE) --host 127.0.0.1 --port $(UI_PORT)

# List every registered version (seed, run) and its aliases: what `make serve` can serve.
models: setup
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" $(PY) -m aevae.ops.model_registry

# Serve a registered model over HTTP on this machine only: POST to http://127.0.0.1:$(PORT)/invocations (see README).
# The project's store, or the server at MLFLOW_TRACKING_URI when set. `make retrain` sets the champion alias;
# before the first retrain serve a version instead: VERSION=latest (or a number). MODEL is the group: the member,
# plus -z<size> when sweep.latent_dims has several (one registered model per group, a version per seed).
MODEL ?= vae-beta1-z2
ALIAS ?= champion
PORT  ?= 5001
MODEL_URI = models:/aevae-$(MODEL)$(if $(VERSION),/$(VERSION),@$(ALIAS))
serve: setup
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		$(PY) -c "from aevae.errors import run_cli; from aevae.ops.mlflow_store import check_port_free; from aevae.ops.model_registry import check_registered; run_cli(lambda: (check_port_free($(PORT), 'make serve PORT'), check_registered('$(MODEL_URI)')))"
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		mlflow models serve -m $(MODEL_URI) --env-manager local -h 127.0.0.1 -p $(PORT)

# Retrain on a schedule: champion/challenger promotion (see README). FORCE=1 retrains even if nothing changed.
retrain: setup
	$(PY) -m aevae.ops.retrain $(if $(FORCE),--force,) $(RETRAIN_ARGS)

# Benchmarks against the usual scripts; appends to bench/RESULTS.md.
bench: setup
	$(PY) bench/run.py

# Re-resolve the pinned versions after changing pyproject.toml's dependencies.
lock: setup
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip freeze --exclude-editable | grep -v '^aevae' > requirements.lock
