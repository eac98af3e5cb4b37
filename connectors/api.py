"""The HTTP API for internal applications: send a message, read its outcome, check health.

`POST /api/v1/messages` takes exactly the body Logto's HTTP email connector sends, so Logto can
point that connector at us unchanged. Every answer is JSON, whatever the input: errors are
`{"error": {"code", "message", "details": [{"path", "message"}]}}`. docs/api.md is the guide,
`connectors.openapi` the contract.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import select
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.exception import convert_exception_to_response
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import Count, Min, Q
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.template import loader
from django.urls import path, re_path
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from . import openapi
from .models import ApiToken, Connector, Delivery, DeliverySource, DeliveryStatus
from .schema import _suggest
from .service import SendError, clean_ip, clean_locale, send_message
from .tokens import hash_token, verify_token

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30
IDEMPOTENCY_WINDOW = timedelta(hours=24)  # as the send service's
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token
FINGERPRINT_MARK = "body-sha256:"  # in Delivery.source_detail; see fingerprint()
REALM = 'Bearer realm="Connector Console"'
MAX_DEPTH = 32  # of a body's nesting; Logto's payloads have three levels

BODY_FIELDS: dict[str, tuple[type, str]] = {
    "to": (str, "a string (an email address)"),
    "type": (str, "a string (a usage type such as SignIn)"),
    "payload": (dict, "an object"),
    "ip": (str, "a string (an IP address)"),
    "connector": (str, "a string (a connector's slug)"),
    "locale": (str, 'a string (a locale such as "fr-CA")'),
}
REQUIRED_FIELDS = ("to", "type")
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")
# Visible ASCII and spaces: a key that can travel in a header and be shown in a log unchanged.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,179}")
JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


# ---------------------------------------------------------------------------------------------
# Errors and the envelope every view is wrapped in.


class ApiError(Exception):
    """An answer other than success: a status, a code for programs, a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        """Return the JSON error answer."""
        body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
        return json_response(body, status=self.status, headers=self.headers)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    """Return JSON that no cache keeps (answers carry delivery state, never for sharing).

    The headers the console's middleware would add, which the API's requests skip
    (`ConsoleOnlyMiddleware`), are set here: the length, and a policy that lets nothing run or
    frame the answer.
    """
    response = JsonResponse(
        body,
        status=status,
        safe=False,
        json_dumps_params={"ensure_ascii": False},
        headers=API_HEADERS | headers if headers else API_HEADERS,
    )
    response["Content-Length"] = str(len(response.content))
    return response


API_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


View = Callable[..., HttpResponse]


def api_view(*methods: str) -> Callable[[View], View]:
    """Wrap a view: its methods only, no CSRF (token auth), JSON for every failure, never HTML."""
    allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in allowed:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{request.path} answers {' and '.join(sorted(allowed))} only.",
                        headers={"Allow": ", ".join(sorted(allowed))},
                    )
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except (OperationalError, InterfaceError):
                logger.exception("database unreachable during %s %s", request.method, request.path)
                return database_unavailable().response()
            except Exception:
                # A bug, not bad input: the person calling gets a JSON answer with no traceback,
                # the operator gets the traceback in the log.
                logger.exception("unexpected error during %s %s", request.method, request.path)
                return ApiError(
                    500,
                    "internal_error",
                    "Something went wrong on our side; the error has been logged. "
                    "Try again; if it persists, tell the operator.",
                ).response()

        # Token auth, not cookies: there is no cross-site request to forge. Views manage their own
        # transactions so that a 202 is only ever sent once the delivery is committed.
        return csrf_exempt(transaction.non_atomic_requests(wrapper))

    return decorate


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        "The database cannot be reached; nothing was stored. Try again shortly.",
        headers={"Retry-After": "5"},
    )


# ---------------------------------------------------------------------------------------------
# Tokens.


@dataclass(frozen=True)
class Caller:
    """A verified token: which one, and the connectors it may send through."""

    token_id: int
    prefix: str
    connectors: frozenset[str] | None  # slugs; None = every connector


# Verified senders, by token hash: (when verified, caller). Revocation still takes effect at once,
# because every send re-checks it: in the statement that stores the message, or in the count
# (admit()); what the cache spares is the lookup and the scope query on each request.
_callers: dict[str, tuple[float, Caller]] = {}
MAX_CACHED_CALLERS = 1000


def presented_token(request: HttpRequest) -> str:
    """Return the bearer token in the Authorization header, or raise a 401."""
    # META rather than request.headers, here and below: the latter builds a dict of every
    # header on first use, to read one or two.
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        raise ApiError(
            401,
            "missing_token",
            "Send an API token in the Authorization header: `Authorization: Bearer "
            "cc_…`. Create one with `python manage.py create_api_token NAME`.",
            headers={"WWW-Authenticate": REALM},
        )
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        raise ApiError(
            401,
            "invalid_token",
            # Never echo the header: its first word may well be the token itself.
            "The Authorization header must be `Bearer cc_…` with an API token"
            + (
                " (it holds the token without the `Bearer ` in front)."
                if scheme.startswith("cc_")
                else "; it uses another scheme."
            ),
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_request"'},
        )
    return credentials.strip()


def invalid_token() -> ApiError:
    return ApiError(
        401,
        "invalid_token",
        "This API token is unknown or has been revoked: check the client's "
        "configuration, or create a new token.",
        headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


def authenticate(request: HttpRequest) -> ApiToken:
    """Return the active token of a request (looked up every time), or raise a 401."""
    token = verify_token(presented_token(request))
    if token is None:
        raise invalid_token()
    record_use(token)
    return token


def authenticate_sender(request: HttpRequest) -> Caller:
    """Return the caller of a send request, verified at most every few seconds, or raise 401."""
    token = presented_token(request)
    digest = hash_token(token)
    now = time.monotonic()
    cached = _callers.get(digest)
    if cached is not None and now - cached[0] < settings.CONNECTORS_API_TOKEN_CACHE_SECONDS:
        return cached[1]
    row = verify_token(token)
    if row is None:
        _callers.pop(digest, None)
        raise invalid_token()
    slugs = frozenset(row.connectors.values_list("slug", flat=True))
    caller = Caller(token_id=row.pk, prefix=row.prefix, connectors=slugs or None)
    if len(_callers) >= MAX_CACHED_CALLERS:
        _callers.clear()
    _callers[digest] = (now, caller)
    return caller


def forget_callers() -> None:
    """Drop every cached verification and count (tests: as in a new process)."""
    _callers.clear()
    with _shares_lock:
        _shares.clear()


def record_use(token: ApiToken) -> None:
    """Record when a token was last used, writing at most once a minute per token."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_EVERY:
        return
    # The condition makes concurrent requests on other workers skip the write too.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)
    ).update(last_used_at=now)
    token.last_used_at = now


@dataclass
class _Share:
    """This process's part of one token's count in the current window."""

    window: int = -1
    pending: int = 0  # requests counted here and not yet added to the token's row
    known: int = 0  # the row's count in `window` as this process last read it
    inflight: int = 0  # requests being added by writes not yet answered (other threads')
    written: float = -math.inf  # time.monotonic() of this process's last write


_shares: dict[int, _Share] = {}
_shares_lock = threading.Lock()
# Far below its limit, a token's requests are added to its row in batches: at most this many,
# at most WRITE_EVERY seconds apart, and at most 1/64 of the limit (docs/decisions.md).
MAX_PENDING = 50
WRITE_EVERY = 1.0


def admit(caller: Caller, *, exact: bool = False) -> bool:
    """Count a send request against its token's limit; raise 429 over it, 401 if revoked.

    The count lives on the token's row, so the limit holds across every worker process and
    machine with no shared cache to run. Near the limit (past half of it), every request adds
    itself to the row and reads the total back: exact. Far below it, a process adds its
    requests in batches (see MAX_PENDING), which spares a write per request; the store itself
    then checks that the token is not revoked (send_message with `api_token`). Return whether
    the row was read, that is whether revocation was checked here; `exact` makes sure it is.
    """
    return _count(caller, 1, exact)


def settle(caller: Caller) -> None:
    """Write what this process counted for the token; raise 429 over the limit, 401 if revoked."""
    _count(caller, 0, True)


def _count(caller: Caller, new: int, exact: bool) -> bool:
    limit, window = settings.CONNECTORS_API_TOKEN_RATE_LIMIT
    window = max(1, window)
    now = timezone.now()
    current = int(now.timestamp()) // window
    tick = time.monotonic()
    batch = min(MAX_PENDING, limit // 64) if limit else MAX_PENDING
    with _shares_lock:
        share = _shares.setdefault(caller.token_id, _Share())
        if share.window != current:
            share.window, share.pending, share.known = current, 0, 0
        share.pending += new
        unconfirmed = share.pending + share.inflight
        if not (
            exact
            or unconfirmed >= batch
            or tick - share.written >= WRITE_EVERY
            or (limit and 2 * (share.known + unconfirmed) > limit)
        ):
            return False
        adding, share.pending, share.written = share.pending, 0, tick
        share.inflight += adding
    try:
        row = _write_count(caller, current, adding, now)
    except BaseException:
        with _shares_lock:
            if share.window == current:
                share.pending += adding  # for the next write to add
        raise
    finally:
        with _shares_lock:
            share.inflight -= adding
    if row is None:
        _callers.clear()
        raise invalid_token()
    with _shares_lock:
        if share.window == current:
            share.known = max(share.known, row[0])
    if limit and row[0] > limit:
        retry = max(1, (current + 1) * window - int(now.timestamp()))
        raise ApiError(
            429,
            "rate_limited",
            f"This token has made {limit} send requests in this {window}-second window, its "
            f"limit; try again in {retry} s.",
            headers={"Retry-After": str(retry)},
        )
    return True


def _write_count(caller: Caller, window: int, adding: int, now: datetime) -> Any:
    """Add `adding` requests to the token's count in `window`; return (count,), None if revoked."""
    ops = connection.ops
    # Relaxed only in a transaction of its own: it would relax the caller's commit too.
    sql = admit_sql(connection.alias, relaxed=not connection.in_atomic_block)
    cursor: Any
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [
                window,
                adding,
                adding,
                window,
                ops.adapt_datetimefield_value(now - LAST_USED_EVERY),
                ops.adapt_datetimefield_value(now),
                caller.token_id,
            ],
        )
        return cursor.fetchone()


@functools.cache
def admit_sql(alias: str, *, relaxed: bool) -> str:
    """Return admit()'s statement for a database (built once: it is the same every time)."""
    conn = connections[alias]
    table = conn.ops.quote_name(ApiToken._meta.db_table)
    # Raw SQL for RETURNING (count and read back in one statement); the one value put into the
    # text is our own table's name.
    update = (
        f"UPDATE {table} "  # noqa: S608
        "SET rate_count = CASE WHEN rate_window = %s THEN rate_count + %s ELSE %s END, "
        "rate_window = %s, "
        "last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < %s "
        "THEN %s ELSE last_used_at END "
    )
    where = "WHERE id = %s AND revoked_at IS NULL RETURNING rate_count"
    if relaxed and conn.vendor == "postgresql":
        # The count is advisory, so its commit does not wait for the disk (for this statement's
        # transaction only): the row lock that orders concurrent requests is held for
        # microseconds, not for a flush. A crash of the database server may forget the last
        # counts, never a delivery; those commit synchronously.
        return (
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS off) "
            f"{update}FROM relaxed {where}"
        )
    return update + where


# ---------------------------------------------------------------------------------------------
# Request bodies.


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # JSON parsers disagree on which of two equal keys wins: refuse rather than guess.
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def read_json(request: HttpRequest) -> Any:
    """Return the parsed JSON body, or raise a 413, 415 or 400."""
    media_type, _, parameters = request.META.get("CONTENT_TYPE", "").partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", parameters, re.IGNORECASE)
    if media_type.strip().lower() != "application/json" or (
        charset and charset.group(1).lower() not in ("utf-8", "utf8")
    ):
        shown = request.META.get("CONTENT_TYPE", "")[:80] or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"The body must be JSON sent with `Content-Type: application/json` "
            f"(this request's: {shown}).",
            headers={"Accept-Post": "application/json"},
        )
    limit = settings.CONNECTORS_API_MAX_BODY_BYTES

    def too_large() -> ApiError:
        return ApiError(413, "body_too_large", f"The body is over the limit of {limit} bytes.")

    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise too_large()  # refused before reading a byte of it
    try:
        body = request.read(limit + 1)
    except (UnreadablePostError, OSError):
        raise ApiError(400, "unreadable_body", "The body could not be read to its end.") from None
    if len(body) > limit:
        raise too_large()
    if not body:
        raise ApiError(
            400,
            "invalid_json",
            "The body is empty; send a JSON object (with a Content-Length header).",
        )
    try:
        text = body.decode("utf-8")
        return json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError as exc:
        message = f"The body is not UTF-8 (byte {exc.start + 1}); send JSON in UTF-8."
    except json.JSONDecodeError as exc:
        message = f"The body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
    except _DuplicateKey as exc:
        message = f"The body has the key {str(exc)[:80]!r} twice; send it once."
    except RecursionError:
        message = "The body is nested too deeply to read."
    except ValueError as exc:
        message = f"The body is not valid JSON: {exc}."
    raise ApiError(400, "invalid_json", message)


def json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), "something else")


def text_problems(value: Any, where: str) -> Iterator[dict[str, str]]:
    """Yield a detail for each string in value (keys too) that no database would store.

    Also refuse nesting deeper than MAX_DEPTH: no message needs it, and code further on
    (redaction, rendering) walks the payload recursively.
    """
    stack = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            yield {"path": where, "message": f"is nested more than {MAX_DEPTH} levels deep"}
            return
        if isinstance(item, str):
            if "\x00" in item:
                yield {"path": at, "message": "must not contain NUL characters (\\u0000)"}
            else:
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    yield {"path": at, "message": "holds an unpaired surrogate: not valid text"}
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"{at}.{key[:40]}", depth + 1))
                stack.append((child, f"{at}.{key[:40]}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]", depth + 1) for i, child in enumerate(item))


@dataclass(frozen=True)
class MessageRequest:
    """A send request whose shape has been checked; the send service checks its values."""

    to: str
    type: str
    payload: dict[str, Any]
    ip: str | None
    connector: str | None
    locale: str | None


def parse_message(body: Any) -> MessageRequest:
    """Return the send request in a body, or raise a 400 listing every problem found."""
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "invalid_body",
            f"The body must be a JSON object, not {json_type(body)}: "
            '{"to": "…", "type": "SignIn", "payload": {…}}.',
        )
    details: list[dict[str, str]] = []
    ignored = settings.CONNECTORS_API_IGNORED_KEYS
    for key in body:
        if key not in BODY_FIELDS and key not in ignored:
            suggestion = _suggest(key, list(BODY_FIELDS))
            hint = (
                f"did you mean `{suggestion}`?"
                if suggestion
                else "the keys allowed here are " + ", ".join(BODY_FIELDS)
            )
            details.append({"path": key[:80], "message": f"unknown key; {hint}"})
    for key in REQUIRED_FIELDS:
        if body.get(key) is None:
            details.append({"path": key, "message": "is required"})
    for key, (kind, described) in BODY_FIELDS.items():
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            details.append({"path": key, "message": f"must be {described}, not {json_type(value)}"})
    if details:
        raise invalid_body(details)

    for key in BODY_FIELDS:
        if key in body:
            details.extend(text_problems(body[key], key))
    payload = body.get("payload") or {}
    locale = body.get("locale")

    def check(clean: Callable[..., Any], *args: Any) -> Any:
        # The send service's own checks, every problem collected rather than the first raised.
        try:
            return clean(*args)
        except SendError as exc:
            details.append({"path": exc.path, "message": str(exc)})
            return None

    if locale is not None:  # present, it must be one: "" is not a way to say "none" here
        check(functools.partial(clean_locale, empty=False), locale, "locale")
    else:
        # Without a top-level locale the payload's picks the template: it must be one too.
        check(clean_locale, payload.get("locale"), "payload.locale")
    connector = body.get("connector")
    if connector is not None and not SLUG.fullmatch(connector):
        details.append(
            {
                "path": "connector",
                "message": "must be a connector's slug (letters, digits, - and _)",
            }
        )
    ip = check(clean_ip, body.get("ip"))
    if details:
        raise invalid_body(details)
    return MessageRequest(
        to=body["to"],
        type=body["type"],
        payload=payload,
        ip=ip or None,
        connector=connector,
        locale=locale,
    )


def invalid_body(details: list[dict[str, str]]) -> ApiError:
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(
        400, "invalid_body", f"{first['path']}: {first['message']}{more}.", details=details
    )


def fingerprint(body: Any) -> str:
    """Return a hash of the body's content: equal for equal JSON, whatever its spacing or order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_fingerprint(delivery: Delivery) -> str:
    return delivery.source_detail.rpartition(FINGERPRINT_MARK)[2]


def parse_prefer_wait(header: str) -> int | None:
    """Return the seconds asked for by `Prefer: wait=N` (at most 30), or None (RFC 7240)."""
    for preference in header.split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            # A preference the server cannot read is ignored, as RFC 7240 says, not an error.
            return min(int(value), MAX_WAIT_SECONDS) if value.isdigit() else None
    return None


# ---------------------------------------------------------------------------------------------
# Views.


SEND_ERROR_STATUS = {"unknown_connector": 404, "rate_limited": 429}


@api_view("POST")
def messages(request: HttpRequest) -> HttpResponse:
    """Accept a message for delivery (202 once committed), or wait for its outcome if asked."""
    started = timezone.now()
    caller = authenticate_sender(request)
    key = request.META.get("HTTP_IDEMPOTENCY_KEY")
    # Counted before anything else, so a refused request counts too and, over the limit, the
    # 429 comes first. A replay stores nothing, so revocation is checked here for it.
    checked = admit(caller, exact=key is not None)
    try:
        return accept(request, caller, key, started)
    except ApiError as exc:
        if not checked and exc.status != 401:
            settle(caller)  # a revoked token is told so, whatever else was wrong
        raise


def accept(
    request: HttpRequest, caller: Caller, key: str | None, started: datetime
) -> HttpResponse:
    """Store the message of a counted request (or find its replay); answer 202, or 200 waited."""
    body = read_json(request)
    message = parse_message(body)
    check_scope(caller, message.connector)
    scoped_key = scope_idempotency_key(caller, key)

    digest = fingerprint(body)
    replay: Delivery | None = None
    if scoped_key is not None:
        replay = (
            Delivery.objects.filter(
                idempotency_key=scoped_key,
                created_at__gte=started - IDEMPOTENCY_WINDOW,
            )
            .order_by("-created_at")
            .first()
        )

    if replay is None:
        try:
            delivery = send_message(
                message.to,
                message.type,
                message.payload,
                connector=message.connector,
                locale=message.locale,
                ip=message.ip,
                idempotency_key=scoped_key,
                source=DeliverySource.API,
                source_detail=f"token {caller.prefix} {FINGERPRINT_MARK}{digest}",
                api_token=caller.token_id,
            )
        except SendError as exc:
            if exc.code == "revoked_token":
                _callers.clear()
                raise invalid_token() from None
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
            raise ApiError(
                SEND_ERROR_STATUS.get(exc.code, 400),
                exc.code,
                str(exc),
                details=[{"path": exc.path, "message": str(exc)}] if exc.path else [],
                headers=headers,
            ) from None
        # Another request with the same key may have committed between our look and our insert.
        if scoped_key and delivery.created_at < started:
            replay = delivery
    else:
        delivery = replay
    if replay is not None and stored_fingerprint(replay) != digest:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was used in the last 24 hours with a different "
            f"body (message {replay.pk}). Use a new key for a new message.",
            details=[{"path": "Idempotency-Key", "message": "reused with another body"}],
        )

    headers = {"Location": f"/api/v1/messages/{delivery.pk}"}
    if replay is not None:
        headers["Idempotent-Replayed"] = "true"
    wait = parse_prefer_wait(request.META.get("HTTP_PREFER", ""))
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        delivery = wait_for_outcome(delivery, wait)
        if delivery.is_final:
            return json_response(represent(delivery), status=200, headers=headers)
    return json_response(
        {"id": str(delivery.pk), "status": delivery.status}, status=202, headers=headers
    )


def scope_idempotency_key(caller: Caller, key: str | None) -> str | None:
    """Return the Idempotency-Key as stored (scoped to the token), or raise a 400 if malformed."""
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "The Idempotency-Key header must be 1 to 180 visible ASCII characters, e.g. a UUID.",
            details=[{"path": "Idempotency-Key", "message": "not a valid key"}],
        )
    # Keys are per token: two applications that happen to pick one key stay apart.
    return f"{caller.token_id}:{key}"


def check_scope(caller: Caller, slug: str | None) -> None:
    """Raise a 403 when the token may not send through the connector asked for (or the default)."""
    allowed = caller.connectors
    if allowed is None:
        return
    if slug is None:
        slug = Connector.objects.filter(is_default=True).values_list("slug", flat=True).first()
        if slug is None:
            return  # no connector at all: the send service says so
    if slug not in allowed:
        names = ", ".join(f"`{s}`" for s in sorted(allowed))
        raise ApiError(
            403,
            "connector_not_allowed",
            f"This token may send through {names} only, not `{slug}`. Pass "
            '"connector" in the body, or ask an administrator to widen the token.',
            details=[{"path": "connector", "message": "not allowed for this token"}],
        )


def wait_for_outcome(delivery: Delivery, seconds: int) -> Delivery:
    """Return the delivery once final, or as it is when `seconds` have passed."""
    deadline = time.monotonic() + seconds
    pause = 0.02
    while not delivery.is_final:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Short at first (most sends take milliseconds), longer later to spare the database.
        time.sleep(min(pause, remaining))
        pause = min(pause * 1.5, 0.25)
        delivery = Delivery.objects.get(pk=delivery.pk)
    return delivery


@api_view("GET")
def message_detail(request: HttpRequest, message_id: str) -> HttpResponse:
    """Return a message's status, attempts and last error; only to the token that sent it."""
    token = authenticate(request)
    not_found = ApiError(404, "not_found", f"No message {message_id[:60]!r} sent with this token.")
    try:
        pk = uuid.UUID(message_id)
    except ValueError:
        raise not_found from None
    delivery = (
        Delivery.objects.filter(pk=pk, api_token=token).prefetch_related("attempt_log").first()
    )
    if delivery is None:
        raise not_found
    return json_response(represent(delivery))


def represent(delivery: Delivery) -> dict[str, Any]:
    """Return what a client may see of a delivery: never its payload or one-time values."""
    return {
        "id": str(delivery.pk),
        "status": delivery.status,
        "to": delivery.to,
        "type": delivery.usage_type,
        "locale": delivery.locale or None,
        "connector": delivery.connector_slug,
        "created_at": timestamp(delivery.created_at),
        "sent_at": timestamp(delivery.sent_at),
        "finished_at": timestamp(delivery.finished_at),
        "next_attempt_at": timestamp(delivery.next_attempt_at) if not delivery.is_final else None,
        "attempt_count": delivery.attempts,
        "attempts": [
            {
                "number": attempt.number,
                "started_at": timestamp(attempt.started_at),
                "elapsed_ms": attempt.elapsed_ms,
                "outcome": attempt.outcome,
                "error": attempt.error or None,
                "hint": attempt.hint or None,
                "code": attempt.code,
                "server_reply": attempt.server_reply or None,
            }
            for attempt in delivery.attempt_log.all()
        ],
        "error": delivery.error or None,
        "hint": delivery.hint or None,
        "error_code": delivery.error_code,
        "server_reply": delivery.server_reply or None,
        "message_id": delivery.message_id or None,
    }


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@api_view("GET")
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer 200 while the database is reachable (503 otherwise), with the queue's state."""
    now = timezone.now()
    queued, sending = Q(status=DeliveryStatus.QUEUED), Q(status=DeliveryStatus.SENDING)
    try:
        stats = Delivery.objects.filter(queued | sending).aggregate(
            queued=Count("pk", filter=queued),
            sending=Count("pk", filter=sending),
            oldest=Min("created_at", filter=queued),
            most_overdue=Min("next_attempt_at", filter=queued & Q(next_attempt_at__lte=now)),
        )
    except DatabaseError:
        logger.exception("health check: database unreachable")
        return json_response(
            {"status": "unavailable", "database": "unreachable"},
            status=503,
            headers={"Retry-After": "5"},
        )
    # A backlog alone is not unhealthy for a web node (it still accepts messages), so it is
    # reported, not turned into a 503 that would take the node out of the load balancer.
    return json_response(
        {
            "status": "ok",
            "database": "ok",
            "queue": {
                "depth": stats["queued"] + stats["sending"],
                "queued": stats["queued"],
                "sending": stats["sending"],
                "oldest_queued_age_seconds": seconds_since(stats["oldest"], now),
                "lag_seconds": seconds_since(stats["most_overdue"], now) or 0.0,
            },
        }
    )


def seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round(max(0.0, (now - moment).total_seconds()), 3)


@api_view("GET")
def openapi_document(request: HttpRequest) -> HttpResponse:
    """Return the OpenAPI 3.1 document of this API."""
    return json_response(openapi.document())


@api_view("GET", "POST", "PUT", "PATCH", "DELETE")
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Answer JSON for paths under /api/ that do not exist, rather than the console's HTML."""
    raise ApiError(404, "not_found", f"There is no {request.path}; see /api/v1/openapi.json.")


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"


# ---------------------------------------------------------------------------------------------
# Middleware: what every request pays for before and after its view.


class ConsoleOnlyMiddleware:
    """Run `settings.CONSOLE_MIDDLEWARE` around every request except the API's.

    The API authenticates each request by its token and answers JSON: static files, the
    console's content security policy, sessions, CSRF cookies, users, messages and frame options
    mean nothing to it, and running them cost about a tenth of a POST's CPU. The console's
    requests run them in the order listed, exactly as if they were in `MIDDLEWARE` at this
    place (their `process_view` hooks included: CSRF protection works there). The API's requests
    still have their Host checked against ALLOWED_HOSTS, and json_response() sets the headers
    that matter to a JSON answer.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        check_console_middleware(settings.CONSOLE_MIDDLEWARE)
        handler: Callable[[HttpRequest], HttpResponse] = convert_exception_to_response(get_response)
        self.view_hooks: list[Callable[..., HttpResponse | None]] = []
        for dotted in reversed(settings.CONSOLE_MIDDLEWARE):
            try:
                middleware = import_string(dotted)(handler)
            except MiddlewareNotUsed:
                continue
            if hasattr(middleware, "process_template_response") or hasattr(
                middleware, "process_exception"
            ):
                raise ImproperlyConfigured(
                    f"{dotted} has process_template_response or process_exception hooks, "
                    "which CONSOLE_MIDDLEWARE does not run: list it in MIDDLEWARE instead."
                )
            if hasattr(middleware, "process_view"):
                self.view_hooks.insert(0, middleware.process_view)
            handler = convert_exception_to_response(middleware)
        self.console = handler

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path_info):
            # The one check of CommonMiddleware's that the API needs: a Host not in
            # ALLOWED_HOSTS is refused (400, JSON: see bad_request()).
            request.get_host()
            return self.get_response(request)
        return self.console(request)

    def process_view(
        self, request: HttpRequest, view: View, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if is_api_path(request.path_info):
            return None
        for hook in self.view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None


# What the console (django.contrib.admin) needs, in this order: the admin's own checks
# (admin.E408-E410) look in MIDDLEWARE only, so they are silenced and checked here instead.
CONSOLE_NEEDS = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
)


def check_console_middleware(listed: list[str]) -> None:
    """Raise ImproperlyConfigured unless CONSOLE_MIDDLEWARE holds what the admin needs."""
    positions = []
    for needed in CONSOLE_NEEDS:
        wanted = import_string(needed)
        found = [i for i, dotted in enumerate(listed) if issubclass(import_string(dotted), wanted)]
        if not found:
            raise ImproperlyConfigured(f"The console needs {needed} in CONSOLE_MIDDLEWARE.")
        positions.append(found[0])
    if positions != sorted(positions):
        raise ImproperlyConfigured(
            "CONSOLE_MIDDLEWARE must list " + ", then ".join(CONSOLE_NEEDS) + " in that order."
        )


class ClosedConnectionMiddleware:
    """Drop kept PostgreSQL connections the server has closed, without a query.

    With `CONN_HEALTH_CHECKS` Django sends `SELECT 1` before a request's first query on a kept
    connection: a round trip on every request, for the web side and the database alike. When
    PostgreSQL restarts, or ends a session (`pg_terminate_backend`, `idle_session_timeout`), it
    says so on the connection and closes it, which leaves the idle socket readable; a look at
    the socket (no round trip) finds that, and the connection is closed so the request opens a
    new one. What the look cannot see (a network path that died without a word) the request
    finds at its first query: the API answers 503 `database_unavailable`, and Django drops the
    connection after it. Workers and commands, which get no requests, keep Django's own check.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        if not any(conn.vendor == "postgresql" for conn in connections.all()):
            raise MiddlewareNotUsed  # SQLite: nothing to lose between requests
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for conn in connections.all(initialized_only=True):
            if (
                conn.vendor == "postgresql"
                and conn.connection is not None
                and conn.health_check_enabled
                and not conn.health_check_done
                and not conn.in_atomic_block
            ):
                if server_closed(conn.connection):
                    conn.close()
                else:
                    conn.health_check_done = True  # Django skips its SELECT 1 this request
        return self.get_response(request)


def server_closed(raw: Any) -> bool:
    """Tell whether the server has closed (or written to) an idle psycopg connection."""
    try:
        if raw.broken or raw.closed:
            return True
        poller = select.poll()
        poller.register(raw.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        # Nothing is due on an idle connection: anything there (an error saying the session
        # ends, or the end of the stream) means it cannot serve the next query.
        return bool(poller.poll(0))
    except Exception:  # a connection too far gone to ask
        return True


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Answer a request Django refused before any view (bad Host header…): JSON for the API."""
    if not is_api_path(request.path_info):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        message = "The Host header names a host this server does not answer to (ALLOWED_HOSTS)."
    else:
        message = "The request could not be read; check its headers and body."
    return ApiError(400, "bad_request", message).response()


def server_error(request: HttpRequest) -> HttpResponse:
    """Answer an error no view handled: JSON for the API, a page for the console.

    An unreachable database is a 503 that says so (Django calls this handler while the exception
    is being handled, so it is still at hand), not a 500.
    """
    database_down = isinstance(sys.exc_info()[1], OperationalError | InterfaceError)
    if not is_api_path(request.path_info):
        if database_down:
            return HttpResponse(
                loader.render_to_string("503.html"), status=503, headers={"Retry-After": "5"}
            )
        return defaults.server_error(request)
    if database_down:
        return database_unavailable().response()
    return ApiError(
        500,
        "internal_error",
        "Something went wrong on our side; the error has been "
        "logged. Try again; if it persists, tell the operator.",
    ).response()


urlpatterns = [
    path("v1/messages", messages, name="api-messages"),
    path("v1/messages/<str:message_id>", message_detail, name="api-message"),
    path("v1/openapi.json", openapi_document, name="api-openapi"),
    re_path(r"^(?P<rest>.*)$", not_found),
]
