"""Errors as `application/problem+json` (RFC 9457) with a stable `code`.

Handlers raise `Problem`; the middleware turns it (and aiohttp's own HTTP errors, and anything
unexpected) into a problem document, so no error leaves the gateway in another shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateways.exceptions import GatewayError

log = logging.getLogger(__name__)
PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}
_AIOHTTP_CODES = {
    404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
    415: "unsupported_media_type",
}


class Problem(GatewayError):
    """An error answer: HTTP status, stable code, human detail, optional extra members."""

    def __init__(self, status: int, code: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(problem: Problem, instance: str = "") -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://errors.brokerage.local/{problem.code}",
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "code": problem.code,
        "detail": problem.detail,
    }
    if instance:
        body["instance"] = instance
    body.update(problem.extra)
    return web.Response(status=problem.status, body=orjson.dumps(body, default=str),
                        content_type=PROBLEM_CONTENT_TYPE, headers=problem.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request.path)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _AIOHTTP_CODES.get(error.status, "http_error")
        return problem_response(Problem(error.status, code, error.reason or code), request.path)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "internal_error", "unexpected server error"),
                                request.path)
