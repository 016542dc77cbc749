"""The registered model: an MLflow pyfunc over aevae.core.inference, for people downstream of training.

model_registry.register_model logs this file as the model's code (MLflow "models from code": nothing is
pickled) with the weights-only model.pt and config.json as an artifact, the few aevae modules the
file imports as code_paths, and requirements pinned to public packages. So a registered version
loads and serves (`mlflow models serve`) on a machine without this checkout:

    model = mlflow.pyfunc.load_model("models:/aevae-vae-beta1@champion")
    model.predict(images, params={"method": "encode"})  # images: float32 (B, C*H*W) in [0, 1]

A module that knows MLflow beside mlflow_store, tracking and model_registry, because MLflow executes this file wherever
the model is loaded; it holds the pyfunc's contract (signature, code, requirements) and nothing else.
"""

from __future__ import annotations

import math
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from aevae.config import ModelParams
from aevae.core import inference, model_store

ARTIFACT = "model_files"  # the artifact holding model.pt (weights only) and config.json
# Third-party imports of the shipped modules: distribution -> import name. Pinned to the installed versions.
REQUIREMENTS = {"torch": "torch", "numpy": "numpy", "pydantic": "pydantic", "pyyaml": "yaml", "ruamel.yaml": "ruamel"}


class AevaeModel(PythonModel):
    """predict(x, params={"method": ..., "n": ..., "seed": ...}) -> dict of float32 arrays.

    encode: (B, C*H*W) images -> {"mu": (B, latent)} (+ {"logvar": (B, latent)} for a VAE);
    reconstruct: (B, C*H*W) images -> {"images": (B, C*H*W)}; decode: (B, latent) codes -> {"images": (B, C*H*W)};
    sample: n images from the prior N(0, I), seeded -> {"images": (n, C*H*W)} (the input is ignored).
    (C, H, W) is the model's image_shape (MNIST: 1x28x28, C*H*W = 784), each row flattened in numpy's C
    order of (C, H, W). Pixels are in [0, 1]. A caller's mistake raises MlflowException INVALID_PARAMETER_VALUE (HTTP 400).
    """

    def load_context(self, context) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        self.model, self.spec = model_store.load(folder.name, root=folder.parent)  # weights_only=True, CPU

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> dict[str, np.ndarray]:
        p = {**default_params(), **(params or {})}
        try:
            return inference.run(self.model, str(p["method"]), model_input, n=int(p["n"]), seed=int(p["seed"]))
        except ValueError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def default_params() -> dict:
    return {"method": inference.DEFAULT_METHOD, "n": inference.DEFAULT_N, "seed": 0}


def signature(cfg: ModelParams, image_shape: tuple[int, int, int]) -> ModelSignature:
    """Inputs: one float32 (B, width) tensor, width C*H*W of `image_shape` (C, H, W) for images or latent_dim
    for codes; outputs by method."""
    outputs = [TensorSpec(np.dtype(np.float32), (-1, cfg.latent_dim), "mu")]
    if cfg.kind == "vae":
        outputs.append(TensorSpec(np.dtype(np.float32), (-1, cfg.latent_dim), "logvar"))
    outputs.append(TensorSpec(np.dtype(np.float32), (-1, math.prod(image_shape)), "images"))
    defaults = default_params()
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        outputs=Schema(outputs),
        params=ParamSchema(
            [
                ParamSpec("method", "string", defaults["method"]),
                ParamSpec("n", "long", defaults["n"]),
                ParamSpec("seed", "long", defaults["seed"]),
            ]
        ),
    )


def code_dir(dst: Path) -> Path:
    """dst/aevae/ holding the shipped modules (code_paths): the package as this file needs it, no more."""
    src = _package_root()
    pkg = Path(dst) / "aevae"
    pkg.mkdir(parents=True)
    for name in shipped_modules():  # "data/__init__": a subpackage's own file, not its other modules
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f"{name}.py", pkg / f"{name}.py")
    return pkg


def shipped_modules() -> tuple[str, ...]:
    """What this file imports of aevae, and what those import, as paths under the package without ".py"
    ("core/models", "data/__init__"), with the __init__ of every package on the way; sorted.

    Computed from the source (every import statement, lazy ones too), so the shipped code follows the imports.
    Only in a checkout or install of aevae: the copy MLflow loads the model from has no package around it.
    """
    root = _package_root()
    found: set[str] = set()
    todo = [Path(__file__).resolve()]
    while todo:
        for module in _aevae_imports(todo.pop(), root):
            if module not in found:
                found.add(module)
                todo.append(root / f"{module}.py")
    return tuple(sorted(found))


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]  # src/aevae (this file is aevae/ops/pyfunc_model.py)


def _aevae_imports(path: Path, root: Path) -> set[str]:
    """The aevae modules `path` imports (paths under `root`), each with its packages' __init__."""
    import ast

    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            dotted = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            dotted = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in dotted:
            parts = name.split(".")
            if parts[0] != "aevae":
                continue
            rel = "/".join(parts[1:])
            if (root / rel / "__init__.py").is_file():
                modules.add(f"{rel}/__init__" if rel else "__init__")
            elif rel and (root / f"{rel}.py").is_file():
                modules.add(rel)
            else:
                continue  # a name imported from a module, not a module
            modules.update(f"{'/'.join(parts[1:k])}/__init__".lstrip("/") for k in range(1, len(parts)))
    return modules


def pip_requirements() -> list[str]:
    """Exact versions of what the shipped code imports, all on PyPI (MLflow adds mlflow itself).

    A local build label (torch's "+cu130") is dropped: PyPI has no such file, and pip picks the
    right build of that version for the serving machine.
    """
    return [f"{dist}=={version(dist).split('+')[0]}" for dist in REQUIREMENTS]


set_model(AevaeModel())
