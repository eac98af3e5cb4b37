"""The wire format: email_bytes() writes exactly what the email package's EmailMessage would."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.rendering import EMAIL_POLICY, RenderedMessage, build_email, email_bytes

# With its continuation lines: a random id of another length may fold where the other did not.
VARYING = re.compile(rb"^(Date|Message-ID):.*\r\n(?:[ \t].*\r\n)*", re.MULTILINE)
BOUNDARY = re.compile(rb'boundary="([^"]+)"')


def normalised(raw: bytes) -> bytes:
    """Return raw with what differs between two builds (date, id, boundary) blanked out."""
    raw = VARYING.sub(b"", raw)
    found = BOUNDARY.search(raw)
    if found:
        raw = raw.replace(found.group(1), b"BOUNDARY")
    # The email package repeats MIME-Version in the HTML part; it carries no meaning there.
    return raw.replace(b"\r\nMIME-Version: 1.0\r\n\r\n", b"\r\n\r\n")


def reference(message: RenderedMessage, *, utf8: bool = False) -> bytes:
    policy = EMAIL_POLICY.clone(utf8=True) if utf8 else EMAIL_POLICY
    return build_email(message).as_bytes(policy=policy)


def same_as_email_package(message: RenderedMessage, *, utf8: bool = False) -> None:
    try:
        raw, message_id = email_bytes(message, utf8=utf8)
    except ValueError:
        # Refused only where the email package folds a header without the continuation
        # line's leading space: a malformed message, better not sent.
        lines = reference(message, utf8=utf8).split(b"\r\n\r\n")[0].split(b"\r\n")
        assert any(line[:1] not in (b" ", b"\t") and b": " not in line for line in lines)
        return
    assert normalised(raw) == normalised(reference(message, utf8=utf8))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"].strip() == message_id  # a long one is folded onto a new line
    assert not parsed.defects


def message(**fields: object) -> RenderedMessage:
    values: dict[str, object] = {
        "to": "ada@example.test",
        "subject": "Your code",
        "text": "Your code is 123456.",
        "html": None,
        "from_email": "Acme <no-reply@acme.test>",
    }
    values.update(fields)
    return RenderedMessage(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"html": "<p>Your code is <b>123456</b></p>", "reply_to": "help@acme.test"},
        {"from_email": "Acmé Støre <no-reply@acme.test>", "subject": "Votre code ✓"},
        {"from_email": '"Acme, Inc." <no-reply@acme.test>', "reply_to": "A. Person <a@b.test>"},
        {"subject": "A subject long enough to need folding, " * 4},
        {"subject": "=?utf-8?q?looks_encoded?="},
        {"subject": "  spaced   out  ", "text": ""},
        {"text": "é" * 300, "html": "<p>" + "ü" * 50 + "</p>"},
        {"text": "\u4e2d\u6587 " * 100},
        {"text": "line\r\nwith\rodd\nendings\n\n"},
        {"headers": {"X-Campaign": "welcome", "X-Tag": ["a", "b"], "X-Long": "y" * 100}},
        {"headers": {"Cc": "other@example.test"}},
        {"from_email": '" <no-reply@acme.test>'},
    ],
)
def test_writes_what_the_email_package_writes(fields: dict[str, object]) -> None:
    same_as_email_package(message(**fields))


def test_utf8_headers_go_out_unencoded_with_smtputf8() -> None:
    international = message(to="émile@example.test", from_email="Zoë <zoë@acme.test>")
    raw, _ = email_bytes(international, utf8=True)
    assert "To: émile@example.test\r\n".encode() in raw
    same_as_email_package(international, utf8=True)


def test_a_line_break_in_a_header_is_refused() -> None:
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        email_bytes(message(subject="Hi\r\nBcc: victim@example.test"))


printable = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=90
)
ascii_words = st.from_regex(r"[A-Za-z0-9!#%&'*+/=?^_`{|}~. ,()<>@\"-]{0,40}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    subject=st.one_of(printable, ascii_words),
    name=st.one_of(st.just(""), ascii_words, printable),
    text=st.text(max_size=300),
    html=st.one_of(st.none(), st.text(max_size=200)),
    custom=st.one_of(st.just(""), printable),
)
def test_any_message_is_written_as_the_email_package_writes_it(
    subject: str, name: str, text: str, html: str | None, custom: str
) -> None:
    name = name.replace("\r", "").replace("\n", "").replace("<", "").replace(">", "")
    sender = f"{name} <no-reply@acme.test>" if name.strip() else "no-reply@acme.test"
    headers: dict[str, str | list[str]] = {"X-Custom": custom} if custom else {}
    same_as_email_package(
        message(subject=subject, from_email=sender, text=text, html=html, headers=headers)
    )
