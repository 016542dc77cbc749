"""Atomic writes: a killed stage never leaves a half-written file or folder (and reading a stage's JSON back).

Everything is written to a temporary sibling and renamed into place; a rename
within one filesystem is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aevae.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writable_parent(path: Path) -> Path:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create folder {parent}: {exc.strerror}; check its permissions and free space"
        ) from None
    return parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    parent = _writable_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}; check the folder's permissions and free space") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror}; check the folder's permissions and free space") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def strict(obj: Any) -> Any:
    """`obj` with every NaN and ±inf float (at any depth) replaced by None.

    Strict JSON (RFC 8259) has no such numbers: Python writes them as bare NaN / Infinity, which
    jq, JavaScript and most other readers reject. A writer that needs to say why a value is null
    records the reason beside it.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """The one writer of the project's JSON: strict (non-finite floats become null), sorted keys, atomic."""
    write_text(path, json.dumps(strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, stage: str) -> Any:
    """A JSON file a stage wrote; missing or corrupt is a UserError naming the stage to (re)run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; run the {stage} stage first (dvc repro {stage})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; rerun the {stage} stage (dvc repro -f {stage})") from None


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: its own file writer reports a full disk as an opaque RuntimeError."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, torch_bytes(obj))


def torch_load(
    path: str | os.PathLike, stage: str, device: Any = "cpu", then: Callable[[Any], Any] | None = None
) -> Any:
    """What torch_save wrote to `path`, read with torch.load(weights_only=True) onto `device`, then `then(state)`
    when given (the caller's model built from it, under the same guard).

    weights_only reads tensors and plain data only: a file that carries pickled code is refused, not run.
    Raises: UserError naming the file and the stage that writes it (`dvc repro -f <stage>`) when the file is
    refused, corrupt or missing, or `then` fails on what it holds.
    """
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
        return state if then is None else then(state)
    except Exception as exc:  # weights_only refuses pickled code; anything else is a corrupt file
        raise UserError(
            f"{path} cannot be loaded safely ({type(exc).__name__}); retrain it (dvc repro -f {stage})"
        ) from None


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    parent = _writable_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}; check the folder's permissions and free space") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {path}: {exc.strerror}; check the folder's permissions and free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
