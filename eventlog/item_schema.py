"""An eval's `item_schema` (JSON Schema, checked with the jsonschema library): the schema itself when the eval is
created (`check_item_schema`), each item against it when a run is created (`ItemChecker`; the API adds the line).
No remote `$ref` is ever fetched, and formats are annotations only."""
from __future__ import annotations

import json
import re
from typing import Any

from domain.errors import ValidationError

MAX_ITEM_ERRORS = 5
MAX_ERROR_TEXT = 300
ITEM_SCHEMA_PARAM = "data_source_config.item_schema"


def _validator_class(schema: dict):
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    # a schema naming its draft in "$schema" (draft-07 is common) is checked as that draft
    return validator_for(schema, default=Draft202012Validator)


def _remote_refs(node: Any, found: list[str]) -> list[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                found.append(value)
            else:
                _remote_refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _remote_refs(value, found)
    return found


def check_item_schema(schema: Any) -> None:
    """Raise ValidationError(code="invalid_item_schema", param="data_source_config.item_schema") unless
    `schema` is a valid JSON Schema (Draft 2020-12 unless its "$schema" names another draft), with the
    library's message. References outside the schema (`"$ref": "https://..."`) are refused: nothing is
    ever fetched."""
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise ValidationError("item_schema must be a JSON Schema object", param=ITEM_SCHEMA_PARAM,
                              code="invalid_item_schema")
    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError as e:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise ValidationError(f"item_schema{where} is not a valid JSON Schema: {clip(e.message)}",
                              param=ITEM_SCHEMA_PARAM, code="invalid_item_schema") from None
    except RecursionError:
        raise ValidationError("item_schema is nested too deeply", param=ITEM_SCHEMA_PARAM,
                              code="invalid_item_schema") from None
    remote = _remote_refs(schema, [])
    if remote:
        raise ValidationError(f"item_schema $ref {remote[0]!r} points outside the schema; only local references "
                              "('#/...') are supported", param=ITEM_SCHEMA_PARAM, code="invalid_item_schema")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _item_path(path) -> str:
    out = "item"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text` cut to about `limit` characters, keeping its end (where jsonschema says what was expected)."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return text[:limit - tail] + "..." + text[-tail:]


class ItemChecker:
    """Validates data-source items against an eval's item_schema (checked first with check_item_schema).

    `errors(item)` -> at most 5 messages, best first, like "item.question: 3 is not of type 'string'";
    [] when the item matches. Formats are annotations only (no format checker); no $ref is fetched."""

    def __init__(self, schema: dict):
        from referencing import Registry

        self._validator = _validator_class(schema)(schema, registry=Registry())

    def errors(self, item: Any) -> list[str]:
        from jsonschema.exceptions import best_match, relevance
        from referencing.exceptions import Unresolvable

        try:
            found = sorted(self._validator.iter_errors(item), key=relevance, reverse=True)
        except Unresolvable as e:
            return [f"item: the item_schema has a reference that cannot be resolved: {clip(str(e))}"]
        except RecursionError:
            return ["item: the item_schema recurses without end on this item"]
        messages: list[str] = []
        for error in found:
            best = best_match([error])  # descends into anyOf/oneOf to the most telling sub-error
            message = f"{_item_path(best.absolute_path)}: {clip(best.message)}"
            if message not in messages:
                messages.append(message)
            if len(messages) == MAX_ITEM_ERRORS:
                break
        return messages
