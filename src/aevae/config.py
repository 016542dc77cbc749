"""params.yaml: the schema, its defaults, and validation with one-line errors.

Every knob that shapes a result lives in params.yaml and is validated here
before any work starts. Infrastructure (RAY_ADDRESS, MLFLOW_TRACKING_URI)
comes from the environment instead, so the same params run anywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aevae import metric_registry
from aevae.errors import UserError

PARAMS_FILE = "params.yaml"


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silent default; strict=True refuses
    # `true` or "100" where an integer is expected (lax mode read them as 1 and 100) and ints pass as floats.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_float_strings(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML 1.1 reads 1e-3 (no dot) as a string: take it where a float is expected, as users write it."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, str) and field is not None and float in (field.annotation, *get_args(field.annotation)):
            try:
                return float(value)
            except ValueError:
                return value
        return value


class DataParams(_Strict):
    # "custom": a team's own images (source npz or folder), named by their folders or numbered.
    dataset: Literal["mnist", "fashion-mnist", "kmnist", "cifar10", "svhn", "idx", "custom"] = "mnist"
    source: Literal["auto", "torchvision", "idx", "bundled", "npz", "folder"] = "auto"
    idx_dir: str = "data/raw/mnist"
    download_dir: str = "data/raw/download"
    path: str | None = None  # npz: the .npz file; folder: the image folder (aevae.data.own)
    # (H, W) every image is resized to (antialiased), or one int for square; null: keep the data's size.
    image_size: Annotated[int, Field(ge=8, le=128)] | list[Annotated[int, Field(ge=8, le=128)]] | None = None
    channels: Literal[1, 3] | None = None  # convert to grey (1) or colour (3); null: keep the data's
    background: int = Field(0, ge=0, le=255)  # grey level alpha (transparency) is composited on
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    # Only for sources without an official test split (the bundled subset).
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _two_sides(cls, value):
        if isinstance(value, list) and len(value) != 2:
            raise ValueError(f"give one side or [height, width], not {len(value)} numbers")
        return value

    @model_validator(mode="after")
    def _path_for_own_data(self) -> DataParams:
        if self.source in ("npz", "folder") and not self.path:
            raise ValueError(f"path: source '{self.source}' reads data.path; set it to the {self.source} to read")
        return self

    @property
    def size(self) -> tuple[int, int] | None:
        """image_size as (H, W), or None."""
        if self.image_size is None:
            return None
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


class ModelParams(_Strict):
    """One model's architecture and loss. params.yaml `model:` gives the defaults; resolve_sweep adds a
    member's overrides and its latent size."""

    kind: Literal["ae", "vae"] = "ae"
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512, 256], min_length=0)
    # conv: channels per stride-2 layer, or auto: as many layers as the image size calls for (models.conv_channels)
    channels: Annotated[list[PositiveInt], Field(min_length=1, max_length=6)] | Literal["auto"] = "auto"
    pooling: bool = False
    activation: Literal["relu", "leaky_relu", "gelu", "elu", "tanh", "linear"] = "relu"
    latent_dim: PositiveInt = 2  # set per run from sweep.latent_dims; params.yaml's model section may not set it
    # bce: Bernoulli on [0, 1] intensities; gaussian: a learned shared variance (sigma-VAE), for natural images.
    recon: Literal["bce", "mse", "gaussian"] = "bce"
    beta: NonNegativeFloat = 1.0
    kl_warmup_epochs: NonNegativeInt = 0
    free_bits: NonNegativeFloat = 0.0  # nats per latent dimension


class TrainParams(_Strict):
    epochs: PositiveInt = 20  # upper bound: max_steps ends training earlier on a large training set
    # Optimizer steps cap (null: none): the budget that fits the data (aevae.core.training.planned_epochs).
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 128
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: NonNegativeFloat = 0.0
    seed: NonNegativeInt = 0  # set per run from sweep.seeds; params.yaml's train section may not set it
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False


class SweepMember(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class SweepParams(_Strict):
    latent_dims: list[PositiveInt] = Field(default_factory=lambda: [2], min_length=1)
    # Every member x latent size trains once per seed (weights init, batch order, the VAE's noise);
    # the study reports each metric as a mean with a 95% interval over them (aevae.evaluation.study).
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    models: list[SweepMember] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SweepParams:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model name(s) {dupes}; give every sweep member its own name")
        for values, key in ((self.latent_dims, "latent_dims"), (self.seeds, "seeds")):
            if len(set(values)) != len(values):
                raise ValueError(f"{key} = {values} lists a value twice; list each once")
        return self


class RayParams(_Strict):
    use_gpu: bool | Literal["auto"] = "auto"
    # GPUs each training or evaluation task asks Ray for: a fraction packs several models on one GPU (0.25: four),
    # a whole number gives a model that many; auto: from the model's estimated memory and the GPU's size
    # (aevae.ops.distributed.gpu_share). Ray admits tasks by it; it is not a memory cap.
    gpus_per_model: float | Literal["auto"] = "auto"
    cpus_per_model: float = Field(1.0, gt=0.0)
    workers_per_model: PositiveInt = 1
    storage_path: str = "checkpoints"
    max_retries: NonNegativeInt = 2

    @field_validator("gpus_per_model")
    @classmethod
    def _gpu_share(cls, value: float | str) -> float | str:
        """Ray lends a GPU whole or in fractions of one: 0.5 and 2 are requests it can meet, 1.5 is not."""
        if value == "auto" or 0.0 < value <= 1.0 or (value > 1.0 and float(value).is_integer()):
            return value
        raise ValueError("a fraction in (0, 1] (0.25: four models per GPU), a whole number of GPUs, or auto")


class ClassifierParams(_Strict):
    max_epochs: PositiveInt = 30
    patience: PositiveInt = 3  # epochs without a better validation accuracy before stopping
    # "Better" is by more than this share: a dataset that plateaus below target_accuracy stops there, not on noise.
    min_delta: float = Field(0.0, ge=0.0, lt=1.0)
    max_steps: PositiveInt | None = None  # optimizer steps budget, checked after each epoch (null: none)
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)  # stop once validation accuracy reaches it
    augment: bool | Literal["auto"] = "auto"  # random shifts; auto: only for small training sets
    batch_size: PositiveInt = 64
    lr: float = Field(2e-3, gt=0.0)
    seed: int = 0


class EvaluateParams(_Strict):
    seed: int = 0
    n_prior_samples: int = Field(1000, ge=10)
    iw_samples: int = Field(64, ge=1)
    iw_images: PositiveInt | None = 2000  # test images (a seeded subset, the same for every model) of KL/ELBO/IW-NLL
    interp_pairs: PositiveInt = 32
    interp_steps: int = Field(10, ge=3)
    confidence_threshold: float = Field(0.9, gt=0.0, lt=1.0)


class Criterion(_Strict):
    """One test a challenger must pass against the champion: improve `metric` by at least `min_improvement`."""

    metric: str = Field(pattern=r"^(test|prior|gmm|interp)/[a-z0-9_]+$")
    goal: Literal["min", "max"] = "min"
    min_improvement: NonNegativeFloat = 0.0


class RetrainParams(_Strict):
    """Champion/challenger policy per model kind: the challenger must pass every criterion."""

    ae: list[Criterion] = Field(default_factory=lambda: [Criterion(metric=metric_registry.judging("ae"))], min_length=1)
    vae: list[Criterion] = Field(
        default_factory=lambda: [Criterion(metric=metric_registry.judging("vae"))], min_length=1
    )


class Params(_Strict):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    sweep: SweepParams
    ray: RayParams = RayParams()
    classifier: ClassifierParams = ClassifierParams()
    evaluate: EvaluateParams = EvaluateParams()
    retrain: RetrainParams = RetrainParams()


class RunSpec(BaseModel):
    """One model of the sweep, fully resolved: what a worker needs to train it.

    `name` is unique per (member, latent size, seed) and names its folder in models/ and its MLflow
    child run; `group` is the model the study aggregates over seeds (the member, with `-z<size>` when
    the sweep has several latent sizes); the seed is `train.seed`.
    """

    model_config = ConfigDict(frozen=True)
    name: str
    model: ModelParams
    train: TrainParams
    member: str = ""  # the sweep member's name; "" (a spec built by hand): the name
    group: str = ""  # member[-z<size>]; "": the name

    @model_validator(mode="after")
    def _default_member_and_group(self) -> RunSpec:
        if not self.member:
            object.__setattr__(self, "member", self.name)
        if not self.group:
            object.__setattr__(self, "group", self.name)
        return self

    @property
    def seed(self) -> int:
        return self.train.seed


def _format_error(exc: ValidationError, source: str, root: type[BaseModel] = Params, where: str = "") -> str:
    """First validation error as one line: the key, the value, what is allowed.

    `root` is the schema that was validated and `where` the key path leading to it (a sweep member's overrides).
    """
    errors = exc.errors()
    err = errors[0]
    loc = err["loc"]
    if (
        err["type"] != "extra_forbidden"
        and loc
        and isinstance(loc[-1], str)
        and loc[-1] not in _allowed_keys(loc, root)
    ):
        # A union (e.g. `bool | "auto"`) reports once per member, its loc ending in the member's tag: name the
        # field and give every member's wish.
        wishes = [e["msg"].removeprefix("Input should be ") for e in errors if e["loc"][:-1] == loc[:-1]]
        err, loc = {**err, "msg": "Input should be " + " or ".join(dict.fromkeys(wishes))}, loc[:-1]
    key = ".".join([where, *map(str, loc)] if where else map(str, loc)) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc, root)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"{source}: missing key '{key}'; add it (see the params table in docs/configuration.md)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a whole-section check
        return f"{source}: {key}.{msg}"
    return f"{source}: {key} = {err.get('input')!r} is not allowed: {msg}"


def _allowed_keys(loc: tuple, root: type[BaseModel] = Params) -> list[str]:
    """The field names of the schema node that holds the misspelt key (through lists of models too)."""
    node: type[BaseModel] = root
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list: the node is the list's item model already
            continue
        field = node.model_fields.get(str(part))
        annotation = field.annotation if field else None
        models = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return []
        node = models[0]
    return sorted(k for k in node.model_fields if (node, k) not in _SET_BY_SWEEP)


# Fields the sweep sets (resolve_sweep); params.yaml may not: a hint must not offer them.
_SET_BY_SWEEP = {(ModelParams, "latent_dim"), (TrainParams, "seed")}


def _read_yaml(path: Path) -> dict[str, Any]:
    """params.yaml as DVC reads it (ruamel.yaml, YAML 1.2; a duplicate key refused), and remembered by digest.

    Raises: UserError (one line) for a missing file, a syntax error, a duplicate key, a scalar that YAML 1.1
    reads otherwise (see _ambiguous_scalar), or a top level that is not a mapping.
    """
    if not path.exists():
        raise UserError(f"{path} not found; run from the project root or pass the path to params.yaml")
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    raw = _load_yaml_12(path, text)
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: expected a mapping of sections (data, model, train, sweep, ...), got {type(raw).__name__}"
        )
    _refuse_ambiguous(path, text, raw)
    _READ[path.resolve()] = hashlib.sha256(data).hexdigest()
    return raw


def _load_yaml_12(path: Path, text: str) -> Any:
    """The same loader DVC records params with (dvc.utils.serialize.parse_yaml: YAML(typ="safe")), so the
    values a stage trains with are the values dvc.lock records."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        raise UserError(
            f"{path}: {first_yaml_line(exc.problem)} at line {mark.line + 1}; keep one of them (DVC refuses"
            " a file with a duplicate key)"
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or "invalid YAML"
        raise UserError(f"{path}: YAML syntax error{where}: {problem}; fix the file's indentation or quoting") from None
    except YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({first_yaml_line(str(exc))}); fix the file") from None


def first_yaml_line(text: str | None) -> str:
    """The first line of a YAML error's text (ruamel's wrap long problems over several lines)."""
    return " ".join((text or "invalid YAML").split("\n")[0].split())


def _refuse_ambiguous(path: Path, text: str, raw: dict[str, Any]) -> None:
    """A plain scalar that YAML 1.1 reads otherwise (010 = 8, yes/no/on/off = booleans, 1_000, 1:20 = 80) means
    one thing to DVC and another to a reader, a tool or an older stage: refuse it rather than guess.

    Raises: UserError naming the key, both readings and the fix.
    """
    try:
        old = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader: YAML 1.1's reading of the file
    except yaml.YAMLError:
        return  # YAML 1.2 read it; 1.1's own syntax quirks are not the user's problem
    found = _first_difference(raw, old, ())
    if found is not None:
        key, new_value, old_value = found
        raise UserError(
            f"{path}: {'.'.join(map(str, key)) or '(top level)'} is ambiguous: YAML 1.2 (what DVC records)"
            f" reads {new_value!r}, YAML 1.1 reads {old_value!r}; write the value you mean plainly"
            " (10, true, 1000) or quote it if it is text"
        )


def _first_difference(new: Any, old: Any, key: tuple) -> tuple[tuple, Any, Any] | None:
    """(key path, YAML 1.2 value, YAML 1.1 value) of the first scalar the two readings disagree on, else None."""
    if isinstance(new, dict) and isinstance(old, dict):
        for k in new:
            found = _first_difference(new[k], old.get(k), (*key, k)) if k in old else None
            if found:
                return found
        return None
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(new, old)):
            found = _first_difference(a, b, (*key, i))
            if found:
                return found
        return None
    if type(new) is type(old) and new == old:
        return None
    if isinstance(old, str) and isinstance(new, float) and _as_float(old) == new:
        return None  # 1e-3: a string in YAML 1.1, the same float once a float field reads it (_yaml_float_strings)
    return key, new, old


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# params files this process read, by resolved path: the sha256 of the bytes it read (check_unchanged).
_READ: dict[Path, str] = {}


def check_unchanged() -> None:
    """Every params file this process read must still hold the bytes it read.

    DVC reads params.yaml again only after the stage ends, to record it in dvc.lock: an edit made while
    the stage ran would be recorded for results produced with the old values (and `dvc status` would call
    them up to date). Failing the stage keeps dvc.lock from recording it.
    Raises: UserError naming the file and the fix (rerun).
    """
    for path, digest in _READ.items():
        now = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        if now != digest:
            raise UserError(
                f"{path.name} changed while this ran, so its results were produced with the old values;"
                " DVC will not record them: rerun the same command (dvc repro) to use the new ones"
            )


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml, including every sweep member's overrides.

    Raises: UserError (one line: the key, the value, what is allowed) for a missing or unreadable
    file, a YAML syntax error, an unknown or retired key (model.latent_dim), a wrong type or range.
    """
    path = Path(path)
    raw = _read_yaml(path)
    _reject_model_latent_dim(raw, str(path))
    _reject_train_seed(raw, str(path))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_error(exc, str(path))) from None
    resolve_sweep(params, source=str(path))  # validates overrides now, before any work
    return params


def _reject_model_latent_dim(raw: dict[str, Any], source: str) -> None:
    """model.latent_dim was dead (always overridden by sweep.latent_dims): an old file gets the fix."""
    model = raw.get("model")
    if isinstance(model, dict) and "latent_dim" in model:
        raise UserError(
            f"{source}: model.latent_dim = {model['latent_dim']!r} is no longer read: latent sizes come"
            " from sweep.latent_dims (every member trains at each); put the value there and remove the key"
        )


def _reject_train_seed(raw: dict[str, Any], source: str) -> None:
    """train.seed would be overwritten by every entry of sweep.seeds: an old file gets the fix."""
    train = raw.get("train")
    if isinstance(train, dict) and "seed" in train:
        raise UserError(
            f"{source}: train.seed = {train['seed']!r} is no longer read: training seeds come from"
            " sweep.seeds (every member trains once per seed); put the value there and remove the key"
        )


def _merge(base: BaseModel, overrides: dict[str, Any], cls: type[BaseModel], where: str, source: str) -> Any:
    try:
        return cls.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise UserError(_format_error(exc, source, root=cls, where=where)) from None


def resolve_sweep(params: Params, source: str = PARAMS_FILE) -> list[RunSpec]:
    """Expand the sweep: every member at every latent size and seed, defaults + overrides.

    This is where each RunSpec.model.latent_dim (from sweep.latent_dims) and train.seed (from
    sweep.seeds) is set. The group is the member's name, with a `-z<size>` suffix when there are
    several latent sizes; the name is the group, with a `-s<seed>` suffix when there are several
    seeds, so every (member, size, seed) has its own folder and run. Order: member, size, seed.
    Raises: UserError for a member's override that is invalid or sets latent_dim or seed.
    """
    specs = []
    sweep = params.sweep
    many_dims, many_seeds = len(sweep.latent_dims) > 1, len(sweep.seeds) > 1
    for i, member in enumerate(sweep.models):
        where = f"sweep.models.{i}"
        for section, key, home in (("model", "latent_dim", "sweep.latent_dims"), ("train", "seed", "sweep.seeds")):
            overrides = getattr(member, section)
            if key in overrides:
                raise UserError(
                    f"{source}: {where}.{section}.{key} = {overrides[key]!r} is not allowed: it comes from {home}"
                    " (every member trains at each); remove it from the member"
                )
        for dim in sweep.latent_dims:
            model = _merge(params.model, {"latent_dim": dim, **member.model}, ModelParams, f"{where}.model", source)
            group = f"{member.name}-z{dim}" if many_dims else member.name
            for seed in sweep.seeds:
                train = _merge(params.train, {**member.train, "seed": seed}, TrainParams, f"{where}.train", source)
                name = f"{group}-s{seed}" if many_seeds else group
                specs.append(RunSpec(name=name, model=model, train=train, member=member.name, group=group))
    return specs
