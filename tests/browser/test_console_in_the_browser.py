"""The console in a real browser: the administrator's whole day, and what a viewer cannot do."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from connectors import schema
from connectors.models import Connector

from ..conftest import make_staff
from ..servers import SmtpServer

pytestmark = pytest.mark.django_db(transaction=True)

RIGHT_PASSWORD = "browser-right-passw0rd"
WRONG_PASSWORD = "browser-wrong-passw0rd"


@pytest.fixture
def smtp() -> Any:
    with SmtpServer(users={"mailer": RIGHT_PASSWORD}) as server:
        yield server


@pytest.fixture
def administrator(db: Any) -> Any:
    return get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-123")


@contextlib.contextmanager
def catching(handler: Any) -> Iterator[int]:
    """Run an aiosmtpd server with the handler on a free loopback port; yield the port."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def loopback_config(smtp: SmtpServer, password: str) -> dict[str, Any]:
    """Return the full example config, pointed at the test's SMTP server."""
    config = schema.example_config("smtp")
    config.update(
        host=smtp.host,
        port=smtp.port,
        secure=False,
        requireTLS=False,
        ignoreTLS=True,
        auth={"user": "mailer", "pass": password},
    )
    for key in ("tls", "servername"):
        config.pop(key)
    return config


def replace_editor_text(page: Any, text: str) -> None:
    """Replace the config editor's whole text, as pasting would."""
    page.locator(".config-editor .cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)


def editor_json(page: Any) -> Any:
    return json.loads(page.input_value("#id_config"))


def test_an_administrator_adds_tries_and_saves_an_smtp_connector(session, administrator, smtp):
    page = session.page
    session.goto("/login/")
    session.screenshot("login")
    session.log_in("root", "pw-root-123")

    # The editor opens with the full example: every field and the nine templates.
    session.goto("/connectors/connector/add/")
    assert editor_json(page) == schema.example_config("smtp")
    assert {t["usageType"] for t in editor_json(page)["templates"]} == set(schema.USAGE_TYPES)
    assert page.locator(".config-editor .cm-lineNumbers").is_visible()
    assert page.locator(".config-editor .cm-foldGutter").is_visible()

    # A preset refills it with the provider's values and shows the provider's notes.
    page.get_by_label("Provider preset").select_option("sendgrid")
    assert editor_json(page)["host"] == "smtp.sendgrid.net"
    assert page.locator('.preset-notes[data-preset="sendgrid"]').is_visible()
    page.locator(".config-workspace").evaluate("element => element.scrollIntoView()")
    session.screenshot("connector-editor")

    # An unknown key is marked at its line as it is typed, before anything is submitted.
    page.locator(".cm-line", has_text='"host": "smtp.sendgrid.net"').click()
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type('"hots": 1,')
    marked = page.locator(".cm-line", has_text='"hots"').locator(".cm-lintRange-error")
    marked.wait_for()
    assert page.locator(".cm-lint-marker-error").count() >= 1
    problems = page.locator("#config-problems")
    assert re.search(r"Line 3, column 3: .*hots", problems.inner_text())
    session.screenshot("editor-error-marked")
    # Fixed: the line goes, and so does the mark.
    page.locator(".cm-line", has_text='"hots"').click()
    page.keyboard.press("Control+Shift+K")
    page.locator(".cm-lintRange-error").wait_for(state="detached")
    assert "hots" not in page.input_value("#id_config")

    # Completion offers the keys a template may still have, and the values an enum allows.
    page.locator(".cm-line", has_text='"content": "Welcome!').click()
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type('"')
    page.keyboard.press("Control+Space")
    options = page.locator(".cm-tooltip-autocomplete li")
    options.first.wait_for()
    labels = page.locator(".cm-tooltip-autocomplete .cm-completionLabel")
    assert {"locale", "replyTo", "sendFrom"} <= set(labels.all_inner_texts())
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Shift+K")
    page.locator(".cm-line", has_text='"minVersion"').click()
    page.keyboard.press("End")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    for _ in "TLSv1.2":
        page.keyboard.press("Backspace")
    page.keyboard.press("Control+Space")
    options.filter(has_text="TLSv1.3").click()
    assert editor_json(page)["tls"]["minVersion"] == "TLSv1.3"

    # Send test with the unsaved config reaches the test's server.
    replace_editor_text(page, json.dumps(loopback_config(smtp, RIGHT_PASSWORD), indent=2))
    assert editor_json(page)["auth"]["pass"] == RIGHT_PASSWORD
    assert page.get_by_label("Recipient").input_value() == "root@example.test"
    page.get_by_role("button", name="Send test").click()
    outcome = page.locator(".send-test-result .outcome-ok")
    outcome.wait_for()
    assert "250" in outcome.inner_text() and "Message ID" in outcome.inner_text()
    assert len(smtp.messages) == 1
    assert smtp.messages[0].message["To"] == "root@example.test"
    outcome.scroll_into_view_if_needed()
    session.screenshot("send-test-ok")

    # A wrong password: the failure is classified, with the server's words and what to try.
    # (Pasted on one line, then tidied with the Format button.)
    replace_editor_text(page, json.dumps(loopback_config(smtp, WRONG_PASSWORD)))
    page.get_by_role("button", name="Format").click()
    assert page.input_value("#id_config").startswith('{\n  "host": ')
    page.get_by_role("button", name="Send test").click()
    failure = page.locator(".send-test-result .outcome-failed")
    failure.wait_for()
    text = failure.inner_text()
    assert "535" in text and "What to try" in text and "auth.pass" in text
    failure.scroll_into_view_if_needed()
    session.screenshot("send-test-failed")
    assert len(smtp.messages) == 1

    # The live check says what is wrong in words, not as a dump of the schema.
    refused = loopback_config(smtp, WRONG_PASSWORD) | {"port": 99999}
    replace_editor_text(page, json.dumps(refused, indent=2))
    problems.get_by_text("65535").wait_for()
    assert "does not match any schema" not in problems.inner_text()

    # Refused by the server on Save and Done: the page comes back with every error marked at its
    # line, the server's words standing for a line it marked, and the typed password withheld.
    page.get_by_label("Name").fill("Loopback")  # the slug follows the name
    page.get_by_role("button", name="Save and Done").click()
    page.wait_for_url(session.base_url + "/connectors/connector/add/")
    page.locator(".cm-line", has_text='"pass"').locator(".cm-lintRange-error").wait_for()
    page.locator(".cm-line", has_text='"port"').locator(".cm-lintRange-error").first.wait_for()
    listed = problems.locator("li").all_inner_texts()
    pass_line = 1 + next(
        i for i, line in enumerate(json.dumps(refused, indent=2).splitlines()) if '"pass"' in line
    )
    assert any(
        t.startswith(f"Line {pass_line},") and "enter this secret again" in t for t in listed
    )
    assert [t for t in listed if t.startswith("Line 3,")] == [
        "Line 3, column 11: port: must be a port number from 1 to 65535"
    ], listed
    assert editor_json(page)["auth"]["pass"] == ""
    session.screenshot("editor-server-errors")

    # Save and Done: back on the list, which names the new connector.
    replace_editor_text(page, json.dumps(loopback_config(smtp, RIGHT_PASSWORD), indent=2))
    page.get_by_role("button", name="Save and Done").click()
    page.wait_for_url(session.base_url + "/connectors/connector/")
    assert "Loopback (loopback)" in page.locator(".messagelist").inner_text()
    session.screenshot("connector-list")
    connector = Connector.objects.get(slug="loopback")
    assert connector.secret_values() == {"auth.pass": RIGHT_PASSWORD}

    # The saved connector shows its secret masked.
    page.get_by_role("link", name="Loopback loopback").click()
    assert editor_json(page)["auth"]["pass"] == schema.MASK

    # A template, edited on its own page, previews as it is typed.
    session.goto(f"/connectors/connector/{connector.pk}/templates/")
    session.screenshot("template-grid")
    page.get_by_role("link", name=re.compile("Generic template, default")).click()
    page.get_by_label("Subject").fill("Hello {{user.name}}")
    page.locator("#preview-subject", has_text="Hello Ada Lovelace").wait_for()
    # Leaving with unsaved edits asks first (here: stay).
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.dismiss()))
    page.get_by_role("link", name="Templates", exact=True).first.click()
    assert dialogs == ["beforeunload"] and page.url.endswith("/Generic/default/")
    page.get_by_label("Content type").select_option("text/html")
    page.locator(".template-content-editor .cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text("<h1>Welcome</h1><p>Your code is <b>{{code}}</b>.</p>")
    page.locator("#preview-text", has_text="Your code is 123456.").wait_for()
    frame = page.frame_locator("#preview-frame-holder iframe")
    frame.locator("b", has_text="123456").wait_for()
    session.screenshot("template-preview")
    page.get_by_role("button", name="Save and Done").click()
    page.wait_for_url(re.compile(r"/templates/$"))
    assert connector.templates.get(usage_type="Generic", locale="").subject == "Hello {{user.name}}"

    # The template's save is a revision: the history lists it, and the diff shows the change.
    session.goto(f"/connectors/connector/{connector.pk}/history/")
    session.screenshot("history")
    page.get_by_role("button", name="Show changes").click()
    page.locator("table.diff", has_text="Hello {{user.name}}").wait_for()
    session.screenshot("history-diff")

    # The API tokens page (superusers).
    session.goto("/connectors/apitoken/")
    page.get_by_role("heading", name="API tokens", exact=True).wait_for()
    session.screenshot("api-tokens")

    # The log holds the two tests.
    session.goto("/connectors/delivery/")
    session.screenshot("delivery-log")
    page.get_by_role("link", name="root@example.test").first.click()
    session.screenshot("delivery-detail")

    # On a phone-sized screen the connector page is one column, editor first.
    page.set_viewport_size({"width": 390, "height": 844})
    session.goto(f"/connectors/connector/{connector.pk}/change/")
    session.screenshot("connector-narrow")
    editor_box = page.locator(".config-editor").bounding_box()
    side_box = page.locator(".config-side").bounding_box()
    assert editor_box["width"] > 300 and side_box["y"] > editor_box["y"]

    # No page, and no answer to a request, ever held a password.
    for url, body in session.bodies():
        assert RIGHT_PASSWORD not in body, url
        assert WRONG_PASSWORD not in body, url
        assert connector.secrets not in body, url


def test_a_viewer_can_read_a_connector_but_not_edit_it_or_send_a_test(
    session, administrator, smtp, django_user_model
):
    from ..conftest import make_connector

    connector = make_connector("loopback", "smtp", loopback_config(smtp, RIGHT_PASSWORD))
    make_staff(django_user_model, "vera", "Viewer")
    page = session.page
    session.log_in("vera", "pw-vera-123")

    session.goto(f"/connectors/connector/{connector.pk}/change/")
    assert page.locator(".cm-content").get_attribute("contenteditable") == "false"
    assert page.get_by_role("button", name="Save and Done").count() == 0
    assert page.get_by_role("button", name="Send test").count() == 0
    assert editor_json(page)["auth"]["pass"] == schema.MASK
    session.screenshot("viewer-connector")

    # The read-only editor still takes the keyboard's focus (to scroll, select and copy), and
    # nothing typed there changes the config.
    shown = page.input_value("#id_config")
    content = page.locator(".config-editor .cm-content")
    assert content.get_attribute("tabindex") == "0"
    content.focus()
    assert content.evaluate("element => element === document.activeElement")
    for key in ("x", "Enter", "Delete", "Backspace", "Control+Shift+K", "Alt+ArrowDown"):
        page.keyboard.press(key)
    page.keyboard.press("ArrowDown")
    assert page.input_value("#id_config") == shown

    # The same on a template's page.
    session.goto(f"/connectors/connector/{connector.pk}/templates/Generic/default/")
    content = page.locator(".template-content-editor .cm-content")
    shown = page.input_value("#id_content")
    content.focus()
    assert content.get_attribute("tabindex") == "0"
    for key in ("x", "Enter", "Delete", "Backspace"):
        page.keyboard.press(key)
    assert page.input_value("#id_content") == shown

    assert session.goto("/connectors/connector/add/").status == 403
    session.goto(f"/connectors/connector/{connector.pk}/change/")
    status = page.evaluate(
        """async (url) => {
            const token = document.querySelector("[name=csrfmiddlewaretoken]").value;
            const response = await fetch(url, {
                method: "POST",
                headers: {"X-CSRFToken": token, "Content-Type": "application/json"},
                body: JSON.stringify({config: "{}", to: "a@b.c"}),
            });
            return response.status;
        }""",
        f"/connectors/connector/{connector.pk}/send-test/",
    )
    assert status == 403
    assert not smtp.messages
    for url, body in session.bodies():
        assert RIGHT_PASSWORD not in body, url


def test_a_newcomer_tries_the_demo_connector_and_reads_the_mail_it_caught(
    session, settings, tmp_path
):
    from django.core.management import call_command

    from connectors.mailcatcher import MailCatcher

    settings.LOCAL_DIR = tmp_path  # where setup_demo writes the demo password
    settings.MAILCATCHER_ENABLED = True
    settings.MAILCATCHER_DIR = tmp_path / "caught"
    with catching(MailCatcher(settings.MAILCATCHER_DIR)) as port:
        call_command("setup_demo", stdout=io.StringIO())
        demo = Connector.objects.get(slug="demo")
        config = demo.config()
        config["port"] = port  # the catcher of this test, not the one on 1025
        demo.apply_config(schema.validate_config_data("smtp", config).data)
        page = session.page
        session.log_in("admin", (tmp_path / "demo-admin-password").read_text().strip())

        session.goto(f"/connectors/connector/{demo.pk}/change/")
        page.get_by_role("button", name="Send test").click()
        page.locator(".send-test-result .outcome-ok").wait_for()

        page.get_by_role("link", name="Mail catcher").click()
        page.get_by_role("link", name="Your verification code").click()
        assert "123456" in page.locator("#caught-text").inner_text()
        session.screenshot("mail-catcher")
