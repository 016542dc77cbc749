"""params.yaml validation: every user mistake is one line naming the key and the value."""

from __future__ import annotations

import copy

import pytest
import yaml

from aevae.config import Params, load_params, resolve_sweep
from aevae.errors import UserError
from conftest import SHIPPED_PARAMS, assert_one_line, run_stage, shipped_params


def _write(tmp_path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _error(tmp_path, mutate) -> str:
    params = copy.deepcopy(shipped_params())
    mutate(params)
    path = _write(tmp_path, params)
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert str(path) in message, "the message should name the params file"
    return message


def _member(params: dict, name: str) -> dict:
    return next(m for m in params["sweep"]["models"] if m["name"] == name)


def _set(section: str, key: str, value):
    def mutate(p):
        p.setdefault(section, {})[key] = value

    return mutate


def _set_member(name: str, key: str, value, part: str = "model"):
    def mutate(p):
        _member(p, name).setdefault(part, {})[key] = value

    return mutate


# (id, mutation, substrings the one-line message must contain)
BAD_PARAMS = [
    ("misspelt-top-level-key", lambda p: p.update(trian={"epochs": 3}), ["'trian'", "allowed keys", "train"]),
    ("misspelt-section-key", _set("train", "epohcs", 3), ["'train.epohcs'", "allowed keys", "epochs"]),
    (
        "misspelt-member-override",
        _set_member("ae-linear", "activaton", "tanh"),
        ["sweep.models.1.model.activaton", "allowed keys", "activation"],
    ),
    (
        "misspelt-member-train-override",
        _set_member("ae", "epohcs", 3, part="train"),
        ["sweep.models.0.train.epohcs", "allowed keys", "epochs"],
    ),
    ("misspelt-sweep-key", lambda p: p["sweep"].update(latnt_dims=[2]), ["'sweep.latnt_dims'", "latent_dims, models"]),
    ("misspelt-member-field", lambda p: _member(p, "ae").update(modle={}), ["sweep.models.0.modle", "allowed keys"]),
    ("wrong-type-epochs", _set("train", "epochs", "ten"), ["train.epochs", "'ten'", "integer"]),
    ("fractional-epochs", _set("train", "epochs", 2.5), ["train.epochs", "2.5"]),
    ("latent-dim-zero", lambda p: p["sweep"].update(latent_dims=[0]), ["sweep.latent_dims", "= 0", "greater than 0"]),
    ("member-latent-dim-zero", _set_member("ae", "latent_dim", 0), ["sweep.models.0.model.latent_dim", "= 0"]),
    ("retired-model-latent-dim", _set("model", "latent_dim", 8), ["model.latent_dim", "= 8", "sweep.latent_dims"]),
    ("negative-beta-in-member", _set_member("vae-beta1", "beta", -0.5), ["sweep.models.3.model.beta", "-0.5"]),
    ("negative-default-beta", _set("model", "beta", -2.0), ["model.beta", "-2.0"]),
    ("val-fraction-too-big", _set("data", "val_fraction", 0.7), ["data.val_fraction", "0.7", "less than 0.5"]),
    ("val-fraction-zero", _set("data", "val_fraction", 0.0), ["data.val_fraction", "0.0"]),
    ("test-fraction-negative", _set("data", "test_fraction", -0.1), ["data.test_fraction", "-0.1"]),
    (
        "unknown-model-kind",
        _set_member("vae-beta0", "kind", "gan"),
        ["sweep.models.2.model.kind", "'gan'", "'ae'", "'vae'"],
    ),
    ("unknown-dataset", _set("data", "dataset", "imagenet"), ["data.dataset", "'imagenet'", "'mnist'"]),
    ("unknown-source", _set("data", "source", "s3"), ["data.source", "'s3'", "'bundled'"]),
    ("unknown-activation", _set("model", "activation", "swish"), ["model.activation", "'swish'", "'relu'"]),
    (
        "unknown-activation-in-member",
        _set_member("ae", "activation", "swish"),
        ["sweep.models.0.model.activation", "'swish'", "'relu'"],
    ),
    ("unknown-arch", _set("model", "arch", "transformer"), ["model.arch", "'transformer'"]),
    ("zero-hidden-size", _set("model", "hidden", [512, 0]), ["model.hidden", "0"]),
    ("empty-sweep-models", lambda p: p["sweep"].update(models=[]), ["sweep.models", "[]", "at least 1"]),
    ("empty-latent-dims", lambda p: p["sweep"].update(latent_dims=[]), ["sweep.latent_dims", "[]"]),
    ("duplicate-model-names", lambda p: _member(p, "ae-linear").update(name="ae"), ["duplicate", "'ae'", "sweep"]),
    ("bad-model-name", lambda p: _member(p, "ae").update(name="My AE"), ["sweep.models.0.name", "'My AE'"]),
    ("missing-sweep", lambda p: p.pop("sweep"), ["missing key 'sweep'"]),
    ("section-not-a-mapping", lambda p: p.update(train=[1, 2]), ["train", "[1, 2]"]),
    ("zero-cpus-per-model", _set("ray", "cpus_per_model", 0), ["ray.cpus_per_model", "0"]),
]


@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=i) for i, m, e in BAD_PARAMS])
def test_bad_params_give_one_line_naming_key_and_value(tmp_path, mutate, expected):
    message = _error(tmp_path, mutate)
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"


@pytest.mark.parametrize("section", ["model", "train"])
def test_the_allowed_keys_hint_leaves_out_what_the_sweep_sets(tmp_path, section):
    """model.latent_dim and train.seed come from sweep.latent_dims / sweep.seeds: offering them would mislead."""
    message = _error(tmp_path, _set(section, "nosuchkey", 1))
    assert "allowed keys" in message and "latent_dim" not in message and "seed" not in message, message


def test_duplicate_names_message_is_short_and_names_sweep_models(tmp_path):
    message = _error(tmp_path, lambda p: _member(p, "ae-linear").update(name="ae"))
    assert "sweep.models" in message
    assert "vae-beta4" not in message, "the message echoes the whole sweep section"
    assert len(message) < 250


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  dataset: mnist\n  seed: [1, 2\ntrain:\n  epochs: 3\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert str(path) in message and "YAML syntax error" in message and "line" in message


def test_yaml_tab_indentation_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n\tdataset: mnist\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    assert_one_line(str(info.value))
    assert "YAML syntax error" in str(info.value)


@pytest.mark.parametrize("text", ["", "- data\n- model\n", "just a string\n"], ids=["empty", "list", "scalar"])
def test_params_file_that_is_not_a_mapping(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_params(path)
    assert_one_line(str(info.value))
    assert str(path) in str(info.value) and "mapping" in str(info.value)


def test_missing_params_file(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert str(path) in message and "not found" in message


def test_shipped_params_load_and_resolve_to_the_article_models():
    params = load_params(SHIPPED_PARAMS)
    assert isinstance(params, Params)
    specs = resolve_sweep(params)
    assert len(specs) >= 5
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)

    def kinds(pred):
        return [s for s in specs if pred(s.model)]

    assert kinds(lambda m: m.kind == "ae" and m.activation != "linear"), "a non-linear AE"
    assert kinds(lambda m: m.kind == "ae" and m.activation == "linear"), "a linear AE (the PCA comparison)"
    assert kinds(lambda m: m.kind == "vae" and m.beta == 0.0), "a VAE with beta 0"
    assert kinds(lambda m: m.kind == "vae" and m.beta == 1.0), "a VAE with beta 1"
    # every member x latent size x seed once, in that order; the group drops the seed
    sweep = params.sweep
    assert names == [f"{m.name}-z{d}-s{k}" for m in sweep.models for d in sweep.latent_dims for k in sweep.seeds]
    assert [s.group for s in specs] == [n.rsplit("-s", 1)[0] for n in names]
    assert {s.model.latent_dim for s in specs} == set(sweep.latent_dims) and 2 in sweep.latent_dims
    assert {s.seed for s in specs} == set(sweep.seeds) and len(sweep.seeds) >= 3


def test_one_seed_and_one_size_keep_the_members_names():
    raw = {
        "sweep": {"latent_dims": [3], "seeds": [7], "models": [{"name": "ae"}, {"name": "v", "model": {"kind": "vae"}}]}
    }
    specs = resolve_sweep(Params.model_validate(raw))
    assert [(s.name, s.group, s.member, s.seed, s.model.latent_dim) for s in specs] == [
        ("ae", "ae", "ae", 7, 3),
        ("v", "v", "v", 7, 3),
    ]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"train": {"seed": 1}}, "train.seed = 1 is no longer read"),
        ({"sweep": {"models": [{"name": "ae", "train": {"seed": 1}}]}}, "sweep.models.0.train.seed = 1 is not allowed"),
        ({"sweep": {"seeds": [0, 0], "models": [{"name": "ae"}]}}, "sweep.seeds = [0, 0] lists a value twice"),
        (
            {"sweep": {"latent_dims": [2, 2], "models": [{"name": "ae"}]}},
            "sweep.latent_dims = [2, 2] lists a value twice",
        ),
        ({"sweep": {"seeds": [2**32], "models": [{"name": "ae"}]}}, "sweep.seeds.0 = 4294967296 is not allowed"),
        ({"sweep": {"seeds": [], "models": [{"name": "ae"}]}}, "sweep.seeds"),
    ],
)
def test_seed_mistakes_are_one_line(tmp_path, raw, fragment):
    raw = {"sweep": {"models": [{"name": "ae"}]}, **raw}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        load_params(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_every_shipped_key_reaches_the_schema():
    # every key in the shipped file is read with its value (nothing silently ignored or coerced)
    raw = shipped_params()
    params = load_params(SHIPPED_PARAMS)
    for section, values in raw.items():
        if section == "sweep":
            continue
        dumped = getattr(params, section).model_dump()
        for key, value in values.items():
            assert dumped[key] == value, f"{section}.{key}"


def test_several_latent_dims_suffix_names(tmp_path):
    params = shipped_params()
    params["sweep"]["latent_dims"] = [2, 8]
    params["sweep"]["seeds"] = [0]
    specs = resolve_sweep(load_params(_write(tmp_path, params)))
    members = [m["name"] for m in params["sweep"]["models"]]
    assert [s.name for s in specs] == [f"{m}-z{d}" for m in members for d in (2, 8)]
    for spec in specs:
        assert spec.name.endswith(f"-z{spec.model.latent_dim}")


def test_overrides_apply_to_their_member_only(tmp_path):
    params = shipped_params()
    params["model"]["hidden"] = [64]  # a default: reaches every member
    params["train"]["epochs"] = 7
    _member(params, "vae-beta1")["train"] = {"epochs": 3, "lr": 0.01}
    specs = {s.member: s for s in resolve_sweep(load_params(_write(tmp_path, params)))}
    assert all(s.model.hidden == [64] for s in specs.values())
    assert specs["vae-beta1"].train.epochs == 3 and specs["vae-beta1"].train.lr == 0.01
    assert specs["vae-beta0"].train.epochs == 7 and specs["vae-beta0"].train.lr == 0.001
    assert specs["ae-linear"].model.activation == "linear"
    assert specs["ae"].model.activation == "relu", "ae-linear's override leaked into ae"
    assert specs["vae-beta0"].model.beta == 0.0 and specs["vae-beta4"].model.beta == 4.0


def test_member_latent_dim_never_contradicts_the_name(tmp_path):
    params = shipped_params()
    params["sweep"]["latent_dims"] = [2, 8]
    _member(params, "ae")["model"]["latent_dim"] = 16
    try:
        specs = resolve_sweep(load_params(_write(tmp_path, params)))
    except UserError as exc:
        assert_one_line(str(exc))
        assert "latent_dim" in str(exc)
        return
    for spec in specs:
        assert spec.name.endswith(f"-z{spec.model.latent_dim}"), f"{spec.name} has latent_dim {spec.model.latent_dim}"


# ------------------------------------------------------------ the stage, as a process


def _params_text(kind: str) -> str | None:
    params = shipped_params()
    if kind == "misspelt-key":
        params["trian"] = {}
    elif kind == "out-of-range":
        params["data"]["val_fraction"] = 0.7
    elif kind == "yaml-syntax":
        return "data:\n  seed: [1\n"
    elif kind == "missing-file":
        return None
    return yaml.safe_dump(params, sort_keys=False)


@pytest.mark.parametrize(
    "kind, expected",
    [
        pytest.param(kind, expected, id=kind)
        for kind, expected in (
            ("misspelt-key", "unknown key 'trian'"),
            ("out-of-range", "data.val_fraction = 0.7"),
            ("yaml-syntax", "YAML syntax error"),
            ("missing-file", "params.yaml not found"),
        )
    ],
)
def test_stage_with_bad_params_exits_2_with_one_line(tmp_path, kind, expected):
    text = _params_text(kind)
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    result = run_stage(tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    assert lines[0].startswith("error:")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "prepared").exists()
    assert not (tmp_path / "data").exists(), "a failed validation created data/"


# YAML 1.1 (PyYAML) and 1.2 (ruamel.yaml, what DVC records in dvc.lock) read these plain scalars differently.
@pytest.mark.parametrize(
    "line, key",
    [
        ("  seeds: [010]\n", "sweep.seeds.0"),  # 1.1: octal 8; 1.2: 10
        ("  seeds: [1:20]\n", "sweep.seeds.0"),  # 1.1: sexagesimal 80; 1.2: the string '1:20'
        ("  pooling: yes\n", "model.pooling"),  # 1.1: true; 1.2: the string 'yes'
        ("  pooling: off\n", "model.pooling"),
    ],
    ids=["octal", "sexagesimal", "yes", "off"],
)
def test_scalars_yaml_1_1_reads_otherwise_are_refused(tmp_path, line, key):
    text = SHIPPED_PARAMS.read_text()
    field = line.split(":")[0]
    lines = [line if raw.startswith(f"{field}:") else raw for raw in text.splitlines(keepends=True)]
    assert lines != text.splitlines(keepends=True)
    path = tmp_path / "params.yaml"
    path.write_text("".join(lines))
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert f"{key} is ambiguous" in message and "YAML 1.2" in message and "quote" in message


def test_params_are_read_as_yaml_1_2_like_dvc(tmp_path):
    text = SHIPPED_PARAMS.read_text().replace("  lr: 0.001\n", "  lr: 1e-3\n  epochs: 1_0\n", 1)
    text = text.replace("  epochs: 20", "  # epochs: 20", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    from dvc.utils.serialize import parse_yaml

    params = load_params(path)
    assert params.train.lr == 1e-3 and params.train.epochs == 10 == parse_yaml(text, str(path))["train"]["epochs"]


def test_duplicate_key_is_refused_like_dvc(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(SHIPPED_PARAMS.read_text().replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.005\n", 1))
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert_one_line(message)
    assert 'duplicate key "lr"' in message and "line" in message and "keep one" in message


def test_a_params_file_changed_after_reading_is_caught(tmp_path):
    from aevae import config
    from aevae.config import check_unchanged

    config._READ.clear()  # files earlier tests of this process read
    path = _write(tmp_path, shipped_params())
    load_params(path)
    check_unchanged()
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 0.005", 1))
    with pytest.raises(UserError) as info:
        check_unchanged()
    assert_one_line(str(info.value))
    assert "changed while this ran" in str(info.value) and "rerun" in str(info.value)
    load_params(path)  # read again: the new bytes are the ones in use
    check_unchanged()
