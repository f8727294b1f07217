"""Project settings and the promotion gate."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from domain.errors import Conflict, ValidationError

DEFAULT_ALIAS = "tutor"


@dataclass(frozen=True)
class ProjectSettings:
    store_chat_text: bool = False  # keep users' questions and answers in the log (privacy: off by default)
    promotion_requires_better_eval: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ProjectSettings:
        return cls(**{k: v for k, v in (raw or {}).items() if k in cls.__dataclass_fields__})

    def updated(self, patch: Any) -> ProjectSettings:
        if not isinstance(patch, dict):
            raise ValidationError("settings must be a JSON object", param=None)
        unknown = set(patch) - set(self.__dataclass_fields__)
        if unknown:
            raise ValidationError(f"unknown setting(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        for k, v in patch.items():
            if not isinstance(v, bool):
                raise ValidationError(f"{k} must be true or false", param=k)
        return ProjectSettings(**{**asdict(self), **patch})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_promotion(settings: ProjectSettings, alias: str, model: str, new_score: float | None,
                    current_model: str, current_score: float | None) -> None:
    """Refuse (409) a promotion the project's gate forbids. Scores are validation losses: lower wins."""
    if not settings.promotion_requires_better_eval:
        return
    if new_score is None:
        raise Conflict(f"promotion refused: {model} has no evaluation score (train it with a validation file), "
                       f"and this project requires a better eval than {current_model} to promote to {alias!r}",
                       param="model", code="promotion_refused")
    if current_score is not None and not new_score < current_score:
        raise Conflict(f"promotion refused: {model} has validation loss {new_score:.4f}, not better than "
                       f"{current_model}'s {current_score:.4f} (the current target of {alias!r})",
                       param="model", code="promotion_refused")
