"""The public Python entry points: `send_message()` and what it raises."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import IntegrityError, connection, transaction
from django.db.models import Value
from django.db.models.functions import Lower
from django.utils import timezone

from .delivery import AttemptOutcome, queued_in_rows
from .models import ApiToken, Connector, Delivery, DeliverySource, DeliveryStatus, UsageType
from .rendering import RenderedMessage, TemplateNotFound, choose_template
from .secrets import encrypt_secrets

__all__ = ["SendError", "queue_rendered", "send_message", "send_test"]

# Payload keys whose values are one-time secrets: encrypted while pending, never shown.
ONE_TIME_KEYS = frozenset({"code", "link", "token", "password", "magicLink", "url"})
REDACTED = "[redacted]"
MAX_PAYLOAD_BYTES = 64 * 1024
IDEMPOTENCY_WINDOW = timedelta(hours=24)
IDEMPOTENCY_KEY_LENGTH = 200  # Delivery.idempotency_key's length
IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e][\x20-\x7e]{{0,{IDEMPOTENCY_KEY_LENGTH - 1}}}")
# A language tag such as fr, fr-CA, zh-Hans-CN or en_US, at most 35 characters.
LOCALE = re.compile(r"(?=.{1,35}\Z)[A-Za-z0-9]{1,8}(?:[_-][A-Za-z0-9]{1,8})*")
validate_address = EmailValidator(message="not a valid email address")


class SendError(ValueError):
    """A message cannot be accepted; `code` says why, for programs, the message for people."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        path: str = "",
        retry_after: int | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.path = path
        self.retry_after = retry_after
        self.delivery = delivery


def send_message(
    to: str,
    type: str,
    payload: dict[str, Any] | None = None,
    *,
    connector: str | None = None,
    locale: str | None = None,
    ip: str | None = None,
    idempotency_key: str | None = None,
    source: str = DeliverySource.PYTHON,
    source_detail: str = "",
    api_token: Any = None,
) -> Delivery:
    """Accept a message for delivery and return its Delivery once it is committed.

    With `api_token` (the HTTP API's caller), the message is stored only while that token is
    not revoked; SendError "revoked_token" says when it is.
    """
    to = clean_address(to)
    usage_type = clean_usage_type(type)
    payload = clean_payload(payload)
    if locale is not None:
        locale = clean_locale(locale, "locale")
    else:
        locale = clean_locale(payload.get("locale"), "payload.locale")
    ip = clean_ip(ip)
    idempotency_key = clean_idempotency_key(idempotency_key)
    fields = {
        "source": source,
        "source_detail": source_detail,
        "ip": ip,
        "api_token": api_token,
    }
    if idempotency_key is None:
        accepted = accept_if_unchanged(connector, to, usage_type, locale, payload, **fields)
        if accepted is not None:
            return accepted
    check_token(api_token)
    target, recent = connector_and_recent_count(connector, to)
    try:
        check_template(target, usage_type, locale)
    except TemplateNotFound as exc:
        raise SendError("no_template", str(exc), path="type") from None
    check_rate_limit(to, recent)
    return store(
        new_delivery(
            target,
            to,
            usage_type,
            locale,
            payload,
            {"payload": payload},
            idempotency_key=idempotency_key,
            **fields,
        )
    )


def accept_if_unchanged(
    slug: str | None,
    to: str,
    usage_type: str,
    locale: str,
    payload: dict[str, Any],
    **fields: Any,
) -> Delivery | None:
    """Store the delivery in one statement, if this process knows its connector; else None.

    The INSERT itself makes the checks that send_message() otherwise makes with a query of its
    own: the connector is still the one the slug (or the default) names, enabled, unchanged
    since this process loaded it, and the recipient is under the rate limit. When any of them
    fails, nothing is stored, and the caller takes the long way, which says what is wrong.
    """
    cached = _connectors.get(_connector_ids.get(slug, 0))
    if cached is None:
        return None
    (version, enabled), target = cached
    if not enabled:
        return None
    try:
        check_template(target, usage_type, locale)
    except TemplateNotFound:
        return None
    table = connection.ops.quote_name(Connector._meta.db_table)
    condition = (
        f"EXISTS (SELECT 1 FROM {table} WHERE id = %s AND updated_at = %s AND enabled = %s "  # noqa: S608
        f"AND {'slug = %s' if slug else 'is_default = %s'})"
    )
    params: list[Any] = [
        target.pk,
        connection.ops.adapt_datetimefield_value(version),
        True,
        slug or True,
    ]
    limit, _ = getattr(settings, "CONNECTORS_RECIPIENT_RATE_LIMIT", (10, 600))
    if limit:
        count, count_params = recent_count_sql(to)
        condition += f" AND {count} < %s"
        params += [*count_params, limit]
    token = fields.get("api_token")
    if token is not None:
        tokens = connection.ops.quote_name(ApiToken._meta.db_table)
        condition += f" AND EXISTS (SELECT 1 FROM {tokens} WHERE id = %s AND revoked_at IS NULL)"  # noqa: S608
        params.append(getattr(token, "pk", token))
    delivery = new_delivery(target, to, usage_type, locale, payload, {"payload": payload}, **fields)
    if not delivery.insert(only_if=condition, params=params):
        return None
    after_commit(delivery)
    return delivery


def check_token(api_token: Any) -> None:
    """Raise SendError unless the API token a message is sent for, if any, is not revoked."""
    if api_token is None:
        return
    active = ApiToken.objects.filter(pk=getattr(api_token, "pk", api_token), revoked_at=None)
    if not active.exists():
        raise SendError("revoked_token", "This API token has been revoked.")


def check_template(target: Connector, usage_type: str, locale: str) -> None:
    """Raise TemplateNotFound unless the connector can write this message.

    An HTTP connector without templates needs none: its endpoint renders for itself.
    """
    templates = target.template_configs()
    if target.kind == "smtp" or templates:
        choose_template(templates, usage_type, locale)


def queue_rendered(
    message: RenderedMessage, *, connector: str | None = None, source: str = DeliverySource.MAIL
) -> Delivery:
    """Accept a message that is already written (the mail backend's) for delivery."""
    to = clean_address(message.to)
    target = pick_connector(connector)
    if target.kind != "smtp":
        raise SendError(
            "unsupported",
            f"Connector {target.slug!r} is {target.get_kind_display()}: "
            "written messages go through SMTP connectors only.",
            path="connector",
        )
    if not message.html and not message.text:
        message.text = " "  # an empty body is legal mail; smtplib needs something to send
    return store(
        new_delivery(
            target, to, UsageType.GENERIC, "", {}, {"message": asdict(message)}, source=source
        )
    )


def send_test(
    to: str,
    type: str = UsageType.GENERIC,
    payload: dict[str, Any] | None = None,
    *,
    connector: str | None = None,
    config: dict[str, Any] | None = None,
    kind: str | None = None,
    locale: str | None = None,
    source_detail: str = "",
) -> AttemptOutcome:
    """Send one message now, in this thread, with no retry, and record it as a test.

    With `config` (validated, masks resolved) the message goes through that config rather than
    the stored one: Send test of unsaved edits. `connector` may then be None for a new one.
    """
    from .delivery import RetryPolicy, process_with_details

    to = clean_address(to)
    usage_type = clean_usage_type(type)
    payload = clean_payload(payload) or sample_payload(locale)
    target = pick_connector(connector, allow_disabled=True) if connector or config is None else None
    delivery = store(
        new_delivery(
            target,
            to,
            usage_type,
            locale or "",
            payload,
            {"payload": payload},
            source=DeliverySource.TEST,
            source_detail=source_detail,
            connector_slug=f"(unsaved {kind or 'config'})",
        ),
        schedule=False,
    )
    outcome = process_with_details(
        delivery.pk, policy=replace(RetryPolicy.from_settings(), max_attempts=1), config=config
    )
    assert outcome is not None  # nobody else knows of this delivery yet
    finished = outcome.delivery
    if target is not None:
        ok = finished.status == DeliveryStatus.SENT
        Connector.objects.filter(pk=target.pk).update(
            last_test_at=timezone.now(),
            last_test_ok=ok,
            last_test_summary=(finished.server_reply if ok else finished.error)[:300],
        )
    return outcome


def sample_payload(locale: str | None = None) -> dict[str, Any]:
    """Return a payload like the ones Logto sends, for tests and previews."""
    return {
        "code": "123456",
        "link": "https://auth.example.com/verify?code=123456",
        "locale": locale or "en",
        "uiLocales": locale or "en",
        "user": {"id": "u_1", "name": "Ada Lovelace", "primaryEmail": "ada@example.com"},
        "application": {"id": "app_1", "name": "Connector Console"},
        "organization": {"id": "org_1", "name": "Acme"},
        "inviter": {"id": "u_2", "name": "Grace Hopper"},
    }


def store(delivery: Delivery, *, schedule: bool = True) -> Delivery:
    """Store a new delivery, schedule it once committed, and return it.

    With an idempotency key, the delivery already made with that key, if any, is returned
    instead.
    """
    target = delivery.connector
    key = delivery.idempotency_key
    if not key or target is None:
        # One INSERT, committed on its own unless the caller holds a transaction open.
        delivery.insert()
        if schedule:
            after_commit(delivery)
        return delivery
    with transaction.atomic():
        existing = idempotent_match(target, key)
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                delivery.insert()
        except IntegrityError:
            # Another request with the same key committed first: answer with its delivery.
            existing = idempotent_match(target, key)
            if existing is None:
                raise
            return existing
        if schedule:
            after_commit(delivery)
    return delivery


def new_delivery(
    target: Connector | None,
    to: str,
    usage_type: str,
    locale: str,
    payload: dict[str, Any],
    sealed: dict[str, Any],
    *,
    source: str,
    source_detail: str = "",
    ip: str | None = None,
    idempotency_key: str | None = None,
    connector_slug: str = "",
    api_token: Any = None,
) -> Delivery:
    """Return a new, unsaved delivery: queued, due now, its one-time values sealed."""
    return Delivery(
        connector=target,
        connector_slug=target.slug if target else connector_slug,
        to=to,
        usage_type=usage_type,
        locale=locale or "",
        payload=redact(payload),
        sealed=encrypt_secrets(sealed),
        source=source,
        source_detail=source_detail[:200],
        ip=ip or None,
        idempotency_key=(idempotency_key or "")[:200],
        next_attempt_at=timezone.now(),
        # A token row, or just its id (the HTTP API has no need to load the row).
        api_token_id=getattr(api_token, "pk", api_token),
    )


def after_commit(delivery: Delivery) -> None:
    """Hand the delivery to the task backend once the transaction commits.

    The outbox backend needs nothing: the committed row is its task, due at next_attempt_at.
    """
    if not queued_in_rows():
        transaction.on_commit(lambda: enqueue(delivery))


def enqueue(delivery: Delivery) -> None:
    from .delivery import schedule

    schedule(delivery.pk)
    if runs_inline():
        # The attempt has already run in this thread: show its outcome to the caller.
        delivery.refresh_from_db()


def runs_inline() -> bool:
    """Tell whether the task backend runs tasks in the caller's thread (the embedded default)."""
    from django.tasks import task_backends
    from django.tasks.backends.immediate import ImmediateBackend

    return isinstance(task_backends["default"], ImmediateBackend)


def clean_address(to: object) -> str:
    """Return the address, or raise SendError for anything that is not one address."""
    if not isinstance(to, str) or not to.strip():
        raise SendError("invalid_address", "`to` must be an email address.", path="to")
    to = to.strip()
    if "\r" in to or "\n" in to or len(to) > 320:
        raise SendError("invalid_address", f"{to[:80]!r} is not a valid email address.", path="to")
    try:
        validate_address(to)
    except ValidationError:
        raise SendError(
            "invalid_address", f"{to!r} is not a valid email address.", path="to"
        ) from None
    return to


def clean_usage_type(value: object) -> str:
    """Return the usage type (the legacy `Test` read as Generic), or raise SendError."""
    if isinstance(value, str):
        try:
            return UsageType.parse(value).value
        except ValueError:
            pass
    names = ", ".join(UsageType.values)
    raise SendError(
        "invalid_usage_type", f"{value!r} is not a usage type; use one of {names}.", path="type"
    )


def clean_payload(payload: object) -> dict[str, Any]:
    """Return the payload as a JSON object, or raise SendError."""
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise SendError("invalid_payload", "`payload` must be a JSON object.", path="payload")
    try:
        size = len(json.dumps(payload, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        raise SendError(
            "invalid_payload", "`payload` holds values that are not JSON.", path="payload"
        ) from None
    if size > MAX_PAYLOAD_BYTES:
        raise SendError(
            "invalid_payload",
            f"`payload` is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}.",
            path="payload",
        )
    return payload


def clean_locale(value: object, path: str, *, empty: bool = True) -> str:
    """Return a locale tag ("" for none: None or "", unless not `empty`), or raise SendError."""
    if empty and (value is None or value == ""):
        return ""
    if not isinstance(value, str) or not LOCALE.fullmatch(value):
        raise SendError(
            "invalid_locale",
            f'must be a locale such as "fr-CA" (a language tag), not {str(value)[:40]!r}',
            path=path,
        )
    return value


def clean_ip(value: object) -> str | None:
    """Return the client's IP address in its canonical form, or None, or raise SendError."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)  # ip_address() would read an int as an address
        address = ipaddress.ip_address(value)
    except ValueError:
        raise SendError(
            "invalid_ip", f"{str(value)[:60]!r} is not an IP address.", path="ip"
        ) from None
    if getattr(address, "scope_id", None):
        raise SendError("invalid_ip", "An IP address must not carry a zone (%…).", path="ip")
    return str(address)


def clean_idempotency_key(value: object) -> str | None:
    """Return the idempotency key, or None, or raise SendError (never cut it short)."""
    if value is None:
        return None
    if not isinstance(value, str) or not IDEMPOTENCY_KEY.fullmatch(value):
        raise SendError(
            "invalid_idempotency_key",
            f"An idempotency key is 1 to {IDEMPOTENCY_KEY_LENGTH} printable ASCII characters.",
            path="idempotency_key",
        )
    return value


def redact(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload with its one-time values replaced, fit for the delivery log."""
    return {
        key: REDACTED
        if key in ONE_TIME_KEYS
        else redact(value)
        if isinstance(value, dict)
        else value
        for key, value in payload.items()
    }


def pick_connector(slug: str | None, *, allow_disabled: bool = False) -> Connector:
    """Return the named connector, or the default one."""
    return connector_and_recent_count(slug, None, allow_disabled=allow_disabled)[0]


# Connectors as this process last loaded them: pk -> (version read from the row, connector).
# Every use reads the row's version (updated_at, enabled) in the query that counts the
# recipient's recent messages, so a change anywhere is seen at once; what the cache spares is
# loading and decoding the whole row, and building the query, on every message.
_connectors: dict[int, tuple[tuple[Any, Any], Connector]] = {}
_connector_ids: dict[str | None, int] = {}  # slug (None: the default) -> pk, as last looked up
MAX_CACHED_CONNECTORS = 100


def connector_and_recent_count(
    slug: str | None, recipient: str | None, *, allow_disabled: bool = False
) -> tuple[Connector, int]:
    """Return the named (or default) connector and the recipient's messages in the window.

    One query does both. The count stops at the limit, which is all the check needs, and is 0
    when there is no recipient or no limit.
    """
    limit, _ = getattr(settings, "CONNECTORS_RECIPIENT_RATE_LIMIT", (10, 600))
    table = connection.ops.quote_name(Connector._meta.db_table)
    params: list[Any] = []
    if recipient is not None and limit:
        count, params = recent_count_sql(recipient)
    else:
        count = "0"
    if slug:
        where = f"{table}.slug = %s"
        params.append(slug)
    else:
        where = f"{table}.is_default = %s"
        params.append(True)
    cursor: Any
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {table}.id, {table}.updated_at, {table}.enabled, {count} "  # noqa: S608
            f"FROM {table} WHERE {where}",
            params,
        )
        row = cursor.fetchone()
    if row is None:
        message = f"No connector with slug {slug!r}." if slug else "No connector is configured yet."
        raise SendError("unknown_connector", message, path="connector")
    pk, version, recent = row[0], (row[1], row[2]), int(row[3])
    _connector_ids[slug] = pk
    cached = _connectors.get(pk)
    if cached is not None and cached[0] == version:
        found = cached[1]
    else:
        found = Connector.objects.get(pk=pk)
        if len(_connectors) >= MAX_CACHED_CONNECTORS:
            _connectors.clear()
            _connector_ids.clear()
        _connectors[pk] = (version, found)
    if not found.enabled and not allow_disabled:
        raise SendError(
            "connector_disabled", f"Connector {found.slug!r} is disabled.", path="connector"
        )
    return found, recent


def recent_count_sql(recipient: str) -> tuple[str, list[Any]]:
    """Return SQL that counts the recipient's messages in the window (up to the limit)."""
    limit, window = getattr(settings, "CONNECTORS_RECIPIENT_RATE_LIMIT", (10, 600))
    deliveries = connection.ops.quote_name(Delivery._meta.db_table)
    to_column = connection.ops.quote_name("to")
    since = timezone.now() - timedelta(seconds=window)
    # The same expression as the delivery_recipient index, so the count is an index scan.
    sql = (
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {deliveries} "  # noqa: S608 (our tables' names)
        f"WHERE LOWER({deliveries}.{to_column}) = LOWER(%s) AND {deliveries}.created_at >= %s "
        f"AND {deliveries}.source <> %s LIMIT %s) recent)"
    )
    # LOWER() on both sides: SQLite's folds ASCII letters only, and then an address with
    # capital non-ASCII letters must still match itself.
    return sql, [
        recipient,
        connection.ops.adapt_datetimefield_value(since),
        DeliverySource.TEST,
        limit,
    ]


def check_rate_limit(to: str, recent: int | None = None) -> None:
    """Raise SendError when the recipient has had too many messages lately.

    `recent` is the count of the recipient's messages in the window, when the caller has it.
    """
    limit, window = getattr(settings, "CONNECTORS_RECIPIENT_RATE_LIMIT", (10, 600))
    if not limit:
        return
    if recent is not None and recent < limit:
        return
    since = timezone.now() - timedelta(seconds=window)
    recent_deliveries = (
        Delivery.objects.alias(recipient=Lower("to"))
        .filter(recipient=Lower(Value(to)), created_at__gte=since)
        .exclude(source=DeliverySource.TEST)
    )
    if recent is None:
        recent = recent_deliveries[:limit].count()
    if recent >= limit:
        oldest = (
            recent_deliveries.order_by("created_at").values_list("created_at", flat=True).first()
        )
        retry_after = (
            max(1, int((oldest + timedelta(seconds=window) - timezone.now()).total_seconds()))
            if oldest
            else window
        )
        raise SendError(
            "rate_limited",
            f"{to} has been sent {limit} messages in the last "
            f"{window // 60} minutes; try again in {retry_after} s.",
            path="to",
            retry_after=retry_after,
        )


def idempotent_match(connector: Connector, key: str) -> Delivery | None:
    """Return the delivery made with this key in the last 24 hours; retire an older one."""
    existing = Delivery.objects.filter(connector_slug=connector.slug, idempotency_key=key).first()
    if existing is None:
        return None
    if timezone.now() - existing.created_at < IDEMPOTENCY_WINDOW:
        return existing
    Delivery.objects.filter(pk=existing.pk).update(idempotency_key="")
    return None
