"""Every failure as the contract's error body: the service layer's APIError, FastAPI's
validation errors (one entry per field), Starlette's HTTP errors, and a logged 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from envmgr.core import nesting
from envmgr.core.errors import APIError, error_body

log = logging.getLogger("envmgr.api")

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 412: "precondition_failed",
               415: "unsupported_media_type", 422: "validation_error",
               500: "internal_error", 503: "unavailable"}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            loc = tuple(e.get("loc", ()))
            if e.get("type") == "extra_forbidden":
                msg = "unknown field; remove it (see /docs for the fields this call takes)"
            elif e.get("type") == "json_invalid":  # loc is (body, character offset)
                at = loc[-1] if len(loc) > 1 else "?"
                why = (e.get("ctx") or {}).get("error", "invalid")
                msg, loc = f"the body is not valid JSON ({why} at character {at})", ("body",)
                if "recursion limit" in str(why):  # the parser's own bound, past ours
                    msg = f"the body {nesting.message()}"
            errors.append({"field": _field(loc), "message": msg})
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
