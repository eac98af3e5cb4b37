"""A Django mail backend that sends through a connector and records each message as a Delivery.

    MAILERS = {
        "connectors": {
            "BACKEND": "connectors.mail.ConnectorEmailBackend",
            "OPTIONS": {"connector": "smtp-main"},  # optional: the default connector otherwise
        },
    }

    send_mail("Subject", "Body", None, ["user@example.com"], using="connectors")

Each recipient (To, Cc and Bcc alike) gets a delivery of its own, so one bad address or one
retry never holds up the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction

from .models import DeliverySource
from .rendering import RenderedMessage
from .service import SendError, queue_rendered


class ConnectorEmailBackend(BaseEmailBackend):
    """Queue each message for delivery through a connector."""

    def __init__(self, *args: Any, connector: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connector = connector

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Queue every message; return how many were accepted."""
        accepted = 0
        for message in email_messages:
            if message.attachments:
                raise SendError("unsupported", "Connector deliveries cannot carry attachments.")
            html = None
            if isinstance(message, EmailMultiAlternatives):
                html = next(
                    (body for body, mime in message.alternatives if mime == "text/html"), None
                )
            text = str(message.body)
            if message.content_subtype == "html":
                text, html = "", text
            headers = {str(k): str(v) for k, v in (message.extra_headers or {}).items()}
            with transaction.atomic():  # every recipient of a message, or none
                for recipient in message.recipients():
                    rendered = RenderedMessage(
                        to=recipient,
                        subject=str(message.subject),
                        text=text,
                        html=html,
                        from_email=str(message.from_email),
                        reply_to=", ".join(message.reply_to) or None,
                        headers=headers,
                    )
                    queue_rendered(rendered, connector=self.connector, source=DeliverySource.MAIL)
            accepted += 1
        return accepted
