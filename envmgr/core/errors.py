"""One error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from envmgr.runtimes.machine import InvalidTransition

log = logging.getLogger("envmgr.api")

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 412: "precondition_failed",
               415: "unsupported_media_type", 422: "validation_error",
               500: "internal_error", 503: "unavailable"}


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


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, exc.headers)

    @app.exception_handler(InvalidTransition)
    async def _transition(_: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse(error_body("invalid_transition", str(exc), {
            "status": exc.status, "allowed_from": exc.allowed_from, "action": exc.action}), 409)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            if e.get("type") == "extra_forbidden":
                msg = "unknown field; remove it (see /docs for the fields this call takes)"
            errors.append({"field": _field(tuple(e.get("loc", ()))), "message": msg})
        message = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
        return JSONResponse(error_body("validation_error", message, {"errors": errors}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail), {}), exc.status_code,
                            getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error; it has been logged", {}),
                            500)
