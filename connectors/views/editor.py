"""The connector page's editor: its field reference, and Send test of the unsaved config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import reverse

from .. import schema
from ..models import Connector, DeliveryStatus, MissingSecretError, UsageType
from ..ratelimit import RateLimit
from ..secrets import DecryptionError, split_secrets
from ..service import SendError, sample_payload, send_test
from .base import json_error

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

# The field reference shown beside the editor -----------------------------------------------


@dataclass(frozen=True)
class ReferenceEntry:
    """One configurable key: its path in the config, type, default and what it means."""

    path: str
    type: str
    description: str
    default: str = ""
    choices: tuple[str, ...] = ()
    secret: bool = False
    depth: int = field(default=0)


@cache
def field_reference(kind: str) -> tuple[ReferenceEntry, ...]:
    """Return every key of a kind's config, documented from its JSON Schema."""
    root = schema.json_schema(kind)
    definitions = root.get("$defs", {})
    secrets = set(schema.SECRET_PATHS[kind])
    entries: dict[str, ReferenceEntry] = {}

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def branches(node: dict[str, Any]) -> list[dict[str, Any]]:
        node = resolve(node)
        found = [
            b for key in ("anyOf", "oneOf") for sub in node.get(key, []) for b in branches(sub)
        ]
        return found or [node]

    def describe_type(node: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        types: list[str] = []
        choices: dict[str, str] = {}  # lower-case -> first spelling, so login/Login/LOGIN is one
        for branch in branches(node):
            if branch.get("type") == "null" or branch.get("deprecated"):
                continue
            for value in branch.get("enum", []):
                choices.setdefault(str(value).lower(), str(value))
            kind_of = branch.get("type")
            if kind_of == "array":
                item = resolve(branch.get("items") or {})
                of = "objects" if item.get("properties") else item.get("type", "values")
                kind_of = f"array of {of}"
            if kind_of and kind_of not in types:
                types.append(kind_of)
        return " or ".join(types) or "value", tuple(choices.values())

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        for branch in branches(node):
            for name, prop in branch.get("properties", {}).items():
                path = prefix + name
                type_name, choices = describe_type(prop)
                seen = entries.get(path)
                if seen is None:
                    default = prop.get("default")
                    entries[path] = ReferenceEntry(
                        path=path,
                        type=type_name,
                        description=prop.get("description", ""),
                        default="" if default is None else json.dumps(default),
                        choices=choices,
                        secret=path in secrets,
                        depth=depth,
                    )
                else:  # the same key in another form of its object (auth: login or OAuth2)
                    merged = tuple(dict.fromkeys((*seen.choices, *choices)))
                    entries[path] = replace(seen, choices=merged)
                for sub in branches(prop):
                    if sub.get("properties"):
                        walk(sub, path + ".", depth + 1)
                    elif sub.get("type") == "array" and isinstance(sub.get("items"), dict):
                        walk(sub["items"], path + "[].", depth + 1)

    walk(root, "", 0)
    return tuple(entries.values())


# The keywords that constrain only values of one JSON type (a number's `maximum` says nothing
# about a string): branches of an `anyOf` that differ in type and use only these can be merged.
KEYWORDS_OF_TYPE = {
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "array": {"items", "minItems", "maxItems", "uniqueItems"},
    "object": {"properties", "additionalProperties", "required", "propertyNames"},
    "boolean": set(),
    "null": set(),
}


def merge_typed_branches(branches: list[Any]) -> dict[str, Any] | None:
    """Return one node with a list of types that says what the branches say, or None.

    Possible when each branch is one type with only that type's keywords, each type once:
    `{"anyOf": [{"type": "integer", "maximum": 65535}, {"type": "string", "pattern": …}]}` is
    `{"type": ["integer", "string"], "maximum": 65535, "pattern": …}`.
    """
    merged: dict[str, Any] = {"type": []}
    for branch in branches:
        kind = branch.get("type") if isinstance(branch, dict) else None
        if not isinstance(kind, str) or kind not in KEYWORDS_OF_TYPE or kind in merged["type"]:
            return None
        keywords = set(branch) - {"type", "title", "description"}
        if not keywords <= KEYWORDS_OF_TYPE[kind] or keywords & set(merged):
            return None
        if {"integer", "number"} & {kind, *merged["type"]} == {"integer", "number"}:
            return None  # an integer is a number: their keywords would overlap
        merged["type"].append(kind)
        merged.update({key: branch[key] for key in keywords})
    return merged


def merge_enum_branches(branches: list[Any]) -> dict[str, Any] | None:
    """Return one enum of the branches' values when each branch is an enum or a const, or None."""
    values: list[Any] = []
    for branch in branches:
        if not isinstance(branch, dict):
            return None
        keywords = set(branch) - {"type", "title", "description", "deprecated"}
        if keywords == {"enum"}:
            values.extend(branch["enum"])
        elif keywords == {"const"}:
            values.append(branch["const"])
        else:
            return None
    return {"enum": list(dict.fromkeys(values))}


def editor_schema(root: dict[str, Any]) -> dict[str, Any]:
    """Return a kind's JSON Schema with its `anyOf`s of simple branches merged, for the editor.

    It says the same, but the editor's schema library treats an `anyOf` badly in two ways. It
    picks a branch by the value being typed: while that value is half-written
    (`"minVersion": ""`) no branch matches, and neither the enum values nor the keys of the
    object around it would be offered for completion. And a value that matches no branch gets
    the message "does not match any schema of [the branches as JSON]", where one merged node
    gets "should be at most 65535" or "to be of type string".
    """
    definitions = root.get("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: rewrite(value) for key, value in node.items()}
        branches = node.get("anyOf")
        if not isinstance(branches, list):
            return node
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        merged = merge_typed_branches(branches) or merge_enum_branches(branches)
        if merged is not None:
            return {**outer, **merged}
        if len(branches) != 2 or {"type": "null"} not in branches:
            return node
        (other,) = [b for b in branches if b != {"type": "null"}]
        if set(other) == {"enum", "type"}:
            return {**outer, "enum": [*other["enum"], None]}
        if set(other) == {"$ref"}:
            target = definitions.get(other["$ref"].rsplit("/", 1)[-1], {})
            if target.get("type") == "object":
                return {**rewrite(target), **outer, "type": ["object", "null"]}
        return node

    return rewrite(root)


def editor_context(
    request: HttpRequest, form: Any, connector: Connector | None, can_send_test: bool
) -> dict[str, Any]:
    """Return what the connector page's editor, reference and Send test panel need."""
    if connector is not None:
        send_test_url = reverse("admin:connectors_connector_send_test", args=[connector.pk])
    else:
        send_test_url = reverse("admin:connectors_connector_send_test_new")
    data: dict[str, Any] = {
        "kind": form.kind,
        "isNew": connector is None,
        "schemas": {kind: editor_schema(schema.json_schema(kind)) for kind in schema.KINDS},
        "errors": [error.as_dict() for error in form.config_errors],
        "sendTestUrl": send_test_url if can_send_test else "",
    }
    if connector is None:
        # Every example, so that picking a kind or a preset refills the editor without a reload.
        data["examples"] = {
            "smtp": {"": schema.example_config_text("smtp")}
            | {key: schema.example_config_text("smtp", key) for key in schema.PRESETS},
            "http": {"": schema.example_config_text("http")},
        }
    return {
        "editor_data": data,
        "references": [(kind, field_reference(kind)) for kind in schema.KINDS],
        "presets": list(schema.PRESETS.values()),
        "editor_kind": form.kind,
        "selected_preset": form["preset"].value() if "preset" in form.fields else "",
        "can_send_test": can_send_test,
        "send_test_to": getattr(request.user, "email", ""),
        "usage_types": schema.USAGE_TYPES,
        "sample_payload": json.dumps(sample_payload(), indent=2),
    }


# Send test ----------------------------------------------------------------------------------

# Shares of the time bound given to each wait of an SMTP attempt: the usual ways a test hangs
# (no DNS answer, a port that drops packets, a server that never greets, TLS on the wrong port)
# each end well within the bound.
TEST_TIMEOUT_SHARES = {
    "dnsTimeout": 0.15,
    "connectionTimeout": 0.25,
    "greetingTimeout": 0.2,
    "socketTimeout": 0.3,
}


def bound_timeouts(kind: str, config: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Return the config with its time-outs shortened so that one attempt ends within `seconds`."""
    if kind != "smtp":
        return config  # the HTTP transport waits at most 10 s per step on its own
    bounded = dict(config)
    for key, share in TEST_TIMEOUT_SHARES.items():
        cap = max(1000, int(seconds * 1000 * share))
        current = config.get(key)
        bounded[key] = min(current, cap) if isinstance(current, int) and current > 0 else cap
    return bounded


def send_test_limit() -> RateLimit:
    """Return the limit on Send tests per administrator."""
    limit, window = settings.CONSOLE_SEND_TEST_LIMIT
    return RateLimit("send-test", limit, window)


def scrub(data: Any, secrets: list[str]) -> Any:
    """Return JSON-able data with any secret value replaced by the mask, wherever it hides."""
    if not secrets:
        return data
    text = json.dumps(data)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(json.dumps(secret)[1:-1], schema.MASK)
    return json.loads(text)


def send_test_view(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector | None
) -> JsonResponse:
    """Send one message with the editor's unsaved config; answer with what the server said."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return json_error(400, "invalid_request", "Send the test as a JSON object.")
    if not isinstance(body, dict):
        return json_error(400, "invalid_request", "Send the test as a JSON object.")
    kind = connector.kind if connector is not None else body.get("kind")
    if kind not in schema.KINDS:
        return json_error(400, "invalid_kind", f"Pick a kind: {', '.join(schema.KINDS)}.")
    text = body.get("config")
    if not isinstance(text, str):
        return json_error(400, "invalid_request", "`config` must be the editor's text.")

    result = schema.validate_config(kind, text)
    if not result.ok or result.data is None:
        count = len(result.errors)
        return JsonResponse(
            {
                "ok": False,
                "error": {
                    "code": "invalid_config",
                    "message": f"The config has {count} problem{'s' if count != 1 else ''}: fix "
                    f"{'them' if count != 1 else 'it'} before sending a test.",
                },
                "errors": [error.as_dict() for error in result.errors],
            },
            status=400,
        )
    holder = connector if connector is not None else Connector(kind=kind)
    try:
        resolved = holder.resolve_masks(result.data)
    except MissingSecretError as exc:
        line, column = result.locate(exc.path)
        error = schema.ConfigError(exc.path, line, column, str(exc))
        return JsonResponse(
            {
                "ok": False,
                "error": {"code": "missing_secret", "message": str(exc)},
                "errors": [error.as_dict()],
            },
            status=400,
        )
    except DecryptionError as exc:
        return json_error(400, "undecryptable", str(exc))

    payload = body.get("payload")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload) if payload.strip() else None
        except ValueError as exc:
            return json_error(400, "invalid_payload", f"The sample payload is not JSON: {exc}.")

    limit, who = send_test_limit(), str(request.user.pk)
    wait = limit.retry_after(who)
    if wait is not None:
        return json_error(
            429,
            "rate_limited",
            f"You have sent {limit.limit} tests in the last {limit.window // 60} minutes; try "
            f"again in {wait} s.",
            retry_after=wait,
        )
    limit.hit(who)

    secret_values = [
        v
        for v in split_secrets(resolved, schema.SECRET_PATHS[kind])[1].values()
        if isinstance(v, str) and len(v) >= 4
    ]
    try:
        outcome = send_test(
            str(body.get("to") or ""),
            str(body.get("type") or UsageType.GENERIC),
            payload,
            connector=connector.slug if connector is not None else None,
            config=bound_timeouts(kind, resolved, settings.CONSOLE_SEND_TEST_SECONDS),
            kind=kind,
            locale=str(body.get("locale") or "").strip() or None,
            source_detail=f"from the console by {request.user.get_username()}",
        )
    except SendError as exc:
        return json_error(400, exc.code, str(exc), path=exc.path)
    return JsonResponse(scrub(describe_outcome(outcome), secret_values))


def describe_outcome(outcome: Any) -> dict[str, Any]:
    """Return a Send test's outcome as the page shows it."""
    delivery = outcome.delivery
    last = delivery.attempt_log.order_by("-number").first()
    data: dict[str, Any] = {
        "ok": delivery.status == DeliveryStatus.SENT,
        "delivery": {
            "id": str(delivery.pk),
            "status": delivery.status,
            "url": reverse("admin:connectors_delivery_change", args=[delivery.pk]),
        },
        "elapsed_ms": last.elapsed_ms if last else None,
    }
    if outcome.result is not None:
        data["result"] = {
            "server_reply": outcome.result.server_reply,
            "message_id": outcome.result.message_id or "",
            "elapsed_ms": outcome.result.elapsed_ms,
            "warnings": list(outcome.result.warnings),
            "transcript": list(outcome.result.transcript),
        }
    if not data["ok"]:
        error = outcome.error
        data["failure"] = {
            "message": getattr(error, "message", None) or delivery.error or str(error or ""),
            "code": getattr(error, "code", None) or delivery.error_code,
            "server_text": getattr(error, "server_text", "") or "",
            "hint": getattr(error, "hint", "") or delivery.hint,
            "permanent": bool(getattr(error, "permanent", True)),
            "transcript": list(getattr(error, "transcript", []) or []),
        }
    return data
