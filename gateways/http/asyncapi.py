"""The AsyncAPI 3.0 document of the WebSocket `/v1/stream`, generated from the msgspec types the
WebSocket decodes and encodes (gateways.http.websocket: CLIENT_OPS, SERVER_FRAMES), as the
OpenAPI document is from the route table. Served at `/v1/asyncapi.json` and `/asyncapi.json`.

Operations are the gateway's view, as AsyncAPI 3.0 has them: it `receive`s each client op
(with the frames that answer it as the reply) and `send`s each server frame."""

from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec
from aiohttp import web

from gateways.http.routes import json_response
from gateways.http.websocket import (
    AUTH_TIMEOUT_S,
    CLIENT_OPS,
    SERVER_FRAMES,
    ClientOp,
    ServerFrame,
    StreamError,
)

STREAM_PATH = "/v1/stream"
_CHANNEL = {"$ref": "#/channels/stream"}
_DESCRIPTION = (
    f"WebSocket `GET {STREAM_PATH}`: live quotes of the symbols a connection subscribes to and "
    "the user's own order and command updates. Every frame is a JSON text frame: the client's "
    "name what they ask in `op`, the gateway's name what they are in `type`. Send `auth` first, "
    f"within {AUTH_TIMEOUT_S:g} s (else the gateway closes with 4001); `ping` works before it. "
    "A refused frame gets an `error` frame naming what was expected, and the connection stays "
    "open. Quotes are conflated (the newest per symbol); order updates are not, and come "
    "before quotes; a client too slow to take them is closed with 4008. Money, prices and "
    "quantities are decimal strings, timestamps RFC 3339."
)


def _tag(kind: type[ClientOp] | type[ServerFrame]) -> str:
    return str(kind.__struct_config__.tag)


def _summary(kind: type[Any]) -> str:
    return " ".join((kind.__doc__ or kind.__name__).split())


def _message_ref(kind: type[Any]) -> dict[str, str]:
    return {"$ref": f"#/channels/stream/messages/{kind.__name__}"}


def _example(kind: type[Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    """The frame made of each field's first schema example, if every field has one."""
    config = kind.__struct_config__
    example: dict[str, Any] = {config.tag_field: config.tag}
    for field in msgspec.structs.fields(kind):
        examples = schema["properties"][field.encode_name].get("examples")
        if not examples:
            return None
        example[field.encode_name] = examples[0]
    return example


def _message(kind: type[Any], schema: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": _tag(kind), "title": kind.__name__, "summary": _summary(kind),
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{kind.__name__}"},
    }
    example = _example(kind, schema)
    if example is not None:
        message["examples"] = [{"name": _tag(kind), "payload": example}]
    return message


def _without_discriminators(node: Any) -> Any:
    """msgspec writes OpenAPI's `discriminator` object beside a tagged union's `anyOf`; an
    AsyncAPI schema's is a property name with another meaning. The tags' `enum` says it."""
    if isinstance(node, dict):
        return {key: _without_discriminators(value) for key, value in node.items()
                if not (key == "discriminator" and isinstance(value, dict))}
    if isinstance(node, list):
        return [_without_discriminators(value) for value in node]
    return node


@functools.cache
def _document() -> dict[str, Any]:
    kinds: list[type[Any]] = [*CLIENT_OPS, *SERVER_FRAMES]
    _refs, schemas = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}")
    schemas = _without_discriminators(schemas)
    messages = {kind.__name__: _message(kind, schemas[kind.__name__]) for kind in kinds}
    operations: dict[str, Any] = {}
    for op in CLIENT_OPS:
        answers: list[type[ServerFrame]] = [*op.answers, StreamError]
        operations[f"receive_{_tag(op)}"] = {
            "action": "receive", "channel": _CHANNEL, "title": _tag(op),
            "summary": _summary(op), "messages": [_message_ref(op)],
            "reply": {"channel": _CHANNEL,
                      "messages": [_message_ref(kind) for kind in answers]},
        }
    for frame in SERVER_FRAMES:
        operations[f"send_{_tag(frame)}"] = {
            "action": "send", "channel": _CHANNEL, "title": _tag(frame),
            "summary": _summary(frame), "messages": [_message_ref(frame)],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Brokerage stream", "version": "1.0.0", "description": _DESCRIPTION},
        "defaultContentType": "application/json",
        "channels": {"stream": {
            "address": STREAM_PATH, "title": "stream",
            "description": "client ops and server frames, JSON text frames both ways",
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
        }},
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def asyncapi_document(host: str = "127.0.0.1:8080", protocol: str = "ws") -> dict[str, Any]:
    """The document, with the gateway at `host` as its server."""
    document = copy.deepcopy(_document())
    document["servers"] = {"gateway": {
        "host": host, "protocol": protocol,
        "description": "the HTTP gateway (the WebSocket upgrades a GET)"}}
    http = "https" if protocol == "wss" else "http"
    document["info"]["externalDocs"] = {
        "description": "the HTTP API, whose POST /v1/auth/token (the demo login, when on) gives "
                       "a token for `auth`",
        "url": f"{http}://{host}/v1/openapi.json"}
    return document


async def asyncapi(request: web.Request) -> web.Response:
    """The document, naming the host the request came to as the server."""
    return json_response(asyncapi_document(request.host, "wss" if request.secure else "ws"))
