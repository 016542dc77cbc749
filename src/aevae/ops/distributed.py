"""Ray: trains and evaluates the sweep, one model per task, on a local instance or a cluster.

The only module that knows Ray. A plain Ray task per model starts in seconds
where Ray Train's TorchTrainer costs ~25 s of fixed overhead on a small
machine, so TorchTrainer (DDP) is used only when `workers_per_model > 1`.

With RAY_ADDRESS set we attach to that cluster and start nothing; otherwise a
local instance sized to this machine is started and shut down afterwards.
Workers get the data through Ray's object store and write checkpoints to
`storage_path` (absolute: Ray changes workers' working directory; shared
storage on a multi-node cluster). Tasks are spread over the cluster's nodes
(each records the node it ran on); a task whose node dies is retried on
another, and a training task resumes there from its last checkpoint.

On a cluster with GPUs each task asks Ray for a share of one (`gpu_share`):
a ~1M-parameter model at batch 128 leaves a whole GPU nearly idle, so several
train side by side on it, each in its own process. Without GPUs the tasks ask
for none, as before. A driver that already called ray.init keeps its instance:
Ray starts at most once per stage, and a caller may start it with the
resources it wants (a test: a logical GPU on a CPU-only machine).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aevae.config import RayParams, RunSpec
from aevae.cpus import available_cpus
from aevae.errors import UserError

_CONNECT_TIMEOUT_S = 5.0

# What one worker process's CUDA context, cuBLAS workspace and torch's loaded kernels take on a GPU before its
# first tensor: 300-600 MiB with torch 2.x; bench/device_check.py measures it per model.
CUDA_CONTEXT_BYTES = 512 * 2**20
# training.device_bytes is an estimate: a model counts this many times it, for fragmentation and torch.compile's
# buffers, so models packed by `auto` do not run a GPU out of memory.
MEMORY_SAFETY = 2.0
# Ray counts a GPU in steps of 1/10,000: a share rounded down to them keeps n shares within one GPU.
_GPU_STEPS = 10_000


@dataclass
class ModelOutcome:
    spec: RunSpec
    state_dict: dict | None  # None when training failed
    history: list[dict]
    epochs_run: int  # epochs trained in this run (fewer than the total after a resume)
    device: str
    seconds: float
    error: str | None = None
    node_id: str = ""  # the Ray node that finished it
    resources: dict = field(default_factory=dict)  # what Ray lent the task: {"CPU": 1.0, "GPU": 0.25}
    threads: int = 0  # torch threads the task trained with (_threads); 0 under DDP, where each worker sets its own
    started: float = 0.0  # Unix time (s) the task began training on its worker; it ended `seconds` later


@dataclass
class TaskOutcome:
    """One `map_tasks` task: its key, fn's return value, the node it ran on and its seconds there."""

    key: str
    value: Any  # fn's return value; None when the task failed
    node_id: str
    seconds: float
    error: str | None = None
    device: str = "cpu"  # where fn's torch modules and tensors ran
    resources: dict = field(default_factory=dict)  # what Ray lent the task: {"CPU": 1.0, "GPU": 0.25}
    threads: int = 0  # torch and BLAS threads fn ran with (_threads)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # a terminal escape sequence (Ray colours its task names)


def task_failure(exc: BaseException) -> str:
    """Why a Ray task failed, as one line without terminal escapes: the task's own exception as
    `Type: message` (unwrapped from Ray's RayTaskError; a UserError as its message), or what happened to its worker, node or actor.
    Never raises."""
    import ray.exceptions as rex

    cause = exc
    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None) or exc.as_instanceof_cause()
        if cause is exc or isinstance(cause, rex.RayTaskError):  # no cause kept: Ray's text, wrapper lines dropped
            return _clean(str(exc).splitlines()[-1])
    if isinstance(cause, rex.RayError) and not isinstance(cause, rex.RayTaskError):
        return _ray_failure(cause)
    if isinstance(cause, UserError):  # written for the user already: the problem and its fix
        return _clean(_first_text_line(cause))
    return f"{type(cause).__name__}: {_clean(_first_text_line(cause))}"


def _ray_failure(exc: BaseException) -> str:
    """A failure of Ray's own (the worker, its node, an actor, a cancel) in words, with Ray's first line."""
    import ray.exceptions as rex

    kinds = (
        (rex.OutOfMemoryError, "its worker was killed for lack of memory"),
        (rex.TaskCancelledError, "the task was cancelled"),
        (rex.NodeDiedError, "its node died"),
        (rex.WorkerCrashedError, "its worker process died"),
        (rex.RayActorError, "an actor it needed died"),
        (rex.ObjectLostError, "its data in the object store was lost"),
    )
    what = next((text for cls, text in kinds if isinstance(exc, cls)), type(exc).__name__)
    detail = _clean(_first_text_line(exc))[:200]
    return f"{what} ({type(exc).__name__}: {detail})" if detail and detail != type(exc).__name__ else what


def _first_text_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _clean(text: str) -> str:
    """`text` without terminal escape sequences, its whitespace runs made single spaces."""
    return " ".join(_ANSI.sub("", text).split())


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# An HTTP/2 client preface and an empty SETTINGS frame: a Ray GCS (a gRPC server) answers with its own
# SETTINGS frame (frame type 0x4 in the 4th byte); a web server, or anything else, does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 0x04


def check_address() -> None:
    """RAY_ADDRESS, when set, must lead to a Ray cluster: a UserError within seconds otherwise.

    Ray itself retries an address for minutes. Here a refused port, an unknown host, a port that
    accepts and never answers, and a server that is not a gRPC endpoint (a Ray GCS or Ray Client
    server), e.g. a web server, each end in one line. "auto" and friends are Ray's to resolve,
    and a cluster with TLS (RAY_USE_TLS) cannot be probed in plain text.
    """
    address = os.environ.get("RAY_ADDRESS", "").strip()
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    fix = "start one (ray start --head) or unset RAY_ADDRESS to train on a local instance"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S) as conn:  # [::1]
            conn.settimeout(_CONNECT_TIMEOUT_S)
            conn.sendall(_H2_PREFACE)
            answer = conn.recv(9)
    except (OSError, ValueError) as exc:  # refused, unknown host, bad port, or no answer in time
        reason = "no answer" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or exc
        raise UserError(f"no Ray cluster answers at RAY_ADDRESS={address} ({reason}); {fix}") from None
    if len(answer) < 4 or answer[3] != _H2_SETTINGS:
        raise UserError(
            f"something answers at RAY_ADDRESS={address}, but it is not a Ray cluster (no gRPC);"
            f" check the port (a head's GCS is 6379, Ray Client's ray:// is 10001), or {fix}"
        )


def connect(on_status: Callable[[str], None] | None = None) -> tuple[bool, str]:
    """Attach to RAY_ADDRESS or start a local instance; returns (started_locally, gcs address).
    on_status(text) says which, before the seconds that takes."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if on_status:
        on_status(
            f"attaching to the Ray cluster at {address}"
            if address
            else f"starting a local Ray instance ({available_cpus()} CPUs)"
        )
    if address:
        check_address()
        # Since Ray 2.59 a head started with `ray start` requires token auth, but a driver attaching by
        # address only sends its token when told to: do so whenever this user has a token. Ray reads
        # this when it is imported, so it is set first.
        if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    warnings.filterwarnings("ignore", category=FutureWarning)
    _quiet_worker_deaths()
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    with _keep_sigterm_handler():
        return _init(ray, address, quiet)


def _init(ray, address: str, quiet: dict) -> tuple[bool, str]:
    """ray.init on the cluster at `address`, or on a new local instance when it is empty."""
    if address:
        import aevae

        try:
            # Ship this package to the cluster so its workers run the driver's exact code.
            ray.init(address=address, runtime_env={"py_modules": [aevae]}, **quiet)
        except ConnectionError as exc:
            raise UserError(
                f"cannot connect to the Ray cluster at RAY_ADDRESS={address} ({exc}); check the address, and with"
                " token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
            ) from None
        return False, ray.get_runtime_context().gcs_address
    # Sized to the CPUs this process may use (affinity, cgroup quota), not the machine's core count.
    ray.init(address="local", num_cpus=available_cpus(), **quiet)
    return True, ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler with sys.exit: keep the stage's own (see errors.run_cli)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


# How Ray's raylet words a worker's or node's death and the retry that follows (Ray 2.60).
_DEATH_SIGNS = ("worker died", "was killed", "will be retried", "worker exit", "node died", "unexpected system error")


def _quiet_worker_deaths() -> None:
    """One line per Ray error message instead of Ray's multi-line "(raylet) A worker died ..." dump.

    log_to_driver=False silences the workers' output, but not the error messages Ray's driver thread
    prints through ray._private.worker.print_to_stdstream; wrapping that function is the only hook.
    The task is retried (ray.max_retries) and a final failure is reported by the stage itself.
    """
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "aevae_quiet", False):  # another Ray version, or already wrapped
        return

    def one_line(data, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        for message in data.get("lines", []):
            text = " ".join(str(message).split())
            if any(sign in text.lower() for sign in _DEATH_SIGNS):
                text = "a Ray worker died; its model is retried from its last checkpoint (ray.max_retries)"
            print(f"warning: {text[:200]}", file=sys.stderr, flush=True)

    one_line.aevae_quiet = True
    worker.print_to_stdstream = one_line


@contextlib.contextmanager
def _ray_session(on_status: Callable[[str], None] | None):
    """Ray for one call, yielding (started_locally, gcs address).

    When this process has already called ray.init (an earlier call of this stage, a test, a benchmark) that
    instance is used and left running; otherwise `connect` attaches or starts one and it is shut down after.
    """
    running = sys.modules.get("ray")
    if running is not None and running.is_initialized():
        yield False, running.get_runtime_context().gcs_address
        return
    started_locally, gcs = connect(on_status)  # first: it sets Ray's environment before Ray is imported
    import ray

    try:
        yield started_locally, gcs
    finally:
        ray.shutdown()


def gpu_share(
    setting: float | str, task_bytes: int, gpu_bytes: int | None, cpus_per_gpu: float, cpus_per_task: float
) -> float:
    """GPUs one task asks Ray for: `setting` when it is a number; for "auto", 1/n for the n tasks one GPU holds.

    task_bytes: the task's estimated device memory (training.device_bytes), bytes; gpu_bytes: one GPU's total
    memory, bytes (None: unknown, e.g. a logical GPU on a machine without one; then only CPUs bound n);
    cpus_per_gpu: the cluster's CPUs over its GPUs; cpus_per_task: CPUs each task reserves. n is the smaller of
    gpu_bytes / (MEMORY_SAFETY * task_bytes + CUDA_CONTEXT_BYTES) and cpus_per_gpu / cpus_per_task (each model's
    process feeds its GPU kernels from its own CPU: more models than CPUs only queue), at least 1. The share is
    rounded down to Ray's 1/10,000 steps, so n of them fit one GPU. Never raises.
    """
    if setting != "auto":
        return float(setting)
    n = math.floor(cpus_per_gpu / cpus_per_task)
    if gpu_bytes:
        n = min(n, math.floor(gpu_bytes / (MEMORY_SAFETY * task_bytes + CUDA_CONTEXT_BYTES)))
    return math.floor(_GPU_STEPS / max(1, n)) / _GPU_STEPS


def _gpu_memory_bytes() -> int | None:
    """Body of a Ray task: the total memory of the GPU Ray lent it, bytes, from nvidia-smi (which, unlike torch,
    creates no CUDA context); None without a GPU or nvidia-smi."""
    import ray

    ids, smi = ray.get_gpu_ids(), shutil.which("nvidia-smi")
    if not ids or not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", f"--id={ids[0]}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return int(float(out.split()[0]) * 2**20)  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _gpus_per_task(ray_params: RayParams, task_bytes: int) -> float:
    """GPUs each task asks for on this cluster, which has GPUs: `gpu_share`'s, one GPU's memory probed for auto.

    Raises: UserError when ray.gpus_per_model asks for more GPUs than any node has (Ray would wait forever).
    """
    import ray

    setting = ray_params.gpus_per_model
    most = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if setting != "auto" and setting > most:
        raise UserError(
            f"ray.gpus_per_model = {setting:g} but the largest node of the Ray cluster has {most:g}"
            " GPU(s); lower it (a fraction packs several models per GPU) or set it to auto"
        )
    gpu_bytes = None
    if setting == "auto":  # a sliver of a GPU and no CPU: it runs beside anything
        probe = ray.remote(_gpu_memory_bytes).options(num_cpus=0, num_gpus=1 / _GPU_STEPS)
        gpu_bytes = ray.get(probe.remote())
    resources = ray.cluster_resources()
    return gpu_share(
        setting, task_bytes, gpu_bytes, resources.get("CPU", 1.0) / resources["GPU"], ray_params.cpus_per_model
    )


def _task_device() -> str:
    """Inside a task: "cuda" when Ray lent it a GPU that torch can use, else "cpu" (e.g. a logical GPU resource
    on a node without one; the caller warns)."""
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _assigned() -> dict:
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def _use_gpu(setting: bool | str) -> bool:
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if setting is True and not has_gpu:
        raise UserError("ray.use_gpu is true but the Ray cluster has no GPU; set ray.use_gpu: auto or false")
    return bool(has_gpu) if setting == "auto" else bool(setting)


def _progress_board():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class ProgressBoard:
        """Collects per-epoch records from workers; the driver drains and prints them."""

        def __init__(self):
            self.records: list[tuple[str, dict]] = []

        def report(self, name: str, record: dict) -> None:
            self.records.append((name, record))

        def drain(self) -> list[tuple[str, dict]]:
            out, self.records = self.records, []
            return out

    return ProgressBoard.remote()


def _threads(cpus: float) -> int:
    """torch/BLAS threads for a task reserving `cpus` CPUs: at least 1, at most the CPUs this worker may use."""
    return max(1, min(int(cpus), available_cpus()))


def _train_one(
    spec: RunSpec, train_images, val_images, ckpt_dir: str, data_sha256: str, cpus: float, board
) -> ModelOutcome:
    """Body of one Ray task: plain PyTorch training on whatever device Ray assigned."""
    import torch

    from aevae.core.training import Diverged, train_model

    torch.set_num_threads(_threads(cpus))
    device = _task_device()
    started, t0 = time.time(), time.perf_counter()
    facts = dict(node_id=_node_id(), resources=_assigned(), threads=torch.get_num_threads(), started=started)
    try:
        result = train_model(
            spec,
            train_images,
            val_images,
            device=device,
            checkpoint_dir=Path(ckpt_dir),
            on_epoch=lambda rec: board.report.remote(spec.name, rec),
            data_sha256=data_sha256,
        )
    except Diverged as exc:
        return ModelOutcome(spec, None, [], 0, device, time.perf_counter() - t0, error=str(exc), **facts)
    state = {k: v.cpu() for k, v in result.model.state_dict().items()}
    return ModelOutcome(spec, state, result.history, result.epochs_run, device, time.perf_counter() - t0, **facts)


def _ddp_loop(config: dict) -> None:
    """Ray Train worker: the same loop, its share of each batch, gradients averaged by DDP."""
    import ray.train
    import ray.train.torch
    import torch

    from aevae.core.training import train_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(_threads(config["cpus"]))
    board = config["board"] if rank == 0 else None
    spec = config["spec"]
    result = train_model(
        spec,
        config["train"],
        config["val"],
        device=ray.train.torch.get_device(),
        checkpoint_dir=Path(config["ckpt_dir"]),
        data_sha256=config["data_sha256"],
        shard=(rank, world),
        wrap=ray.train.torch.prepare_model,
        on_epoch=(lambda rec: board.report.remote(spec.name, rec)) if board else None,
    )
    ray.train.report({"epochs_run": result.epochs_run})  # the weights travel through the checkpoint file


def _fit_ddp(
    spec: RunSpec, data: tuple, ckpt_dir: str, data_sha256: str, ray_params: RayParams, use_gpu: bool, board
) -> ModelOutcome:
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from aevae.core.training import CHECKPOINT, read_checkpoint, spec_digest

    t0 = time.perf_counter()
    ckpt = Path(ckpt_dir) / CHECKPOINT
    before = read_checkpoint(ckpt, spec_digest(spec, data_sha256), torch.device("cpu"))
    epochs_before = before["epoch"] if before else 0
    trainer = TorchTrainer(
        _ddp_loop,
        train_loop_config={
            "spec": spec,
            "train": data[0],
            "val": data[1],
            "ckpt_dir": ckpt_dir,
            "data_sha256": data_sha256,
            "cpus": ray_params.cpus_per_model,
            "board": board,
        },
        scaling_config=ScalingConfig(
            num_workers=ray_params.workers_per_model,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": ray_params.cpus_per_model},
        ),
        run_config=RunConfig(name=f"ddp-{spec.name}", storage_path=str(Path(ckpt_dir).parent / "_ray_train")),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; report it as this model's failure
        return ModelOutcome(
            spec, None, [], 0, "ddp", time.perf_counter() - t0, error=f"model '{spec.name}' failed: {task_failure(exc)}"
        )
    # Rank 0 wrote the final state as its last checkpoint: read it back from storage.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return ModelOutcome(
        spec,
        state["model"],
        state["history"],
        state["epoch"] - epochs_before,
        f"ddp x{ray_params.workers_per_model}",
        time.perf_counter() - t0,
    )


def checkpoint_dir(storage_path: Path, spec: RunSpec, data_sha256: str) -> Path:
    from aevae.core.training import spec_digest

    return storage_path / f"{spec.name}-{spec_digest(spec, data_sha256)}"


def train_sweep(
    specs: list[RunSpec],
    train_images: np.ndarray,
    val_images: np.ndarray,
    storage_path: Path,
    ray_params: RayParams,
    data_sha256: str,
    on_epoch: Callable[[str, dict], None],
    on_done: Callable[[ModelOutcome], None],
    on_status: Callable[[str], None] | None = None,
) -> dict:
    """Train every spec concurrently as resources allow; returns facts about the cluster used.

    On a cluster with GPUs each model asks for `gpu_share` of one (ray.gpus_per_model; auto from
    training.device_bytes of the largest spec), so several train on one GPU; DDP workers
    (workers_per_model > 1) take a whole GPU each, as NCCL cannot share one between ranks.
    on_status(text) says what happens before the first epoch lines (Ray start-up, tasks submitted).
    Raises: UserError when ray.use_gpu is true and the cluster has no GPU.
    """
    storage_path = storage_path.resolve()
    with _ray_session(on_status) as (started_locally, gcs):
        return _train_on_ray(
            specs, train_images, val_images, storage_path, ray_params, data_sha256, on_epoch, on_done, on_status
        ) | _cluster_facts(started_locally, gcs)


def _train_on_ray(
    specs,
    train_images,
    val_images,
    storage_path: Path,
    ray_params: RayParams,
    data_sha256: str,
    on_epoch,
    on_done,
    on_status,
) -> dict:
    """train_sweep's body on a running Ray instance; returns {"use_gpu", "gpus_per_model"}."""
    import ray

    from aevae.core.training import device_bytes

    use_gpu = _use_gpu(ray_params.use_gpu)
    models = {spec.model_dump_json(): spec for spec in specs}.values()  # the sweep's seeds share a model's size
    gpus = (
        _gpus_per_task(ray_params, max(device_bytes(s, train_images, len(val_images)) for s in models))
        if use_gpu
        else 0.0
    )
    on_cpu: list[str] = []

    def done(outcome: ModelOutcome) -> None:
        if gpus and outcome.device == "cpu" and outcome.error is None:
            on_cpu.append(outcome.spec.name)
        on_done(outcome)

    board = _progress_board()
    data = (ray.put(train_images), ray.put(val_images))
    task = ray.remote(_train_one).options(
        num_cpus=ray_params.cpus_per_model,
        num_gpus=gpus,
        max_retries=ray_params.max_retries,
        scheduling_strategy="SPREAD",  # one model per node first: each gets a node's memory bandwidth
    )
    pending, ddp_specs = {}, []
    for spec in specs:
        ckpt = str(checkpoint_dir(storage_path, spec, data_sha256))
        if ray_params.workers_per_model > 1:
            ddp_specs.append((spec, ckpt))
            continue
        pending[task.remote(spec, data[0], data[1], ckpt, data_sha256, ray_params.cpus_per_model, board)] = spec
    if on_status and pending:
        on_status(f"{len(pending)} training tasks submitted; epoch lines follow once workers have loaded torch")
    _wait_all(pending, board, on_epoch, done)
    for spec, ckpt in ddp_specs:  # each fit uses the whole cluster's share: one after another
        outcome = _fit_ddp(spec, (train_images, val_images), ckpt, data_sha256, ray_params, use_gpu, board)
        _drain(board, on_epoch)
        on_done(outcome)
    _warn_cpu_fallback(on_cpu)
    return {"use_gpu": use_gpu, "gpus_per_model": gpus}


def _warn_cpu_fallback(names: list[str]) -> None:
    """One line when tasks that Ray lent a GPU ran on the CPU: the run is valid, but not what was asked for."""
    if names:
        print(
            f"warning: Ray lent {len(names)} task(s) a GPU that torch cannot use (torch.cuda.is_available() is"
            f" False there, e.g. a CPU build of torch), so they ran on the CPU: {', '.join(names[:3])}",
            file=sys.stderr,
            flush=True,
        )


def _cluster_facts(started_locally: bool, gcs: str) -> dict:
    import ray

    return {
        "ray_started_locally": started_locally,
        "ray_gcs_address": gcs,
        "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k},
    }


def _run_task(fn: Callable, key: str, args: tuple, cpus: float, names: tuple[str, ...], *shared) -> TaskOutcome:
    """Body of one `map_tasks` task: fn(*args, **shared) with as many torch, BLAS and OpenMP threads as CPUs reserved.

    The BLAS/OpenMP pools (scikit-learn's kNN, silhouette, GMM, PCA) would otherwise size themselves to
    the whole machine and spin against the task beside them. With a GPU lent, the torch modules and
    tensors among args and shared (this worker's own copies) move to it first.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = _threads(cpus)
    torch.set_num_threads(threads)
    device = _task_device()
    t0 = time.perf_counter()
    args = tuple(_to_device(a, device) for a in args)
    kwargs = {n: _to_device(v, device) for n, v in zip(names, shared)}
    with threadpool_limits(limits=threads):
        value = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    return TaskOutcome(key, value, _node_id(), seconds, device=device, resources=_assigned(), threads=threads)


def _to_device(value: Any, device: str) -> Any:
    """A torch module or tensor on `device`; anything else (numpy arrays, params) as it is."""
    import torch

    if device != "cpu" and isinstance(value, (torch.nn.Module, torch.Tensor)):
        return value.to(device)
    return value


def map_tasks(
    fn: Callable,
    items: dict[str, tuple],
    shared: dict[str, Any],
    cpus_per_task: float,
    max_retries: int,
    on_done: Callable[[TaskOutcome], None],
    on_wait: Callable[[list[str]], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    ray_params: RayParams | None = None,
    task_bytes: int = 0,
) -> dict:
    """Run fn(*items[key], **shared) for every key, one Ray task each, spread over the cluster.

    The same local-or-cluster rules as `train_sweep` (RAY_ADDRESS, see `connect`). `shared` (the data, a
    classifier) goes to the object store once and every task reads the same copy; each task runs torch
    with `cpus_per_task` threads, so on a 2-core machine two tasks run at once. on_done gets each
    TaskOutcome as it finishes, in the driver's process (`error` set when its worker or node died more
    often than max_retries allows, or fn raised: task_failure's one line); on_wait(keys not yet
    done, running or queued) about once a second. fn must be importable by the workers (a function of this package) and
    its results picklable. on_status(text) says when Ray starts. Returns facts about the cluster used.
    ray_params (None: CPUs only): on a cluster with GPUs each task asks for `gpu_share` of one
    (ray.use_gpu, ray.gpus_per_model; task_bytes: a task's estimated device memory, bytes, for auto) and
    fn's torch modules and tensors run there. Raises: UserError when ray.use_gpu is true and there is no GPU.
    """
    with _ray_session(on_status) as (started_locally, gcs):
        gpus = 0.0
        if ray_params is not None and _use_gpu(ray_params.use_gpu):
            gpus = _gpus_per_task(ray_params, task_bytes)
        _map_on_ray(fn, items, shared, cpus_per_task, gpus, max_retries, on_done, on_wait)
        return {**_cluster_facts(started_locally, gcs), "gpus_per_task": gpus}


def _map_on_ray(fn, items: dict, shared: dict, cpus: float, gpus: float, max_retries: int, on_done, on_wait) -> None:
    """map_tasks' body on a running Ray instance."""
    import ray

    names = tuple(shared)
    refs = [ray.put(shared[n]) for n in names]
    task = ray.remote(_run_task).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, scheduling_strategy="SPREAD"
    )
    pending = {task.remote(fn, key, args, cpus, names, *refs): key for key, args in items.items()}
    on_cpu = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in done:
            key = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # fn raised, or its worker, node or actor died on every try
                outcome = TaskOutcome(key, None, "", 0.0, error=f"'{key}' failed: {task_failure(exc)}")
            if gpus and outcome.error is None and outcome.device == "cpu":
                on_cpu.append(key)
            on_done(outcome)
        if pending and on_wait:
            on_wait(sorted(pending.values()))
    _warn_cpu_fallback(on_cpu)


def _drain(board, on_epoch) -> None:
    import ray

    try:
        records = ray.get(board.drain.remote())
    except ray.exceptions.RayActorError:  # progress lines are lost, the training itself goes on
        return
    for name, record in records:
        on_epoch(name, record)


def _wait_all(pending: dict, board, on_epoch, on_done) -> None:
    import ray

    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        _drain(board, on_epoch)
        for ref in done:
            spec = pending.pop(ref)
            try:
                on_done(ray.get(ref))
            except ray.exceptions.RayError as exc:  # it raised, or its worker died more often than max_retries allows
                on_done(
                    ModelOutcome(spec, None, [], 0, "?", 0.0, error=f"model '{spec.name}' failed: {task_failure(exc)}")
                )
