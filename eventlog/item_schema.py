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


# Keywords refused in an item schema, and why: each can make validating one item take minutes (a backtracking
# regular expression, a reference that expands into itself, comparing every pair of a long array).
REFUSED = {"pattern": "regular expressions can backtrack for hours on a crafted item",
           "patternProperties": "regular expressions can backtrack for hours on a crafted item",
           "$ref": "references can expand exponentially (and remote ones would be fetched)",
           "$dynamicRef": "references can expand exponentially", "$recursiveRef": "references can expand exponentially",
           "uniqueItems": "it compares every pair of an array's items"}
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_ONE = ("not", "if", "then", "else", "additionalProperties", "contains", "propertyNames", "items",
              "unevaluatedItems", "unevaluatedProperties", "additionalItems")
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
CHECK_SECONDS = 10.0  # all the items of one request against the schema


def _refused(node: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The first refused keyword of a schema (walked as a schema: a property *named* "pattern" is fine)."""
    if depth > MAX_SCHEMA_DEPTH:
        return path, "nesting deeper than 32 levels"
    if not isinstance(node, dict):
        return None
    for key in node:
        if key in REFUSED:
            return f"{path}.{key}", REFUSED[key]
    for key in SCHEMA_MAPS:
        sub = node.get(key)
        if isinstance(sub, dict):
            for name, child in sub.items():
                found = _refused(child, f"{path}.{key}.{name}", depth + 1)
                if found:
                    return found
    for key in SCHEMA_LISTS + SCHEMA_ONE:
        sub = node.get(key)
        for i, child in enumerate(sub if isinstance(sub, list) else [sub]):
            found = _refused(child, f"{path}.{key}" + (f"[{i}]" if isinstance(sub, list) else ""), depth + 1)
            if found:
                return found
    return None


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
    try:
        size = len(json.dumps(schema))
    except (ValueError, RecursionError):
        size = MAX_SCHEMA_BYTES + 1
    if size > MAX_SCHEMA_BYTES:
        raise ValidationError(f"item_schema is over {MAX_SCHEMA_BYTES} bytes", param=ITEM_SCHEMA_PARAM,
                              code="invalid_item_schema")
    found = _refused(schema, "item_schema")
    if found:
        raise ValidationError(f"{found[0]} is not supported in an eval's item_schema: {found[1]}",
                              param=ITEM_SCHEMA_PARAM, code="invalid_item_schema")


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
        self._spent = 0.0

    def errors(self, item: Any) -> list[str]:
        """The item's problems; a 400 if checking this request's items has taken over CHECK_SECONDS in all."""
        import time

        if self._spent > CHECK_SECONDS:
            raise ValidationError(f"checking the items against the eval's item_schema took over {CHECK_SECONDS:g} s; "
                                  "simplify the schema or send fewer items", param=ITEM_SCHEMA_PARAM,
                                  code="item_schema_too_slow")
        started = time.monotonic()
        try:
            return self._errors(item)
        except Exception as e:  # noqa: BLE001 - any failure of the check is the item's problem, never a 500
            return [f"item: could not be checked against the schema ({type(e).__name__})"]
        finally:
            self._spent += time.monotonic() - started

    def _errors(self, item: Any) -> list[str]:
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
