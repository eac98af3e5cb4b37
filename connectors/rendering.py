"""Turn a connector's template and a send payload into an email, the way Logto's connectors do.

Placeholders follow Logto's connector-kit (`replaceSendMessageHandlebars`): `{{ code }}`,
`{{user.name}}`; a placeholder whose root key is not in the payload is left as it is, a missing
nested key renders empty. Everything here works on plain data: no database, no settings.
"""

from __future__ import annotations

import email.policy
import email.utils
import html as html_lib
import json
import re
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

# Build with 7-bit transfer encodings so the message is valid even where a server lacks 8BITMIME.
EMAIL_POLICY = email.policy.SMTP.clone(cte_type="7bit")


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


def _check_address(name: str, value: str) -> None:
    """Raise RenderError when a header value holds no email address."""
    _, address = email.utils.parseaddr(value)
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


def _message_id_domain(from_email: str) -> str:
    """Return the ASCII domain of an address, for Message-IDs; "localhost" when there is none."""
    domain = email.utils.parseaddr(from_email)[1].rpartition("@")[2].strip("[] ")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"
    return domain or "localhost"


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
