"""Every answer a test gets, checked against the published OpenAPI document: the schema of the
operation (method and path template) for the answer's status and content type (helpers, no
tests here). `CheckedClient` does it for aiohttp's test client, `checked_http` for the urllib
helper of the whole-stack tests; both read the document the server publishes."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from yarl import URL

# Served, but not API operations: the page, its files and the documents themselves.
NOT_OPERATIONS = re.compile(r"^/(static/.*)?$|^/v1/?$|^(/v1)?/(open|async)api\.json$")
PROBLEM = "application/problem+json"


class AnswerMismatch(AssertionError):
    """An answer the published document does not describe."""


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")


def find_operation(document: dict[str, Any], method: str, path: str
                   ) -> tuple[str, dict[str, Any]] | None:
    """The path template and operation that serve `method path`; None when no path matches."""
    for template, operations in document["paths"].items():
        if _template(template).match(path):
            operation = operations.get(method.lower())
            if operation is None:
                raise AnswerMismatch(f"{method} {template} is not in the document")
            return template, operation
    return None


def check_answer(document: dict[str, Any], method: str, path: str, status: int,
                 content_type: str, body: bytes) -> None:
    """Raise AnswerMismatch unless the document describes this answer exactly: a documented
    status and content type, and a JSON body valid against that response's schema."""
    path = URL(path).path
    if NOT_OPERATIONS.match(path):
        return
    found = find_operation(document, method, path)
    if found is None:
        # No such operation: only aiohttp's own 404/405 problem may answer it.
        if content_type != PROBLEM:
            raise AnswerMismatch(f"{method} {path}: {status} {content_type} for a path "
                                 "the document does not have")
        _validate(document, {"$ref": "#/components/schemas/ProblemDoc"}, body,
                  f"{method} {path} {status}")
        return
    template, operation = found
    where = f"{method} {template} {status} {content_type}"
    response = operation["responses"].get(str(status))
    if response is None:
        raise AnswerMismatch(f"{where}: status not documented "
                             f"(documented: {sorted(operation['responses'])})")
    content = response.get("content", {})
    if content_type not in content:
        raise AnswerMismatch(f"{where}: content type not documented ({sorted(content)})")
    schema = content[content_type].get("schema")
    if schema is not None:
        _validate(document, schema, body, where)


def _validate(document: dict[str, Any], schema: dict[str, Any], body: bytes,
              where: str) -> None:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise AnswerMismatch(f"{where}: not JSON: {body[:200]!r}") from error
    validator = _validator(json.dumps(schema, sort_keys=True), _components(document))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
                 for e in errors[:10]]
        raise AnswerMismatch(f"{where}: the answer does not match the published schema\n"
                             + "\n".join(lines) + f"\nanswer: {body[:1000]!r}")


_COMPONENTS: dict[str, dict[str, Any]] = {}


def _components(document: dict[str, Any]) -> str:
    """A hashable handle on the document's components, for the validator cache."""
    key = json.dumps(document["components"], sort_keys=True)
    _COMPONENTS.setdefault(key, document["components"])
    return key


@lru_cache(maxsize=256)
def _validator(schema: str, components: str) -> Draft202012Validator:
    # OpenAPI 3.1's schemas are JSON Schema 2020-12; the `$ref`s point into components.
    root = {**json.loads(schema), "components": _COMPONENTS[components]}
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


class CheckedClient(TestClient):  # type: ignore[type-arg]
    """aiohttp's test client, checking every answer against the document the server serves
    at /openapi.json (read once). The body stays readable (`read` caches it)."""

    document: dict[str, Any] | None = None

    async def _request(self, method: str, path: Any, **kwargs: Any) -> ClientResponse:
        response = await super()._request(method, path, **kwargs)
        if self.document is None:
            published = await super()._request("GET", "/openapi.json")
            self.document = await published.json()
        body = await response.read()
        check_answer(self.document, method, str(path), response.status,
                     response.content_type, body)
        return response


Exchange = Callable[..., tuple[int, str, bytes]]


def checked_http(exchange: Exchange) -> Callable[..., tuple[int, Any]]:
    """`http(method, url, ...)` as tests.integration.compose.stack_process has it (status and
    parsed body), built on its `exchange`, checking every answer against the document its
    server publishes at /v1/openapi.json (read once per server)."""
    documents: dict[str, dict[str, Any]] = {}

    def http(method: str, url: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        target = URL(url)
        origin = str(target.origin())
        if origin not in documents:
            with urllib.request.urlopen(f"{origin}/v1/openapi.json", timeout=10) as answer:
                documents[origin] = json.loads(answer.read())
        status, content_type, raw = exchange(method, url, *args, **kwargs)
        check_answer(documents[origin], method, target.path, status, content_type, raw)
        return status, json.loads(raw) if raw else None

    return http
