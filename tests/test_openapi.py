"""The OpenAPI document tells the truth: every status it lists is produced, and checked against it.

Each scenario makes the API give one documented answer for real (no mocks: a real SMTP server, a
really unreachable database) and validates status, headers and body against the document's
schemas. A last test checks the scenarios cover every status the document lists, so neither can
drift from the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from connectors import openapi
from connectors.delivery import close_transports
from connectors.models import Connector
from connectors.tokens import issue_token

from .servers import SmtpServer
from .test_api import LOGTO_BODY, MESSAGES, database_unreachable, post, smtp_connector_for
from .test_delivery import use_task_backend

pytestmark = pytest.mark.django_db

BASE = "urn:connector-console:openapi"
MESSAGE = "/api/v1/messages/{id}"
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


def pointer(*parts: str) -> str:
    """Return a JSON pointer to parts of the document (escaping / and ~)."""
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in ("", *parts))


def check_against_document(response: Any, path: str, method: str) -> None:
    """Assert the response is one the document lists for this operation, in every detail."""
    document = openapi.document()
    responses = document["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method.upper()} {path} answered {status}, not documented"
    spec = responses[status]
    for name, header in spec.get("headers", {}).items():
        if name in response:
            Draft202012Validator(header["schema"]).validate(response[name])
        else:
            assert not header["required"], f"{status} lacks the {name} header"
    if "content" in spec:
        assert response["Content-Type"] == "application/json"
        registry = Registry().with_resource(BASE, DRAFT202012.create_resource(document))
        where = pointer(
            "paths", path, method, "responses", status, "content", "application/json", "schema"
        )
        validator = Draft202012Validator(
            {"$ref": f"{BASE}#{where}"}, registry=registry, format_checker=FormatChecker()
        )
        validator.validate(json.loads(response.content))


@pytest.fixture(autouse=True)
def no_delivery(settings: Any) -> Iterator[None]:
    """Accept messages without sending them, unless a scenario picks a task backend of its own."""
    use_task_backend(settings, "django.tasks.backends.dummy.DummyBackend")
    yield
    close_transports()


@pytest.fixture
def api_token(db: Any) -> str:
    return issue_token("logto")[1]


# Scenarios: (operation path, method, status, how to get that answer) ------------------------

Scenario = Callable[[Client, str, Any], Any]


def sent(client: Client, token: str) -> str:
    return post(client, token, LOGTO_BODY).json()["id"]


def waited_for(client: Client, token: str, settings: Any) -> Any:
    use_task_backend(settings, "django.tasks.backends.immediate.ImmediateBackend")
    Connector.objects.all().delete()
    with SmtpServer() as smtp:
        smtp_connector_for(smtp)
        return post(client, token, LOGTO_BODY, Prefer="wait=5")


def read_back_with_attempts(client: Client, token: str, settings: Any) -> Any:
    message_id = waited_for(client, token, settings).json()["id"]
    return client.get(f"{MESSAGES}/{message_id}", headers={"Authorization": f"Bearer {token}"})


def restricted(client: Client, token: str, settings: Any) -> Any:
    other = Connector.objects.create(slug="other", name="Other", kind="smtp")
    return post(client, issue_token("narrow", connectors=[other])[1], LOGTO_BODY)


def rate_limited(client: Client, token: str, settings: Any) -> Any:
    settings.CONNECTORS_API_TOKEN_RATE_LIMIT = (1, 10**9)
    sent(client, token)
    return post(client, token, {**LOGTO_BODY, "to": "other@logto.io"})


def reused_key(client: Client, token: str, settings: Any) -> Any:
    post(client, token, LOGTO_BODY, Idempotency_Key="k")
    return post(client, token, {**LOGTO_BODY, "ip": "203.0.113.8"}, Idempotency_Key="k")


def too_large(client: Client, token: str, settings: Any) -> Any:
    settings.CONNECTORS_API_MAX_BODY_BYTES = 100
    return post(client, token, LOGTO_BODY)


def database_down(request: Callable[[], Any]) -> Any:
    with database_unreachable():
        return request()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


TRANSACTIONAL = pytest.mark.django_db(transaction=True)
SCENARIOS: list[Any] = [
    (MESSAGES, "post", 202, lambda c, t, s: post(c, t, LOGTO_BODY)),
    (MESSAGES, "post", 202, lambda c, t, s: post(c, t, LOGTO_BODY, Prefer="wait=1")),
    pytest.param(MESSAGES, "post", 200, waited_for, marks=TRANSACTIONAL),
    (MESSAGES, "post", 400, lambda c, t, s: post(c, t, {**LOGTO_BODY, "tto": 1})),
    (MESSAGES, "post", 401, lambda c, t, s: post(c, None, LOGTO_BODY)),
    (MESSAGES, "post", 401, lambda c, t, s: post(c, "cc_revoked", LOGTO_BODY)),
    (MESSAGES, "post", 403, restricted),
    (MESSAGES, "post", 404, lambda c, t, s: post(c, t, {**LOGTO_BODY, "connector": "nope"})),
    (MESSAGES, "post", 405, lambda c, t, s: c.get(MESSAGES, headers=bearer(t))),
    (MESSAGES, "post", 409, reused_key),
    (MESSAGES, "post", 413, too_large),
    (MESSAGES, "post", 415, lambda c, t, s: post(c, t, LOGTO_BODY, content_type="text/plain")),
    (MESSAGES, "post", 429, rate_limited),
    pytest.param(
        MESSAGES,
        "post",
        503,
        lambda c, t, s: database_down(lambda: post(c, t, LOGTO_BODY)),
        marks=TRANSACTIONAL,
    ),
    (MESSAGE, "get", 200, lambda c, t, s: c.get(f"{MESSAGES}/{sent(c, t)}", headers=bearer(t))),
    pytest.param(MESSAGE, "get", 200, read_back_with_attempts, marks=TRANSACTIONAL),
    (MESSAGE, "get", 401, lambda c, t, s: c.get(f"{MESSAGES}/{sent(c, t)}")),
    (MESSAGE, "get", 404, lambda c, t, s: c.get(f"{MESSAGES}/{UNKNOWN_ID}", headers=bearer(t))),
    (MESSAGE, "get", 405, lambda c, t, s: c.delete(f"{MESSAGES}/{UNKNOWN_ID}")),
    pytest.param(
        MESSAGE,
        "get",
        503,
        lambda c, t, s: database_down(lambda: c.get(f"{MESSAGES}/{UNKNOWN_ID}", headers=bearer(t))),
        marks=TRANSACTIONAL,
    ),
    ("/api/v1/openapi.json", "get", 200, lambda c, t, s: c.get("/api/v1/openapi.json")),
    ("/healthz", "get", 200, lambda c, t, s: c.get("/healthz")),
    ("/healthz", "get", 405, lambda c, t, s: c.post("/healthz")),
    pytest.param(
        "/healthz",
        "get",
        503,
        lambda c, t, s: database_down(lambda: c.get("/healthz")),
        marks=TRANSACTIONAL,
    ),
]


def scenario_key(scenario: Any) -> tuple[str, str, int]:
    values = scenario.values if hasattr(scenario, "values") else scenario
    return values[0], values[1], values[2]


@pytest.mark.parametrize(
    ("path", "method", "status", "make"),
    SCENARIOS,
    ids=[f"{m} {p} {s}" for p, m, s in map(scenario_key, SCENARIOS)],
)
def test_real_answers_match_the_document(
    client, smtp_connector, api_token, settings, path, method, status, make
):
    response = make(client, api_token, settings)
    assert response.status_code == status, response.content[:300]
    check_against_document(response, path, method)


def test_every_documented_status_has_a_scenario():
    documented = {
        (path, method, int(status))
        for path, operations in openapi.document()["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
        if status != "default"  # a bug's answer: there is no input that should produce it
    }
    assert documented == {scenario_key(s) for s in SCENARIOS}


def test_document_is_valid_openapi_3_1():
    validate_spec(openapi.document())


def test_served_document_is_the_document(client):
    assert client.get("/api/v1/openapi.json").json() == json.loads(json.dumps(openapi.document()))
