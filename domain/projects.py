"""Project settings and the promotion gate."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from domain.errors import Conflict, ValidationError

DEFAULT_ALIAS = "tutor"


@dataclass(frozen=True)
class ProjectSettings:
    store_chat_text: bool = False  # keep users' questions and answers in the log (privacy: off by default)
    promotion_requires_better_eval: bool = False
    local_only: bool = False  # no external provider, for jobs and chat alike (docs/delegation.md)
    monthly_budget_usd: float | None = None  # delegated jobs' estimated cost per calendar month (UTC)
    # names redacted (with emails and phone numbers) from what leaves for a provider; shown to the project's keys
    pii_roster: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ProjectSettings:
        known = {k: v for k, v in (raw or {}).items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("pii_roster"), list):
            known["pii_roster"] = tuple(known["pii_roster"])
        return cls(**known)

    def updated(self, patch: Any) -> ProjectSettings:
        if not isinstance(patch, dict):
            raise ValidationError("settings must be a JSON object", param=None)
        unknown = set(patch) - set(self.__dataclass_fields__)
        if unknown:
            raise ValidationError(f"unknown setting(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        clean: dict[str, Any] = {}
        for k, v in patch.items():
            if k == "monthly_budget_usd":
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                      or not 0 <= v <= 1e9):
                    raise ValidationError("monthly_budget_usd must be a number of US dollars between 0 and 1e9, or "
                                          "null for no budget", param=k)
                clean[k] = None if v is None else float(v)
            elif k == "pii_roster":
                clean[k] = _roster(v)
            elif not isinstance(v, bool):
                raise ValidationError(f"{k} must be true or false", param=k)
            else:
                clean[k] = v
        return ProjectSettings(**{**asdict(self), **clean})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pii_roster"] = list(self.pii_roster)
        return d


MAX_ROSTER = 10000
MAX_ROSTER_CHARS = 200_000  # bounds the compiled pattern (memory, and the second it takes to compile)


def _roster(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ROSTER:
        raise ValidationError(f"pii_roster must be a list of at most {MAX_ROSTER} names", param="pii_roster")
    names = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100 or "\x00" in name:
            raise ValidationError(f"pii_roster[{i}] must be a name of 1-100 characters", param=f"pii_roster[{i}]")
        names.append(name.strip())
    if sum(len(n) for n in names) > MAX_ROSTER_CHARS:
        raise ValidationError(f"pii_roster holds over {MAX_ROSTER_CHARS} characters of names in all",
                              param="pii_roster")
    return tuple(dict.fromkeys(names))


def fold_settings(events) -> ProjectSettings:
    """The settings a project's stream holds (its last ProjectSettingsChanged), or the defaults."""
    current = ProjectSettings()
    for e in events:
        if e.type == "ProjectSettingsChanged":
            current = ProjectSettings.from_dict(e.data["settings"])
    return current


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
