"""Fuzzing the send endpoint: whatever arrives, the answer is structured JSON, never a 5xx.

Malformed bodies, wrong types, huge strings, NUL and unpaired surrogates, CR/LF header injection
in `to` and in headers: every answer is a 202 for a valid message or a structured 4xx, and a 4xx
leaves everything stored as it was.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connectors.models import Connector, Delivery, Template, UsageType
from connectors.tokens import issue_token

from .test_api import LOGTO_BODY, MESSAGES, no_delivery  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=15,
)
huge_strings = st.integers(min_value=300, max_value=70_000).map(lambda n: "x" * n)
# Ways to smuggle a second header or recipient into a message.
injections = st.sampled_from(
    [
        "\r\n",
        "\n",
        "\r",
        "\r\nBcc: victim@example.test",
        "\nSubject: hijacked",
        "%0d%0aBcc:x",
        "\x00",
        "\u2028",
        "\ud800",
        ",victim@example.test",
        ";victim@example.test",
    ]
)
addresses = st.one_of(
    st.emails(),
    st.builds(lambda a, i, b: a + i + b, st.emails(), injections, st.emails() | st.just("")),
    st.text(max_size=40),
    huge_strings,
    json_values,
)
usage_types = st.one_of(
    st.sampled_from([*UsageType.values, "Test", "signin", "", "SignIn\r\n"]),
    st.text(max_size=20),
    json_values,
)
payloads = st.one_of(
    st.just(LOGTO_BODY["payload"]),
    st.dictionaries(
        st.sampled_from(["code", "link", "locale", "uiLocales", "user", "x"]),
        json_values | huge_strings | injections,
        max_size=5,
    ),
    json_values,
)
optional = {
    "payload": payloads,
    "ip": st.one_of(st.ip_addresses().map(str), st.text(max_size=50), json_values),
    "connector": st.one_of(
        st.sampled_from(["smtp-main", "nope", "smtp-main\r\n", ""]),
        st.text(max_size=20),
        json_values,
    ),
    "locale": st.one_of(
        st.sampled_from(["fr-CA", "en", "", "x" * 36, "fr\r\nCA"]),
        st.text(max_size=40),
        json_values,
    ),
    "payloda": json_values,
    "To": json_values,
}
bodies = st.one_of(
    st.fixed_dictionaries({"to": addresses, "type": usage_types}, optional=optional),
    json_values,
)


def stored_state() -> list[Any]:
    """Return everything a bad request must leave as it was (token use times aside)."""
    return [
        sorted(Delivery.objects.values_list("id", "status", "to", "payload", "idempotency_key")),
        list(
            Connector.objects.values_list(
                "slug", "settings", "secrets", "enabled", "is_default", "updated_at"
            )
        ),
        list(Template.objects.values_list("pk", "subject", "content", "locale")),
    ]


def check_answer(response: Any, before: list[Any]) -> None:
    """Assert the answer is a 202, or a structured 4xx that changed nothing."""
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the spread
    assert response["Content-Type"] == "application/json"
    assert response.status_code < 500, response.content[:500]
    body = response.json()
    if response.status_code == 202:
        assert set(body) == {"id", "status"}
        return
    assert 400 <= response.status_code < 500
    error = body["error"]
    assert isinstance(error["code"], str) and error["message"]
    assert all(set(d) == {"path", "message"} for d in error["details"])
    assert stored_state() == before


@pytest.fixture
def bearer(smtp_connector: Connector) -> str:
    return "Bearer " + issue_token("fuzz")[1]


@FUZZ
@given(body=bodies)
def test_any_json_body_gets_a_structured_answer(smtp_connector, bearer, body):
    client = Client()
    before = stored_state()
    response = client.post(
        MESSAGES,
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": bearer},
    )
    check_answer(response, before)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300), st.text(max_size=300).map(str.encode), huge_strings.map(str.encode)
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
)
def test_any_bytes_get_a_structured_answer(smtp_connector, bearer, data, content_type):
    client = Client()
    before = stored_state()
    response = client.post(
        MESSAGES,
        data,
        content_type=content_type,
        headers={"Authorization": bearer},
        CONTENT_TYPE=content_type,
    )
    check_answer(response, before)


header_values = st.one_of(
    st.text(max_size=60),
    injections,
    st.builds(lambda a, i: a + i, st.text(max_size=20), injections),
)


@FUZZ
@given(idempotency_key=header_values, prefer=header_values, authorization=header_values)
def test_any_headers_get_a_structured_answer(
    smtp_connector, bearer, idempotency_key, prefer, authorization
):
    client = Client()
    before = stored_state()
    response = client.post(
        MESSAGES,
        json.dumps(LOGTO_BODY),
        content_type="application/json",
        headers={
            "Authorization": authorization,
            "Prefer": prefer,
            "Idempotency-Key": idempotency_key,
        },
    )
    assert response.status_code in (400, 401), response.content[:300]
    check_answer(response, before)
    response = client.post(
        MESSAGES,
        json.dumps(LOGTO_BODY),
        content_type="application/json",
        headers={"Authorization": bearer, "Idempotency-Key": idempotency_key},
    )
    check_answer(response, before if response.status_code != 202 else stored_state())
