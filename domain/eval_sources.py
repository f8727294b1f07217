"""A completions run's input messages and sampling parameters, checked and normalized (the API and auto_evaluate
share them)."""
from __future__ import annotations

from typing import Any

from domain.errors import ValidationError
from domain.evals import check_template
from domain.evals_limits import DEFAULT_SAMPLE_TOKENS, MAX_SAMPLE_TOKENS

ROLES_MESSAGE = {"system", "developer", "user", "assistant"}


def input_messages(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ValidationError("data_source.input_messages is required for a completions run: {\"type\": "
                              "\"template\", \"template\": [{\"role\": \"user\", \"content\": \"{{item.question}}\"}]}",
                              param="data_source.input_messages")
    kind = spec.get("type")
    if kind == "item_reference":
        ref = spec.get("item_reference")
        if not isinstance(ref, str) or not ref.startswith("item.") or len(ref) > 256:
            raise ValidationError("data_source.input_messages.item_reference must name a field of the item that "
                                  "holds the messages, e.g. 'item.messages'",
                                  param="data_source.input_messages.item_reference")
        check_template("{{" + ref + "}}", "data_source.input_messages.item_reference", allow_sample=False)
        return {"type": "item_reference", "item_reference": ref}
    if kind != "template":
        raise ValidationError(f"data_source.input_messages.type must be 'template' or 'item_reference', got {kind!r}",
                              param="data_source.input_messages.type")
    template = spec.get("template")
    if not isinstance(template, list) or not 1 <= len(template) <= 32:
        raise ValidationError("data_source.input_messages.template must be a list of 1 to 32 messages",
                              param="data_source.input_messages.template")
    out = []
    for i, m in enumerate(template):
        param = f"data_source.input_messages.template[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES_MESSAGE:
            raise ValidationError(f"{param} must be a message with a role of {sorted(ROLES_MESSAGE)}", param=param)
        content = m.get("content")
        if isinstance(content, dict) and content.get("type") in ("input_text", "output_text"):
            content = content.get("text")
        if not isinstance(content, str) or len(content) > 16384:
            raise ValidationError(f"{param}.content must be text (at most 16384 characters)",
                                  param=f"{param}.content")
        check_template(content, f"{param}.content", allow_sample=False)
        out.append({"role": m["role"], "content": content})
    return {"type": "template", "template": out}


def sampling_params(raw: Any) -> dict[str, Any]:
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ValidationError("data_source.sampling_params must be an object", param="data_source.sampling_params")
    known = {"temperature", "top_p", "seed", "max_completion_tokens", "max_completions_tokens"}
    unknown = {k for k, v in raw.items() if k not in known and v is not None}  # an SDK dump sends nulls
    if unknown:
        raise ValidationError(f"data_source.sampling_params: unsupported key(s) {', '.join(sorted(unknown))}",
                              param="data_source.sampling_params." + sorted(unknown)[0])
    out: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "seed": 42,
                           "max_completion_tokens": DEFAULT_SAMPLE_TOKENS}
    for k, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        if k in raw and raw[k] is not None:
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValidationError(f"data_source.sampling_params.{k} must be a number from {lo:g} to {hi:g}",
                                      param=f"data_source.sampling_params.{k}")
            out[k] = float(v)
    if raw.get("seed") is not None:
        if isinstance(raw["seed"], bool) or not isinstance(raw["seed"], int) or not 0 <= raw["seed"] < 2 ** 31:
            raise ValidationError("data_source.sampling_params.seed must be an integer from 0 to 2^31-1",
                                  param="data_source.sampling_params.seed")
        out["seed"] = raw["seed"]
    tokens = raw.get("max_completion_tokens", raw.get("max_completions_tokens"))
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_SAMPLE_TOKENS:
            raise ValidationError(f"data_source.sampling_params.max_completion_tokens must be from 1 to "
                                  f"{MAX_SAMPLE_TOKENS}", param="data_source.sampling_params.max_completion_tokens")
        out["max_completion_tokens"] = tokens
    return out
