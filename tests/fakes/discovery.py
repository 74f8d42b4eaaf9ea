"""Every request the fake Compute API receives, checked against Compute Engine's own
discovery document (`compute.v1.json`, as google-api-python-client ships it): the method
must exist for that HTTP verb and path, its required parameters must be there, no query
parameter it does not know, and the body must match the method's request schema (no
unknown field, the right types and enum values). What GCE would refuse as malformed, the
fake refuses too, with GCE's 400 shape; tests also assert that none was ever sent."""

from __future__ import annotations

import json
import os
import re
from functools import cache
from typing import Any

import googleapiclient

# Query parameters the REST transports add to every call (the document's global ones).
_GLOBAL_EXTRA = {"$alt"}


@cache
def document() -> dict[str, Any]:
    path = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache",
                        "documents", "compute.v1.json")
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    return doc


@cache
def _methods() -> list[tuple[str, re.Pattern[str], str, dict[str, Any]]]:
    """(HTTP verb, path regex, method id, method) for every zonal method we may meet."""
    out = []
    for resource in ("instances", "disks", "zoneOperations", "machineTypes"):
        for method in document()["resources"][resource]["methods"].values():
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", method["path"])
            out.append((method["httpMethod"], re.compile(f"^{pattern}$"), method["id"], method))
    return out


def check(http_method: str, path: str, query: dict[str, str], body: Any) -> list[str]:
    """Problems with one request, in words; empty when GCE would accept its form."""
    doc = document()
    rel = path.removeprefix("/").removeprefix(doc["servicePath"])
    found = next(((m, mid, method) for verb, pattern, mid, method in _methods()
                  if verb == http_method and (m := pattern.match(rel))), None)
    if found is None:
        return [f"no method of compute.v1 is {http_method} {rel}"]
    m, method_id, method = found
    problems: list[str] = []
    params = method.get("parameters", {})
    known = set(params) | set(doc.get("parameters", {})) | _GLOBAL_EXTRA
    for name, spec in params.items():
        value = m.groupdict().get(name) if spec.get("location") == "path" else query.get(name)
        if spec.get("required") and value in (None, ""):
            problems.append(f"{method_id}: required parameter {name!r} is missing")
        if value is not None:
            problems += _scalar(f"{method_id}: parameter {name}", spec, value, query=True)
    problems += [f"{method_id}: unknown query parameter {k!r}" for k in query if k not in known]
    ref = method.get("request", {}).get("$ref")
    if ref is None and body:
        problems.append(f"{method_id} takes no body")
    elif ref is not None:
        problems += _value(f"{method_id} body", {"$ref": ref}, body if body else {})
    return problems


def _scalar(where: str, spec: dict[str, Any], value: Any, query: bool = False) -> list[str]:
    kind = spec.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string, got {value!r}"]
        if spec.get("format") in ("int64", "uint64") and not re.fullmatch(r"-?\d+", value):
            return [f"{where}: expected an integer string, got {value!r}"]
        if "enum" in spec and value not in spec["enum"]:
            return [f"{where}: {value!r} is not one of {spec['enum']}"]
        if query and "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            return [f"{where}: {value!r} does not match {spec['pattern']}"]
        return []
    if kind == "integer":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None)
        return [] if ok else [f"{where}: expected an integer, got {value!r}"]
    if kind == "boolean":
        ok = isinstance(value, bool) or (query and value in ("true", "false"))
        return [] if ok else [f"{where}: expected a boolean, got {value!r}"]
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number, got {value!r}"]
    return []


def _value(where: str, spec: dict[str, Any], value: Any) -> list[str]:
    if "$ref" in spec:
        spec = document()["schemas"][spec["$ref"]]
    kind = spec.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {value!r}"]
        props, extra = spec.get("properties"), spec.get("additionalProperties")
        problems: list[str] = []
        for k, v in value.items():
            if props is not None and k in props:
                problems += _value(f"{where}.{k}", props[k], v)
            elif extra is not None:
                problems += _value(f"{where}[{k!r}]", extra, v)
            else:
                problems.append(f"{where}: unknown field {k!r}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [p for i, v in enumerate(value) for p in _value(f"{where}[{i}]", spec["items"], v)]
    return _scalar(where, spec, value)
