"""The local API's OpenAPI document, and request validation against the same schemas.

One source of truth: each request body is described once, as JSON Schema inside the OpenAPI
document that ``GET /openapi.json`` serves, and `validate` checks incoming bodies against that
very schema. The validator covers the subset the document uses (type, properties, required,
additionalProperties, enum, minimum/maximum, minLength/maxLength, items, minItems/maxItems,
oneOf of types) and names the field in every error: ``top_k: expected an integer from 1 to
1000, got 0``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from daemon import __version__

__all__ = ["OPENAPI", "InvalidRequest", "request_schema", "validate"]

MAX_TOP_K: Final = 1000
MAX_TEXT: Final = 32 * 1024 * 1024


class InvalidRequest(ValueError):  # noqa: N818
    """A request that does not match its schema; the message names the field."""


_TABLE: Final = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$", "maxLength": 64}
_TAGS: Final = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 200},
    "maxItems": 100,
}
_SEARCH: Final = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 100_000},
        "vector": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 8192},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
        "filter": {"type": "string", "maxLength": 8192},
        "table": _TABLE,
    },
}
_DOCUMENT: Final = {
    "type": "object",
    "additionalProperties": False,
    # The content, or a url for the daemon to fetch (checked in the handler).
    "anyOf": [{"required": ["content"]}, {"required": ["url"]}],
    "properties": {
        "content": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
        "format": {"type": "string", "enum": ["text", "markdown", "html"]},
        "source_id": {"type": "string", "minLength": 1, "maxLength": 4096},
        "url": {"type": "string", "minLength": 1, "maxLength": 4096},
        "title": {"type": "string", "maxLength": 4096},
        "tags": _TAGS,
    },
}
_RECORD: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "source_id": {"type": "string"},
        "source_type": {"type": "string"},
        "text_chunk": {"type": "string"},
        "created_at": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "number"},
        "url": {"type": ["string", "null"]},
        "title": {"type": ["string", "null"]},
    },
    "required": ["id", "source_id", "source_type", "text_chunk", "created_at", "tags"],
}
_ERROR: Final = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_JOB: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "source_id": {"type": "string"},
        "state": {"type": "string"},
        "attempts": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
    },
    "required": ["id", "source_id", "state"],
}
_SOURCE: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "url": {"type": ["string", "null"]},
        "title": {"type": ["string", "null"]},
        "state": {"type": "string"},
        "chunk_count": {"type": "integer"},
        "first_seen": {"type": "string"},
        "last_seen": {"type": "string"},
        "last_error": {"type": ["string", "null"]},
    },
    "required": ["id", "type", "state", "chunk_count"],
}


_FEED: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "url": {"type": "string"},
        "title": {"type": ["string", "null"]},
        "site_url": {"type": ["string", "null"]},
        "health": {"type": "string", "enum": ["new", "ok", "failing", "backing off", "disabled"]},
        "interval_minutes": {"type": "number"},
        "full_text": {"type": "boolean"},
        "next_check": {"type": ["string", "null"]},
        "last_checked": {"type": ["string", "null"]},
        "last_success": {"type": ["string", "null"]},
        "consecutive_errors": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
        "entry_count": {"type": "integer"},
        "disabled": {"type": "boolean"},
    },
    "required": ["id", "url", "health", "consecutive_errors", "entry_count"],
}
_FEED_URL: Final = {"type": "string", "minLength": 1, "maxLength": 2000}
_FEED_ADD: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": _FEED_URL,
        "title": {"type": "string", "maxLength": 4096},
        "full_text": {"type": "boolean"},
        "discover": {"type": "boolean"},
    },
}
_FEED_ADDED: Final = {
    "type": "object",
    "properties": {
        "feed": _FEED,
        "added": {"type": "boolean"},
        "discovered": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["feed", "added", "discovered"],
}
_FEED_IMPORT: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["feeds"],
    "properties": {
        "feeds": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {"url": _FEED_URL, "title": {"type": "string", "maxLength": 4096}},
            },
        }
    },
}
_POLL: Final = {
    "type": "object",
    "properties": {
        "url": {"type": "string"},
        "status": {"type": "string", "enum": ["changed", "unchanged", "not-modified", "error"]},
        "entries": {"type": "integer"},
        "queued": {"type": "integer"},
        "error": {"type": ["string", "null"]},
    },
    "required": ["url", "status", "entries", "queued"],
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **(_json(schema) if schema else {})}


_ERRORS: Final = {
    "400": _answer("The request is malformed; the message names the field", _ERROR),
    "404": _answer("Not found", _ERROR),
    "405": _answer("Method not allowed", _ERROR),
    "413": _answer("Body too large", _ERROR),
    "415": _answer("Content-Type is not application/json", _ERROR),
    "500": _answer("The store failed (the message says how)", _ERROR),
    "502": _answer("Fetching the document's URL failed", _ERROR),
    "503": _answer("Not ready yet (the embedder is starting, or unreachable)", _ERROR),
}
_TABLE_PARAM: Final = {"name": "table", "in": "query", "required": False, "schema": _TABLE}

_PAIRED: Final = {
    "type": "object",
    "properties": {
        "browsers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "paired_at": {"type": "number"},
                    "last_used": {"type": ["number", "null"]},
                },
                "required": ["origin", "paired_at", "last_used"],
            },
        },
        "endpoint": {"type": "object"},
    },
    "required": ["browsers", "endpoint"],
}

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Satchel local API",
        "version": __version__,
        "description": "Served on a Unix socket only its owner can reach.",
    },
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": _answer("Alive", {"type": "object"}), **_ERRORS},
            }
        },
        "/status": {
            "get": {
                "summary": "Everything the daemon knows about itself",
                "responses": {"200": _answer("Status", {"type": "object"}), **_ERRORS},
            }
        },
        "/search": {
            "post": {
                "summary": "Nearest chunks to a query text or a vector",
                "requestBody": {"required": True, **_json(_SEARCH)},
                "responses": {
                    "200": _answer(
                        "Results, best first",
                        {
                            "type": "object",
                            "properties": {
                                "results": {"type": "array", "items": _RECORD},
                                "timing_ms": {"type": "object"},
                                "warning": {"type": ["string", "null"]},
                            },
                            "required": ["results", "timing_ms"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/records": {
            "get": {
                "summary": "Records by id",
                "parameters": [
                    {
                        "name": "ids",
                        "in": "query",
                        "required": True,
                        "description": "Comma-separated record ids",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    _TABLE_PARAM,
                ],
                "responses": {
                    "200": _answer(
                        "The records found",
                        {
                            "type": "object",
                            "properties": {"records": {"type": "array", "items": _RECORD}},
                            "required": ["records"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/records/{id}": {
            "delete": {
                "summary": "Delete one record",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _TABLE_PARAM,
                ],
                "responses": {"200": _answer("Deleted", {"type": "object"}), **_ERRORS},
            }
        },
        "/sources": {
            "get": {
                "summary": "Sources in id order, a page at a time",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _answer(
                        "Sources",
                        {
                            "type": "object",
                            "properties": {"sources": {"type": "array", "items": _SOURCE}},
                            "required": ["sources"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/sources/{id}": {
            "delete": {
                "summary": "Delete a source and its chunks",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _answer("Deleted", {"type": "object"}), **_ERRORS},
            }
        },
        "/documents": {
            "post": {
                "summary": "Queue a document (its content, or its url to fetch); 202 once the "
                "job is committed",
                "requestBody": {"required": True, **_json(_DOCUMENT)},
                "responses": {
                    "202": _answer(
                        "Queued",
                        {
                            "type": "object",
                            "properties": {
                                "job_id": {"type": "integer"},
                                "source_id": {"type": "string"},
                            },
                            "required": ["job_id", "source_id"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/jobs/{id}": {
            "get": {
                "summary": "A job's state",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                    }
                ],
                "responses": {"200": _answer("The job", _JOB), **_ERRORS},
            }
        },
        "/export": {
            "get": {
                "summary": "Every record with its vector, as NDJSON after a header line",
                "parameters": [_TABLE_PARAM],
                "responses": {
                    "200": {
                        "description": "NDJSON",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            }
        },
        "/import": {
            "post": {
                "summary": "Load an export (NDJSON); refuses vectors of another model",
                "parameters": [_TABLE_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                },
                "responses": {"200": _answer("Imported", {"type": "object"}), **_ERRORS},
            }
        },
        "/migration": {
            "get": {
                "summary": "The SQLite -> LanceDB migration: phase, rows copied of total, rate, "
                "ETA, why it waits, verification figures, rollback window",
                "responses": {
                    "200": _answer("Progress", {"type": "object"}),
                    "409": _answer("The backend is pinned", _ERROR),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Start (or resume) the migration; with dry_run, only say what it "
                "would do",
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"dry_run": {"type": "boolean"}},
                        }
                    ),
                },
                "responses": {
                    "200": _answer("The dry run's plan", {"type": "object"}),
                    "202": _answer("Started: the progress so far", {"type": "object"}),
                    "409": _answer("Already running or done, or the backend is pinned", _ERROR),
                    **_ERRORS,
                },
            },
        },
        "/migration/rollback": {
            "post": {
                "summary": "Serve from SQLite again: after cutover, replay the changes made "
                "since into it; before, give the migration up",
                "responses": {
                    "200": _answer("Rolled back", {"type": "object"}),
                    "409": _answer("Nothing to roll back", _ERROR),
                    **_ERRORS,
                },
            }
        },
        "/feeds": {
            "get": {
                "summary": "Every subscribed feed with its health",
                "responses": {
                    "200": _answer(
                        "The feeds",
                        {
                            "type": "object",
                            "properties": {"feeds": {"type": "array", "items": _FEED}},
                            "required": ["feeds"],
                        },
                    ),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Subscribe to a feed; a page URL subscribes to the first feed it "
                'announces with <link rel="alternate"> (discover: false skips fetching)',
                "requestBody": {"required": True, **_json(_FEED_ADD)},
                "responses": {
                    "201": _answer("Subscribed", _FEED_ADDED),
                    "200": _answer("Already subscribed", _FEED_ADDED),
                    **_ERRORS,
                },
            },
            "delete": {
                "summary": "Unsubscribe; purge=true deletes the entries it delivered too",
                "parameters": [
                    {
                        "name": "url",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 2000},
                    },
                    {"name": "purge", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _answer(
                        "Unsubscribed",
                        {
                            "type": "object",
                            "properties": {
                                "removed": {"type": "string"},
                                "entries": {"type": "integer"},
                                "purged_chunks": {"type": "integer"},
                            },
                            "required": ["removed", "entries", "purged_chunks"],
                        },
                    ),
                    **_ERRORS,
                },
            },
        },
        "/feeds/import": {
            "post": {
                "summary": "Subscribe to many feeds at once (an OPML file's, read by the CLI); "
                "nothing is fetched, duplicates are counted, bad URLs listed",
                "requestBody": {"required": True, **_json(_FEED_IMPORT)},
                "responses": {
                    "200": _answer(
                        "Imported",
                        {
                            "type": "object",
                            "properties": {
                                "added": {"type": "integer"},
                                "duplicates": {"type": "integer"},
                                "invalid": {"type": "array", "items": {"type": "object"}},
                            },
                            "required": ["added", "duplicates", "invalid"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/feeds/refresh": {
            "post": {
                "summary": "Poll one feed (url) or every feed now, and say what each poll did",
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "url": {"type": "string", "minLength": 1, "maxLength": 2000}
                            },
                        }
                    ),
                },
                "responses": {
                    "200": _answer(
                        "The polls' outcomes",
                        {
                            "type": "object",
                            "properties": {"results": {"type": "array", "items": _POLL}},
                            "required": ["results"],
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/pairing": {
            "get": {
                "summary": "The browsers paired with the extension endpoint, and its state",
                "responses": {"200": _answer("Paired browsers", _PAIRED), **_ERRORS},
            },
            "post": {
                "summary": "A one-time pairing code for the extension's options page (valid 5 "
                "minutes; replaces any pending code; 5 wrong tries invalidate it)",
                "responses": {
                    "200": _answer(
                        "The code",
                        {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "expires_at": {"type": "number"},
                                "endpoint": {"type": "object"},
                            },
                            "required": ["code", "expires_at", "endpoint"],
                        },
                    ),
                    **_ERRORS,
                },
            },
            "delete": {
                "summary": "Revoke a paired browser's token",
                "parameters": [
                    {
                        "name": "origin",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "responses": {
                    "200": _answer(
                        "Revoked",
                        {
                            "type": "object",
                            "properties": {"revoked": {"type": "string"}},
                            "required": ["revoked"],
                        },
                    ),
                    **_ERRORS,
                },
            },
        },
        "/feeds/export": {
            "get": {
                "summary": "Every subscription as OPML 2.0",
                "responses": {
                    "200": {
                        "description": "OPML",
                        "content": {"text/x-opml": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            }
        },
    },
}

_TYPES: Final = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    """Raise `InvalidRequest` naming the first field of `value` that `schema` refuses."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, name) for name in names):
            raise InvalidRequest(f"{where}: expected {' or '.join(names)}, got {_show(value)}")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(c) for c in schema["enum"])
        raise InvalidRequest(f"{where}: expected one of {choices}, got {_show(value)}")
    if isinstance(value, str):
        _check_length(value, schema, where)
        pattern = schema.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise InvalidRequest(f"{where}: expected an identifier, got {_show(value)}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{where}: expected a finite number, got {value}")
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidRequest(f"{where}: expected a value from {low} to {high}, got {value}")
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise InvalidRequest(f"{where}: expected at least {schema['minItems']} items")
        if len(value) > schema.get("maxItems", len(value)):
            raise InvalidRequest(f"{where}: expected at most {schema['maxItems']} items")
        items = schema.get("items")
        if items == {"type": "number"}:
            # A vector: hundreds of numbers, checked in one pass (floats are the common case).
            for index, item in enumerate(value):
                if type(item) is not float and not _is(item, "number"):
                    validate(item, items, f"{where}[{index}]")
                elif type(item) is float and not math.isfinite(item):
                    raise InvalidRequest(f"{where}[{index}]: expected a finite number, got {item}")
        elif items is not None:
            for index, item in enumerate(value):
                validate(item, items, f"{where}[{index}]")
    elif isinstance(value, dict):
        properties: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise InvalidRequest(f"{_join(where, name)}: required")
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], _join(where, name))
            elif schema.get("additionalProperties", True) is False:
                known = ", ".join(properties)
                raise InvalidRequest(f"{_join(where, name)}: unknown field (known: {known})")


def request_schema(path: str, method: str) -> dict[str, Any]:
    """The JSON body schema of `method path` in the OpenAPI document."""
    body = OPENAPI["paths"][path][method]["requestBody"]
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _check_length(value: str, schema: dict[str, Any], where: str) -> None:
    if len(value) < schema.get("minLength", 0):
        raise InvalidRequest(f"{where}: expected a non-empty string")
    if len(value) > schema.get("maxLength", len(value)):
        raise InvalidRequest(
            f"{where}: expected at most {schema['maxLength']} characters, got {len(value)}"
        )


def _join(where: str, name: str) -> str:
    return name if where == "body" else f"{where}.{name}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
