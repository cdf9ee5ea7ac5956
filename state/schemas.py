"""JSON Schema of every topic payload family, generated from the message classes."""

from __future__ import annotations

from typing import Any

import msgspec

from state.topics import Topic, payload_type


def topic_schema(topic: Topic) -> dict[str, Any]:
    return msgspec.json.schema(payload_type(topic))


def all_schemas() -> dict[str, dict[str, Any]]:
    return {str(topic): topic_schema(topic) for topic in Topic}
