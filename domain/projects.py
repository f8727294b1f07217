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
    # eval-gated promotion (docs/evals.md): {eval_id, criterion, must_beat_current, min_pass_rate, alias,
    # data_source?}; auto_evaluate runs that eval when a fine-tune succeeds, auto_promote moves the alias on a win
    promotion_eval: dict[str, Any] | None = None
    auto_evaluate: bool = False
    auto_promote: bool = False

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
            elif k == "promotion_eval":
                clean[k] = None if v is None else promotion_eval(v)
            elif not isinstance(v, bool):
                raise ValidationError(f"{k} must be true or false", param=k)
            else:
                clean[k] = v
        new = ProjectSettings(**{**asdict(self), **clean})
        if (new.auto_evaluate or new.auto_promote) and new.promotion_eval is None:
            raise ValidationError("auto_evaluate and auto_promote need promotion_eval (which eval, which "
                                  "criterion)", param="auto_evaluate" if new.auto_evaluate else "auto_promote")
        return new

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


PROMOTION_EVAL_KEYS = {"eval_id", "criterion", "must_beat_current", "min_pass_rate", "alias", "data_source"}


def promotion_eval(v: Any) -> dict[str, Any]:
    """The shape of the promotion_eval setting (that the eval and criterion exist is checked by the API)."""
    if not isinstance(v, dict):
        raise ValidationError("promotion_eval must be an object {eval_id, criterion, must_beat_current, "
                              "min_pass_rate} or null", param="promotion_eval")
    unknown = set(v) - PROMOTION_EVAL_KEYS - {"spec_sha256"}  # (derived from data_source by the API: never taken)
    if unknown:
        raise ValidationError(f"promotion_eval: unknown key(s) {', '.join(sorted(unknown))}",
                              param="promotion_eval." + sorted(unknown)[0])
    for k in ("eval_id", "criterion"):
        if not isinstance(v.get(k), str) or not v[k].strip() or len(v[k]) > 256:
            raise ValidationError(f"promotion_eval.{k} is required (a string)", param=f"promotion_eval.{k}")
    rate = v.get("min_pass_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValidationError("promotion_eval.min_pass_rate must be a number from 0 to 1",
                              param="promotion_eval.min_pass_rate")
    beat = v.get("must_beat_current", True)
    if not isinstance(beat, bool):
        raise ValidationError("promotion_eval.must_beat_current must be true or false",
                              param="promotion_eval.must_beat_current")
    alias = v.get("alias", DEFAULT_ALIAS)
    if not isinstance(alias, str) or not 1 <= len(alias) <= 64:
        raise ValidationError("promotion_eval.alias must be an alias name", param="promotion_eval.alias")
    ds = v.get("data_source")
    if ds is not None and not isinstance(ds, dict):
        raise ValidationError("promotion_eval.data_source must be a run's data source (without model)",
                              param="promotion_eval.data_source")
    out = {"eval_id": v["eval_id"], "criterion": v["criterion"], "must_beat_current": beat,
           "min_pass_rate": float(rate), "alias": alias}
    if ds is not None:
        out["data_source"] = ds
    return out


def check_eval_gate(gate: dict[str, Any], alias: str, model: str, candidate: dict[str, Any] | None,
                    current_model: str | None, current: dict[str, Any] | None) -> str:
    """Refuse (409 promotion_refused, with the numbers) a promotion the eval gate forbids; else the reason it
    passes. `candidate` / `current`: the latest completed run of each model on the gate's eval, as
    {"id", "passed", "total"} of the gate's criterion (None: no such run)."""
    if gate.get("alias", DEFAULT_ALIAS) != alias:
        return ""
    name, crit = gate["eval_id"], gate["criterion"]
    if candidate is None:
        raise Conflict(f"promotion refused: {model} has no completed run of eval {name}; run it (POST "
                       f"/v1/evals/{name}/runs) before promoting to {alias!r}", param="model",
                       code="promotion_refused")
    rate = candidate["passed"] / candidate["total"] if candidate["total"] else 0.0
    if rate < gate["min_pass_rate"]:
        raise Conflict(f"promotion refused: {model} passed {candidate['passed']} of {candidate['total']} items on "
                       f"{crit!r} (pass rate {rate:.2f}) in run {candidate['id']}, under the minimum of "
                       f"{gate['min_pass_rate']:.2f}", param="model", code="promotion_refused")
    why = f"{model} passed {candidate['passed']}/{candidate['total']} on {crit!r} (run {candidate['id']})"
    if gate.get("must_beat_current", True) and current_model is not None and current_model != model:
        if current is None:
            raise Conflict(f"promotion refused: the current target of {alias!r}, {current_model}, has no completed "
                           f"run of eval {name} with the same items, prompt template, sampling and judges as "
                           f"{model}'s run {candidate['id']}; run it the same way first", param="model",
                           code="promotion_refused")
        if not candidate["passed"] > current["passed"]:
            raise Conflict(f"promotion refused: {model} passed {candidate['passed']} of {candidate['total']} items "
                           f"on {crit!r} (run {candidate['id']}), not more than {current_model}'s "
                           f"{current['passed']} of {current['total']} (run {current['id']}), the current target "
                           f"of {alias!r}", param="model", code="promotion_refused")
        why += f", more than {current_model}'s {current['passed']}/{current['total']} (run {current['id']})"
    return why


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
