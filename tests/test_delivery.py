"""The send service: accepted messages are delivered, retried, failed or recovered as designed."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.mail import EmailMultiAlternatives, send_mail
from django.db import connection
from django.utils import timezone
from django.utils.connection import BaseConnectionHandler

from connectors import schema
from connectors.delivery import (
    RetryPolicy,
    claim_batch,
    close_transports,
    process,
    record,
    recover,
    run_attempt,
)
from connectors.models import Delivery, DeliveryAttempt, DeliveryStatus
from connectors.service import SendError, send_message, send_test

from .conftest import REQUIRED, make_connector, templates
from .servers import SmtpServer

pytestmark = pytest.mark.django_db(transaction=True)


def use_task_backend(settings: Any, backend: str) -> None:
    """Switch Django's task backend (its handler caches backends and does not watch settings)."""
    from django.tasks import task_backends

    settings.TASKS = {"default": {"BACKEND": backend}}
    task_backends.__dict__.pop("settings", None)
    BaseConnectionHandler.__init__(task_backends)


@pytest.fixture
def worker_mode(settings):
    """No in-process delivery: the test runs each attempt itself, with time under its control."""
    use_task_backend(settings, "django.tasks.backends.dummy.DummyBackend")
    settings.CONNECTORS_RETRY_BASE_DELAY = 30
    yield
    close_transports()


@pytest.fixture
def embedded_mode(settings):
    use_task_backend(settings, "django.tasks.backends.immediate.ImmediateBackend")
    yield
    close_transports()


@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


def connector_for(server: SmtpServer, slug: str = "sink", **overrides: Any):
    french_html = {
        "usageType": "SignIn",
        "contentType": "text/html",
        "locale": "fr",
        "subject": "Connexion",
        "content": "<p>Code : <b>{{code}}</b> pour {{user.name}}</p>",
    }
    config = server.config(templates=[*templates(*REQUIRED), french_html], **overrides)
    result = schema.validate_config_data("smtp", config)
    assert result.ok, result.errors
    return make_connector(slug, "smtp", result.data)


def make_due(delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_embedded_default_delivers_right_after_commit(embedded_mode, smtp):
    connector_for(smtp)
    delivery = send_message("ada@example.test", "SignIn", {"code": "482913"})
    assert delivery.status == DeliveryStatus.SENT
    assert len(smtp.messages) == 1
    assert "482913" in smtp.messages[0].message.get_content()
    assert smtp.messages[0].rcpt_tos == ["ada@example.test"]


def test_delivery_renders_the_locale_template_html_escaped(worker_mode, smtp):
    connector_for(smtp)
    delivery = send_message(
        "ada@example.test",
        "SignIn",
        {"code": "111222", "user": {"name": "<script>x</script>"}},
        locale="fr-CA",
    )
    process(delivery.pk)
    message = smtp.messages[0].message
    assert message["Subject"] == "Connexion"
    html = message.get_body(("html",)).get_content()
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert message.get_body(("plain",)) is not None


def test_one_time_values_are_encrypted_while_pending_and_scrubbed_after(worker_mode, smtp):
    connector_for(smtp)
    delivery = send_message(
        "ada@example.test", "Register", {"code": "739146", "link": "https://x.test/l"}
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM connectors_delivery")
        assert "739146" not in repr(cursor.fetchall())
    stored = Delivery.objects.get(pk=delivery.pk)
    assert stored.payload["code"] == "[redacted]" and stored.sealed
    process(delivery.pk)
    stored.refresh_from_db()
    assert stored.status == DeliveryStatus.SENT and stored.sealed == ""


def test_transient_failure_is_retried_then_delivered(worker_mode, smtp):
    connector_for(smtp)
    smtp.fail_next("RCPT", 421, "4.7.0 Try again later")
    delivery = send_message("ada@example.test", "SignIn", {"code": "1"})
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED and delivery.attempts == 1
    assert delivery.error_code == 421 and "Try again later" in delivery.error
    assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=10)  # back-off
    assert process(delivery.pk) is None  # not due yet: nothing happens

    make_due(delivery)
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 2
    outcomes = list(delivery.attempt_log.values_list("outcome", flat=True))
    assert outcomes == [DeliveryAttempt.Outcome.RETRY, DeliveryAttempt.Outcome.SENT]
    assert len(smtp.messages) == 1


def test_permanent_failure_fails_at_once_with_a_hint(worker_mode):
    with SmtpServer(users={"mailer": "right"}, auth_require_tls=False) as smtp:
        connector_for(smtp, auth={"user": "mailer", "pass": "wrong-password"})
        delivery = send_message("ada@example.test", "SignIn", {"code": "1"})
        process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert delivery.error_code == 535 and delivery.hint
    assert "wrong-password" not in delivery.error + delivery.hint + delivery.server_reply


def test_retries_stop_at_the_configured_attempts(worker_mode, settings, smtp):
    settings.CONNECTORS_MAX_ATTEMPTS = 2
    connector_for(smtp)
    smtp.fail_next("MAIL", 451, "4.3.0 Busy", times=5)
    delivery = send_message("ada@example.test", "SignIn", {"code": "1"})
    process(delivery.pk)
    make_due(delivery)
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 2
    assert smtp.messages == []


def test_server_down_then_up_delivers_everything(worker_mode, smtp):
    connector = connector_for(smtp)
    port = smtp.port
    config = connector.config(reveal=True)
    config["port"] = 1  # nothing listens there: connection refused, a transient failure
    connector.apply_config(config)
    ids = [send_message(f"user{i}@example.test", "SignIn", {"code": str(i)}).pk for i in range(3)]
    for delivery_id in ids:
        process(delivery_id)
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.QUEUED}

    config["port"] = port
    connector.apply_config(config)
    Delivery.objects.update(next_attempt_at=timezone.now())
    for delivery_id in ids:
        process(delivery_id)
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [
        f"user{i}@example.test" for i in range(3)
    ]


def test_a_lapsed_lease_is_recovered_and_a_held_one_is_not(worker_mode, smtp):
    connector_for(smtp)
    delivery = send_message("ada@example.test", "SignIn", {"code": "1"})
    # A worker claimed it and died: the row says sending, with a lease that runs out.
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.SENDING,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
        attempts=1,
    )
    assert process(delivery.pk) is None  # a live lease is respected
    assert recover() == 0
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert recover() == 1
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and len(smtp.messages) == 1


def test_only_the_lease_holder_records_an_outcome(worker_mode, smtp, caplog):
    connector_for(smtp)
    for i in range(3):
        send_message(f"user{i}@example.test", "SignIn", {"code": "1"})
    policy = RetryPolicy.from_settings()
    batch, token = claim_batch("w1", policy, 10)
    outcomes = [run_attempt(d, policy) for d in batch]
    # Meanwhile the first lease lapsed and another worker claimed that delivery.
    stolen = batch[0]
    Delivery.objects.filter(pk=stolen.pk).update(lease_owner="w2:other")
    record(outcomes, token, "w1", policy)

    states = dict(Delivery.objects.values_list("pk", "status"))
    assert states[stolen.pk] == DeliveryStatus.SENDING  # the other worker's to record
    assert {states[d.pk] for d in batch[1:]} == {DeliveryStatus.SENT}
    logged = set(DeliveryAttempt.objects.values_list("delivery_id", flat=True))
    assert logged == {d.pk for d in batch[1:]}
    assert f"lost the lease on delivery {stolen.pk}" in caplog.text


def test_a_claim_is_one_statement_while_the_thread_knows_the_connector(
    worker_mode, smtp, django_assert_num_queries
):
    connector = connector_for(smtp)
    policy = RetryPolicy.from_settings()
    send_message("a@example.test", "SignIn", {"code": "1"})
    with django_assert_num_queries(2):  # the claim, then the connector this thread lacks
        (first,), _ = claim_batch("w1", policy, 10)
    send_message("b@example.test", "SignIn", {"code": "1"})
    with django_assert_num_queries(1):
        (second,), _ = claim_batch("w1", policy, 10)
    assert second.connector is first.connector and second.connector.pk == connector.pk
    assert second.status == DeliveryStatus.SENDING and second.lease_owner.startswith("w1:")
    assert second.attempts == 1 and second.to == "b@example.test"

    # Any change to the row is seen on the next claim: a save, or a bare UPDATE of `enabled`.
    connector.name = "Renamed"
    connector.save()
    send_message("c@example.test", "SignIn", {"code": "1"})
    (third,), _ = claim_batch("w1", policy, 10)
    assert third.connector.name == "Renamed"
    type(connector).objects.filter(pk=connector.pk).update(enabled=False)
    Delivery.objects.filter(pk=third.pk).update(status=DeliveryStatus.QUEUED, lease_owner="")
    (again,), _ = claim_batch("w1", policy, 10)
    assert again.pk == third.pk and again.connector.enabled is False
    assert again.attempts == third.attempts + 1


def test_outcomes_of_a_batch_are_recorded_with_their_own_replies(worker_mode, smtp):
    connector_for(smtp)
    for i in range(3):
        send_message(f"user{i}@example.test", "SignIn", {"code": "1"})
    policy = RetryPolicy.from_settings()
    batch, token = claim_batch("w1", policy, 10)
    record([run_attempt(d, policy) for d in batch], token, "w1", policy)

    sent = {m.message["Message-ID"] for m in smtp.messages}
    stored = list(Delivery.objects.values_list("message_id", "server_reply", "sealed", "status"))
    assert {row[0] for row in stored} == sent and len(sent) == 3
    assert all(row[1].startswith("250 ") and row[2] == "" for row in stored)
    assert {row[3] for row in stored} == {DeliveryStatus.SENT}


def test_mixed_outcomes_of_a_batch_are_recorded_each_as_its_own(worker_mode, smtp):
    connector_for(smtp)
    for i in range(3):
        send_message(f"user{i}@example.test", "SignIn", {"code": "1"})
    smtp.fail_next("RCPT", 450, "4.2.1 Mailbox busy")
    smtp.fail_next("RCPT", 550, "5.1.1 No such user")
    policy = RetryPolicy.from_settings()
    batch, token = claim_batch("w1", policy, 10)
    record([run_attempt(d, policy) for d in batch], token, "w1", policy)

    busy, unknown, fine = (Delivery.objects.get(pk=d.pk) for d in batch)
    assert (busy.status, busy.error_code, busy.finished_at) == (DeliveryStatus.QUEUED, 450, None)
    assert busy.next_attempt_at > timezone.now() and busy.sealed != ""
    assert (unknown.status, unknown.error_code) == (DeliveryStatus.FAILED, 550)
    assert unknown.next_attempt_at is None and unknown.finished_at is not None
    assert "No such user" in unknown.server_reply and unknown.sealed == ""
    assert (fine.status, fine.error_code, fine.error) == (DeliveryStatus.SENT, None, "")
    assert fine.message_id and fine.sent_at is not None and fine.lease_owner == ""
    attempts = dict(DeliveryAttempt.objects.values_list("delivery_id", "code"))
    assert attempts == {busy.pk: 450, unknown.pk: 550, fine.pk: None}


def test_idempotency_key_returns_the_first_delivery(worker_mode, smtp):
    connector_for(smtp)
    first = send_message("ada@example.test", "SignIn", {"code": "1"}, idempotency_key="k-1")
    again = send_message("ada@example.test", "SignIn", {"code": "1"}, idempotency_key="k-1")
    assert again.pk == first.pk and Delivery.objects.count() == 1
    Delivery.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=25))
    later = send_message("ada@example.test", "SignIn", {"code": "1"}, idempotency_key="k-1")
    assert later.pk != first.pk


def test_recipient_rate_limit(worker_mode, settings, smtp):
    settings.CONNECTORS_RECIPIENT_RATE_LIMIT = (3, 600)
    connector_for(smtp)
    for _ in range(3):
        send_message("ada@example.test", "SignIn", {"code": "1"})
    with pytest.raises(SendError) as caught:
        send_message("ADA@example.test", "SignIn", {"code": "1"})
    assert caught.value.code == "rate_limited" and caught.value.retry_after
    send_message("grace@example.test", "SignIn", {"code": "1"})  # others are not affected


@pytest.mark.parametrize(
    ("to", "usage", "payload", "code"),
    [
        ("not-an-address", "SignIn", None, "invalid_address"),
        ("a@example.test\r\nBcc: x@evil.test", "SignIn", None, "invalid_address"),
        ("a@example.test", "Nope", None, "invalid_usage_type"),
        ("a@example.test", "SignIn", ["not", "an", "object"], "invalid_payload"),
        ("a@example.test", "SignIn", {"big": "x" * 70000}, "invalid_payload"),
    ],
)
def test_bad_input_is_a_typed_error(worker_mode, smtp, to, usage, payload, code):
    connector_for(smtp)
    with pytest.raises(SendError) as caught:
        send_message(to, usage, payload)
    assert caught.value.code == code
    assert not Delivery.objects.exists()


def test_idn_addresses_are_accepted(worker_mode, smtp):
    connector_for(smtp)
    assert send_message("user@bücher.example", "SignIn", {"code": "1"}).to == "user@bücher.example"


def test_unknown_and_disabled_connectors(worker_mode, smtp):
    connector = connector_for(smtp)
    with pytest.raises(SendError, match="No connector with slug 'nope'"):
        send_message("a@example.test", "SignIn", connector="nope")
    connector.enabled = False
    connector.save()
    with pytest.raises(SendError) as caught:
        send_message("a@example.test", "SignIn")
    assert caught.value.code == "connector_disabled"


def test_legacy_test_type_is_generic(worker_mode, smtp):
    connector_for(smtp)
    assert send_message("a@example.test", "Test", {"code": "1"}).usage_type == "Generic"


def test_send_test_is_synchronous_and_not_retried(worker_mode, smtp):
    connector_for(smtp)
    smtp.fail_next("RCPT", 421)
    outcome = send_test("ada@example.test", connector="sink")
    assert outcome.delivery.status == DeliveryStatus.FAILED and outcome.delivery.source == "test"
    assert outcome.error is not None and not outcome.error.permanent
    outcome = send_test("ada@example.test", connector="sink")
    assert outcome.delivery.status == DeliveryStatus.SENT and outcome.result.server_reply


def test_send_test_uses_an_unsaved_config(worker_mode, smtp):
    connector = connector_for(smtp)
    with SmtpServer() as other:
        unsaved = connector.config(reveal=True)
        unsaved["port"] = other.port
        outcome = send_test("ada@example.test", "SignIn", connector="sink", config=unsaved)
        assert outcome.delivery.status == DeliveryStatus.SENT
        assert len(other.messages) == 1 and smtp.messages == []
    connector.refresh_from_db()
    assert connector.settings["port"] == smtp.port  # nothing saved
    assert connector.last_test_ok is True


def test_send_test_of_a_new_connector(worker_mode, smtp):
    config = schema.validate_config_data("smtp", smtp.config(templates=templates(*REQUIRED))).data
    outcome = send_test("ada@example.test", config=config, kind="smtp")
    assert outcome.delivery.status == DeliveryStatus.SENT
    assert outcome.delivery.connector is None and len(smtp.messages) == 1


def test_django_mail_backend_goes_through_the_log(embedded_mode, settings, smtp):
    connector_for(smtp)
    settings.MAILERS = {
        "connectors": {
            "BACKEND": "connectors.mail.ConnectorEmailBackend",
            "OPTIONS": {"connector": "sink"},
        }
    }
    sent = send_mail(
        "Hello",
        "Plain body",
        "App <app@example.test>",
        ["a@example.test", "b@example.test"],
        using="connectors",
    )
    assert sent == 1
    assert Delivery.objects.filter(source="mail", status=DeliveryStatus.SENT).count() == 2
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["a@example.test", "b@example.test"]
    assert smtp.messages[0].message["Subject"] == "Hello"


def test_django_mail_backend_sends_html_alternatives(embedded_mode, settings, smtp):
    connector_for(smtp)
    settings.MAILERS = {"connectors": {"BACKEND": "connectors.mail.ConnectorEmailBackend"}}
    message = EmailMultiAlternatives("Hi", "text body", "app@example.test", ["a@example.test"])
    message.attach_alternative("<p>html body</p>", "text/html")
    message.send(using="connectors")
    received = smtp.messages[0].message
    assert received.get_body(("html",)).get_content().strip() == "<p>html body</p>"
    assert received.get_body(("plain",)).get_content().strip() == "text body"


def test_cli_test_command(worker_mode, smtp, capsys):
    from django.core.management import call_command

    connector_for(smtp)
    call_command("connectors", "test", "sink", "--to", "ada@example.test")
    assert "Sent Generic to ada@example.test" in capsys.readouterr().out
    assert json.loads(json.dumps(Delivery.objects.get().payload))["code"] == "[redacted]"


def test_a_renewed_oauth2_token_is_stored_encrypted(worker_mode):
    from .servers import OAuth2TokenServer

    with (
        OAuth2TokenServer(access_token="fresh-access-token") as tokens,
        SmtpServer(tls="starttls", oauth_tokens={"mailer@acme.test": "fresh-access-token"}) as smtp,
    ):
        auth = {
            "type": "OAuth2",
            "user": "mailer@acme.test",
            "clientId": "client-id",
            "clientSecret": "client-s3cret",
            "refreshToken": "refresh-s3cret",
            "accessToken": "stale-access-token",
            "expires": 1_000,
            "accessUrl": tokens.token_url,
        }
        connector = connector_for(smtp, auth=auth)
        revisions = connector.revisions.count()
        process(send_message("ada@example.test", "SignIn", {"code": "1"}).pk)
        close_transports()  # before the server stops, which waits for open TLS sessions
        assert len(smtp.messages) == 1
    connector.refresh_from_db()
    assert connector.secret_values()["auth.accessToken"] == "fresh-access-token"
    assert connector.settings["auth"]["expires"] > 1_000
    assert "fresh-access-token" not in connector.secrets
    assert connector.revisions.count() == revisions  # a token renewal is not a config change


def test_a_connection_dropped_in_the_middle_of_data_is_retried(worker_mode, smtp):
    connector_for(smtp)
    smtp.drop_next_data()
    delivery = send_message("ada@example.test", "SignIn", {"code": "1"})
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED and delivery.error
    make_due(delivery)
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and len(smtp.messages) == 1


def test_a_worker_reuses_one_connection_and_closes_it_when_idle(worker_mode, smtp):
    from connectors.delivery import _transports, close_idle_transports

    connector_for(smtp)
    for i in range(3):
        process(send_message(f"user{i}@example.test", "SignIn", {"code": "1"}).pk)
    assert smtp.connections == 1 and len(smtp.messages) == 3
    close_idle_transports(idle_seconds=60)
    assert len(_transports()) == 1  # used a moment ago: kept
    close_idle_transports(idle_seconds=0)
    assert _transports() == {}


def test_requeue_resends_a_failed_delivery_without_one_time_values(worker_mode, settings, smtp):
    from connectors.delivery import requeue

    settings.CONNECTORS_MAX_ATTEMPTS = 1
    connector_for(smtp)
    smtp.fail_next("RCPT", 421)
    plain = send_message("ada@example.test", "Generic", {"user": {"name": "Ada"}})
    coded = send_message("bob@example.test", "SignIn", {"code": "123456"})
    smtp.fail_next("RCPT", 421)
    for delivery in (plain, coded):
        process(delivery.pk)
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.FAILED and delivery.sealed == ""

    assert "scrubbed" in requeue(coded)  # its code is gone: the application must send anew
    assert requeue(plain) == ""
    process(plain.pk)
    plain.refresh_from_db()
    assert plain.status == DeliveryStatus.SENT
    assert requeue(plain) == "it was sent already"
