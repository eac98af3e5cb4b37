"""The development mail catcher: an SMTP server on loopback, and the console page showing it."""

from __future__ import annotations

import smtplib
import socket
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from django.urls import reverse

from connectors import mailcatcher

pytestmark = pytest.mark.django_db


@pytest.fixture
def catcher(tmp_path, settings):
    settings.MAILCATCHER_ENABLED = True
    settings.MAILCATCHER_DIR = tmp_path
    with socket.socket() as probe:  # a free port (aiosmtpd's Controller cannot take port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        mailcatcher.MailCatcher(tmp_path),
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def send(controller, subject, html=None):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = (
        "app@example.test",
        "ada@example.test",
        subject,
    )
    message.set_content("Your code is 123456.")
    if html:
        message.add_alternative(html, subtype="html")
    with smtplib.SMTP("127.0.0.1", controller.port) as client:
        client.send_message(message)


def test_caught_messages_are_listed_and_shown(admin_client, catcher):
    send(catcher, "First")
    send(catcher, "Second", html="<p style='color:red'>Your code is <b>123456</b></p>")
    html = admin_client.get(reverse("admin:mailcatcher")).content.decode()
    assert html.index("Second") < html.index("First")  # newest first
    newest = mailcatcher.list_messages(catcher.handler.directory)[0]
    assert newest.rcpt_tos == ["ada@example.test"] and newest.mail_from == "app@example.test"
    page = admin_client.get(
        reverse("admin:mailcatcher_message", args=[newest.name])
    ).content.decode()
    assert "Your code is 123456." in page and "sandbox" in page
    frame = admin_client.get(reverse("admin:mailcatcher_frame", args=[newest.name]))
    assert "<b>123456</b>" in frame.content.decode()
    assert "sandbox" in frame["Content-Security-Policy"]


def test_clearing_deletes_every_caught_message(admin_client, catcher):
    send(catcher, "Bye")
    admin_client.post(reverse("admin:mailcatcher_clear"))
    assert mailcatcher.list_messages(catcher.handler.directory) == []


def test_only_names_the_catcher_made_are_read(admin_client, catcher, tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    for name in ("secret.txt", "..%2Fsettings.py", "20260101T000000000000Z-deadbeef.eml"):
        assert (
            admin_client.get(reverse("admin:mailcatcher_message", args=[name])).status_code == 404
        )


def test_the_page_is_off_unless_enabled(admin_client, settings):
    settings.MAILCATCHER_ENABLED = False
    assert admin_client.get(reverse("admin:mailcatcher")).status_code == 404


def test_viewers_read_it_but_cannot_clear_it(client, viewer_user, catcher):
    send(catcher, "Kept")
    client.force_login(viewer_user)
    assert client.get(reverse("admin:mailcatcher")).status_code == 200
    assert client.post(reverse("admin:mailcatcher_clear")).status_code == 403
    assert len(mailcatcher.list_messages(catcher.handler.directory)) == 1
