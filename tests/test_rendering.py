"""Rendering: Logto's placeholders, HTML escaping, header injection, template choice, MIME."""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from connectors.rendering import (
    HeaderInjection,
    RenderedMessage,
    RenderError,
    TemplateNotFound,
    build_email,
    choose_template,
    html_to_text,
    render_message,
    render_text,
)

PAYLOAD: dict[str, Any] = {
    "code": "123456",
    "link": "https://acme.test/verify?token=abc&next=%2F",
    "locale": "fr-CA",
    "user": {"name": "Ada", "email": "ada@example.test"},
    "application": {"name": "Acme App"},
}

CONFIG: dict[str, Any] = {
    "fromEmail": "Acme <no-reply@acme.test>",
    "replyTo": "support@acme.test",
}


def template(**fields: Any) -> dict[str, Any]:
    """Return a plain-text Generic template with the given fields changed."""
    return {
        "usageType": "Generic",
        "contentType": "text/plain",
        "subject": "Your code",
        "content": "Code: {{code}}",
        **fields,
    }


def parse(message: RenderedMessage) -> email.message.EmailMessage:
    """Return the message as a mail client would read it."""
    raw = build_email(message).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# Placeholders


def test_placeholders_are_replaced_with_or_without_spaces_inside_the_braces() -> None:
    assert render_text("{{code}} {{ code }} {{  link}}", PAYLOAD, html=False) == (
        "123456 123456 https://acme.test/verify?token=abc&next=%2F"
    )


def test_dotted_placeholders_read_nested_values() -> None:
    text = render_text("Hi {{user.name}}, welcome to {{ application.name }}", PAYLOAD, html=False)
    assert text == "Hi Ada, welcome to Acme App"


def test_a_placeholder_whose_root_is_not_in_the_payload_is_left_as_it_is() -> None:
    assert render_text("{{organization.name}} {{ inviter }}", PAYLOAD, html=False) == (
        "{{organization.name}} {{ inviter }}"
    )


def test_a_missing_nested_key_renders_empty() -> None:
    assert render_text("[{{user.phone}}] [{{user.name.first}}]", PAYLOAD, html=False) == "[] []"


def test_values_that_are_not_strings_render_sensibly() -> None:
    payload = {"n": 42, "f": 1.0, "half": 0.5, "yes": True, "none": None, "obj": {"a": [1, "b"]}}
    text = render_text("{{n}}|{{f}}|{{half}}|{{yes}}|{{none}}|{{obj}}", payload, html=False)
    assert text == '42|1|0.5|true||{"a": [1, "b"]}'


def test_html_rendering_escapes_inserted_values_but_not_the_template() -> None:
    payload = {"user": {"name": "<script>alert('x')</script> \"Bob\" & Co"}}
    text = render_text("<p title='t'>Hello {{user.name}}</p>", payload, html=True)
    assert text == (
        "<p title='t'>Hello &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; "
        "&quot;Bob&quot; &amp; Co</p>"
    )


def test_plain_text_rendering_inserts_values_unchanged() -> None:
    assert render_text("{{v}}", {"v": "<b>&"}, html=False) == "<b>&"


# Header injection


@pytest.mark.parametrize(
    ("template_fields", "config_fields", "to"),
    [
        ({"subject": "Code {{user.name}}"}, {}, "ada@example.test"),
        ({"sendFrom": "{{user.name}} <no-reply@acme.test>"}, {}, "ada@example.test"),
        ({"replyTo": "{{user.name}}@acme.test"}, {}, "ada@example.test"),
        ({}, {"customHeaders": {"X-Tag": "ok\r\nBcc: victim@example.test"}}, "ada@example.test"),
        ({}, {"customHeaders": {"X-Tag": ["ok", "bad\nBcc: v@example.test"]}}, "ada@example.test"),
        ({}, {}, "ada@example.test\r\nBcc: victim@example.test"),
    ],
    ids=["subject", "from", "reply-to", "custom-header", "custom-header-list", "to"],
)
def test_line_breaks_in_any_header_raise_header_injection(
    template_fields: dict[str, Any], config_fields: dict[str, Any], to: str
) -> None:
    payload = {"user": {"name": "Eve\r\nBcc: victim@example.test"}}
    with pytest.raises(HeaderInjection) as raised:
        render_message({**CONFIG, **config_fields}, template(**template_fields), to, payload)
    assert isinstance(raised.value, RenderError)
    assert isinstance(raised.value, ValueError)
    assert "victim" not in str(raised.value)


def test_custom_headers_may_not_replace_the_headers_the_message_sets() -> None:
    with pytest.raises(RenderError, match="customHeaders may not set Subject"):
        render_message({**CONFIG, "customHeaders": {"Subject": "x"}}, template(), "a@b.test", {})


def test_a_sender_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(RenderError, match="not an email address"):
        render_message({**CONFIG, "fromEmail": "Acme"}, template(), "a@b.test", {})


# Template choice

TEMPLATES = [
    template(usageType="SignIn", locale="fr-CA", subject="fr-CA"),
    template(usageType="SignIn", locale="fr", subject="fr"),
    template(usageType="SignIn", locale="", subject="SignIn default"),
    template(usageType="Register", locale="de", subject="Register de"),
    template(usageType="Generic", locale="de", subject="Generic de"),
    template(usageType="Generic", subject="Generic default"),
]


@pytest.mark.parametrize(
    ("usage_type", "locale", "subject"),
    [
        ("SignIn", "fr-CA", "fr-CA"),
        ("SignIn", "fr_ca", "fr-CA"),
        ("SignIn", "FR-be", "fr"),
        ("SignIn", "en", "SignIn default"),
        ("SignIn", None, "SignIn default"),
        ("Register", "de-AT", "Register de"),
        ("Register", "en", "Generic default"),
        ("ForgotPassword", "de", "Generic de"),
        ("ForgotPassword", "it", "Generic default"),
        ("Test", "it", "Generic default"),
    ],
)
def test_templates_fall_back_from_locale_to_language_to_default_to_generic(
    usage_type: str, locale: str | None, subject: str
) -> None:
    assert choose_template(TEMPLATES, usage_type, locale)["subject"] == subject


def test_default_locale_is_tried_before_the_unlocalised_template() -> None:
    chosen = choose_template(TEMPLATES, "Register", "it", default_locale="de")
    assert chosen["subject"] == "Register de"


def test_a_legacy_test_template_serves_as_generic() -> None:
    legacy = [template(usageType="Test", subject="legacy")]
    assert choose_template(legacy, "MfaVerification", "en")["subject"] == "legacy"


def test_no_template_and_no_generic_raises_template_not_found() -> None:
    with pytest.raises(TemplateNotFound, match=r"no template for usage type BindMfa \(locale en\)"):
        choose_template([template(usageType="SignIn")], "BindMfa", "en")


# Messages


def test_template_send_from_and_reply_to_override_the_config() -> None:
    message = render_message(
        CONFIG,
        template(sendFrom="{{application.name}} <apps@acme.test>", replyTo="help@acme.test"),
        "ada@example.test",
        PAYLOAD,
    )
    assert message.from_email == "Acme App <apps@acme.test>"
    assert message.reply_to == "help@acme.test"


def test_subjects_are_never_html_escaped() -> None:
    message = render_message(
        CONFIG,
        template(contentType="text/html", subject="{{user.name}} & co", content="<p>x</p>"),
        "ada@example.test",
        {"user": {"name": "<Ada>"}},
    )
    assert message.subject == "<Ada> & co"


def test_an_html_template_makes_multipart_alternative_with_text_first() -> None:
    message = render_message(
        CONFIG,
        template(contentType="text/html", content="<p>Your code is <b>{{code}}</b></p>"),
        "ada@example.test",
        PAYLOAD,
    )
    parsed = parse(message)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Your code is 123456"
    assert "<b>123456</b>" in parts[1].get_content()


def test_a_plain_text_template_makes_a_plain_text_message() -> None:
    parsed = parse(render_message(CONFIG, template(), "ada@example.test", PAYLOAD))
    assert parsed.get_content_type() == "text/plain"
    assert not parsed.is_multipart()
    assert parsed.get_content().strip() == "Code: 123456"


def test_headers_are_set_and_non_ascii_is_encoded() -> None:
    config = {
        "fromEmail": "Acmé Støre <no-reply@acme.test>",
        "customHeaders": {"X-Campaign": "welcome", "X-Tag": ["a", "b"]},
    }
    message = render_message(
        config, template(subject="Votre code: {{code}} ✓"), "a@b.test", PAYLOAD
    )
    raw = build_email(message).as_bytes()
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Votre code: 123456 ✓"
    assert parsed["From"].addresses[0].display_name == "Acmé Støre"
    assert parsed["To"] == "a@b.test"
    assert parsed["X-Campaign"] == "welcome"
    assert parsed.get_all("X-Tag") == ["a", "b"]
    assert parsed["Date"]
    assert parsed["Message-ID"].endswith("@acme.test>")
    assert "Reply-To" not in parsed


def test_message_id_domain_can_be_given() -> None:
    message = render_message(CONFIG, template(), "a@b.test", PAYLOAD)
    mime = build_email(message, message_id_domain="mail.example.test")
    assert mime["Message-ID"].endswith("@mail.example.test>")


# Plain text from HTML


def test_plain_text_from_html_drops_scripts_and_styles_and_keeps_links() -> None:
    markup = """
        <html><head><title>Hidden</title><style>p { color: red }</style></head>
        <body>
          <h1>Welcome&nbsp;aboard</h1>
          <p>Your   code is
             <b>123456</b>.<br>It expires soon.</p>
          <p><a href="https://acme.test/v?a=1&amp;b=2">Verify your email</a></p>
          <p><a href="https://acme.test/raw">https://acme.test/raw</a></p>
          <ul><li>One</li><li>Two</li></ul>
          <script>alert("x")</script>
          <p>&lt;Acme&gt; &amp; friends &#169;</p>
        </body></html>
    """
    assert html_to_text(markup) == (
        "Welcome aboard\n\n"
        "Your code is 123456.\nIt expires soon.\n\n"
        "Verify your email (https://acme.test/v?a=1&b=2)\n\n"
        "https://acme.test/raw\n\n"
        "- One\n- Two\n\n"
        "<Acme> & friends ©"
    )
