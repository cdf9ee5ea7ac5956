"""The WebSocket protocol written down: the AsyncAPI document of /v1/stream, generated from the
message types the WebSocket decodes and encodes, and refusals that name what was expected."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
from aiohttp.test_utils import TestClient

from gateways.http.asyncapi import asyncapi_document
from gateways.http.websocket import ClientOp, QuoteFrame, ServerFrame, frame
from state.exceptions import ShardUnavailable
from tests.unit.gateways.test_http_api import bearer, new_account, run
from tests.unit.gateways.test_http_fakes import NOW, Fakes, quote


def _tag(kind: type[Any]) -> str:
    return str(kind.__struct_config__.tag)


def _all_subclasses(kind: type[Any]) -> set[type[Any]]:
    found = set(kind.__subclasses__())
    return found | {deeper for sub in found for deeper in _all_subclasses(sub)}


# What the document must list, from the types themselves: every op a client may send and every
# frame the gateway may send, however many are added later.
OPS = {_tag(kind): kind for kind in _all_subclasses(ClientOp)}
FRAMES = {_tag(kind): kind for kind in _all_subclasses(ServerFrame)}


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _validator(document: dict[str, Any], message: str) -> jsonschema.protocols.Validator:
    """Validates a frame against the payload schema of the message named `message`."""
    payload = document["components"]["messages"][message]["payload"]
    schema = {"$ref": payload["$ref"], "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def _message_name(document: dict[str, Any], ref: str) -> str:
    return str(_resolve(document, _resolve(document, ref)["$ref"])["name"])


def test_the_document_is_asyncapi_and_lists_every_op_and_frame() -> None:
    document = json.loads(json.dumps(asyncapi_document("gw.example:8080")))
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert document["servers"]["gateway"] == {**document["servers"]["gateway"],
                                              "host": "gw.example:8080", "protocol": "ws"}
    channel = document["channels"]["stream"]
    assert channel["address"] == "/v1/stream"
    for ref in _refs(document):  # every reference resolves
        _resolve(document, ref)

    received: dict[str, str] = {}
    sent: dict[str, str] = {}
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        assert operation["channel"] == {"$ref": "#/channels/stream"}
        refs = [m["$ref"] for m in operation["messages"]]
        refs += [m["$ref"] for m in operation.get("reply", {}).get("messages", [])]
        for ref in refs:  # AsyncAPI 3.0: an operation's messages are its channel's
            assert ref.startswith("#/channels/stream/messages/"), ref
        (message_ref,) = operation["messages"]
        target = received if operation["action"] == "receive" else sent
        target[_message_name(document, message_ref["$ref"])] = name
    assert set(received) == set(OPS)
    assert set(sent) == set(FRAMES)

    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    for tag, kind in (OPS | FRAMES).items():
        message = messages[kind.__name__]
        assert message["name"] == tag and message["contentType"] == "application/json"
        schema = schemas[kind.__name__]
        key = kind.__struct_config__.tag_field
        assert schema["properties"][key]["enum"] == [tag]
        fields = {f.encode_name for f in msgspec.structs.fields(kind)}
        assert set(schema["properties"]) == fields | {key}
        for example in message.get("examples", []):
            _validator(document, kind.__name__).validate(example["payload"])
    for tag, kind in OPS.items():  # every op has an example a client can copy
        assert messages[kind.__name__]["examples"], tag
        assert schemas[kind.__name__]["additionalProperties"] is False
        reply = document["operations"][received[tag]]["reply"]["messages"]
        assert "error" in {_message_name(document, m["$ref"]) for m in reply}


def test_what_the_gateway_sends_matches_the_document() -> None:
    document = asyncapi_document()
    sent = {
        "authenticated": frame("authenticated", user_id="alice", accounts=["acc_1"]),
        "subscribed": frame("subscribed", quotes=["AAPL"]),
        "quote": QuoteFrame(quote("AAPL", "210.00", "210.05")).text,
        "pong": frame("pong", at=NOW),
        "heartbeat": frame("heartbeat", at=NOW),
        "error": frame("error", code="invalid_message", detail="why"),
    }
    for tag, text in sent.items():
        _validator(document, FRAMES[tag].__name__).validate(json.loads(text))
    refused = {"op": "subscribe", "symbols": ["AAPL"]}
    assert not _validator(document, OPS["subscribe"].__name__).is_valid(refused)


def test_the_document_is_served_and_pointed_to() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        for path in ("/v1/asyncapi.json", "/asyncapi.json"):
            response = await client.get(path)
            assert response.status == 200 and response.content_type == "application/json"
            document = await response.json()
            assert document["asyncapi"] == "3.0.0"
            assert document["servers"]["gateway"]["host"] == f"{client.host}:{client.port}"
        index = await (await client.get("/v1")).json()
        assert index["asyncapi"] == "/v1/asyncapi.json"
        openapi = await (await client.get("/openapi.json")).json()
        assert "/v1/asyncapi.json" in openapi["info"]["description"]

    run(scenario)


def test_a_refused_frame_names_what_was_expected_and_the_stream_goes_on() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        token = bearer("alice")["Authorization"].removeprefix("Bearer ")
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_json({"op": "subscribe", "symbols": ["AAPL"]})
            error = await ws.receive_json(timeout=2)
            assert (error["type"], error["code"]) == ("error", "invalid_message")
            assert "`symbols`" in error["detail"]
            assert 'subscribe takes "quotes": ["AAPL", ...]' in error["detail"]
            assert "/v1/asyncapi.json" in error["detail"]

            await ws.send_json({"op": "dance"})
            error = await ws.receive_json(timeout=2)
            assert error["code"] == "invalid_message"
            for tag in OPS:  # every op, and what each takes
                assert f"{tag} takes" in error["detail"]
            assert '"token"' in error["detail"] and '"quotes"' in error["detail"]

            await ws.send_str("not json")
            error = await ws.receive_json(timeout=2)
            assert error["code"] == "malformed_json" and "subscribe takes" in error["detail"]

            await ws.send_json({"op": "auth", "tok": token})
            error = await ws.receive_json(timeout=2)
            assert 'auth takes "token"' in error["detail"]

            await ws.send_json({"op": "auth", "token": token})
            authenticated = await ws.receive_json(timeout=2)
            assert (authenticated["type"], authenticated["accounts"]) == (
                "authenticated", [account_id])
            await ws.send_json({"op": "unsubscribe", "quotes": "AAPL"})
            error = await ws.receive_json(timeout=2)
            assert 'unsubscribe takes "quotes"' in error["detail"]
            await ws.send_json({"op": "subscribe", "quotes": ["AAPL"]})
            subscribed = await ws.receive_json(timeout=2)
            assert (subscribed["type"], subscribed["quotes"]) == ("subscribed", ["AAPL"])
            await ws.send_json({"op": "ping"})
            assert (await ws.receive_json(timeout=2))["type"] == "pong"
            assert not ws.closed

    run(scenario)


def test_a_shard_down_during_auth_is_an_error_frame_not_a_dropped_connection() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        token = bearer("alice")["Authorization"].removeprefix("Bearer ")

        async def down(user_id: str) -> list[dict[str, Any]]:
            raise ShardUnavailable("shard 0 unavailable")

        fakes.reader.accounts_of_user = down  # type: ignore[method-assign]
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_json({"op": "auth", "token": token})
            error = await ws.receive_json(timeout=2)
            assert (error["type"], error["code"]) == ("error", "store_unavailable")
            await ws.send_json({"op": "ping"})
            assert (await ws.receive_json(timeout=2))["type"] == "pong"

    run(scenario)
