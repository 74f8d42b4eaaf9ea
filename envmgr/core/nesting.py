"""One bound on how deeply a JSON document may nest, for every door that takes a notebook or
a body (the public API, the runtime API, jobs): deeper ones are a 422 before anything
recurses over them (nbformat's schema check, papermill, a RecursionError's 500)."""

from __future__ import annotations

import json
from typing import Any

from envmgr.core.errors import invalid

MAX_DEPTH = 64  # a notebook is ~6 levels; rich outputs (widget state, plots) a few dozen


def depth(doc: Any) -> int:
    """How deeply `doc` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level) for child in
                         (node.values() if isinstance(node, dict) else node))
    return deepest


def message() -> str:
    return f"is nested more than {MAX_DEPTH} levels deep (at most {MAX_DEPTH} are allowed)"


def check(doc: Any, field: str) -> Any:
    if depth(doc) > MAX_DEPTH:
        raise invalid(field, message())
    return doc


def loads(data: bytes | str, field: str) -> Any:
    """JSON within the bound; ValueError (not JSON) is the caller's to word."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise invalid(field, message()) from None
    return check(doc, field)
