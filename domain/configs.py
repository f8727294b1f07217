"""Hyperparameters and method configs, validated with exact messages (like peft's LoraConfig).

A job's `method` is OpenAI's: `{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {...}}}`. Both
methods take OpenAI's n_epochs, batch_size and learning_rate_multiplier ("auto" or a value), plus tunelog's
extensions for local training (LoRA or full fine-tuning, QLoRA, DeepSpeed, checkpoints, evaluation, early
stopping, packing, sequence length); DPO adds OpenAI's `beta`. The legacy top-level `hyperparameters` (no
`method`) takes OpenAI's three keys only.

tunelog's own method `{"type": "dspy", "dspy": {...}}` optimizes a DSPy program (prompt and demonstrations,
no weights): its options (DspyOptions: optimizer, metric, ...) sit directly under method.dspy.

`resolve(n_examples)` gives the dict a JobCreated event stores and the training worker reads: every key
present, nothing "auto". Its key names are a contract (RESOLVED_KEYS).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from domain.errors import ValidationError

Auto = str  # the literal "auto"

OPENAI_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# tunelog's own hyperparameters (local backends only), in the order resolve() lists them
EXTENSION_KEYS = ("lora", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "qlora", "deepspeed",
                  "checkpoint_interval", "eval_interval", "early_stopping_patience", "packing", "max_seq_len")
# options that only configure LoRA adapters: with lora false they would be silently ignored, so they are refused
LORA_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
NULLABLE = ("deepspeed", "checkpoint_interval", "eval_interval", "early_stopping_patience", "max_seq_len")
DEEPSPEED_STAGES = ("zero2", "zero3", "zero3_offload")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
MAX_TARGET_MODULES = 64
METHODS = ("supervised", "dpo", "dspy")
REFUSED_METHODS = ("reinforcement",)

DEFAULT_LORA_R = 16
DEFAULT_LORA_DROPOUT = 0.05
DEFAULT_BETA = 0.1

DSPY_OPTIMIZERS = ("bootstrap_few_shot", "bootstrap_few_shot_with_random_search", "mipro_v2", "gepa")
DSPY_METRICS = ("exact_match", "contains", "f1", "semantic_f1", "llm_judge")
DSPY_AUTO = ("light", "medium", "heavy")
DSPY_AUTO_OPTIMIZERS = ("mipro_v2", "gepa")  # the optimizers that take `auto`
DSPY_JUDGE_METRICS = ("llm_judge", "semantic_f1")  # the metrics that take a judge_model
DSPY_NULLABLE = ("judge_model", "auto", "num_candidate_programs", "num_trials", "seed", "time_budget_s")
DEFAULT_DSPY_AUTO = "light"
DEFAULT_NUM_CANDIDATE_PROGRAMS = 4
MAX_JUDGE_MODEL = 256


def _short(value: Any) -> str:
    """A client's value quoted in a message, bounded (a huge value must not make a huge error)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _integral(value: Any) -> Any:
    """3.0 is the integer 3 (JSON, and JSON Schema's "integer", do not tell them apart); other values as given."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int_or_auto(name: str, value: Any, lo: int, hi: int, param: str) -> int | Auto:
    if value is None or value == "auto":
        return "auto"
    value = _integral(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer between {lo} and {hi} or \"auto\", got {_short(value)}",
                              param=param)
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {str(value)[:40]}", param=param)
    return value


def _float_or_auto(name: str, value: Any, lo: float, hi: float, param: str) -> float | Auto:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValidationError(f"{name} must be a number greater than {lo} and at most {hi} or \"auto\", "
                              f"got {str(value)[:40]!r}", param=param)
    if not lo < value <= hi:  # (an int of any size compares fine; math.isfinite would overflow on it)
        raise ValidationError(f"{name} must be greater than {lo} and at most {hi}, got {str(value)[:40]}",
                              param=param)
    return float(value)


def _bool(name: str, value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be true or false, got {_short(value)}", param=param)
    return value


def _int(name: str, value: Any, lo: int, hi: int, param: str, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    value = _integral(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        null = " or null" if nullable else ""
        raise ValidationError(f"{name} must be an integer between {lo} and {hi}{null}, got {_short(value)}",
                              param=param)
    return value


def _target_modules(value: Any, param: str) -> str | tuple[str, ...]:
    if value == "all-linear":
        return value
    expected = (f"target_modules must be \"all-linear\" or a non-empty list of at most {MAX_TARGET_MODULES} "
                "module names")
    if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_TARGET_MODULES:
        shown = f"a list of {len(value)}" if isinstance(value, (list, tuple)) and value else _short(value)
        raise ValidationError(f"{expected}, got {shown}", param=param)
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
            raise ValidationError(f"target_modules[{i}] must be a module name (a letter or '_', then letters, "
                                  f"digits, '_' or '.'; at most 64 characters), got {_short(name)}", param=param)
        if name in seen:
            raise ValidationError(f"target_modules lists {name!r} twice", param=param)
        seen.add(name)
    return tuple(value)


@dataclass(frozen=True)
class Hyperparameters:
    """What a client asked for. None means "not given" for the options whose default depends on others
    (lora_alpha is 2 * lora_r) or that must not be given at all (the LoRA options with lora false)."""

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    lora: bool = True  # false: full fine-tuning of every weight
    lora_r: int | None = None  # default 16
    lora_alpha: int | None = None  # default 2 * lora_r
    lora_dropout: float | None = None  # default 0.05
    target_modules: str | tuple[str, ...] | None = None  # default "all-linear"
    qlora: bool = False  # 4-bit base weights, trained through LoRA adapters
    deepspeed: str | None = None  # None: no DeepSpeed
    checkpoint_interval: int | None = None  # None: one checkpoint at the end of each epoch
    eval_interval: int | None = None  # None: evaluate at each checkpoint
    early_stopping_patience: int | None = None  # None: no early stopping
    packing: bool = False
    max_seq_len: int | None = None  # None: the server's default (TUNELOG_MAX_SEQ_LEN)
    # where the values came from in the request, for each error's `param`
    param_prefix: str = field(default="hyperparameters", kw_only=True, compare=False, repr=False)

    def param(self, name: str) -> str:
        return f"{self.param_prefix}.{name}"

    def __post_init__(self) -> None:
        p, put = self.param, lambda name, value: object.__setattr__(self, name, value)
        put("n_epochs", _int_or_auto("n_epochs", self.n_epochs, 1, 50, p("n_epochs")))
        put("batch_size", _int_or_auto("batch_size", self.batch_size, 1, 256, p("batch_size")))
        put("learning_rate_multiplier", _float_or_auto("learning_rate_multiplier", self.learning_rate_multiplier,
                                                       0.0, 100.0, p("learning_rate_multiplier")))
        _bool("lora", self.lora, p("lora"))
        _bool("qlora", self.qlora, p("qlora"))
        _bool("packing", self.packing, p("packing"))
        if self.lora_r is not None:
            put("lora_r", _int("lora_r", self.lora_r, 1, 256, p("lora_r"), nullable=False))
        if self.lora_alpha is not None:
            put("lora_alpha", _int("lora_alpha", self.lora_alpha, 1, 4096, p("lora_alpha"), nullable=False))
        if self.lora_dropout is not None:
            d = self.lora_dropout
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:  # (NaN fails too)
                raise ValidationError(f"lora_dropout must be a number at least 0 and below 1, got {_short(d)}",
                                      param=p("lora_dropout"))
            put("lora_dropout", float(d))
        if self.target_modules is not None:
            put("target_modules", _target_modules(self.target_modules, p("target_modules")))
        if self.deepspeed is not None and (not isinstance(self.deepspeed, str)
                                           or self.deepspeed not in DEEPSPEED_STAGES):
            allowed = ", ".join(f'"{s}"' for s in DEEPSPEED_STAGES)
            raise ValidationError(f"deepspeed must be one of {allowed} or null, got {_short(self.deepspeed)}",
                                  param=p("deepspeed"))
        for name, lo, hi in (("checkpoint_interval", 1, 1_000_000), ("eval_interval", 1, 1_000_000),
                             ("early_stopping_patience", 1, 1000), ("max_seq_len", 16, 131072)):
            put(name, _int(name, getattr(self, name), lo, hi, p(name), nullable=True))
        # The rule for lora false: an option that only configures adapters may not be given (it would be
        # ignored silently), and qlora needs adapters (4-bit weights cannot be trained themselves).
        if not self.lora:
            for name in LORA_ONLY:
                if getattr(self, name) is not None:
                    raise ValidationError(f"{name} has no effect with lora: false (full fine-tuning of every "
                                          "weight); remove it, or set lora: true", param=p(name))
            if self.qlora:
                raise ValidationError("qlora: true needs lora: true (the 4-bit base weights are trained through "
                                      "LoRA adapters); got lora: false", param=p("qlora"))

    @classmethod
    def allowed_keys(cls, extensions: bool) -> tuple[str, ...]:
        return (*OPENAI_KEYS, *cls._method_keys(), *(EXTENSION_KEYS if extensions else ()))

    @classmethod
    def _method_keys(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def from_dict(cls, raw: Any, *, param: str = "hyperparameters", extensions: bool = False) -> Hyperparameters:
        """From a request's JSON: `param` is where the object sits; `extensions` whether tunelog's own keys
        are allowed (under `method` they are; in the legacy top-level `hyperparameters` they are not)."""
        if raw is None:
            return cls(param_prefix=param)
        if not isinstance(raw, dict):
            raise ValidationError(f"{param} must be an object, got {_short(raw)}", param=param)
        allowed = cls.allowed_keys(extensions)
        unknown = sorted(k for k in raw if k not in allowed)
        if unknown:
            names = ", ".join(_short(k) for k in unknown[:10]) + (f" and {len(unknown) - 10} more"
                                                                  if len(unknown) > 10 else "")
            hint = ""
            if not extensions and any(k in EXTENSION_KEYS for k in unknown):
                hint = (" (tunelog's own hyperparameters are given under method.<type>.hyperparameters, not in "
                        "the legacy top-level hyperparameters)")
            elif "beta" in unknown:
                hint = " (beta is a hyperparameter of the dpo method)"
            raise ValidationError(f"unknown hyperparameter(s) in {param}: {names}; allowed: {', '.join(allowed)}"
                                  f"{hint}", param=f"{param}.{unknown[0]}"[:200])
        for name in raw:  # null means the default only where the option is nullable (or OpenAI's "auto")
            if raw[name] is None and name in EXTENSION_KEYS and name not in NULLABLE:
                raise ValidationError(f"{name} may not be null; leave it out for its default", param=f"{param}.{name}")
        return cls(**raw, param_prefix=param)

    def resolve(self, n_examples: int) -> dict[str, Any]:
        """Every value concrete ("auto" chosen from the dataset size, as OpenAI does; defaults filled in)."""
        n_epochs = self.n_epochs
        if n_epochs == "auto":
            # aim for roughly 100 example passes, between 1 and 10 epochs
            n_epochs = max(1, min(10, math.ceil(100 / max(n_examples, 1))))
        batch_size = self.batch_size
        if batch_size == "auto":
            batch_size = max(1, min(8, n_examples // 10 or 1))
        lr_mult = self.learning_rate_multiplier
        if lr_mult == "auto":
            lr_mult = 1.0
        lora_r = self.lora_r if self.lora_r is not None else DEFAULT_LORA_R
        tm = self.target_modules if self.target_modules is not None else "all-linear"
        return {
            "n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lr_mult,
            **self._resolve_method(),
            "lora": self.lora, "lora_r": lora_r,
            "lora_alpha": self.lora_alpha if self.lora_alpha is not None else 2 * lora_r,
            "lora_dropout": self.lora_dropout if self.lora_dropout is not None else DEFAULT_LORA_DROPOUT,
            "target_modules": tm if isinstance(tm, str) else list(tm),
            "qlora": self.qlora, "deepspeed": self.deepspeed, "checkpoint_interval": self.checkpoint_interval,
            "eval_interval": self.eval_interval, "early_stopping_patience": self.early_stopping_patience,
            "packing": self.packing, "max_seq_len": self.max_seq_len,
        }

    def _resolve_method(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class SupervisedHyperparameters(Hyperparameters):
    """OpenAI's three, and tunelog's extensions (under method.supervised.hyperparameters)."""


@dataclass(frozen=True)
class DpoHyperparameters(Hyperparameters):
    """The supervised ones and OpenAI's beta (under method.dpo.hyperparameters)."""

    beta: float | Auto = "auto"  # OpenAI's: how strongly the policy is kept near the reference model

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "beta", _float_or_auto("beta", self.beta, 0.0, 10.0, self.param("beta")))

    @classmethod
    def _method_keys(cls) -> tuple[str, ...]:
        return ("beta",)

    def _resolve_method(self) -> dict[str, Any]:
        return {"beta": DEFAULT_BETA if self.beta == "auto" else self.beta}


def _one_of(name: str, value: Any, allowed: tuple[str, ...], param: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or value not in allowed:
        names = ", ".join(f'"{a}"' for a in allowed)
        null = " or null" if nullable else ""
        raise ValidationError(f"{name} must be one of {names}{null}, got {_short(value)}", param=param)


def _quoted(names: tuple[str, ...]) -> str:
    return " or ".join(f'"{n}"' for n in names)


@dataclass(frozen=True)
class DspyOptions:
    """The dspy method's options (method.dspy): which DSPy optimizer, scored by which metric, with what budget.

    None means "not given" where the default depends on the optimizer (auto, num_candidate_programs) or where
    the option is refused unless the optimizer or metric uses it: an option that would be silently ignored
    is an error, as lora_r is with lora false."""

    optimizer: str = "bootstrap_few_shot"
    metric: str = "contains"
    judge_model: str | None = None  # a model id or alias: required for llm_judge, allowed for semantic_f1
    auto: str | None = None  # mipro_v2 and gepa only (default "light" for them)
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    num_candidate_programs: int | None = None  # random search (default 4), or mipro_v2 with auto null
    num_trials: int | None = None  # mipro_v2 with auto null
    seed: int | None = None
    time_budget_s: int | None = None  # None: no time budget
    max_tokens: int = 128  # the cap on each LM call's output
    # where the values came from in the request, for each error's `param`
    param_prefix: str = field(default="method.dspy", kw_only=True, compare=False, repr=False)

    def param(self, name: str) -> str:
        return f"{self.param_prefix}.{name}"

    def __post_init__(self) -> None:
        p, put = self.param, lambda name, value: object.__setattr__(self, name, value)
        _one_of("optimizer", self.optimizer, DSPY_OPTIMIZERS, p("optimizer"))
        _one_of("metric", self.metric, DSPY_METRICS, p("metric"))
        _one_of("auto", self.auto, DSPY_AUTO, p("auto"), nullable=True)
        jm = self.judge_model
        if jm is not None and (not isinstance(jm, str) or not jm.strip() or len(jm) > MAX_JUDGE_MODEL or "\0" in jm):
            raise ValidationError(f"judge_model must be a non-empty model id of at most {MAX_JUDGE_MODEL} "
                                  f"characters without NUL, or null; got {_short(jm)}", param=p("judge_model"))
        for name, lo, hi, nullable in (("max_bootstrapped_demos", 0, 16, False), ("max_labeled_demos", 0, 16, False),
                                       ("num_candidate_programs", 1, 32, True), ("num_trials", 1, 200, True),
                                       ("seed", 0, 2**31 - 1, True), ("time_budget_s", 10, 86400, True),
                                       ("max_tokens", 16, 1024, False)):
            put(name, _int(name, getattr(self, name), lo, hi, p(name), nullable=nullable))
        # options the chosen metric or optimizer would not use are refused, not ignored
        if self.metric == "llm_judge" and jm is None:
            raise ValidationError('judge_model is required with metric "llm_judge" (the model that grades each '
                                  "answer)", param=p("judge_model"))
        if jm is not None and self.metric not in DSPY_JUDGE_METRICS:
            raise ValidationError(f"judge_model is only used by metric {_quoted(DSPY_JUDGE_METRICS)}, not "
                                  f"{self.metric!r}; remove it, or change the metric", param=p("judge_model"))
        opt = self.optimizer
        if self.auto is not None and opt not in DSPY_AUTO_OPTIMIZERS:
            raise ValidationError(f"auto is only used by optimizer {_quoted(DSPY_AUTO_OPTIMIZERS)}, not {opt!r}; "
                                  "remove it, or change the optimizer", param=p("auto"))
        if self.num_trials is not None and opt != "mipro_v2":
            raise ValidationError(f'num_trials is only used by optimizer "mipro_v2", not {opt!r}; remove it, or '
                                  "change the optimizer", param=p("num_trials"))
        if self.num_candidate_programs is not None and opt not in ("bootstrap_few_shot_with_random_search",
                                                                   "mipro_v2"):
            raise ValidationError('num_candidate_programs is only used by optimizer '
                                  '"bootstrap_few_shot_with_random_search" or "mipro_v2", not '
                                  f"{opt!r}; remove it, or change the optimizer", param=p("num_candidate_programs"))
        if opt == "mipro_v2":
            given = [n for n in ("num_candidate_programs", "num_trials") if getattr(self, n) is not None]
            if self.auto is not None and given:
                raise ValidationError(f'optimizer "mipro_v2": give auto, or num_candidate_programs and num_trials, '
                                      f"not both (got auto {self.auto!r} and {given[0]})", param=p(given[0]))
            if self.auto is None and len(given) == 1:
                missing = "num_trials" if given == ["num_candidate_programs"] else "num_candidate_programs"
                raise ValidationError(f'optimizer "mipro_v2" with auto null needs both num_candidate_programs and '
                                      f"num_trials; {missing} is missing (or give auto instead of {given[0]})",
                                      param=p(missing))

    @classmethod
    def allowed_keys(cls) -> tuple[str, ...]:
        return RESOLVED_KEYS["dspy"]

    @classmethod
    def from_dict(cls, raw: Any, param: str = "method.dspy") -> DspyOptions:
        """From a request's JSON: `param` is where the object sits. None (or a missing key) means the default."""
        if raw is None:
            return cls(param_prefix=param)
        if not isinstance(raw, dict):
            raise ValidationError(f"{param} must be an object, got {_short(raw)}", param=param)
        allowed = cls.allowed_keys()
        unknown = sorted(k for k in raw if k not in allowed)
        if unknown:
            names = ", ".join(_short(k) for k in unknown[:10]) + (f" and {len(unknown) - 10} more"
                                                                  if len(unknown) > 10 else "")
            hint = ""
            if "hyperparameters" in unknown:
                hint = " (the dspy method's options sit directly in method.dspy, not in a hyperparameters object)"
            raise ValidationError(f"unknown option(s) in {param}: {names}; allowed: {', '.join(allowed)}{hint}",
                                  param=f"{param}.{unknown[0]}"[:200])
        for name in raw:
            if raw[name] is None and name not in DSPY_NULLABLE:
                raise ValidationError(f"{name} may not be null; leave it out for its default", param=f"{param}.{name}")
        return cls(**raw, param_prefix=param)

    def resolve(self, n_examples: int) -> dict[str, Any]:
        """Every key present, in RESOLVED_KEYS["dspy"] order, defaults filled in (n_examples is not used: the
        signature is Hyperparameters.resolve's)."""
        auto = self.auto
        if auto is None and self.optimizer in DSPY_AUTO_OPTIMIZERS and self.num_trials is None:
            auto = DEFAULT_DSPY_AUTO
        ncp = self.num_candidate_programs
        if ncp is None and self.optimizer == "bootstrap_few_shot_with_random_search":
            ncp = DEFAULT_NUM_CANDIDATE_PROGRAMS
        return {
            "optimizer": self.optimizer, "metric": self.metric, "judge_model": self.judge_model, "auto": auto,
            "max_bootstrapped_demos": self.max_bootstrapped_demos, "max_labeled_demos": self.max_labeled_demos,
            "num_candidate_programs": ncp, "num_trials": self.num_trials, "seed": self.seed,
            "time_budget_s": self.time_budget_s, "max_tokens": self.max_tokens,
        }


HYPERPARAMETERS: dict[str, type[Hyperparameters]] = {"supervised": SupervisedHyperparameters,
                                                     "dpo": DpoHyperparameters}
# the keys of resolve()'s dict, per method (what JobCreated stores and the training worker reads)
RESOLVED_KEYS = {
    "supervised": (*OPENAI_KEYS, *EXTENSION_KEYS),
    "dpo": (*OPENAI_KEYS, "beta", *EXTENSION_KEYS),
    "dspy": ("optimizer", "metric", "judge_model", "auto", "max_bootstrapped_demos", "max_labeled_demos",
             "num_candidate_programs", "num_trials", "seed", "time_budget_s", "max_tokens"),
}


def parse_method(raw: Any, legacy_hyperparameters: Any) -> tuple[str, Hyperparameters | DspyOptions]:
    """`method` as OpenAI spells it (supervised or dpo) or tunelog's dspy, or the legacy top-level
    `hyperparameters`. Supervised and dpo give their Hyperparameters; dspy its DspyOptions (both `resolve(n)`)."""
    if raw is None:
        return "supervised", SupervisedHyperparameters.from_dict(legacy_hyperparameters)
    if not isinstance(raw, dict):
        raise ValidationError(f"method must be an object, got {_short(raw)}", param="method")
    mtype = raw.get("type")
    if isinstance(mtype, str) and mtype in REFUSED_METHODS:
        raise ValidationError(f"method type {mtype!r} is not supported yet by this server", param="method.type",
                              code="unsupported_method")
    if not isinstance(mtype, str) or mtype not in METHODS:
        raise ValidationError(f"method.type must be one of \"supervised\", \"dpo\", \"dspy\"; got {_short(mtype)}",
                              param="method.type")
    for key, value in raw.items():
        if key == "type" or key == mtype:
            continue
        if key in METHODS or key in REFUSED_METHODS:  # another method's settings: fine only if empty
            if value is not None:
                raise ValidationError(f"method.{key} is given but method.type is {mtype!r}", param=f"method.{key}")
            continue
        raise ValidationError(f"unknown key in method: {_short(key)}; allowed: type, {mtype}",
                              param=f"method.{key}"[:200])
    if legacy_hyperparameters is not None and mtype == "dspy":
        raise ValidationError("the top-level hyperparameters (deprecated) do not apply to method \"dspy\"; give its "
                              "options in method.dspy", param="hyperparameters")
    if legacy_hyperparameters is not None:
        raise ValidationError(f"hyperparameters are given both at the top level (deprecated) and in method; "
                              f"give them in method.{mtype}.hyperparameters only", param="hyperparameters")
    if mtype == "dspy":
        return mtype, DspyOptions.from_dict(raw.get(mtype), param="method.dspy")
    inner = raw.get(mtype)
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise ValidationError(f"method.{mtype} must be an object, got {_short(inner)}", param=f"method.{mtype}")
    unknown = sorted(k for k in inner if k != "hyperparameters")
    if unknown:
        raise ValidationError(f"unknown key in method.{mtype}: {_short(unknown[0])}; allowed: hyperparameters",
                              param=f"method.{mtype}.{unknown[0]}"[:200])
    cls = HYPERPARAMETERS[mtype]
    return mtype, cls.from_dict(inner.get("hyperparameters"), param=f"method.{mtype}.hyperparameters",
                                extensions=True)
