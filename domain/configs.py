"""Hyperparameters and method configs, validated with exact messages (like peft's LoraConfig)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from domain.errors import ValidationError

Auto = str  # the literal "auto"


def _int_or_auto(name: str, value: Any, lo: int, hi: int) -> int | Auto:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer between {lo} and {hi} or \"auto\", got {value!r}",
                              param=f"hyperparameters.{name}")
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {value}", param=f"hyperparameters.{name}")
    return value


def _float_or_auto(name: str, value: Any, lo: float, hi: float) -> float | Auto:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValidationError(f"{name} must be a number greater than {lo} and at most {hi} or \"auto\", "
                              f"got {str(value)[:40]!r}", param=f"hyperparameters.{name}")
    if not lo < value <= hi:  # (an int of any size compares fine; math.isfinite would overflow on it)
        raise ValidationError(f"{name} must be greater than {lo} and at most {hi}, got {str(value)[:40]}",
                              param=f"hyperparameters.{name}")
    return float(value)


@dataclass(frozen=True)
class SupervisedHyperparameters:
    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_epochs", _int_or_auto("n_epochs", self.n_epochs, 1, 50))
        object.__setattr__(self, "batch_size", _int_or_auto("batch_size", self.batch_size, 1, 256))
        object.__setattr__(self, "learning_rate_multiplier",
                           _float_or_auto("learning_rate_multiplier", self.learning_rate_multiplier, 0.0, 100.0))

    @classmethod
    def from_dict(cls, raw: Any) -> SupervisedHyperparameters:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValidationError("hyperparameters must be an object", param="hyperparameters")
        unknown = set(raw) - {"n_epochs", "batch_size", "learning_rate_multiplier"}
        if unknown:
            raise ValidationError(f"unknown hyperparameter(s): {', '.join(sorted(unknown))}",
                                  param="hyperparameters")
        return cls(**raw)

    def resolve(self, n_examples: int) -> dict[str, Any]:
        """Concrete values for "auto", chosen from the dataset size (as OpenAI does)."""
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
        return {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lr_mult}


def parse_method(raw: Any, legacy_hyperparameters: Any) -> tuple[str, SupervisedHyperparameters]:
    """`method` as OpenAI spells it (supervised for now), or the legacy top-level `hyperparameters`."""
    if raw is None:
        return "supervised", SupervisedHyperparameters.from_dict(legacy_hyperparameters)
    if not isinstance(raw, dict):
        raise ValidationError("method must be an object", param="method")
    mtype = raw.get("type")
    if mtype == "supervised":
        inner = raw.get("supervised") or {}
        if not isinstance(inner, dict):
            raise ValidationError("method.supervised must be an object", param="method.supervised")
        return "supervised", SupervisedHyperparameters.from_dict(inner.get("hyperparameters"))
    if mtype in ("dpo", "dspy", "reinforcement"):
        raise ValidationError(f"method type {mtype!r} is not supported yet by this server", param="method.type",
                              code="unsupported_method")
    raise ValidationError(f"method.type must be one of supervised, dpo, dspy; got {mtype!r}", param="method.type")
