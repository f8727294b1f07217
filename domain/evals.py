"""The Evals API's create/update bodies, grader templates and the string check (stdlib only).

Shapes follow OpenAI's `client.evals` (openai-python `types/eval_create_params.py`, `types/graders/*`).
`validate_eval` checks a `POST /v1/evals` body and returns the normalized record the service stores;
its `testing_criteria` (defaults filled in) are what `workers.graders.grade` runs. Deep JSON Schema checks
of `item_schema` need jsonschema and live in `workers.graders.check_item_schema`.

Templates are OpenAI's: "Any string with {{ }} double curly braces will be substituted with the variable
value", "{{ namespace.variable }}", "The only supported namespaces are item and sample", "nested variables
can be accessed with JSON path like syntax" (the graders guide). A list element is reached with a numeric
segment: `{{ item.choices.0 }}`. Rendering is one regex pass over the template: values are never parsed
as templates again and nothing is evaluated.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from domain.errors import ValidationError

NAMESPACES = ("item", "sample")
# the sample namespace per the graders guide: output_text, output_json, output_tools; plus choices
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")
CRITERION_TYPES = ("string_check", "text_similarity", "score_model", "label_model")
UNSUPPORTED_GRADERS = ("python", "multi")
STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor",
                      "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
ROLES = ("system", "developer", "user", "assistant")
SAMPLING_PARAMS = ("temperature", "top_p", "seed", "max_completions_tokens", "reasoning_effort")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

MAX_CRITERIA = 16
MAX_NAME = 256
MAX_TEMPLATE_BYTES = 16 * 1024
MAX_MESSAGES = 32
MAX_LABELS = 64
MAX_LABEL = 256
MAX_MODEL = 256
MAX_ITEM_SCHEMA_BYTES = 64 * 1024
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
DEFAULT_NAME = "eval"
DEFAULT_RANGE = (0.0, 1.0)  # score_model: "The range of the score. Defaults to `[0, 1]`."

_OPEN, _CLOSE = "{{", "}}"
_SEGMENT = re.compile(r"[A-Za-z0-9_]+")
_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


# ---------------------------------------------------------------------------------------------- templates

def _tags(text: str):
    """(start, end, inner) of each `{{ ... }}`, or a ValueError saying what is unbalanced."""
    pos = 0
    while True:
        opening = text.find(_OPEN, pos)
        closing = text.find(_CLOSE, pos)
        if opening < 0:
            if closing >= 0:
                raise ValueError(f"'}}}}' at offset {closing} without an opening '{{{{'")
            return
        if 0 <= closing < opening:
            raise ValueError(f"'}}}}' at offset {closing} without an opening '{{{{'")
        end = text.find(_CLOSE, opening + 2)
        if end < 0:
            raise ValueError(f"'{{{{' at offset {opening} is never closed with '}}}}'")
        inner = text[opening + 2:end]
        if _OPEN in inner:
            raise ValueError(f"'{{{{' at offset {opening} is never closed with '}}}}'")
        yield opening, end + 2, inner
        pos = end + 2


def _parse_ref(inner: str) -> tuple[str, ...] | None:
    path = inner.strip()
    if not path:
        return None
    segments = tuple(path.split("."))
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    return segments


def template_refs(text: str) -> list[tuple[str, ...]]:
    """The well-formed references in `text`, in order, e.g. [("item", "question"), ("sample", "output_text")].
    Malformed or unbalanced tags are skipped (check_template reports them)."""
    refs = []
    for match in _TAG.finditer(text):
        ref = _parse_ref(match.group(1))
        if ref is not None:
            refs.append(ref)
    return refs


def check_template(text: str, param: str, *, allow_sample: bool) -> None:
    """Raise ValidationError(code="invalid_template", param=param) for unbalanced braces, an empty or
    malformed reference, a namespace other than item/sample, or sample.* where allow_sample is False."""
    if not isinstance(text, str):
        raise ValidationError(f"{param} must be a string", param=param, code="invalid_template")
    if len(text.encode("utf-8")) > MAX_TEMPLATE_BYTES:
        raise ValidationError(f"{param} is over {MAX_TEMPLATE_BYTES} bytes", param=param, code="invalid_template")
    try:
        tags = list(_tags(text))
    except ValueError as e:
        raise ValidationError(f"{param}: unbalanced template braces: {e}", param=param,
                              code="invalid_template") from None
    for _, _, inner in tags:
        shown = _short("{{" + inner + "}}")
        ref = _parse_ref(inner)
        if ref is None:
            raise ValidationError(
                f"{param}: bad template reference {shown}: write {{{{ namespace.path }}}} with segments of "
                "letters, digits and underscores joined by '.'", param=param, code="invalid_template")
        if ref[0] not in NAMESPACES:
            raise ValidationError(
                f"{param}: bad template reference {shown}: the namespace must be 'item' or 'sample'",
                param=param, code="invalid_template")
        if ref[0] == "sample":
            if not allow_sample:
                raise ValidationError(
                    f"{param}: template reference {shown} uses the sample namespace, which is not available "
                    "here (only item.* is)", param=param, code="invalid_template")
            if len(ref) > 1 and ref[1] not in SAMPLE_FIELDS:
                raise ValidationError(
                    f"{param}: bad template reference {shown}: the sample namespace has "
                    + ", ".join(SAMPLE_FIELDS), param=param, code="invalid_template")


_MISSING = object()


def _lookup(ctx: Any, path: tuple[str, ...]) -> Any:
    value = ctx
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _text(value: Any) -> str:
    if value is _MISSING:
        return ""  # a missing variable renders empty
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)  # 0.5, 1e-07, NaN
    return json.dumps(value, ensure_ascii=False)  # objects, lists and null as JSON


MAX_RENDERED = 256 * 1024  # characters of one rendered template (a prompt, an input or a reference)


def render(text: str, ctx: dict) -> str:
    """Substitute each `{{ ns.path }}` with its value in ctx ({"item": ..., "sample": ...}). A missing path
    renders as ""; strings as-is; numbers and booleans plainly ("3", "0.5", "true"); other values (objects,
    lists, null) as JSON. A tag that is not a well-formed reference is left as written. One pass: a value
    that itself holds "{{item.x}}" is not rendered again."""
    size = [len(text)]

    def substitute(match: re.Match) -> str:
        ref = _parse_ref(match.group(1))
        if ref is None:
            return match.group(0)
        out = _text(_lookup(ctx, ref))
        size[0] += len(out)
        if size[0] > MAX_RENDERED:  # 1,600 copies of a large field would be gigabytes
            raise ValueError(f"the template renders to over {MAX_RENDERED} characters")
        return out
    return _TAG.sub(substitute, text)


# ------------------------------------------------------------------------------------------- string check

def string_check(input: str, reference: str, operation: str) -> bool:
    """OpenAI's string check (graders guide): eq "Returns 1 if the input matches the reference
    (case-sensitive)", ne "if the input does not match the reference (case-sensitive)", like "if the input
    contains the reference (case-sensitive)", ilike "if the input contains the reference (not
    case-sensitive)". So like/ilike are substring tests, not SQL patterns: '%' and '_' are literal."""
    if operation == "eq":
        return input == reference
    if operation == "ne":
        return input != reference
    if operation == "like":
        return reference in input
    if operation == "ilike":
        return reference.casefold() in input.casefold()
    raise ValueError(f"unknown string_check operation {operation!r}")


# ------------------------------------------------------------------------------------------- validation

def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _fail(message: str, param: str, code: str = "invalid_value"):
    raise ValidationError(message, param=param, code=code)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(obj: dict, allowed, param: str) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{param}.{key}" if param else str(key)
            _fail(f"unknown parameter {where!r}" + (f" in {param}" if param else "")
                  + f"; allowed: {', '.join(sorted(allowed))}", where, "unknown_parameter")


def _require(obj: dict, key: str, param: str) -> Any:
    if key not in obj or obj[key] is None:
        _fail(f"missing required parameter {param}.{key}", f"{param}.{key}", "missing_required_parameter")
    return obj[key]


def _string(value: Any, param: str, *, max_len: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        _fail(f"{param} must be a string", param, "invalid_type")
    if not allow_empty and not value.strip():
        _fail(f"{param} must not be empty", param)
    if len(value) > max_len:
        _fail(f"{param} is over {max_len} characters", param, "string_above_max_length")
    return value


def validate_metadata(value: Any, param: str = "metadata") -> dict:
    """OpenAI's metadata: at most 16 pairs, keys strings of at most 64 characters, values strings of at
    most 512. None means none ({})."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(f"{param} must be an object of string keys and string values", param, "invalid_type")
    if len(value) > MAX_METADATA:
        _fail(f"{param} has {len(value)} keys; at most {MAX_METADATA} are allowed", param)
    for key, val in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY:
            _fail(f"{param} keys must be non-empty strings of at most {MAX_METADATA_KEY} characters: "
                  f"{_short(key)}", f"{param}.{key}")
        if not isinstance(val, str) or len(val) > MAX_METADATA_VALUE:
            _fail(f"{param}.{key} must be a string of at most {MAX_METADATA_VALUE} characters",
                  f"{param}.{key}")
    return dict(value)


def _eval_name(value: Any, param: str = "name") -> str:
    return _string(value, param, max_len=MAX_NAME, allow_empty=True)


def sample_schema() -> dict:
    """The JSON Schema of the sample namespace a completions run fills (include_sample_schema)."""
    return {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "message": {
                            "type": "object",
                            "properties": {"role": {"type": "string", "enum": ["assistant"]},
                                           "content": {"type": ["string", "null"]}},
                            "required": ["role", "content"],
                        },
                        "finish_reason": {"type": "string"},
                    },
                    "required": ["message", "finish_reason"],
                },
            },
            "output_text": {"type": "string"},
            "output_json": {"type": "object"},
            "output_tools": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["model", "choices", "output_text"],
    }


def _data_source_config(value: Any) -> dict:
    param = "data_source_config"
    if not isinstance(value, dict):
        _fail(f"{param} must be an object", param, "invalid_type")
    kind = value.get("type")
    if kind in ("logs", "stored_completions"):
        _fail(f"data_source_config type {kind!r} is not supported here: only 'custom' (an item_schema, with "
              "items given in the run's data source) is", f"{param}.type", "unsupported_data_source_config")
    if kind != "custom":
        _fail(f"{param}.type must be 'custom'", f"{param}.type")
    _check_keys(value, ("type", "item_schema", "include_sample_schema"), param)
    item_schema = _require(value, "item_schema", param)
    if not isinstance(item_schema, dict):
        _fail(f"{param}.item_schema must be a JSON Schema object", f"{param}.item_schema", "invalid_item_schema")
    try:
        size = len(json.dumps(item_schema, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        _fail(f"{param}.item_schema is not JSON", f"{param}.item_schema", "invalid_item_schema")
    if size > MAX_ITEM_SCHEMA_BYTES:
        _fail(f"{param}.item_schema is {size} bytes; at most {MAX_ITEM_SCHEMA_BYTES} are allowed",
              f"{param}.item_schema", "invalid_item_schema")
    include_sample = value.get("include_sample_schema", False)
    if include_sample is None:
        include_sample = False
    if not isinstance(include_sample, bool):
        _fail(f"{param}.include_sample_schema must be a boolean", f"{param}.include_sample_schema", "invalid_type")
    properties: dict = {"item": item_schema}
    required = ["item"]
    if include_sample:
        properties["sample"] = sample_schema()
        required.append("sample")
    return {
        "type": "custom",
        "schema": {"type": "object", "properties": properties, "required": required},
        "item_schema": item_schema,
        "include_sample_schema": include_sample,
    }


def _content(value: Any, param: str) -> str:
    """A message's content as one template string: a string, an input_text/output_text part, or a list of
    those (joined with no separator, as consecutive text parts read). Images and audio are refused."""
    if isinstance(value, str):
        check_template(value, param, allow_sample=True)
        return value
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("input_text", "output_text"):
            _check_keys(value, ("type", "text"), param)
            text = value.get("text")
            if not isinstance(text, str):
                _fail(f"{param}.text must be a string", f"{param}.text", "invalid_type")
            check_template(text, f"{param}.text", allow_sample=True)
            return text
        if kind in ("input_image", "input_audio"):
            _fail(f"{param}: {kind} content is not supported here (text only)", f"{param}.type",
                  "unsupported_content")
        _fail(f"{param} must be a string or an input_text part", param, "invalid_type")
    if isinstance(value, list):
        if not value:
            _fail(f"{param} must not be empty", param)
        for i, part in enumerate(value):
            if not isinstance(part, str | dict):
                _fail(f"{param}[{i}] must be a string or a text part", f"{param}[{i}]", "invalid_type")
        parts = [_content(part, f"{param}[{i}]") for i, part in enumerate(value)]
        joined = "".join(parts)
        if len(joined.encode("utf-8")) > MAX_TEMPLATE_BYTES:
            _fail(f"{param} is over {MAX_TEMPLATE_BYTES} bytes", param, "invalid_template")
        return joined
    _fail(f"{param} must be a string or a list of text parts", param, "invalid_type")


def _messages(value: Any, param: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        _fail(f"{param} must be a non-empty list of messages", param, "invalid_type")
    if len(value) > MAX_MESSAGES:
        _fail(f"{param} has {len(value)} messages; at most {MAX_MESSAGES} are allowed", param)
    out = []
    for i, message in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(message, dict):
            _fail(f"{where} must be a message object", where, "invalid_type")
        _check_keys(message, ("role", "content", "type"), where)
        if message.get("type", "message") not in ("message", None):
            _fail(f"{where}.type must be 'message'", f"{where}.type")
        role = _require(message, "role", where)
        if role not in ROLES:
            _fail(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        if "content" not in message or message["content"] is None:
            _fail(f"missing required parameter {where}.content", f"{where}.content", "missing_required_parameter")
        out.append({"type": "message", "role": role, "content": _content(message["content"], f"{where}.content")})
    return out


def _sampling_params(value: Any, param: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(f"{param} must be an object", param, "invalid_type")
    _check_keys(value, SAMPLING_PARAMS, param)
    out: dict = {}
    for key, val in value.items():
        if val is None:
            continue
        where = f"{param}.{key}"
        if key == "temperature" and not (_is_number(val) and 0 <= val <= 2):
            _fail(f"{where} must be a number from 0 to 2", where)
        if key == "top_p" and not (_is_number(val) and 0 < val <= 1):
            _fail(f"{where} must be a number above 0 and at most 1", where)
        if key == "seed" and not (isinstance(val, int) and not isinstance(val, bool)):
            _fail(f"{where} must be an integer", where)
        if key == "max_completions_tokens" and not (isinstance(val, int) and not isinstance(val, bool) and val >= 1):
            _fail(f"{where} must be a positive integer", where)
        if key == "reasoning_effort" and val not in REASONING_EFFORTS:
            _fail(f"{where} must be one of {', '.join(REASONING_EFFORTS)}", where)
        out[key] = val
    return out


def _model(criterion: dict, param: str) -> str:
    return _string(_require(criterion, "model", param), f"{param}.model", max_len=MAX_MODEL)


def _criterion(value: Any, index: int) -> dict:
    param = f"testing_criteria[{index}]"
    if not isinstance(value, dict):
        _fail(f"{param} must be a grader object", param, "invalid_type")
    kind = value.get("type")
    if kind in UNSUPPORTED_GRADERS:
        _fail(f"{param}: the {kind} grader is not supported here (it would run user code); use string_check, "
              "text_similarity, score_model or label_model", f"{param}.type", "unsupported_grader")
    if kind not in CRITERION_TYPES:
        _fail(f"{param}.type must be one of {', '.join(CRITERION_TYPES)}", f"{param}.type")
    name = value.get("name")
    # OpenAI's create params mark name as required; a criterion without one gets "<type>_<index>"
    name = f"{kind}_{index}" if name is None else _string(name, f"{param}.name", max_len=MAX_NAME)
    out: dict[str, Any] = {"type": kind, "name": name}

    if kind in ("string_check", "text_similarity"):
        keys = ("type", "name", "input", "reference") + (
            ("operation",) if kind == "string_check" else ("evaluation_metric", "pass_threshold"))
        _check_keys(value, keys, param)
        for key in ("input", "reference"):
            text = _require(value, key, param)
            check_template(text, f"{param}.{key}", allow_sample=True)
            out[key] = text
        if kind == "string_check":
            operation = _require(value, "operation", param)
            if operation not in STRING_CHECK_OPERATIONS:
                _fail(f"{param}.operation must be one of {', '.join(STRING_CHECK_OPERATIONS)}", f"{param}.operation")
            out["operation"] = operation
        else:
            metric = _require(value, "evaluation_metric", param)
            if metric not in SIMILARITY_METRICS:
                _fail(f"{param}.evaluation_metric must be one of {', '.join(SIMILARITY_METRICS)}",
                      f"{param}.evaluation_metric")
            threshold = _require(value, "pass_threshold", param)
            # every metric scores in [0, 1]: a threshold outside it would pass or fail everything
            if not (_is_number(threshold) and 0 <= threshold <= 1):
                _fail(f"{param}.pass_threshold must be a number from 0 to 1", f"{param}.pass_threshold")
            out["evaluation_metric"] = metric
            out["pass_threshold"] = float(threshold)
        return out

    if kind == "score_model":
        _check_keys(value, ("type", "name", "model", "input", "range", "pass_threshold", "sampling_params"), param)
        out["model"] = _model(value, param)
        out["input"] = _messages(_require(value, "input", param), f"{param}.input")
        bounds = value.get("range")
        if bounds is None:
            lo, hi = DEFAULT_RANGE
        else:
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
                _fail(f"{param}.range must be two numbers [low, high]", f"{param}.range")
            lo, hi = float(bounds[0]), float(bounds[1])
            if not lo < hi:
                _fail(f"{param}.range must have low < high", f"{param}.range")
        out["range"] = [lo, hi]
        threshold = value.get("pass_threshold")
        if threshold is None:
            # OpenAI documents pass_threshold only as "The threshold for the score." (optional, no default);
            # without one we pass scores at or above the middle of the range
            threshold = (lo + hi) / 2
        elif not (_is_number(threshold) and lo <= threshold <= hi):
            _fail(f"{param}.pass_threshold must be a number within range [{lo:g}, {hi:g}]", f"{param}.pass_threshold")
        out["pass_threshold"] = float(threshold)
        out["sampling_params"] = _sampling_params(value.get("sampling_params"), f"{param}.sampling_params")
        return out

    # label_model
    _check_keys(value, ("type", "name", "model", "input", "labels", "passing_labels"), param)
    out["model"] = _model(value, param)
    out["input"] = _messages(_require(value, "input", param), f"{param}.input")
    labels = _require(value, "labels", param)
    if not isinstance(labels, list) or not labels:
        _fail(f"{param}.labels must be a non-empty list of strings", f"{param}.labels", "invalid_type")
    if len(labels) > MAX_LABELS:
        _fail(f"{param}.labels has {len(labels)} labels; at most {MAX_LABELS} are allowed", f"{param}.labels")
    seen: set[str] = set()
    for i, label in enumerate(labels):
        _string(label, f"{param}.labels[{i}]", max_len=MAX_LABEL)
        # labels are matched case-insensitively in the judge's reply, so they must differ beyond case
        if label.strip().casefold() in seen:
            _fail(f"{param}.labels[{i}] {_short(label)} repeats a label", f"{param}.labels[{i}]")
        seen.add(label.strip().casefold())
    passing = _require(value, "passing_labels", param)
    if not isinstance(passing, list) or not passing:
        _fail(f"{param}.passing_labels must be a non-empty list of labels", f"{param}.passing_labels",
              "invalid_type")
    for i, label in enumerate(passing):
        if label not in labels:
            _fail(f"{param}.passing_labels[{i}] {_short(label)} is not one of labels", f"{param}.passing_labels[{i}]")
    out["labels"] = list(labels)
    out["passing_labels"] = list(dict.fromkeys(passing))
    return out


def validate_eval(body: Any) -> dict:
    """Check a `POST /v1/evals` body; return {"name", "data_source_config", "testing_criteria", "metadata"}.

    data_source_config is OpenAI's response shape {"type": "custom", "schema": {...}} plus the given
    "item_schema" and "include_sample_schema"; testing_criteria are normalized (names, defaults, message
    contents as template strings)."""
    if not isinstance(body, dict):
        _fail("the request body must be a JSON object", "body", "invalid_type")
    _check_keys(body, ("name", "data_source_config", "testing_criteria", "metadata"), "")
    name = body.get("name")
    name = DEFAULT_NAME if name is None else _eval_name(name)
    if body.get("data_source_config") is None:
        _fail("missing required parameter data_source_config", "data_source_config", "missing_required_parameter")
    config = _data_source_config(body["data_source_config"])
    criteria = body.get("testing_criteria")
    if criteria is None:
        _fail("missing required parameter testing_criteria", "testing_criteria", "missing_required_parameter")
    if not isinstance(criteria, list) or not criteria:
        _fail("testing_criteria must be a non-empty list of graders", "testing_criteria", "invalid_type")
    if len(criteria) > MAX_CRITERIA:
        _fail(f"testing_criteria has {len(criteria)} graders; at most {MAX_CRITERIA} are allowed", "testing_criteria")
    normalized = []
    names: set[str] = set()
    for i, criterion in enumerate(criteria):
        grader = _criterion(criterion, i)
        if grader["name"] in names:
            _fail(f"testing_criteria[{i}].name {_short(grader['name'])} is used by another grader; names must be "
                  "unique", f"testing_criteria[{i}].name", "duplicate_name")
        names.add(grader["name"])
        normalized.append(grader)
    return {"name": name, "data_source_config": config, "testing_criteria": normalized,
            "metadata": validate_metadata(body.get("metadata"))}


def validate_eval_update(body: Any) -> dict:
    """Check a `POST /v1/evals/{id}` body: only name and metadata change (OpenAI's update). Returns the
    given fields normalized; metadata null clears it ({})."""
    if not isinstance(body, dict):
        _fail("the request body must be a JSON object", "body", "invalid_type")
    _check_keys(body, ("name", "metadata"), "")
    out: dict = {}
    if "name" in body and body["name"] is not None:
        out["name"] = _eval_name(body["name"])
    if "metadata" in body:
        out["metadata"] = validate_metadata(body["metadata"])
    return out
