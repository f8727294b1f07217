"""Each projection is given only the event types it declares (`types`): every type its code compares
`e.type` with must be declared, or it would silently never see those events."""
from __future__ import annotations

import ast
import inspect

import pytest

from eventlog.projections import all_projections


@pytest.mark.parametrize("projection", all_projections(), ids=lambda p: p.name)
def test_every_event_type_a_projection_handles_is_declared(projection):
    tree = ast.parse(inspect.getsource(inspect.getmodule(type(projection))))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == type(projection).__name__)
    named: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "type":
            for c in node.comparators:
                named |= {n.value for n in ast.walk(c) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    if projection.types is None:
        return  # given every event
    assert named, "a projection with declared types compares e.type somewhere"
    assert named <= projection.types, f"handled but not declared: {sorted(named - projection.types)}"
