"""An eval's `item_schema` (JSON Schema, checked with the jsonschema library): the schema itself when the eval is
created, each item against it when a run is created (errors named by the item's path, the API adds the line)."""
from __future__ import annotations

from typing import Any

from domain.errors import ValidationError

MAX_ERRORS_PER_ITEM = 5


def check_item_schema(schema: Any) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise ValidationError("data_source_config.item_schema must be a JSON Schema object",
                              param="data_source_config.item_schema", code="invalid_item_schema")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise ValidationError(f"data_source_config.item_schema is not a valid JSON Schema: {e.message[:300]}",
                              param="data_source_config.item_schema", code="invalid_item_schema") from None
    except RecursionError:
        raise ValidationError("data_source_config.item_schema is nested too deeply",
                              param="data_source_config.item_schema", code="invalid_item_schema") from None


def _path(parts) -> str:
    out = "item"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


class ItemChecker:
    """Validates items against one schema (the validator is built once per run, not per item). No `$ref` to
    anything remote is ever fetched: the jsonschema library resolves only references inside the schema."""

    def __init__(self, schema: dict[str, Any]):
        from jsonschema import Draft202012Validator
        from referencing import Registry

        self._validator = Draft202012Validator(schema, registry=Registry())  # an empty registry: no retrieval

    def errors(self, item: dict[str, Any]) -> list[str]:
        from jsonschema.exceptions import best_match

        try:
            found = list(self._validator.iter_errors(item))
        except RecursionError:
            return ["the item is nested too deeply"]
        except Exception as e:  # noqa: BLE001 - e.g. an unresolvable $ref of the schema: the item can't be checked
            return [f"the item could not be checked against the schema ({type(e).__name__}: {str(e)[:200]})"]
        if not found:
            return []
        first = best_match(found)
        ordered = [first] + [e for e in found if e is not first]
        return [f"{_path(e.absolute_path)}: {e.message[:200]}" for e in ordered[:MAX_ERRORS_PER_ITEM]]
