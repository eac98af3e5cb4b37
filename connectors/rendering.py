"""Turn a connector's template and a send payload into an email, the way Logto's connectors do.

Placeholders follow Logto's connector-kit (`replaceSendMessageHandlebars`): `{{ code }}`,
`{{user.name}}`; a placeholder whose root key is not in the payload is left as it is, a missing
nested key renders empty. Everything here works on plain data: no database, no settings.
"""

from __future__ import annotations

import binascii
import email.headerregistry
import email.policy
import email.quoprimime
import email.utils
import functools
import html as html_lib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

__all__ = [
    "HeaderInjection",
    "RenderError",
    "RenderedMessage",
    "TemplateNotFound",
    "build_email",
    "choose_template",
    "email_bytes",
    "html_to_text",
    "render_message",
    "render_text",
]

GENERIC = "Generic"
# Logto renamed the `Test` usage type to `Generic`; configs from older versions still carry it.
LEGACY_USAGE_TYPES = {"Test": GENERIC}

# JavaScript's \w is ASCII-only, so the placeholder syntax is spelled out rather than using \w.
PLACEHOLDER = re.compile(r"{{\s*([A-Za-z0-9_.]+)\s*}}")

# Headers the message builder sets itself: a custom header of the same name would duplicate or
# contradict them (and Content-* ones would corrupt the MIME structure).
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII except ":"


class _HeaderClasses(email.headerregistry.HeaderRegistry):
    """The standard header registry, making each header class once rather than per header.

    The stock registry builds a new class with type() for every header it parses, which was a
    fifth of the time spent building a message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# Build with 7-bit transfer encodings so the message is valid even where a server lacks 8BITMIME.
EMAIL_POLICY = email.policy.SMTP.clone(cte_type="7bit", header_factory=_HeaderClasses())


class RenderError(ValueError):
    """A template and payload cannot make a valid email message."""


class HeaderInjection(RenderError):
    """A header value holds a line break, which could inject further headers."""


class TemplateNotFound(RenderError):
    """No template fits the usage type, not even a Generic one."""


@dataclass
class RenderedMessage:
    """An email ready for a transport: addresses, subject, bodies and extra headers."""

    to: str
    subject: str
    text: str
    html: str | None
    from_email: str
    reply_to: str | None = None
    headers: dict[str, str | list[str]] = field(default_factory=dict)


def _lookup(payload: Mapping[str, Any], path: str) -> Any:
    """Return the value at a dotted path, or None where the path leads nowhere."""
    current: Any = payload
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list | tuple) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current


def _as_text(value: Any) -> str:
    """Return a payload value as text, the way JavaScript's String() would where that is sane."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    # JavaScript would print "[object Object]"; JSON is what a template author can use.
    return json.dumps(value, ensure_ascii=False, default=str)


def render_text(template: str, payload: Mapping[str, Any], *, html: bool) -> str:
    """Return the template with its placeholders replaced by payload values."""

    def replace(match: re.Match[str]) -> str:
        path = match.group(1)
        root = path.split(".", 1)[0]
        if not root or root not in payload:
            return match.group(0)
        text = _as_text(_lookup(payload, path))
        return html_lib.escape(text, quote=True) if html else text

    return PLACEHOLDER.sub(replace, template)


def _normalise_locale(locale: str | None) -> str:
    return (locale or "").strip().replace("_", "-").lower()


def _usage_type(value: Any) -> str:
    usage = str(value or "")
    return LEGACY_USAGE_TYPES.get(usage, usage)


def choose_template(
    templates: Sequence[Mapping[str, Any]],
    usage_type: str,
    locale: str | None,
    default_locale: str = "",
) -> Mapping[str, Any]:
    """Return the template for a usage type and locale, falling back to language, default, Generic.

    Order: (usage type, locale), (usage type, language of the locale), (usage type, default
    locale), (usage type, ""), then the same for Generic.
    """
    wanted = _normalise_locale(locale)
    candidates = [wanted, wanted.split("-", 1)[0], _normalise_locale(default_locale)]
    # Templates with locale "" are the default ones, so they come last whatever default_locale is.
    locales = [*dict.fromkeys(c for c in candidates if c), ""]
    usage_types = list(dict.fromkeys([_usage_type(usage_type), GENERIC]))

    index = {
        (_usage_type(t.get("usageType")), _normalise_locale(t.get("locale"))): t for t in templates
    }
    for usage in usage_types:
        for candidate in locales:
            template = index.get((usage, candidate))
            if template is not None:
                return template
    raise TemplateNotFound(
        f"no template for usage type {usage_type} (locale {locale or 'default'}): add a "
        f"{usage_type} or a Generic template to the connector's templates"
    )


def _check_header(name: str, value: str) -> None:
    """Raise HeaderInjection when a header value holds CR or LF."""
    if "\r" in value or "\n" in value:
        raise HeaderInjection(
            f"The {name} holds a line break after the payload was filled in; a line break in an "
            "email header could add headers of an attacker's choosing. Remove it from the "
            "template, or from the payload value that fills it."
        )


@functools.lru_cache(maxsize=1024)
def _addr_spec(value: str) -> str:
    """Return the address in a header value (a sender's is the same message after message)."""
    return email.utils.parseaddr(value)[1]


def _check_address(name: str, value: str) -> None:
    """Raise RenderError when a header value holds no email address."""
    address = _addr_spec(value)
    if "@" not in address:
        raise RenderError(
            f"The {name} {value!r} is not an email address: write it as "
            '"name@example.com" or "Name <name@example.com>".'
        )


def _custom_headers(config: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Return the config's customHeaders, checked for injection and clashes."""
    headers: dict[str, str | list[str]] = {}
    for name, value in (config.get("customHeaders") or {}).items():
        _check_header("name of a custom header", name)
        if not HEADER_NAME.fullmatch(name):
            raise RenderError(
                f"{name!r} is not a valid header name: use printable ASCII without spaces or "
                "colons, such as X-Campaign."
            )
        if name.lower() in RESERVED_HEADERS:
            raise RenderError(
                f"customHeaders may not set {name}: the message sets it itself (use fromEmail, "
                "replyTo or the template for those)."
            )
        values = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        for item in values:
            _check_header(f"custom header {name}", item)
        headers[name] = values if isinstance(value, list | tuple) else values[0]
    return headers


def render_message(
    config: Mapping[str, Any], template: Mapping[str, Any], to: str, payload: Mapping[str, Any]
) -> RenderedMessage:
    """Return the message a template makes for one recipient and payload."""
    is_html = template.get("contentType") == "text/html"
    subject = render_text(str(template.get("subject") or ""), payload, html=False)
    content = render_text(str(template.get("content") or ""), payload, html=is_html)
    from_email = render_text(
        str(template.get("sendFrom") or config.get("fromEmail") or ""), payload, html=False
    )
    reply_to_source = template.get("replyTo") or config.get("replyTo")
    reply_to = render_text(str(reply_to_source), payload, html=False) if reply_to_source else None

    _check_header("recipient address", to)
    _check_header("subject", subject)
    _check_header("sender address (fromEmail or sendFrom)", from_email)
    _check_address("sender address (fromEmail or sendFrom)", from_email)
    if reply_to is not None:
        _check_header("reply-to address", reply_to)
        _check_address("reply-to address", reply_to)

    return RenderedMessage(
        to=to,
        subject=subject,
        text=html_to_text(content) if is_html else content,
        html=content if is_html else None,
        from_email=from_email,
        reply_to=reply_to,
        headers=_custom_headers(config),
    )


@functools.lru_cache(maxsize=1024)
def _message_id_domain(from_email: str) -> str:
    """Return the ASCII domain of an address, for Message-IDs; "localhost" when there is none."""
    domain = _addr_spec(from_email).rpartition("@")[2].strip("[] ")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"
    # Whatever else a sender's odd address leaves (a stray ">") must not end up in the id.
    return domain if re.fullmatch(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*", domain) else "localhost"


def build_email(message: RenderedMessage, *, message_id_domain: str | None = None) -> EmailMessage:
    """Return the MIME message: plain text, or multipart/alternative of text and HTML."""
    mime = EmailMessage(policy=EMAIL_POLICY)
    mime["From"] = message.from_email
    mime["To"] = message.to
    if message.reply_to:
        mime["Reply-To"] = message.reply_to
    mime["Subject"] = message.subject
    mime["Date"] = email.utils.format_datetime(datetime.now(UTC))
    # make_msgid() without a domain calls socket.getfqdn(), which can stall on DNS for seconds.
    domain = message_id_domain or _message_id_domain(message.from_email)
    mime["Message-ID"] = email.utils.make_msgid(domain=domain)
    for name, value in message.headers.items():
        for item in value if isinstance(value, list) else [value]:
            mime[name] = item
    mime.set_content(message.text)
    if message.html is not None:
        mime.add_alternative(message.html, subtype="html")
    return mime


# What email_bytes() writes as it is: header values that every policy would leave unchanged.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
PLAIN_ADDRESS = re.compile(rf"(?:{_ATEXT}(?: {_ATEXT})* <)?({_ADDR_SPEC})>?")
PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
STRUCTURED_HEADERS = frozenset(email.headerregistry.HeaderRegistry().registry)


def _header(name: str, value: str, policy: email.policy.EmailPolicy, *, address: bool) -> str:
    """Return one header field, folded and encoded as the email package would, with CRLF."""
    if "\r" in value or "\n" in value:
        raise ValueError("Header values may not contain linefeed or carriage return characters")
    line = f"{name}: {value}"
    if len(line) <= policy.max_line_length and "=?" not in value:
        match = (PLAIN_ADDRESS if address else PLAIN_TEXT).fullmatch(value)
        # A named address must have both brackets; the pattern alone accepts "a@b.test>".
        if match and (not address or value.endswith(">") == ("<" in value)):
            return line + "\r\n"
    # Anything else (non-ASCII, long, quoted, encoded-word look-alikes) takes the full path:
    # parsed and refolded by the policy, with RFC 2047 encoding where needed.
    folded = str(policy.header_factory(name, value).fold(policy=policy))
    if any(not line[:1].isspace() for line in folded.split("\r\n")[1:-1]):
        # The email package can fold a list of odd addresses without the leading space that
        # marks a continuation line; a server would read the rest as a broken header.
        raise ValueError(f"the {name} header cannot be written correctly: {value[:80]!r}")
    return folded


def _text_part(text: str, policy: email.policy.EmailPolicy) -> tuple[str, str]:
    """Return (Content-Transfer-Encoding, body with CRLF) as EmailMessage.set_content would."""
    lines = text.encode("utf-8").splitlines()
    if max((len(x) for x in lines), default=0) <= policy.max_line_length:
        joined = b"\n".join(lines) + b"\n"
        if joined.isascii():
            return "7bit", joined.decode("ascii").replace("\n", "\r\n")
    # The email package's choice: quoted-printable unless base64 is shorter for the first lines.
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = email.quoprimime.body_encode(sniff.decode("latin-1"), policy.max_line_length)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        data = b"\r\n".join(lines) + b"\r\n"
        step = policy.max_line_length // 4 * 3
        encoded = "".join(
            binascii.b2a_base64(data[i : i + step]).decode("ascii")
            for i in range(0, len(data), step)
        )
        return "base64", encoded.replace("\n", "\r\n")
    body = (b"\n".join(lines) + b"\n").decode("latin-1")
    encoded = email.quoprimime.body_encode(body, policy.max_line_length)
    return "quoted-printable", encoded.replace("\n", "\r\n")


def email_bytes(
    message: RenderedMessage, *, utf8: bool = False, message_id_domain: str | None = None
) -> tuple[bytes, str]:
    """Return the message as it goes on the wire (CRLF, 7-bit bodies), and its Message-ID.

    The same message build_email() makes, written directly: the email package's header
    machinery costs about a millisecond a message, most of it parsing and refolding values
    that need neither. Values that do (non-ASCII, long, quoted) still go through the policy.
    With `utf8`, headers may carry UTF-8 as they are (SMTPUTF8).
    """
    policy = EMAIL_POLICY.clone(utf8=True) if utf8 else EMAIL_POLICY
    if any(name.lower() in STRUCTURED_HEADERS for name in message.headers):
        # A custom header the email package knows the grammar of (Cc, Sender…): let it check.
        mime = build_email(message, message_id_domain=message_id_domain)
        return mime.as_bytes(policy=policy), str(mime["Message-ID"])
    domain = message_id_domain or _message_id_domain(message.from_email)
    message_id = email.utils.make_msgid(domain=domain)
    head = [_header("From", message.from_email, policy, address=True)]
    head.append(_header("To", message.to, policy, address=True))
    if message.reply_to:
        head.append(_header("Reply-To", message.reply_to, policy, address=True))
    head.append(_header("Subject", message.subject, policy, address=False))
    head.append(f"Date: {email.utils.format_datetime(datetime.now(UTC))}\r\n")
    head.append(_header("Message-ID", message_id, policy, address=False))
    for name, value in message.headers.items():
        for item in value if isinstance(value, list) else [value]:
            head.append(_header(name, item, policy, address=False))
    encoding, text = _text_part(message.text, policy)
    if message.html is None:
        head.append('Content-Type: text/plain; charset="utf-8"\r\n')
        head.append(f"Content-Transfer-Encoding: {encoding}\r\nMIME-Version: 1.0\r\n")
        return ("".join(head) + "\r\n" + text).encode("utf-8"), message_id
    html_encoding, html = _text_part(message.html, policy)
    boundary = f"==============={uuid.uuid4().hex}=="
    while boundary in text or boundary in html:
        boundary = f"==============={uuid.uuid4().hex}=="
    head.append("MIME-Version: 1.0\r\n")
    head.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n')
    parts = [
        f"--{boundary}\r\n"
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n"
        for subtype, cte, body in (("plain", encoding, text), ("html", html_encoding, html))
    ]
    wire = "".join(head) + "\r\n" + "".join(parts) + f"--{boundary}--\r\n"
    return wire.encode("utf-8"), message_id


class _TextExtractor(HTMLParser):
    """Collect the readable text of an HTML document, with line breaks where blocks end."""

    SKIP = frozenset({"script", "style", "head", "title", "template"})
    BLOCKS = frozenset(
        {
            "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
            "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "main", "nav",
            "ol", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul",
        }
    )  # fmt: skip
    PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str, int]] = []  # (href, index in parts where the text starts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self.PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.parts)))
        elif tag == "img" and not self._skipping:
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self.parts.append(f" {alt} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = " ".join("".join(self.parts[start:]).split())
            href = href.strip()
            if href and not href.startswith("#") and href != text:
                shown = href.removeprefix("mailto:") if href.startswith("mailto:") else href
                self.parts[start:] = [f"{text} ({shown})" if text and text != shown else shown]

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(re.sub(r"\s+", " ", data.replace("\xa0", " ")))


def html_to_text(markup: str) -> str:
    """Return a readable plain-text version of an HTML body."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
