"""One error shape for every failure: {"error": {"code", "message", "details"}}. The
service layer raises these; `api/errors.py` turns them into responses."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details or {}, headers


def not_found(kind: str, key: str) -> APIError:
    return APIError(404, "not_found", f"{kind} {key!r} not found")


def forbidden(message: str) -> APIError:
    return APIError(403, "forbidden", message)


def invalid(field: str, message: str) -> APIError:
    """A 422 for rules that need runtime settings, shaped like FastAPI's own."""
    return APIError(422, "validation_error", f"{field}: {message}",
                    {"errors": [{"field": field, "message": message}]})


def error_body(code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}
