"""GPU packing: several models per GPU through Ray's fractional GPUs; without GPUs, nothing changes.

The Ray tests start a real local instance. On this CPU-only machine a GPU is a logical resource
(`ray.init(num_gpus=1)`): Ray admits and accounts for it exactly as for a real one, and the tasks, which
torch cannot give a GPU, train on the CPU. What is checked is the scheduling, which is Ray's either way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from aevae.config import ModelParams, RayParams, RunSpec, TrainParams, load_params
from aevae.core.models import build_model
from aevae.core.training import device_bytes
from aevae.errors import UserError
from aevae.ops.distributed import CUDA_CONTEXT_BYTES, MEMORY_SAFETY, gpu_share
from project import SMALL_PARAMS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import device_check  # noqa: E402  (bench/: the device check's count of tasks at once)

GiB = 2**30


# ----------------------------------------------------------------------------- the share, as arithmetic


def test_a_number_is_taken_as_it_is():
    assert gpu_share(0.25, task_bytes=GiB, gpu_bytes=None, cpus_per_gpu=16, cpus_per_task=1) == 0.25
    assert gpu_share(2.0, task_bytes=GiB, gpu_bytes=None, cpus_per_gpu=16, cpus_per_task=1) == 2.0


def test_auto_is_bounded_by_the_cpus_that_feed_each_gpu():
    # 80 GB holds dozens of these models; 8 CPUs per GPU at 2 each feed four.
    assert gpu_share("auto", 200 * 2**20, 80 * GiB, cpus_per_gpu=8, cpus_per_task=2) == 0.25
    assert gpu_share("auto", 200 * 2**20, None, cpus_per_gpu=3, cpus_per_task=1) == 0.3333  # 3 fit in 1.0


def test_auto_is_bounded_by_memory_with_the_safety_factor_and_a_context_each():
    task = GiB
    per_model = MEMORY_SAFETY * task + CUDA_CONTEXT_BYTES
    gpu = int(3.5 * per_model)  # room for three, not four
    assert gpu_share("auto", task, gpu, cpus_per_gpu=64, cpus_per_task=1) == 0.3333
    assert gpu_share("auto", 100 * GiB, 16 * GiB, cpus_per_gpu=64, cpus_per_task=1) == 1.0  # too big: alone
    assert gpu_share("auto", task, gpu, cpus_per_gpu=0.5, cpus_per_task=1) == 1.0  # never below one model


def test_the_memory_estimate_counts_the_data_and_grows_with_the_model():
    x = np.zeros((1000, 28, 28), np.uint8)
    small = RunSpec(name="s", model=ModelParams(hidden=[32]), train=TrainParams())
    big = RunSpec(name="b", model=ModelParams(hidden=[512, 256]), train=TrainParams())
    data = 4 * 784 * (1000 + 100) + 5 * 784 * 1000  # float32 for the whole run; uint8 + float while converting
    assert data < device_bytes(small, x, 100) < device_bytes(big, x, 100)
    params = sum(p.numel() for p in build_model(big.model, (1, 28, 28)).parameters())
    assert device_bytes(big, x, 100) - data > 16 * params  # weights, gradients, Adam's two moments


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "half", True])
def test_a_bad_gpus_per_model_is_one_line(tmp_path, value):
    params = {**SMALL_PARAMS, "ray": {**SMALL_PARAMS["ray"], "gpus_per_model": value}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as err:
        load_params(path)
    text = str(err.value)
    assert "\n" not in text and "ray.gpus_per_model" in text and "auto" in text


@pytest.mark.parametrize("value", ["auto", 0.25, 1, 2])
def test_a_good_gpus_per_model_passes(tmp_path, value):
    params = {**SMALL_PARAMS, "ray": {**SMALL_PARAMS["ray"], "gpus_per_model": value}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_params(path).ray.gpus_per_model == value


# ----------------------------------------------------------------------------- real Ray


def _specs(n: int) -> list[RunSpec]:
    return [
        RunSpec(name=f"m{i}", model=ModelParams(kind="ae", hidden=[32]), train=TrainParams(epochs=3, seed=i))
        for i in range(n)
    ]


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).integers(0, 256, (2200, 28, 28), dtype=np.uint8)
    return x[:2000], x[2000:]


def _sweep(storage: Path, ray_params: RayParams, n: int = 2) -> tuple[dict, list]:
    from aevae.ops.distributed import train_sweep

    outcomes: list = []
    facts = train_sweep(
        _specs(n), *_data(), storage, ray_params, "sha", on_epoch=lambda name, rec: None, on_done=outcomes.append
    )
    assert len(outcomes) == n and not any(o.error for o in outcomes), [o.error for o in outcomes]
    return facts, outcomes


@pytest.fixture
def local_ray(monkeypatch):
    """A real local Ray instance with the logical resources asked for; shut down after the test."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def start(**resources):
        ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, **resources)
        return ray

    yield start
    ray.shutdown()


@pytest.mark.slow
def test_packing_trains_several_models_on_one_gpu_at_once(tmp_path, local_ray):
    from aevae.core import training
    from aevae.ops.distributed import map_tasks

    ray = local_ray(num_cpus=2, num_gpus=1)
    # Evaluation tasks pack the same way; these two also leave two workers with torch loaded, so the two
    # models below start training together instead of one torch import apart.
    done: list = []
    facts = map_tasks(
        training.steps_per_epoch,
        {"a": (1000, 128), "b": (1000, 64)},
        {},
        cpus_per_task=1,
        max_retries=0,
        on_done=done.append,
        ray_params=RayParams(gpus_per_model=0.5),
    )
    assert facts["gpus_per_task"] == 0.5 and sorted(o.value for o in done) == [8, 16]
    assert all(o.resources == {"CPU": 1.0, "GPU": 0.5} and o.device == "cpu" for o in done)

    facts, outcomes = _sweep(tmp_path / "packed", RayParams(gpus_per_model="auto"))
    # auto: no GPU memory to read here (no nvidia-smi), so the node's 2 CPUs per GPU bound it: two per GPU.
    assert facts["use_gpu"] is True and facts["gpus_per_model"] == 0.5
    assert all(o.resources == {"CPU": 1.0, "GPU": 0.5} for o in outcomes)
    assert device_check.most_at_once(outcomes) == 2  # both on the one GPU at the same time
    assert all(o.device == "cpu" for o in outcomes)  # the logical GPU: torch falls back to the CPU

    facts, outcomes = _sweep(tmp_path / "whole", RayParams(gpus_per_model=1))
    assert facts["gpus_per_model"] == 1.0 and all(o.resources["GPU"] == 1.0 for o in outcomes)
    assert device_check.most_at_once(outcomes) == 1  # a whole GPU each: one after the other, CPUs to spare or not
    assert ray.is_initialized()  # the caller's instance, reused by both sweeps and left running

    with pytest.raises(UserError, match=r"ray.gpus_per_model = 2 but the largest node .* has 1 GPU"):
        _sweep(tmp_path / "two", RayParams(gpus_per_model=2))  # Ray would queue it forever


@pytest.mark.slow
def test_without_gpus_no_task_asks_for_one(tmp_path, local_ray):
    from aevae.core import training
    from aevae.ops.distributed import map_tasks

    local_ray(num_cpus=2)
    facts, outcomes = _sweep(tmp_path / "cpu", RayParams(gpus_per_model="auto"))
    assert facts["use_gpu"] is False and facts["gpus_per_model"] == 0.0
    assert all(o.resources == {"CPU": 1.0} and o.device == "cpu" for o in outcomes)
    assert device_check.most_at_once(outcomes) == 2  # as before: as many models at once as CPUs

    done: list = []
    facts = map_tasks(
        training.steps_per_epoch,
        {"a": (1000, 128)},
        {},
        cpus_per_task=1,
        max_retries=0,
        on_done=done.append,
        ray_params=RayParams(gpus_per_model=0.25),
    )
    assert facts["gpus_per_task"] == 0.0 and done[0].resources == {"CPU": 1.0} and done[0].device == "cpu"
    assert done[0].value == 8

    with pytest.raises(UserError, match="ray.use_gpu is true but the Ray cluster has no GPU"):
        _sweep(tmp_path / "asked", RayParams(use_gpu=True))
