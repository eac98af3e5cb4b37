"""The HTTP API: Logto's HTTP email connector sends through us unchanged; every failure is JSON."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.test import Client
from django.utils import timezone

from connectors import api, schema
from connectors.api import Caller, admit, forget_callers, settle
from connectors.delivery import close_transports
from connectors.models import ApiToken, Connector, Delivery, DeliveryStatus
from connectors.tokens import hash_token, issue_token

from .conftest import REQUIRED, make_connector, templates
from .servers import SmtpServer
from .test_delivery import use_task_backend

pytestmark = pytest.mark.django_db

MESSAGES = "/api/v1/messages"

# What Logto's HTTP email connector posts when a user signs in (connector-kit's SendMessageData).
LOGTO_BODY: dict[str, Any] = {
    "to": "foo@logto.io",
    "type": "SignIn",
    "payload": {
        "code": "123456",
        "locale": "fr-CA",
        "uiLocales": "fr-CA",
        "user": {"id": "u_93k", "name": "Ada Lovelace", "primaryEmail": "foo@logto.io"},
        "application": {"id": "app_1", "name": "Acme Portal"},
    },
    "ip": "203.0.113.7",
}


# The cast ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_delivery(settings: Any) -> Iterator[None]:
    """Accept messages without sending them, unless a test picks a task backend of its own."""
    use_task_backend(settings, "django.tasks.backends.dummy.DummyBackend")
    forget_callers()
    yield
    close_transports()


@pytest.fixture
def client() -> Client:
    # CSRF checks on, as in production: the API must not depend on them being off.
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def connector(smtp_connector: Connector) -> Connector:
    """An SMTP connector nothing is really sent through (the task backend is a dummy)."""
    return smtp_connector


@pytest.fixture
def token(db: Any) -> str:
    return issue_token("logto")[1]


@pytest.fixture
def other_token(db: Any) -> str:
    return issue_token("billing")[1]


def post(client: Client, token: str | None, body: Any, **headers: str) -> Any:
    """POST a body to /api/v1/messages as Logto does: JSON with a bearer token."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    content_type = headers.pop("content_type", "application/json")
    # CONTENT_TYPE given outright too: the test client leaves it out when the body is empty.
    return client.post(
        MESSAGES, data, content_type=content_type, headers=headers, CONTENT_TYPE=content_type
    )


def get(client: Client, token: str | None, path: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, headers=headers)


def error_of(response: Any) -> dict[str, Any]:
    """Return the error object of an answer, checking it is the structured JSON kind."""
    assert response["Content-Type"] == "application/json", response.content[:200]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    return error


def smtp_connector_for(server: SmtpServer, slug: str = "mailer") -> Connector:
    """Store an SMTP connector that sends to `server`, with French and Canadian-French sign-in."""
    config = server.config(
        templates=[
            *templates(*REQUIRED),
            {
                "usageType": "SignIn",
                "contentType": "text/html",
                "locale": "fr",
                "subject": "Connexion",
                "content": "<p>Code : {{code}}</p>",
            },
            {
                "usageType": "SignIn",
                "contentType": "text/html",
                "locale": "fr-CA",
                "subject": "Connexion (Canada)",
                "content": "<p>Bonjour {{user.name}}, votre code pour {{application.name}} : "
                "<b>{{code}}</b></p>",
            },
        ]
    )
    result = schema.validate_config_data("smtp", config)
    assert result.ok, result.errors
    return make_connector(slug, "smtp", result.data)


@contextlib.contextmanager
def database_unreachable() -> Iterator[None]:
    """Point the default connection at a database that is not there, then put it back."""
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent/directory/console.sqlite3"
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT="1")  # nothing listens on port 1
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


# Sending as Logto does -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_logto_request_is_delivered_in_the_right_template_and_locale(settings, live_server):
    use_task_backend(settings, "django.tasks.backends.immediate.ImmediateBackend")
    with SmtpServer() as smtp:
        smtp_connector_for(smtp)
        token = issue_token("logto")[1]
        # Exactly the request Logto's connector makes: POST, JSON, the configured Authorization.
        request = urllib.request.Request(
            live_server.url + MESSAGES,
            method="POST",
            data=json.dumps(LOGTO_BODY).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            answer = json.loads(response.read())
            location = response.headers["Location"]

        assert set(answer) == {"id", "status"} and location == f"{MESSAGES}/{answer['id']}"
        assert len(smtp.messages) == 1
        mail = smtp.messages[0]
        assert mail.rcpt_tos == ["foo@logto.io"]
        assert mail.message["Subject"] == "Connexion (Canada)"  # fr-CA chosen over fr
        html = mail.message.get_body(("html",)).get_content()
        assert "Bonjour Ada Lovelace" in html and "Acme Portal" in html and "<b>123456</b>" in html

    delivery = Delivery.objects.get(pk=answer["id"])
    assert delivery.status == DeliveryStatus.SENT and delivery.source == "api"
    assert delivery.ip == "203.0.113.7" and delivery.locale == "fr-CA"
    assert delivery.api_token == ApiToken.objects.get(name="logto")
    assert delivery.payload["code"] == "[redacted]" and delivery.sealed == ""


def test_accepted_message_is_committed_and_queued(client, connector, token):
    response = post(client, token, LOGTO_BODY)
    assert response.status_code == 202
    assert response.json() == {"id": response.json()["id"], "status": "queued"}
    delivery = Delivery.objects.get(pk=response.json()["id"])
    assert (delivery.to, delivery.usage_type, delivery.connector) == (
        "foo@logto.io",
        "SignIn",
        connector,
    )
    assert response["Cache-Control"] == "no-store"


def test_minimal_body_and_optional_fields(client, connector, token):
    assert post(client, token, {"to": "a@example.test", "type": "Generic"}).status_code == 202
    response = post(
        client, token, {**LOGTO_BODY, "connector": "smtp-main", "locale": "de", "ip": None}
    )
    assert response.status_code == 202
    delivery = Delivery.objects.get(pk=response.json()["id"])
    assert delivery.locale == "de" and delivery.ip is None


def test_ipv6_client_address_is_normalised(client, connector, token):
    response = post(client, token, {**LOGTO_BODY, "ip": "2001:DB8:0:0:0:0:0:1"})
    assert Delivery.objects.get(pk=response.json()["id"]).ip == "2001:db8::1"


# Reading a message back ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_message_shows_status_attempts_and_never_the_code(client, settings):
    use_task_backend(settings, "django.tasks.backends.immediate.ImmediateBackend")
    with SmtpServer() as smtp:
        smtp_connector_for(smtp)
        token = issue_token("logto")[1]
        smtp.fail_next("RCPT", 550, "5.1.1 No such user here")
        sent = post(client, token, LOGTO_BODY).json()

    response = get(client, token, f"{MESSAGES}/{sent['id']}")
    assert response.status_code == 200
    message = response.json()
    assert message["status"] == "failed" and message["attempt_count"] == 1
    assert message["error_code"] == 550 and "No such user" in message["error"]
    assert message["hint"]  # what to try next, for a person
    [attempt] = message["attempts"]
    assert attempt["outcome"] == "failed" and attempt["code"] == 550 and attempt["started_at"]
    assert message["created_at"].endswith("Z") and message["finished_at"]
    assert "123456" not in response.content.decode() and "payload" not in message


def test_a_token_sees_only_its_own_messages(client, connector, token, other_token):
    sent = post(client, token, LOGTO_BODY).json()
    assert get(client, token, f"{MESSAGES}/{sent['id']}").status_code == 200
    response = get(client, other_token, f"{MESSAGES}/{sent['id']}")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(
    "message_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "%00", "x" * 500]
)
def test_unknown_message_is_404(client, token, message_id):
    response = get(client, token, f"{MESSAGES}/{message_id}")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


# Authentication and scope --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Bearer", "invalid_token"),
        ("Bearer cc_not-a-real-token", "invalid_token"),
        ("Bearer cc_" + "A" * 43, "invalid_token"),
        ("Basic dXNlcjpwYXNz", "invalid_token"),
    ],
)
def test_missing_or_bad_token_is_401_with_www_authenticate(client, connector, authorization, code):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(client, None, LOGTO_BODY, **headers)
    assert response.status_code == 401 and error_of(response)["code"] == code
    assert response["WWW-Authenticate"].startswith('Bearer realm="Connector Console"')
    assert not Delivery.objects.exists()


def test_a_token_sent_without_bearer_is_not_echoed(client, connector, token):
    response = post(client, None, LOGTO_BODY, Authorization=token)
    assert response.status_code == 401
    assert "without the `Bearer `" in error_of(response)["message"]
    assert token[:8] not in response.content.decode()


def test_token_scheme_is_case_insensitive(client, connector, token):
    response = post(client, None, LOGTO_BODY, Authorization=f"bearer {token}")
    assert response.status_code == 202


def test_revoked_token_is_refused(client, connector, token):
    assert post(client, token, LOGTO_BODY).status_code == 202
    ApiToken.objects.update(revoked_at=timezone.now())
    response = post(client, token, LOGTO_BODY)
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_token"
    assert get(client, token, f"{MESSAGES}/{Delivery.objects.get().pk}").status_code == 401


def test_only_a_hash_of_the_token_is_stored(token):
    row = ApiToken.objects.get()
    assert row.token_hash == hash_token(token) and token not in row.token_hash
    assert token.startswith(row.prefix) and len(row.prefix) < 12


def test_token_limited_to_some_connectors(client, connector, smtp_config):
    make_connector("marketing", "smtp", smtp_config)
    token = issue_token("newsletter", connectors=Connector.objects.filter(slug="marketing"))[1]

    assert post(client, token, {**LOGTO_BODY, "connector": "marketing"}).status_code == 202
    for body in ({**LOGTO_BODY, "connector": "smtp-main"}, LOGTO_BODY):  # named, or the default
        response = post(client, token, body)
        assert response.status_code == 403
        error = error_of(response)
        assert error["code"] == "connector_not_allowed" and "`marketing`" in error["message"]
    assert Delivery.objects.count() == 1


def test_last_use_is_recorded_at_most_once_a_minute(client, connector, token):
    assert ApiToken.objects.get().last_used_at is None
    post(client, token, LOGTO_BODY)
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    post(client, token, LOGTO_BODY)
    assert ApiToken.objects.get().last_used_at == first  # no write for every request
    ApiToken.objects.update(last_used_at=timezone.now() - timedelta(minutes=2))
    get(client, token, f"{MESSAGES}/{Delivery.objects.first().pk}")
    assert ApiToken.objects.get().last_used_at > first


def test_create_api_token_prints_the_token_alone_on_the_last_line(client, connector):
    out = io.StringIO()
    call_command("create_api_token", "logto-production", "--connector", "smtp-main", stdout=out)
    token = out.getvalue().splitlines()[-1]
    row = ApiToken.objects.get(name="logto-production")
    assert row.token_hash == hash_token(token)
    assert list(row.connectors.values_list("slug", flat=True)) == ["smtp-main"]
    assert post(client, token, LOGTO_BODY).status_code == 202


def test_create_api_token_refuses_an_unknown_connector(connector):
    with pytest.raises(CommandError, match=r"No connector with slug nope .*known: smtp-main"):
        call_command("create_api_token", "x", "--connector", "nope")
    assert not ApiToken.objects.exists()


# Bad input: always a structured 4xx, nothing stored -----------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({**LOGTO_BODY, "payloda": {}}, "payloda", "did you mean `payload`?"),
        ({**LOGTO_BODY, "recipient": "x"}, "recipient", "the keys allowed here are to, type"),
        ({"type": "SignIn"}, "to", "is required"),
        ({**LOGTO_BODY, "to": None}, "to", "is required"),
        (
            {**LOGTO_BODY, "to": ["a@example.test"]},
            "to",
            "must be a string (an email address), not an array",
        ),
        ({**LOGTO_BODY, "payload": "code=1"}, "payload", "must be an object, not a string"),
        ({**LOGTO_BODY, "type": 3}, "type", "must be a string"),
        ({**LOGTO_BODY, "ip": "203.0.113.999"}, "ip", "is not an IP address"),
        ({**LOGTO_BODY, "ip": "fe80::1%eth0"}, "ip", "zone"),
        ({**LOGTO_BODY, "locale": "fr CA"}, "locale", "must be a locale"),
        ({**LOGTO_BODY, "payload": {"locale": "x" * 40}}, "payload.locale", "must be a locale"),
        ({**LOGTO_BODY, "connector": "smtp main"}, "connector", "slug"),
        ({**LOGTO_BODY, "payload": {"user": {"name": "a\u0000b"}}}, "payload.user.name", "NUL"),
    ],
)
def test_invalid_body_is_400_with_the_path(client, connector, token, body, path, message):
    response = post(client, token, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_body"
    assert any(d["path"] == path and message in d["message"] for d in error["details"]), error
    assert not Delivery.objects.exists()


def test_keys_the_operator_lets_through_are_ignored(client, connector, token, settings):
    settings.CONNECTORS_API_IGNORED_KEYS = ["tenantId"]
    assert post(client, token, {**LOGTO_BODY, "tenantId": "default"}).status_code == 202


def test_every_problem_is_listed_at_once(client, connector, token):
    error = error_of(post(client, token, {"type": 1, "payloads": {}}))
    assert {d["path"] for d in error["details"]} == {"payloads", "to", "type"}


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        ({**LOGTO_BODY, "to": "not-an-address"}, "invalid_address", "to"),
        ({**LOGTO_BODY, "to": "foo@logto.io\r\nBcc: victim@example.test"}, "invalid_address", "to"),
        ({**LOGTO_BODY, "type": "Welcome"}, "invalid_usage_type", "type"),
    ],
)
def test_invalid_address_or_usage_type_is_400(client, connector, token, body, code, path):
    response = post(client, token, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code and error["details"][0]["path"] == path
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("{", "not valid JSON"),
        ('{"to": "a@example.test", "to": "b@example.test", "type": "SignIn"}', "twice"),
        ('{"to": "a@example.test", "type": "SignIn", "payload": {"n": NaN}}', "NaN"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[" * 10_000 + "]" * 10_000, "nested"),
        ('["to", "type"]', "must be a JSON object, not an array"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(client, connector, token, data, message):
    response = post(client, token, data)
    assert response.status_code == 400
    assert message in error_of(response)["message"]


def test_unknown_connector_is_404(client, connector, token):
    response = post(client, token, {**LOGTO_BODY, "connector": "nope"})
    assert response.status_code == 404
    assert error_of(response)["details"] == [
        {"path": "connector", "message": "No connector with slug 'nope'."}
    ]


def test_disabled_connector_is_400(client, connector, token):
    Connector.objects.update(enabled=False)
    response = post(client, token, LOGTO_BODY)
    assert response.status_code == 400 and error_of(response)["code"] == "connector_disabled"


def test_body_over_the_limit_is_413(client, connector, token, settings):
    settings.CONNECTORS_API_MAX_BODY_BYTES = 300
    body = {**LOGTO_BODY, "payload": {"code": "1", "note": ""}}
    base = len(json.dumps(body))
    body["payload"]["note"] = "x" * (300 - base)
    assert post(client, token, body).status_code == 202  # exactly at the limit
    body["payload"]["note"] += "x"
    response = post(client, token, body)
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"
    assert Delivery.objects.count() == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "application/json; charset=latin-1",
        "application/jsonp",
    ],
)
def test_body_not_sent_as_json_is_415(client, connector, token, content_type):
    response = post(client, token, LOGTO_BODY, content_type=content_type)
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(client, connector, token):
    response = post(client, token, LOGTO_BODY, content_type="application/json; charset=UTF-8")
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", MESSAGES, "POST"),
        ("put", MESSAGES, "POST"),
        ("delete", f"{MESSAGES}/00000000-0000-0000-0000-000000000000", "GET, HEAD"),
        ("post", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(client, token, method, path, allow):
    response = getattr(client, method)(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405 and response["Allow"] == allow
    assert error_of(response)["code"] == "method_not_allowed"


def test_request_refused_before_the_view_is_json_too(client, token):
    response = client.post(
        MESSAGES,
        "{}",
        content_type="application/json",
        headers={"Host": "evil.example", "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400 and error_of(response)["code"] == "bad_request"
    assert client.get("/", headers={"Host": "evil.example"})["Content-Type"].startswith("text/html")


def test_unknown_api_path_is_json_404(client):
    for path in ("/api/v1/message", "/api/v2/messages", "/api/"):
        response = client.post(path)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"


# Idempotency ---------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_first_message(client, connector, token):
    first = post(client, token, LOGTO_BODY, Idempotency_Key="signin-93k-1")
    # Same content, other spacing and key order: still the same request.
    again = post(
        client,
        token,
        json.dumps(dict(reversed(LOGTO_BODY.items())), indent=2),
        Idempotency_Key="signin-93k-1",
    )
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Delivery.objects.count() == 1


def test_same_idempotency_key_with_another_body_is_409(client, connector, token):
    post(client, token, LOGTO_BODY, Idempotency_Key="k-1")
    other = {**LOGTO_BODY, "payload": {**LOGTO_BODY["payload"], "code": "654321"}}
    response = post(client, token, other, Idempotency_Key="k-1")
    assert response.status_code == 409 and error_of(response)["code"] == "idempotency_key_reused"
    assert Delivery.objects.count() == 1


def test_idempotency_keys_are_per_token(client, connector, token, other_token):
    first = post(client, token, LOGTO_BODY, Idempotency_Key="k-1").json()
    second = post(client, other_token, LOGTO_BODY, Idempotency_Key="k-1").json()
    assert first["id"] != second["id"] and Delivery.objects.count() == 2


def test_idempotency_key_expires_after_a_day(client, connector, token):
    first = post(client, token, LOGTO_BODY, Idempotency_Key="k-1").json()
    Delivery.objects.update(created_at=timezone.now() - timedelta(hours=25))
    later = post(client, token, LOGTO_BODY, Idempotency_Key="k-1").json()
    assert later["id"] != first["id"]


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 181, "naïve"])
def test_malformed_idempotency_key_is_400(client, connector, token, key):
    response = post(client, token, LOGTO_BODY, Idempotency_Key=key)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_idempotency_key"
    assert not Delivery.objects.exists()


# Rate limits ---------------------------------------------------------------------------------


def test_token_rate_limit_is_429_with_retry_after(client, connector, token, other_token, settings):
    # A window so long that no window boundary falls inside the test; the test moves it itself.
    settings.CONNECTORS_API_TOKEN_RATE_LIMIT = (3, 10**9)
    for i in range(2):
        assert post(client, token, {**LOGTO_BODY, "to": f"u{i}@example.test"}).status_code == 202
    assert post(client, token, {"to": "bad"}).status_code == 400  # every send request counts
    response = post(client, token, {**LOGTO_BODY, "to": "u9@example.test"})
    assert response.status_code == 429 and error_of(response)["code"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    assert Delivery.objects.count() == 2
    assert post(client, other_token, LOGTO_BODY).status_code == 202  # others are not affected
    ApiToken.objects.update(rate_window=F("rate_window") - 1)  # as if the window had passed
    assert post(client, token, LOGTO_BODY).status_code == 202


def test_token_rate_limit_holds_across_worker_processes(client, connector, token, settings):
    settings.CONNECTORS_API_TOKEN_RATE_LIMIT = (2, 10**9)
    assert post(client, token, LOGTO_BODY).status_code == 202
    forget_callers()  # another worker process: nothing cached, the count is in the database
    assert post(client, token, {**LOGTO_BODY, "to": "b@logto.io"}).status_code == 202
    forget_callers()
    assert post(client, token, {**LOGTO_BODY, "to": "c@logto.io"}).status_code == 429


@pytest.fixture
def large_limit(settings: Any, monkeypatch: Any) -> None:
    """A limit far above what a test sends: this process counts in batches of 50 (1/64 of it)."""
    settings.CONNECTORS_API_TOKEN_RATE_LIMIT = (6400, 10**9)
    monkeypatch.setattr(api, "WRITE_EVERY", 3600.0)  # so a slow machine does not write early


def send_many(client: Client, token: str, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        assert post(client, token, {**LOGTO_BODY, "to": f"u{i}@example.test"}).status_code == 202


def row_count() -> int:
    return ApiToken.objects.get().rate_count


def test_far_below_its_limit_a_token_is_counted_in_batches(client, connector, token, large_limit):
    send_many(client, token, 1)
    assert row_count() == 1  # a process's first request writes, and so checks the token
    send_many(client, token, 49, first=1)
    assert row_count() == 1  # 49 counted in this process, not yet on the row
    send_many(client, token, 1, first=50)
    assert row_count() == 51  # the 50th adds them all
    assert Delivery.objects.count() == 51


def test_past_half_its_limit_every_request_is_counted(client, connector, token, large_limit):
    send_many(client, token, 1)
    ApiToken.objects.update(rate_count=3300)  # other processes' requests in this window
    send_many(client, token, 50, first=1)  # the 50th writes, and reads 3350 back
    assert row_count() == 3350
    for i in range(3):
        send_many(client, token, 1, first=100 + i)
        assert row_count() == 3351 + i
    ApiToken.objects.update(rate_count=6400)
    response = post(client, token, {**LOGTO_BODY, "to": "over@example.test"})
    assert response.status_code == 429 and error_of(response)["code"] == "rate_limited"
    assert not Delivery.objects.filter(to="over@example.test").exists()


def own_caller() -> Caller:
    row = ApiToken.objects.get()
    return Caller(token_id=row.pk, prefix=row.prefix, connectors=None)


@pytest.mark.django_db(transaction=True)
def test_the_counts_of_a_write_that_failed_are_added_by_the_next(token, large_limit):
    caller = own_caller()
    assert admit(caller) is True  # a process's first request writes
    assert not any(admit(caller) for _ in range(10))  # counted here only
    with database_unreachable(), pytest.raises(OperationalError):
        settle(caller)
    settle(caller)
    assert row_count() == 11


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="holds a row lock from a second session; PG pass"
)
@pytest.mark.django_db(transaction=True)
def test_while_one_thread_writes_a_batch_the_others_write_theirs(token, large_limit):
    caller = own_caller()
    admit(caller)
    for _ in range(49):
        admit(caller)  # 49 waiting to be written
    import psycopg

    db = connection.settings_dict
    blocker = psycopg.connect(
        dbname=db["NAME"], host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"]
    )
    blocker.execute("SELECT 1 FROM connectors_apitoken WHERE id = %s FOR UPDATE", [caller.token_id])
    answers: list[bool] = []

    def request() -> None:
        try:
            answers.append(admit(caller))
        finally:
            connection.close()

    first = threading.Thread(target=request)
    first.start()  # the 50th: writes 50, and waits for the lock
    time.sleep(0.3)
    second = threading.Thread(target=request)
    second.start()  # 50 not yet on the row: this one writes too rather than counting on
    second.join(0.5)
    try:
        assert first.is_alive() and second.is_alive()  # both waiting on the row
    finally:
        blocker.rollback()
        blocker.close()
        first.join(10)
        second.join(10)
    assert answers == [True, True]
    assert row_count() == 52


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({}, id="valid"),
        pytest.param({"to": "not an address"}, id="bad-body"),
        pytest.param({"connector": "nowhere"}, id="unknown-connector"),
    ],
)
def test_a_token_counted_in_batches_is_refused_at_once_when_revoked(
    client, connector, token, large_limit, change
):
    send_many(client, token, 1)
    ApiToken.objects.update(revoked_at=timezone.now())
    response = post(client, token, {**LOGTO_BODY, "to": "late@example.test", **change})
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_token"
    assert Delivery.objects.count() == 1


def test_a_revoked_token_gets_no_replay(client, connector, token, large_limit):
    headers = {"Idempotency-Key": "order-1"}
    assert post(client, token, LOGTO_BODY, **headers).status_code == 202
    send_many(client, token, 1)  # counted in this process only
    ApiToken.objects.update(revoked_at=timezone.now())
    response = post(client, token, LOGTO_BODY, **headers)
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_token"


def test_a_message_for_a_revoked_token_is_not_stored(connector, token):
    from connectors import service

    row = ApiToken.objects.get()
    service.send_message("a@example.test", "SignIn", {"code": "1"}, api_token=row.pk)
    ApiToken.objects.update(revoked_at=timezone.now())
    # The one-statement path of a process that knows the connector, then a new process's.
    for _ in range(2):
        with pytest.raises(service.SendError) as caught:
            service.send_message("b@example.test", "SignIn", {"code": "1"}, api_token=row.pk)
        assert caught.value.code == "revoked_token"
        service._connector_ids.clear()
    assert Delivery.objects.count() == 1


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's commit mode; runs in the PG pass"
)
def test_token_count_alone_commits_without_waiting_for_the_disk(transactional_db):
    token, _ = issue_token("counted")
    caller = Caller(token_id=token.pk, prefix=token.prefix, connectors=None)

    def commit_mode() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    statements: list[tuple[str, Any]] = []

    def keep(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        admit(caller, exact=True)  # a transaction of its own (the API's views are not atomic)
    [(sql, params)] = statements
    assert commit_mode() == "on"  # after it, a delivery's commit waits for the disk
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)  # the same statement, in a transaction we can look into
        assert commit_mode() == "off"
    token.refresh_from_db()
    assert token.rate_count == 2

    with transaction.atomic():  # called inside someone else's transaction: theirs stays strict
        admit(caller, exact=True)
        assert commit_mode() == "on"


def test_recipient_rate_limit_is_429_with_retry_after(client, connector, token, settings):
    settings.CONNECTORS_RECIPIENT_RATE_LIMIT = (2, 600)
    for _ in range(2):
        assert post(client, token, LOGTO_BODY).status_code == 202
    response = post(client, token, LOGTO_BODY)
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "rate_limited" and error["details"][0]["path"] == "to"
    assert 1 <= int(response["Retry-After"]) <= 600
    assert Delivery.objects.count() == 2


# Waiting for the outcome ---------------------------------------------------------------------


@contextlib.contextmanager
def send_worker(settings: Any) -> Iterator[None]:
    """Run a real batch worker in a thread, as `manage.py send_worker` does, then stop it."""
    from connectors.outbox import SendWorker

    use_task_backend(settings, "connectors.outbox.OutboxBackend")
    worker = SendWorker(interval=0.02)

    def run() -> None:
        try:
            worker.run()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_prefer_wait_answers_200_with_the_outcome(client, settings):
    with SmtpServer() as smtp:
        smtp_connector_for(smtp)
        token = issue_token("logto")[1]
        with send_worker(settings):
            smtp.fail_next("RCPT", 550, "5.1.1 No such user here")
            failed = post(
                client,
                token,
                {**LOGTO_BODY, "to": "gone@logto.io"},
                Prefer="respond-async, wait=10",
            )
            assert failed.status_code == 200 and failed["Preference-Applied"] == "wait=10"
            assert failed.json()["status"] == "failed" and "No such user" in failed.json()["error"]

            response = post(client, token, LOGTO_BODY, Prefer="wait=10")
            assert response.status_code == 200
            assert response.json()["status"] == "sent" and response.json()["sent_at"]
            assert len(smtp.messages) == 1


def test_prefer_wait_answers_202_when_still_pending(client, connector, token):
    started = time.monotonic()
    response = post(client, token, LOGTO_BODY, Prefer="wait=1")
    assert 1 <= time.monotonic() - started < 3
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response["Preference-Applied"] == "wait=1"


@pytest.mark.django_db(transaction=True)
def test_prefer_wait_is_capped_at_30_seconds_and_unreadable_ones_ignored(client, settings):
    use_task_backend(settings, "django.tasks.backends.immediate.ImmediateBackend")
    with SmtpServer() as smtp:
        smtp_connector_for(smtp)
        token = issue_token("logto")[1]
        response = post(client, token, LOGTO_BODY, Prefer="wait=600")
        assert response.status_code == 200 and response["Preference-Applied"] == "wait=30"
        response = post(client, token, {**LOGTO_BODY, "to": "b@logto.io"}, Prefer="wait=soon")
        assert response.status_code == 202 and "Preference-Applied" not in response


# Health and outages --------------------------------------------------------------------------


def test_healthz_reports_the_queue_without_auth(client, connector, token):
    assert client.get("/healthz").json()["queue"] == {
        "depth": 0,
        "queued": 0,
        "sending": 0,
        "oldest_queued_age_seconds": None,
        "lag_seconds": 0.0,
    }
    post(client, token, LOGTO_BODY)
    Delivery.objects.update(
        created_at=timezone.now() - timedelta(seconds=90),
        next_attempt_at=timezone.now() - timedelta(seconds=30),
    )
    post(client, token, {**LOGTO_BODY, "to": "b@logto.io"})
    response = client.get("/healthz")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["database"] == "ok"
    assert health["queue"]["depth"] == 2 and health["queue"]["queued"] == 2
    assert 90 <= health["queue"]["oldest_queued_age_seconds"] < 120
    assert 30 <= health["queue"]["lag_seconds"] < 60
    assert "smtp" not in response.content.decode().lower()  # nothing about connectors or secrets


@pytest.mark.django_db(transaction=True)
def test_unreachable_database_is_503_not_500(client, connector):
    token = issue_token("logto")[1]
    with database_unreachable():
        for response in (
            post(client, token, LOGTO_BODY),
            get(client, token, f"{MESSAGES}/00000000-0000-0000-0000-000000000000"),
        ):
            assert response.status_code == 503 and response["Retry-After"]
            assert error_of(response)["code"] == "database_unavailable"
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "database": "unreachable"}
    assert client.get("/healthz").status_code == 200  # and back once it is
    assert not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_console_says_the_database_is_unreachable_with_a_503_page():
    from django.test import Client

    browser = Client(raise_request_exception=False)  # as a real server answers
    with database_unreachable():
        response = browser.post("/login/", {"username": "admin", "password": "x"})
    assert response.status_code == 503 and response["Retry-After"]
    assert b"cannot reach its database" in response.content
    assert b"Traceback" not in response.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/healthz", "/login/", "/api/v1/openapi.json"])
def test_head_sends_the_headers_and_no_body(path):
    # Straight through the WSGI application, as gunicorn calls it: Django's test client and its
    # development server drop a HEAD body themselves, gunicorn does not.
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.client import RequestFactory

    environ = RequestFactory().generic("HEAD", path).environ
    started: list[tuple[str, dict[str, str]]] = []
    answer = WSGIHandler()(environ, lambda status, headers: started.append((status, dict(headers))))
    body = b"".join(answer)
    [(status, headers)] = started
    assert status == "200 OK" and body == b""
    assert int(headers["Content-Length"]) > 0  # what GET would send


def test_openapi_document_is_served_without_auth(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.1")
