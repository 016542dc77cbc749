"""A failed Ray task reaches the user as its cause, in one line without terminal escapes."""

from __future__ import annotations

import pytest
import ray.exceptions as rex

from aevae.ops.distributed import task_failure


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:
        return caught


def test_an_exception_in_the_task_is_its_cause_without_colours():
    cause = _raised(ValueError("bad latent size 0\nsecond line"))
    wrapped = rex.RayTaskError("\x1b[36mray::_train_one()\x1b[39m", "Traceback ...", cause, pid=123, ip="1.2.3.4")
    assert task_failure(wrapped) == "ValueError: bad latent size 0"
    assert task_failure(wrapped.as_instanceof_cause()) == "ValueError: bad latent size 0"


@pytest.mark.parametrize(
    "exc, words",
    [
        (rex.WorkerCrashedError(), "its worker process died"),
        (rex.TaskCancelledError(), "the task was cancelled"),
        (
            rex.OutOfMemoryError("Task was killed due to the node running low on memory.\nMemory on the node"),
            "its worker was killed for lack of memory",
        ),
        (rex.ActorDiedError(), "an actor it needed died"),
    ],
    ids=["worker-died", "cancelled", "oom", "actor-died"],
)
def test_ray_failures_are_named_in_words(exc, words):
    line = task_failure(exc)
    assert line.startswith(words) and "\n" not in line and "\x1b" not in line


def test_a_plain_exception_is_type_and_message():
    assert task_failure(RuntimeError("\x1b[31mboom\x1b[0m")) == "RuntimeError: boom"


def test_a_user_error_in_the_task_is_its_message():
    from aevae.errors import UserError

    wrapped = rex.RayTaskError("ray::_train_one()", "Traceback ...", _raised(UserError("cannot create folder x; fix")))
    assert task_failure(wrapped) == "cannot create folder x; fix"
