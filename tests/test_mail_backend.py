"""The Django mail backend: the connector fills in what a Django message leaves out."""

from __future__ import annotations

import pytest
from django.core.mail import EmailMessage, send_mail

from connectors.mail import ConnectorEmailBackend
from connectors.models import Delivery, DeliveryStatus
from connectors.service import SendError

from .test_delivery import connector_for, embedded_mode, smtp  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mailer(settings):
    """The project's own MAILERS, as a deployment gets them (not the tests' in-memory mailer)."""
    from console import settings as project

    settings.MAILERS = project.MAILERS


def test_send_mail_works_out_of_the_box_from_the_connectors_address(embedded_mode, mailer, smtp):  # noqa: F811
    connector_for(
        smtp,
        fromEmail="Acme <no-reply@acme.test>",
        replyTo="help@acme.test",
        customHeaders={"X-Campaign": "welcome"},
    )
    assert send_mail("Welcome", "Hello!", None, ["ada@example.test"], using="connectors") == 1

    received = smtp.messages[0].message
    assert received["From"] == "Acme <no-reply@acme.test>"  # not Django's webmaster@localhost
    assert received["Reply-To"] == "help@acme.test"
    assert received["X-Campaign"] == "welcome"
    assert Delivery.objects.get().status == DeliveryStatus.SENT


def test_the_message_s_own_sender_and_headers_win(embedded_mode, mailer, smtp):  # noqa: F811
    connector_for(smtp, fromEmail="no-reply@acme.test", customHeaders={"X-Campaign": "default"})
    message = EmailMessage(
        "Hi",
        "Body",
        "App <app@acme.test>",
        ["ada@example.test"],
        headers={"X-Campaign": "spring", "Reply-To": "team@acme.test"},
    )
    message.send(using="default")  # Django's own mail goes through the connector as well

    received = smtp.messages[0].message
    assert received["From"] == "App <app@acme.test>"
    assert received["Reply-To"] == "team@acme.test"
    assert received["X-Campaign"] == "spring"


def test_an_html_only_message_gets_a_plain_text_part(embedded_mode, mailer, smtp):  # noqa: F811
    connector_for(smtp)
    message = EmailMessage("Hi", "<p>Your code is <b>123456</b></p>", None, ["ada@example.test"])
    message.content_subtype = "html"
    message.send(using="connectors")

    received = smtp.messages[0].message
    assert received.get_content_type() == "multipart/alternative"
    assert received.get_body(("plain",)).get_content().strip() == "Your code is 123456"


@pytest.mark.parametrize(
    "subject, headers",
    [
        ("Hi\r\nBcc: victim@example.test", {}),
        ("Hi", {"X-Note": "a\r\nBcc: victim@example.test"}),
        ("Hi", {"Content-Type": "text/html"}),
    ],
)
def test_header_injection_is_refused_when_the_message_is_accepted(
    embedded_mode,  # noqa: F811
    mailer,
    smtp,  # noqa: F811
    subject,
    headers,
):
    connector_for(smtp)
    message = EmailMessage(subject, "Body", None, ["ada@example.test"], headers=headers)
    with pytest.raises(SendError) as refused:
        message.send(using="connectors")
    assert refused.value.code == "invalid_message"
    assert not Delivery.objects.exists() and not smtp.messages


def test_fail_silently_swallows_a_refused_message(embedded_mode, mailer, smtp):  # noqa: F811
    connector_for(smtp)
    backend = ConnectorEmailBackend(fail_silently=True)
    refused = EmailMessage("Hi\r\nBcc: x@example.test", "Body", None, ["a@example.test"])
    accepted = EmailMessage("Hi", "Body", None, ["a@example.test"])
    assert backend.send_messages([refused, accepted]) == 1
    assert Delivery.objects.count() == 1
