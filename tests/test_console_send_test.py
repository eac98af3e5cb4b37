"""Send test: the unsaved editor config goes to a real SMTP server on loopback, bounded in time."""

from __future__ import annotations

import json
import socket
import time

import pytest
from django.urls import reverse

from connectors import schema
from connectors.models import Connector, Delivery
from connectors.views.editor import bound_timeouts

from .conftest import REQUIRED, make_connector, templates
from .servers import SmtpServer

pytestmark = pytest.mark.django_db

RIGHT_PASSWORD = "right-passw0rd-for-tests"
WRONG_PASSWORD = "wrong-passw0rd-for-tests"


@pytest.fixture
def smtp():
    with SmtpServer(users={"mailer": RIGHT_PASSWORD}) as server:
        yield server


@pytest.fixture
def loopback_connector(db, smtp):
    config = smtp.config(
        auth={"user": "mailer", "pass": RIGHT_PASSWORD}, templates=templates(*REQUIRED)
    )
    return make_connector("loopback", "smtp", config)


@pytest.fixture
def editor_client(client, editor_user):
    client.force_login(editor_user)
    return client


def send_test(client, connector, config, **fields):
    url = (
        reverse("admin:connectors_connector_send_test", args=[connector.pk])
        if connector
        else reverse("admin:connectors_connector_send_test_new")
    )
    body = {
        "config": config if isinstance(config, str) else json.dumps(config, indent=2),
        "to": "ada@example.test",
        "type": "Generic",
        **fields,
    }
    return client.post(url, json.dumps(body), content_type="application/json")


def test_the_unsaved_config_is_sent_with_the_stored_secret(editor_client, smtp, loopback_connector):
    edited = loopback_connector.config()  # as the editor shows it: the password masked
    assert edited["auth"]["pass"] == schema.MASK
    edited["templates"][3]["subject"] = "Edited but not saved"
    response = send_test(editor_client, loopback_connector, edited)
    answer = response.json()
    assert response.status_code == 200 and answer["ok"], answer
    assert answer["result"]["server_reply"].startswith("250")
    assert answer["result"]["message_id"] and answer["result"]["elapsed_ms"] >= 0
    (mail,) = smtp.messages
    assert mail.message["Subject"] == "Edited but not saved" and mail.login == "mailer"
    assert "123456" in mail.message.get_content()  # the sample payload's code

    loopback_connector.refresh_from_db()
    assert loopback_connector.templates.get(usage_type="Generic").subject == "Generic code"
    assert loopback_connector.revisions.count() == 1  # nothing saved...
    delivery = Delivery.objects.get()  # ...but a log entry marked as a test
    assert delivery.source == "test" and delivery.status == "sent"
    assert answer["delivery"]["url"] == reverse(
        "admin:connectors_delivery_change", args=[delivery.pk]
    )
    assert loopback_connector.last_test_ok is True


def test_a_wrong_password_is_classified_with_a_hint_and_a_redacted_transcript(
    editor_client, smtp, loopback_connector
):
    config = loopback_connector.config()
    config["auth"]["pass"] = WRONG_PASSWORD
    response = send_test(editor_client, loopback_connector, config)
    answer = response.json()
    assert response.status_code == 200 and not answer["ok"]
    failure = answer["failure"]
    assert failure["code"] == 535 and failure["permanent"]
    assert failure["hint"] and failure["server_text"]
    assert any("AUTH" in line for line in failure["transcript"])
    assert WRONG_PASSWORD not in response.content.decode()
    assert RIGHT_PASSWORD not in response.content.decode()
    assert not smtp.messages
    loopback_connector.refresh_from_db()
    assert loopback_connector.last_test_ok is False
    assert loopback_connector.secret_values() == {"auth.pass": RIGHT_PASSWORD}


def test_a_new_connector_can_be_tested_before_it_exists(editor_client, smtp):
    config = smtp.config(
        auth={"user": "mailer", "pass": RIGHT_PASSWORD}, templates=templates(*REQUIRED)
    )
    answer = send_test(editor_client, None, config, kind="smtp", type="SignIn").json()
    assert answer["ok"], answer
    assert smtp.messages[0].message["Subject"] == "SignIn code"
    assert not Connector.objects.exists()
    assert Delivery.objects.get().connector is None


def test_the_locale_and_payload_are_used(editor_client, smtp, loopback_connector):
    config = loopback_connector.config()
    config["templates"].append(
        {
            "usageType": "Generic",
            "locale": "fr",
            "contentType": "text/plain",
            "subject": "Code {{code}}",
            "content": "Bonjour {{user.name}}",
        }
    )
    payload = json.dumps({"code": "987654", "user": {"name": "Marie"}})
    answer = send_test(
        editor_client, loopback_connector, config, locale="fr-CA", payload=payload
    ).json()
    assert answer["ok"], answer
    message = smtp.messages[0].message
    assert message["Subject"] == "Code 987654" and "Bonjour Marie" in message.get_content()


def test_an_invalid_config_is_refused_with_located_errors(editor_client, loopback_connector):
    text = json.dumps(loopback_connector.config(), indent=2).replace('"port"', '"prot"')
    response = send_test(editor_client, loopback_connector, text)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"]["code"] == "invalid_config"
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"prot"' in t)
    assert any(e["path"] == "prot" and e["line"] == line for e in answer["errors"])
    assert not Delivery.objects.exists()


def test_a_mask_with_nothing_stored_is_refused_at_its_line(editor_client, smtp):
    config = smtp.config(
        auth={"user": "mailer", "pass": schema.MASK}, templates=templates(*REQUIRED)
    )
    response = send_test(editor_client, None, config, kind="smtp")
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["path"] == "auth.pass" and error["line"] > 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": "not an address"}, "invalid_address"),
        ({"type": "Birthday"}, "invalid_usage_type"),
        ({"payload": "{not json"}, "invalid_payload"),
    ],
)
def test_bad_input_gets_a_clear_error(editor_client, loopback_connector, fields, code):
    response = send_test(editor_client, loopback_connector, loopback_connector.config(), **fields)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_a_body_that_is_not_json_is_refused(editor_client, loopback_connector):
    url = reverse("admin:connectors_connector_send_test", args=[loopback_connector.pk])
    response = editor_client.post(url, "config=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert editor_client.get(url).status_code == 405


def test_tests_are_rate_limited_per_administrator(
    editor_client, admin_client, smtp, loopback_connector, settings
):
    settings.CONSOLE_SEND_TEST_LIMIT = (2, 600)
    config = loopback_connector.config()
    for _ in range(2):
        assert send_test(editor_client, loopback_connector, config).json()["ok"]
    response = send_test(editor_client, loopback_connector, config)
    assert response.status_code == 429
    assert response.json()["error"]["retry_after"] > 0
    assert len(smtp.messages) == 2
    # Another administrator has a limit of their own.
    assert send_test(admin_client, loopback_connector, config).json()["ok"]


def test_time_outs_are_shortened_to_fit_the_bound():
    config = {
        "connectionTimeout": 120000,
        "greetingTimeout": 30000,
        "socketTimeout": 600000,
        "dnsTimeout": 100,
    }
    bounded = bound_timeouts("smtp", config, 20)
    assert bounded["dnsTimeout"] == 100  # already shorter: kept
    waits = [bounded[k] for k in ("connectionTimeout", "greetingTimeout", "socketTimeout")]
    assert sum(waits) + bounded["dnsTimeout"] <= 20000
    assert bound_timeouts("http", {"endpoint": "x"}, 20) == {"endpoint": "x"}


def test_a_server_that_never_answers_fails_within_the_bound(editor_client, settings):
    settings.CONSOLE_SEND_TEST_SECONDS = 3
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections (the kernel does) but never says a word
    try:
        config = schema.example_config("smtp")
        config.update(
            host="127.0.0.1",
            port=silent.getsockname()[1],
            ignoreTLS=True,
            requireTLS=False,
            greetingTimeout=600000,
        )
        config.pop("tls")
        started = time.monotonic()
        answer = send_test(editor_client, None, config, kind="smtp").json()
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert not answer["ok"]
    assert elapsed < 3 + 2
    assert (
        "greeting" in json.dumps(answer["failure"]).lower() or "time" in json.dumps(answer).lower()
    )
