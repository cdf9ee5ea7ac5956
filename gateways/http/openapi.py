"""The OpenAPI 3.1 document, generated from the route table and the msgspec body types."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateways.http import schemas as s
from gateways.http.routes import ROUTES, Route
from gateways.http.websocket import CLIENT_OPS

_PROBLEM_STATUSES = (400, 401, 404, 409, 413, 422, 429, 503)
_PATH_PARAM = re.compile(r"{(\w+)}")
_DESCRIPTION = (
    "Money, prices and quantities are decimal strings, each at its scale: USD in cents, prices "
    "at their tick, shares at 6 places; a field's description names its unit. Every answer "
    "object lists all its fields (additionalProperties false). An order's `state` is the "
    "order's (a 202 has it too), `status` a 202's request's. Changed in 1.1.0: an order's "
    "`held_amount` (USD for a buy, shares for a sell) is `held_usd` or `held_shares`; the "
    "shard's bookkeeping (`last_event_id`, event `payload`) left the order, whose events carry "
    "their fill figures as fields; OrderAccepted has `state`; the portfolio's `ledger_offset` "
    "(a broker offset) is `ledger_seq` (the shard's, stable across broker restarts); accounts "
    "have `status`; quotes and candles lose `type` and `v`. Added in 1.2.0: QuoteList's "
    "`quote_age_ms_max` (the risk check's quote age limit, for marking stale quotes) and the "
    "`enum` of the candles' `interval`. The WebSocket /v1/stream is "
    "described by the AsyncAPI document at /v1/asyncapi.json.")


def _ref(kind: Any) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _query_schema(values: tuple[str, ...] | None) -> dict[str, Any]:
    """A query parameter's schema: a string, or one of `values` (the first the default)."""
    if not values:
        return {"type": "string"}
    return {"type": "string", "enum": list(values), "default": values[0]}


def _operation(route: Route) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    values = dict(route.query_values)
    parameters += [{"name": name, "in": "query", "required": required,
                    "description": description, "schema": _query_schema(values.get(name))}
                   for name, required, description in route.query]
    if route.idempotency_key:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 64}})
    responses: dict[str, Any] = {}
    for status, kind in route.responses:
        responses[str(status)] = {"description": kind.__doc__ or kind.__name__,
                                  "content": {"application/json": {"schema": _ref(kind)}}}
    if not route.responses:
        responses["200"] = {"description": "OK", "content": {"text/plain": {}}}
    problems = _PROBLEM_STATUSES + ((415,) if route.request is not None else ()) + (500,)
    for status in sorted(problems):
        responses[str(status)] = {"description": "problem",
                                  "content": {"application/problem+json": {
                                      "schema": _ref(s.ProblemDoc)}}}
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__, "summary": route.summary, "tags": [route.tag],
        "parameters": parameters, "responses": responses,
    }
    if route.description:
        operation["description"] = route.description
    if route.request is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(route.request)}}}
    operation["security"] = [{"bearer": []}] if route.auth else []
    return operation


def openapi_document() -> dict[str, Any]:
    kinds = {route.request for route in ROUTES if route.request is not None}
    kinds |= {kind for route in ROUTES for _status, kind in route.responses}
    kinds.add(s.ProblemDoc)
    ordered = sorted(kinds, key=lambda kind: kind.__name__)
    _refs, components = msgspec.json.schema_components(
        ordered, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    ops = ", ".join(str(op.__struct_config__.tag) for op in CLIENT_OPS)
    paths["/v1/stream"] = {"get": {
        "operationId": "stream", "summary": "WebSocket: quotes and the user's order updates "
        f"(ops: {ops})", "tags": ["stream"],
        "description": "The protocol, every op and frame with its schema, is the AsyncAPI "
        "document at /v1/asyncapi.json.",
        "responses": {"101": {"description": "switching to WebSocket"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Brokerage API", "version": "1.2.0",
                 "description": _DESCRIPTION},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "the demo login's HS256 token (POST /v1/auth/token), or the "
                       "deployment's identity provider's RS256/ES256 token"}}},
    }
