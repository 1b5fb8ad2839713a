"""The NATS micro response shapes (ADR-32) as JSON schema, for the ``$SRV`` checks of every
conat service (typed services and actors alike)."""

from __future__ import annotations

from typing import Any

import jsonschema

_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "minLength": 1}
_SEMVER = {"type": "string", "pattern": r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"}
_META = {"oneOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "null"}]}
_BASE = {"name": _NAME, "id": {"type": "string", "minLength": 1}, "version": _SEMVER, "metadata": _META}
PING_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version"],
    "properties": {"type": {"const": "io.nats.micro.v1.ping_response"}, **_BASE},
}
INFO_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version", "description"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.info_response"},
        **_BASE,
        "description": {"type": "string"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "subject"],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "metadata": _META,
                },
            },
        },
    },
}
_INT = {"type": "integer"}
STATS_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version", "started", "endpoints"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.stats_response"},
        **_BASE,
        "started": {"type": "string", "format": "date-time"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name", "subject", "num_requests", "num_errors", "last_error",
                    "processing_time", "average_processing_time",
                ],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "num_requests": _INT,
                    "num_errors": _INT,
                    "last_error": {"type": "string"},
                    "processing_time": _INT,
                    "average_processing_time": _INT,
                    "data": {"type": "object"},
                },
            },
        },
    },
}  # fmt: skip
SCHEMAS = {"PING": PING_SCHEMA, "INFO": INFO_SCHEMA, "STATS": STATS_SCHEMA}


def validate(body: Any, schema: dict[str, Any]) -> None:
    jsonschema.validate(body, schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
