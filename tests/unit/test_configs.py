"""Job options: OpenAI's hyperparameters and tunelog's extensions, per method, with exact params and messages."""
import pytest

from domain.configs import (
    RESOLVED_KEYS,
    DpoHyperparameters,
    SupervisedHyperparameters,
    parse_method,
)
from domain.errors import ValidationError

SFT = "method.supervised.hyperparameters"
DPO = "method.dpo.hyperparameters"

DEFAULT_EXTENSIONS = {
    "lora": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
    "qlora": False, "deepspeed": None, "checkpoint_interval": None, "eval_interval": None,
    "early_stopping_patience": None, "packing": False, "max_seq_len": None,
}


def method(mtype: str, **hp) -> dict:
    return {"type": mtype, mtype: {"hyperparameters": hp}}


def refused(raw, legacy=None) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        parse_method(raw, legacy)
    assert e.value.status == 400
    return e.value


# ---- defaults and the resolved dict (the contract with JobCreated and the training worker) ----
def test_supervised_defaults_resolve_every_key():
    mtype, hp = parse_method(method("supervised"), None)
    assert mtype == "supervised" and isinstance(hp, SupervisedHyperparameters)
    resolved = hp.resolve(64)
    assert resolved == {"n_epochs": 2, "batch_size": 6, "learning_rate_multiplier": 1.0, **DEFAULT_EXTENSIONS}
    assert tuple(resolved) == RESOLVED_KEYS["supervised"]
    assert "beta" not in resolved


def test_dpo_defaults_resolve_every_key_with_beta():
    mtype, hp = parse_method(method("dpo"), None)
    assert mtype == "dpo" and isinstance(hp, DpoHyperparameters)
    resolved = hp.resolve(64)
    assert resolved == {"n_epochs": 2, "batch_size": 6, "learning_rate_multiplier": 1.0, "beta": 0.1,
                        **DEFAULT_EXTENSIONS}
    assert tuple(resolved) == RESOLVED_KEYS["dpo"]


def test_the_method_object_may_leave_out_its_settings_or_give_null():
    assert parse_method({"type": "dpo"}, None)[1].resolve(10)["beta"] == 0.1
    assert parse_method({"type": "supervised", "supervised": None}, None)[0] == "supervised"
    assert parse_method({"type": "supervised", "supervised": {"hyperparameters": None}}, None)[0] == "supervised"
    assert parse_method({"type": "supervised", "supervised": {}, "dpo": None}, None)[0] == "supervised"


def test_every_extension_is_taken_as_given():
    hp = parse_method(method("supervised", n_epochs=3, batch_size=4, learning_rate_multiplier=2, lora=True,
                             lora_r=8, lora_alpha=64, lora_dropout=0, target_modules=["q_proj", "v_proj"],
                             qlora=True, deepspeed="zero3_offload", checkpoint_interval=50, eval_interval=25,
                             early_stopping_patience=3, packing=True, max_seq_len=2048), None)[1]
    assert hp.resolve(100) == {
        "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2.0, "lora": True, "lora_r": 8,
        "lora_alpha": 64, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "qlora": True,
        "deepspeed": "zero3_offload", "checkpoint_interval": 50, "eval_interval": 25, "early_stopping_patience": 3,
        "packing": True, "max_seq_len": 2048}


def test_lora_alpha_defaults_to_twice_lora_r():
    assert parse_method(method("supervised", lora_r=4), None)[1].resolve(10)["lora_alpha"] == 8
    assert parse_method(method("supervised", lora_r=256), None)[1].resolve(10)["lora_alpha"] == 512


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload", None])
def test_deepspeed_stages(stage):
    assert parse_method(method("dpo", deepspeed=stage), None)[1].resolve(10)["deepspeed"] == stage


@pytest.mark.parametrize("given, expected", [("auto", 0.1), (None, 0.1), (0.5, 0.5), (10, 10.0), (1e-9, 1e-9)])
def test_dpo_beta(given, expected):
    assert parse_method(method("dpo", beta=given), None)[1].resolve(10)["beta"] == expected


def test_full_fine_tuning_takes_no_adapter_options():
    resolved = parse_method(method("supervised", lora=False, qlora=False), None)[1].resolve(10)
    assert resolved["lora"] is False and resolved["qlora"] is False
    # the adapter keys are still concrete (the worker ignores them with lora false)
    assert (resolved["lora_r"], resolved["target_modules"]) == (16, "all-linear")


def test_integral_floats_are_integers():
    """JSON (and JSON Schema's "integer") do not tell 3.0 from 3."""
    resolved = parse_method(method("supervised", n_epochs=3.0, lora_r=8.0, max_seq_len=512.0), None)[1].resolve(10)
    assert (resolved["n_epochs"], resolved["lora_r"], resolved["max_seq_len"]) == (3, 8, 512)
    assert all(type(resolved[k]) is int for k in ("n_epochs", "lora_r", "lora_alpha", "max_seq_len"))


# ---- every error names its field ----
@pytest.mark.parametrize("name, value, message", [
    ("n_epochs", 0, "n_epochs must be between 1 and 50, got 0"),
    ("n_epochs", 2.5, "n_epochs must be an integer between 1 and 50 or \"auto\", got 2.5"),
    ("batch_size", 257, "batch_size must be between 1 and 256, got 257"),
    ("learning_rate_multiplier", 0, "learning_rate_multiplier must be greater than 0.0 and at most 100.0, got 0"),
    ("lora", "yes", "lora must be true or false, got 'yes'"),
    ("lora", None, "lora may not be null; leave it out for its default"),
    ("lora_r", 0, "lora_r must be an integer between 1 and 256, got 0"),
    ("lora_r", 257, "lora_r must be an integer between 1 and 256, got 257"),
    ("lora_r", True, "lora_r must be an integer between 1 and 256, got True"),
    ("lora_r", 8.5, "lora_r must be an integer between 1 and 256, got 8.5"),
    ("lora_alpha", 4097, "lora_alpha must be an integer between 1 and 4096, got 4097"),
    ("lora_alpha", "16", "lora_alpha must be an integer between 1 and 4096, got '16'"),
    ("lora_dropout", 1, "lora_dropout must be a number at least 0 and below 1, got 1"),
    ("lora_dropout", -0.1, "lora_dropout must be a number at least 0 and below 1, got -0.1"),
    ("lora_dropout", float("nan"), "lora_dropout must be a number at least 0 and below 1, got nan"),
    ("target_modules", "q_proj", "target_modules must be \"all-linear\" or a non-empty list of at most 64 module "
                                 "names, got 'q_proj'"),
    ("target_modules", [], "target_modules must be \"all-linear\" or a non-empty list of at most 64 module names, "
                           "got []"),
    ("target_modules", [f"m{i}" for i in range(65)], "got a list of 65"),
    ("target_modules", ["q_proj", "q-proj"], "target_modules[1] must be a module name"),
    ("target_modules", ["1proj"], "target_modules[0] must be a module name"),
    ("target_modules", ["x" * 65], "target_modules[0] must be a module name"),
    ("target_modules", ["q_proj\n"], "target_modules[0] must be a module name"),
    ("target_modules", [7], "target_modules[0] must be a module name"),
    ("target_modules", ["q_proj", "q_proj"], "target_modules lists 'q_proj' twice"),
    ("qlora", 1, "qlora must be true or false, got 1"),
    ("deepspeed", "zero9", "deepspeed must be one of \"zero2\", \"zero3\", \"zero3_offload\" or null, got 'zero9'"),
    ("deepspeed", 3, "deepspeed must be one of \"zero2\", \"zero3\", \"zero3_offload\" or null, got 3"),
    ("checkpoint_interval", 0, "checkpoint_interval must be an integer between 1 and 1000000 or null, got 0"),
    ("checkpoint_interval", 1_000_001, "checkpoint_interval must be an integer between 1 and 1000000 or null"),
    ("eval_interval", "often", "eval_interval must be an integer between 1 and 1000000 or null, got 'often'"),
    ("early_stopping_patience", 1001, "early_stopping_patience must be an integer between 1 and 1000 or null"),
    ("packing", "true", "packing must be true or false, got 'true'"),
    ("packing", None, "packing may not be null"),
    ("max_seq_len", 15, "max_seq_len must be an integer between 16 and 131072 or null, got 15"),
    ("max_seq_len", 131073, "max_seq_len must be an integer between 16 and 131072 or null, got 131073"),
])
@pytest.mark.parametrize("mtype", ["supervised", "dpo"])
def test_each_bad_value_is_a_400_naming_its_field(mtype, name, value, message):
    err = refused(method(mtype, **{name: value}))
    assert err.param == f"method.{mtype}.hyperparameters.{name}"
    assert message in err.message


@pytest.mark.parametrize("value, message", [
    (0, "beta must be greater than 0.0 and at most 10.0, got 0"),
    (10.5, "beta must be greater than 0.0 and at most 10.0, got 10.5"),
    ("strong", "beta must be a number greater than 0.0 and at most 10.0 or \"auto\""),
    (float("inf"), "beta must be a number"),
])
def test_bad_dpo_beta(value, message):
    err = refused(method("dpo", beta=value))
    assert err.param == f"{DPO}.beta" and message in err.message


def test_beta_under_supervised_is_an_unknown_hyperparameter():
    err = refused(method("supervised", beta=0.1))
    assert err.param == f"{SFT}.beta"
    assert "unknown hyperparameter(s)" in err.message and "beta is a hyperparameter of the dpo method" in err.message


def test_unknown_hyperparameters_are_named():
    err = refused(method("dpo", warmup=3, epochs=2))
    assert err.param == f"{DPO}.epochs" and "'epochs', 'warmup'" in err.message
    assert "allowed: n_epochs, batch_size, learning_rate_multiplier, beta, lora" in err.message


@pytest.mark.parametrize("name, value", [("lora_r", 8), ("lora_alpha", 16), ("lora_dropout", 0.1),
                                         ("target_modules", "all-linear"), ("target_modules", ["q_proj"])])
@pytest.mark.parametrize("mtype", ["supervised", "dpo"])
def test_adapter_options_with_lora_false_are_a_400(mtype, name, value):
    err = refused(method(mtype, lora=False, **{name: value}))
    assert err.param == f"method.{mtype}.hyperparameters.{name}"
    assert err.message == (f"{name} has no effect with lora: false (full fine-tuning of every weight); remove it, "
                           "or set lora: true")


def test_qlora_needs_lora():
    err = refused(method("supervised", lora=False, qlora=True))
    assert err.param == f"{SFT}.qlora" and err.message.startswith("qlora: true needs lora: true")


def test_the_dataclasses_check_themselves():
    """Built directly (not from a request), the same rules hold; the param says where the values came from."""
    with pytest.raises(ValidationError) as e:
        SupervisedHyperparameters(lora=False, lora_r=4)
    assert e.value.param == "hyperparameters.lora_r"
    with pytest.raises(ValidationError) as e:
        DpoHyperparameters(beta=-1, param_prefix=DPO)
    assert e.value.param == f"{DPO}.beta"
    hp = DpoHyperparameters(beta=0.2, target_modules=["q_proj"])
    assert hp.target_modules == ("q_proj",)  # frozen: a tuple, not the caller's list
    with pytest.raises(AttributeError):
        hp.beta = 0.3  # type: ignore[misc]


# ---- the method object ----
@pytest.mark.parametrize("raw, param, code", [
    ("supervised", "method", None),
    ({"type": "magic"}, "method.type", None),
    ({}, "method.type", None),
    ({"type": ["dpo"]}, "method.type", None),
    ({"type": "reinforcement", "reinforcement": {}}, "method.type", "unsupported_method"),
    ({"type": "reinforcement"}, "method.type", "unsupported_method"),
    ({"type": "supervised", "supervised": []}, "method.supervised", None),
    ({"type": "supervised", "supervised": {"hyperparameters": [1]}}, SFT, None),
    ({"type": "supervised", "supervised": {"hyperparams": {}}}, "method.supervised.hyperparams", None),
    ({"type": "supervised", "dpo": {"hyperparameters": {}}}, "method.dpo", None),
    ({"type": "dpo", "colour": 1}, "method.colour", None),
])
def test_bad_method_objects(raw, param, code):
    err = refused(raw)
    assert err.param == param
    if code:
        assert err.code == code


def test_not_both_method_and_the_legacy_hyperparameters():
    err = refused(method("supervised", n_epochs=2), {"n_epochs": 3})
    assert err.param == "hyperparameters" and "method.supervised.hyperparameters" in err.message


# ---- the legacy top-level hyperparameters: OpenAI's three only ----
def test_legacy_hyperparameters_take_openais_three():
    mtype, hp = parse_method(None, {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5})
    assert mtype == "supervised"
    assert hp.resolve(64) == {"n_epochs": 3, "batch_size": 6, "learning_rate_multiplier": 0.5, **DEFAULT_EXTENSIONS}
    assert parse_method(None, None)[1].resolve(64)["n_epochs"] == 2


@pytest.mark.parametrize("hp, param", [
    ({"n_epochs": -1}, "hyperparameters.n_epochs"),
    ({"lora_r": 8}, "hyperparameters.lora_r"),
    ({"deepspeed": "zero2"}, "hyperparameters.deepspeed"),
    ({"beta": 0.1}, "hyperparameters.beta"),
    ("fast", "hyperparameters"),
])
def test_legacy_hyperparameters_refuse_the_rest(hp, param):
    err = refused(None, hp)
    assert err.param == param


def test_a_legacy_extension_is_pointed_to_method():
    err = refused(None, {"lora": False})
    assert "under method.<type>.hyperparameters" in err.message


def test_huge_values_make_short_messages():
    err = refused(method("supervised", deepspeed="z" * 10_000))
    assert len(err.message) < 200
    err = refused(method("supervised", lora_r=10 ** 400))
    assert len(err.message) < 200
