"""A Django mail backend that sends through a connector and records each message as a Delivery.

    MAILERS = {
        "connectors": {
            "BACKEND": "connectors.mail.ConnectorEmailBackend",
            "OPTIONS": {"connector": "smtp-main"},  # optional: the default connector otherwise
        },
    }

    send_mail("Subject", "Body", None, ["user@example.com"], using="connectors")

Each recipient (To, Cc and Bcc alike) gets a delivery of its own, so one bad address or one
retry never holds up the others. The connector's config fills in what the message leaves out:
its `fromEmail` when the message has none (Django's `DEFAULT_FROM_EMAIL`), its `replyTo`, and
its `customHeaders` (the message's own headers win). An HTML-only message gets a plain-text part
derived from its HTML, as a template's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction

from .models import Connector, DeliverySource
from .rendering import RenderedMessage, RenderError, html_to_text, render_message
from .service import SendError, pick_connector, queue_rendered


class ConnectorEmailBackend(BaseEmailBackend):
    """Queue each message for delivery through a connector."""

    def __init__(
        self, *args: Any, connector: str | None = None, fail_silently: bool = False, **kwargs: Any
    ) -> None:
        """`fail_silently` (an option in MAILERS) drops a refused message instead of raising."""
        super().__init__(*args, **kwargs)
        self.connector = connector
        self.fail_silently = fail_silently

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Queue every message; return how many were accepted."""
        accepted = 0
        for message in email_messages:
            try:
                target = pick_connector(self.connector)
                with transaction.atomic():  # every recipient of a message, or none
                    for rendered in written_messages(message, target):
                        queue_rendered(rendered, connector=target.slug, source=DeliverySource.MAIL)
            except SendError:
                if not self.fail_silently:
                    raise
                continue
            accepted += 1
        return accepted


def written_messages(message: EmailMessage, connector: Connector) -> list[RenderedMessage]:
    """Return one RenderedMessage per recipient of a Django message, or raise SendError."""
    if message.attachments:
        raise SendError("unsupported", "Connector deliveries cannot carry attachments.")
    text, html = str(message.body), None
    if isinstance(message, EmailMultiAlternatives):
        html = next((body for body, mime in message.alternatives if mime == "text/html"), None)
    if message.content_subtype == "html":
        text, html = html_to_text(text), text
    headers = {str(k): str(v) for k, v in (message.extra_headers or {}).items()}
    # As in Django's own message, a From or Reply-To header overrides the message's fields.
    sender = pop_header(headers, "From") or str(message.from_email or "")
    if sender == settings.DEFAULT_FROM_EMAIL:
        sender = ""  # the message names no sender of its own: the connector's fromEmail
    reply_to = pop_header(headers, "Reply-To") or ", ".join(message.reply_to)
    config = {
        **connector.settings,
        "replyTo": reply_to or connector.settings.get("replyTo"),
        "customHeaders": {**(connector.settings.get("customHeaders") or {}), **headers},
    }
    # The template path's checks (line breaks in headers, addresses, reserved headers); with no
    # payload, nothing in the message is taken for a placeholder.
    template = {"subject": str(message.subject), "sendFrom": sender}
    try:
        checked = render_message(config, template, "", {})
    except RenderError as exc:
        raise SendError("invalid_message", str(exc)) from exc
    return [
        RenderedMessage(
            to=recipient,
            subject=checked.subject,
            text=text,
            html=html,
            from_email=checked.from_email,
            reply_to=checked.reply_to,
            headers=checked.headers,
        )
        for recipient in message.recipients()
    ]


def pop_header(headers: dict[str, str], name: str) -> str:
    """Remove a header, whatever its case, and return its value ("" when absent)."""
    key = next((key for key in headers if key.lower() == name.lower()), None)
    return headers.pop(key) if key is not None else ""
