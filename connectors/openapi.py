"""The OpenAPI 3.1 document of the HTTP API, served at /api/v1/openapi.json.

tests/test_openapi.py checks every answer the API gives, for every status listed here, against
these schemas, so the document cannot drift from what the views do.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .models import DeliveryAttempt, DeliveryStatus, UsageType

__all__ = ["document"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def header(
    description: str, schema: dict[str, Any] | None = None, *, required: bool = True
) -> dict[str, Any]:
    return {
        "description": description,
        "required": required,
        "schema": schema or {"type": "string"},
    }


def error_response(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if headers:
        response["headers"] = {name.replace("_", "-"): value for name, value in headers.items()}
    return response


RETRY_AFTER = header(
    "Seconds to wait before trying again.", {"type": "string", "pattern": r"^\d+$"}
)
WWW_AUTHENTICATE = header('`Bearer realm="Connector Console"`, with `error` when a token was sent.')
ALLOW = header("The methods this path answers.")
PREFERENCE_APPLIED = header(
    "`wait=N` when `Prefer: wait=N` was honoured (N capped at 30).",
    {"type": "string", "pattern": r"^wait=\d+$"},
    required=False,
)
REPLAYED = header(
    "`true` when the answer is that of an earlier request with the same key.",
    {"const": "true"},
    required=False,
)
TIMESTAMP = nullable({"type": "string", "format": "date-time"})
TEXT = nullable({"type": "string"})

UNAVAILABLE = error_response(
    "The database cannot be reached; nothing was stored.", Retry_After=RETRY_AFTER
)
UNAUTHORIZED = error_response(
    "No token, a malformed one, or one that is unknown or revoked.",
    WWW_Authenticate=WWW_AUTHENTICATE,
)
NOT_ALLOWED = error_response("The path does not answer this method.", Allow=ALLOW)
UNEXPECTED = error_response("A bug on the server's side (logged there); never a traceback.")


def schemas() -> dict[str, Any]:
    statuses = list(DeliveryStatus.values)
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "details"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "For programs: `invalid_body`, `invalid_json`, "
                            "`invalid_address`, `invalid_usage_type`, `invalid_payload`, "
                            "`no_template`, `connector_disabled`, `invalid_idempotency_key`, "
                            "`missing_token`, `invalid_token`, `connector_not_allowed`, "
                            "`unknown_connector`, `not_found`, `method_not_allowed`, "
                            "`idempotency_key_reused`, `body_too_large`, "
                            "`unsupported_media_type`, `rate_limited`, `database_unavailable`.",
                        },
                        "message": {"type": "string", "description": "For people."},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["path", "message"],
                                "additionalProperties": False,
                                "properties": {
                                    "path": {"type": "string", "examples": ["payload.locale"]},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "SendRequest": {
            "type": "object",
            "description": "The body Logto's HTTP email connector sends, plus `connector` and "
            "`locale`. Unknown keys are refused (400) with a suggestion.",
            "required": ["to", "type"],
            "additionalProperties": False,
            "properties": {
                "to": {"type": "string", "format": "idn-email", "maxLength": 320},
                "type": {
                    "type": "string",
                    "enum": [*UsageType.values, "Test"],
                    "description": "The usage type; the legacy `Test` is read as `Generic`.",
                },
                "payload": nullable(
                    {
                        "type": "object",
                        "description": "Free-form: `code`, `link`, `locale`, `uiLocales`, `user`, "
                        "`application`, `organization`, … as Logto sends them; placeholders in "
                        "templates read from it. One-time values (`code`, `link`, …) are encrypted "
                        "while pending and never shown again.",
                        "additionalProperties": True,
                    }
                ),
                "ip": nullable({"type": "string", "description": "The end user's IP address."}),
                "connector": nullable(
                    {
                        "type": "string",
                        "description": "A connector's slug; the default connector when left out.",
                    }
                ),
                "locale": nullable(
                    {
                        "type": "string",
                        "description": "Picks the template; `payload.locale` when left out.",
                    }
                ),
            },
            "examples": [
                {
                    "to": "foo@logto.io",
                    "type": "SignIn",
                    "payload": {"code": "123456", "locale": "fr-CA", "uiLocales": "fr-CA"},
                    "ip": "203.0.113.7",
                }
            ],
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "status"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": statuses},
            },
        },
        "Attempt": {
            "type": "object",
            "required": [
                "number",
                "started_at",
                "elapsed_ms",
                "outcome",
                "error",
                "hint",
                "code",
                "server_reply",
            ],
            "additionalProperties": False,
            "properties": {
                "number": {"type": "integer", "minimum": 1},
                "started_at": {"type": "string", "format": "date-time"},
                "elapsed_ms": {"type": "integer", "minimum": 0},
                "outcome": {"type": "string", "enum": list(DeliveryAttempt.Outcome.values)},
                "error": TEXT,
                "hint": TEXT,
                "code": nullable({"type": "integer"}),
                "server_reply": TEXT,
            },
        },
        "Message": {
            "type": "object",
            "description": "A message's state. Never its payload.",
            "required": [
                "id",
                "status",
                "to",
                "type",
                "locale",
                "connector",
                "created_at",
                "sent_at",
                "finished_at",
                "next_attempt_at",
                "attempt_count",
                "attempts",
                "error",
                "hint",
                "error_code",
                "server_reply",
                "message_id",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": statuses},
                "to": {"type": "string"},
                "type": {"type": "string", "enum": list(UsageType.values)},
                "locale": TEXT,
                "connector": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "sent_at": TIMESTAMP,
                "finished_at": TIMESTAMP,
                "next_attempt_at": TIMESTAMP,
                "attempt_count": {"type": "integer", "minimum": 0},
                "attempts": {"type": "array", "items": ref("Attempt")},
                "error": {**TEXT, "description": "The last error, in the server's own words."},
                "hint": {**TEXT, "description": "What to try next, for a person."},
                "error_code": nullable({"type": "integer"}),
                "server_reply": TEXT,
                "message_id": TEXT,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "database", "queue"],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "ok"},
                "database": {"const": "ok"},
                "queue": {
                    "type": "object",
                    "required": [
                        "depth",
                        "queued",
                        "sending",
                        "oldest_queued_age_seconds",
                        "lag_seconds",
                    ],
                    "additionalProperties": False,
                    "properties": {
                        "depth": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Deliveries queued or being sent.",
                        },
                        "queued": {"type": "integer", "minimum": 0},
                        "sending": {"type": "integer", "minimum": 0},
                        "oldest_queued_age_seconds": nullable({"type": "number", "minimum": 0}),
                        "lag_seconds": {
                            "type": "number",
                            "minimum": 0,
                            "description": "How long the most overdue due delivery has waited "
                            "for a worker; growing means the workers do not keep up.",
                        },
                    },
                },
            },
        },
        "HealthUnavailable": {
            "type": "object",
            "required": ["status", "database"],
            "additionalProperties": False,
            "properties": {
                "status": {"const": "unavailable"},
                "database": {"const": "unreachable"},
            },
        },
    }


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document."""
    limit = settings.CONNECTORS_API_MAX_BODY_BYTES
    token_limit, token_window = settings.CONNECTORS_API_TOKEN_RATE_LIMIT
    message_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The `id` the send answered with.",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Connector Console HTTP API",
            "version": "1.0.0",
            "description": "Send verification codes, links and notices through the configured "
            "email connectors. `POST /api/v1/messages` accepts exactly the request of Logto's "
            "HTTP email connector. See docs/api.md.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/messages": {
                "post": {
                    "operationId": "sendMessage",
                    "summary": "Accept a message for delivery",
                    "description": "Answers 202 once the message is committed to the outbox. "
                    "With `Prefer: wait=N` (N ≤ 30) it waits up to N seconds for the outcome "
                    "and answers 200 with the final state, or 202 if still pending.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 180},
                            "description": "The same key with the same body within 24 hours "
                            "returns the first message and sends nothing new; with another body, "
                            "409.",
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "examples": ["wait=10"]},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("SendRequest")}},
                        "description": f"At most {limit} bytes.",
                    },
                    "responses": {
                        "200": {
                            "description": "`Prefer: wait` given and the message reached a "
                            "final state (`sent` or `failed`) in time.",
                            "headers": {
                                "Preference-Applied": PREFERENCE_APPLIED,
                                "Location": header("The message's URL."),
                                "Idempotent-Replayed": REPLAYED,
                            },
                            "content": {"application/json": {"schema": ref("Message")}},
                        },
                        "202": {
                            "description": "Accepted: the message is committed and will be "
                            "delivered (or, for an idempotent replay, was accepted before).",
                            "headers": {
                                "Location": header("The message's URL."),
                                "Preference-Applied": PREFERENCE_APPLIED,
                                "Idempotent-Replayed": REPLAYED,
                            },
                            "content": {"application/json": {"schema": ref("Accepted")}},
                        },
                        "400": error_response(
                            "The body, an address, a usage type, a locale or "
                            "a header is not valid; `details` says where."
                        ),
                        "401": UNAUTHORIZED,
                        "403": error_response("The token may not send through that connector."),
                        "404": error_response("No connector with that slug (or none at all)."),
                        "405": NOT_ALLOWED,
                        "409": error_response("The Idempotency-Key was used with another body."),
                        "413": error_response(f"The body is over {limit} bytes."),
                        "415": error_response(
                            "The body is not sent as application/json.",
                            Accept_Post=header("application/json"),
                        ),
                        "429": error_response(
                            f"Too many messages: for this token ({token_limit} per "
                            f"{token_window} s by default) or for this recipient.",
                            Retry_After=RETRY_AFTER,
                        ),
                        "503": UNAVAILABLE,
                        "default": UNEXPECTED,
                    },
                },
            },
            "/api/v1/messages/{id}": {
                "get": {
                    "operationId": "getMessage",
                    "summary": "Read a message's status, attempts and last error",
                    "parameters": [message_id],
                    "responses": {
                        "200": {
                            "description": "The message, as sent with this token.",
                            "content": {"application/json": {"schema": ref("Message")}},
                        },
                        "401": UNAUTHORIZED,
                        "404": error_response("No such message sent with this token."),
                        "405": NOT_ALLOWED,
                        "503": UNAVAILABLE,
                        "default": UNEXPECTED,
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Health for load balancers: database and queue",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The database is reachable.",
                            "content": {"application/json": {"schema": ref("Health")}},
                        },
                        "405": NOT_ALLOWED,
                        "503": {
                            "description": "The database cannot be reached.",
                            "headers": {"Retry-After": RETRY_AFTER},
                            "content": {"application/json": {"schema": ref("HealthUnavailable")}},
                        },
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `python manage.py create_api_token`.",
                },
            },
            "schemas": schemas(),
        },
    }
