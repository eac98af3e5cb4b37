"""A local SMTP server for development that keeps every message it is sent as a `.eml` file.

`python manage.py mailcatcher` runs it on 127.0.0.1:1025 (the demo connector points there); the
console's Mail catcher page lists and shows what it caught. Nothing is relayed anywhere.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .rendering import html_to_text

__all__ = ["CaughtMessage", "MailCatcher", "catch", "clear", "list_messages", "read_message"]

# Names are made here: a timestamp and a random part. Anything else in a URL is refused.
NAME = re.compile(r"\d{8}T\d{6}\d{6}Z-[0-9a-f]{8}\.eml")
KEEP = 500  # the oldest messages are deleted beyond this many


@dataclass
class CaughtMessage:
    """One caught message: its envelope, headers and bodies."""

    name: str
    received_at: datetime
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    size: int
    message: EmailMessage | None = None

    @property
    def text(self) -> str:
        """Return the plain-text body (or the HTML one as text when there is none)."""
        if self.message is None:
            return ""
        part = self.message.get_body(preferencelist=("plain",))
        if part is not None:
            return str(part.get_content())
        return html_to_text(self.html) if self.html else ""

    @property
    def html(self) -> str:
        """Return the HTML body, or "" for a plain-text message."""
        if self.message is None:
            return ""
        part = self.message.get_body(preferencelist=("html",))
        return str(part.get_content()) if part is not None else ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Return the message's headers in order."""
        return [(k, str(v)) for k, v in self.message.items()] if self.message is not None else []


def _parse(path: Path, *, full: bool) -> CaughtMessage:
    data = path.read_bytes()
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    stamp = path.name.split("-", 1)[0]
    received = datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    return CaughtMessage(
        name=path.name,
        received_at=received,
        mail_from=str(parsed.get("X-Mailcatcher-From", "")),
        rcpt_tos=[a.strip() for a in str(parsed.get("X-Mailcatcher-To", "")).split(",") if a],
        subject=str(parsed.get("Subject", "")),
        size=len(data),
        message=parsed if full else None,
    )


def list_messages(directory: Path) -> list[CaughtMessage]:
    """Return the caught messages, newest first (headers only)."""
    if not directory.is_dir():
        return []
    files = sorted((p for p in directory.iterdir() if NAME.fullmatch(p.name)), reverse=True)
    return [_parse(p, full=False) for p in files]


def read_message(directory: Path, name: str) -> CaughtMessage | None:
    """Return one caught message in full, or None if there is no such message."""
    if not NAME.fullmatch(name):
        return None
    path = directory / name
    return _parse(path, full=True) if path.is_file() else None


def clear(directory: Path) -> int:
    """Delete every caught message; return how many."""
    count = 0
    for message in list_messages(directory):
        (directory / message.name).unlink(missing_ok=True)
        count += 1
    return count


_write_lock = threading.Lock()


def catch(directory: Path, mail_from: str, rcpt_tos: list[str], data: bytes) -> Path:
    """Store one message with its envelope, and prune the oldest beyond KEEP."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    name = f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}.eml"
    envelope = (
        f"X-Mailcatcher-From: {mail_from}\r\nX-Mailcatcher-To: {', '.join(rcpt_tos)}\r\n"
    ).encode("utf-8", "replace")
    path = directory / name
    with _write_lock:
        path.write_bytes(envelope + data)
        for old in sorted(p for p in directory.iterdir() if NAME.fullmatch(p.name))[:-KEEP]:
            old.unlink(missing_ok=True)
    return path


class MailCatcher:
    """aiosmtpd handler: accept every message and store it in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        catch(self.directory, str(envelope.mail_from), list(envelope.rcpt_tos), data)
        return "250 2.0.0 Ok: caught by the Connector Console mail catcher"
