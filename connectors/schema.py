"""The connector config schema: one pydantic model per kind, shared by the editor, CLI and API.

The format is Logto's SMTP and HTTP email connector config, so a Logto config pastes in
unchanged. `validate_config` is the one entry point for text from people: it never raises, and
reports every problem as a `ConfigError` located at a line and column of the submitted text.
Pure Python and pydantic only (no Django), so any module or script can use it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal, NoReturn, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import jsonpos
from .examples import PRESETS, Preset, example_config, example_config_text

__all__ = [
    "CONFIG_MODELS",
    "CONTENT_TYPES",
    "KINDS",
    "MASK",
    "MAX_CONFIG_BYTES",
    "PRESETS",
    "REQUIRED_USAGE_TYPES",
    "SECRET_PATHS",
    "TLS_VERSIONS",
    "USAGE_TYPES",
    "ConfigError",
    "HttpConfig",
    "Preset",
    "SmtpConfig",
    "Template",
    "ValidationResult",
    "dump_config",
    "example_config",
    "example_config_text",
    "json_schema",
    "validate_config",
    "validate_config_data",
]

MASK = "********"

UsageType = Literal[
    "Register",
    "SignIn",
    "ForgotPassword",
    "Generic",
    "OrganizationInvitation",
    "UserPermissionValidation",
    "BindNewIdentifier",
    "MfaVerification",
    "BindMfa",
]
ContentType = Literal["text/plain", "text/html"]
TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]

USAGE_TYPES: tuple[str, ...] = get_args(UsageType)
REQUIRED_USAGE_TYPES = ("Register", "SignIn", "ForgotPassword", "Generic")
CONTENT_TYPES: tuple[str, ...] = get_args(ContentType)
TLS_VERSIONS: tuple[str, ...] = get_args(TlsVersion)
KINDS = ("smtp", "http")
SECRET_PATHS: dict[str, tuple[str, ...]] = {
    "smtp": (
        "auth.pass",
        "auth.clientSecret",
        "auth.refreshToken",
        "auth.accessToken",
        "auth.privateKey",
    ),
    "http": ("authorization",),
}

MAX_CONFIG_BYTES = 1024 * 1024
MAX_ERRORS = 100
# Node's timers overflow above 2**31 - 1 ms and fire at once; keep exported configs safe for Logto.
MAX_TIMEOUT_MS = 2**31 - 1
# Headers the console writes itself for each message; a custom one would duplicate or fight them.
RESERVED_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "reply-to", "sender", "date", "message-id",
        "mime-version", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigError:
    """One problem in a submitted config, located in its text."""

    path: str
    line: int
    column: int
    message: str

    def as_dict(self) -> dict[str, object]:
        """Return the error as a JSON-able dict."""
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }

    def __str__(self) -> str:
        """Return the error as the CLI prints it: `line:column: path: message`."""
        return f"{self.line}:{self.column}: {self.path or '(root)'}: {self.message}"


@dataclass
class ValidationResult:
    """The outcome of validating a config: normalised data, or errors; notices either way."""

    # Kept out of repr: the normalised data holds the secrets.
    data: dict[str, Any] | None = field(repr=False)
    errors: list[ConfigError] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    source: jsonpos.SourceMap | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Tell whether the config is valid (then `data` holds it, normalised)."""
        return not self.errors and self.data is not None

    def locate(self, path: str) -> tuple[int, int]:
        """Return the (line, column) of a path in the submitted text, or of its nearest parent."""
        return self.source.locate(path) if self.source is not None else (1, 1)


# Field checks -------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    # "config" errors carry a message already written for people; see _message().
    raise PydanticCustomError("config", message)


_LINE_BREAK_MESSAGE = (
    "must be a single line: a line break (CR or LF) would let it inject other mail headers"
)


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        _fail(_LINE_BREAK_MESSAGE)
    return value


_ADDRESS_PART = r"[^\s@<>()\[\],;:\"\\]+"
_ADDRESS = re.compile(rf"(?P<local>{_ADDRESS_PART})@(?P<domain>{_ADDRESS_PART})")
_NAMED_ADDRESS = re.compile(r'(?P<name>"(?:[^"\\]|\\.)*"|[^<>"]*?)\s*<(?P<address>[^<>]*)>')


def _email_address(value: str) -> str:
    _single_line(value)
    text = value.strip()
    named = _NAMED_ADDRESS.fullmatch(text)
    match = _ADDRESS.fullmatch(named.group("address").strip() if named else text)
    parts = (match.group("local"), match.group("domain")) if match else ("", "")
    if not match or any(p.startswith(".") or p.endswith(".") or ".." in p for p in parts):
        _fail(
            "must be an email address, optionally with a display name: "
            "`no-reply@example.com` or `Example <no-reply@example.com>`"
        )
    return text


_HOST_LABEL = r"(?!-)[\w-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def _hostname(value: str) -> str:
    text = value.strip()
    if not text:
        _fail("must not be empty")
    if "://" in text:
        _fail("give the host name alone, without a scheme such as smtp://")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if re.fullmatch(r"[^:\s]+:[0-9]+", text):
        _fail("give the port in `port`, not after the host name")
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        _fail("must be a host name such as smtp.example.com, or an IP address")
    return text


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        _fail("must be an IP address of this machine, such as 192.0.2.10 or 2001:db8::10")


def _http_url(value: str) -> str:
    text = value.strip()
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        _fail("must be a URL without spaces or line breaks")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        _fail(
            "must be an http:// or https:// URL with a host, such as https://mail.example.com/send"
        )
    return text


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(name: str) -> str:
    if "\r" in name or "\n" in name:
        _fail(_LINE_BREAK_MESSAGE)
    if not _TOKEN.fullmatch(name):
        _fail("a header name is letters, digits and - (no spaces, colons or other punctuation)")
    if name.lower() in RESERVED_HEADERS:
        _fail(
            "this header is written by the console for every message (from `fromEmail`, "
            "`replyTo` and the templates); it cannot be a custom header"
        )
    return name


def _header_values(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return _single_line(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [_single_line(item) for item in value]
    _fail("expected a string, or a list of strings to repeat the header")


def _certificates(value: Any) -> str | list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        _fail("expected PEM text, or a list of PEM texts")
    if not all("-----BEGIN CERTIFICATE-----" in item for item in items):
        _fail("must be a PEM certificate: the text from -----BEGIN CERTIFICATE----- to -----END …")
    return value


_LOCALE = re.compile(
    r"(?P<language>[A-Za-z]{2,3})(?P<script>-[A-Za-z]{4})?(?P<region>-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
)


def _locale(value: str) -> str:
    match = _LOCALE.fullmatch(value.strip())
    if not match:
        hint = " (with a hyphen, not an underscore)" if "_" in value else ""
        _fail(f"must be a language tag such as en, fr-CA or zh-Hans-CN{hint}")
    # Canonical case, so that "en-us" and "en-US" are seen as the same locale.
    language, script, region, variants = match.group("language", "script", "region", "variants")
    return language.lower() + (script or "").title() + (region or "").upper() + variants.lower()


def _read_port(value: Any) -> Any:
    # Logto's docs type the port as a string ("587"); nodemailer needs a number.
    if isinstance(value, str):
        if re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
            return int(value)
        _fail("expected a port number from 1 to 65535")
    return value


def _fixed_word(word: str) -> Any:
    """Return a before-validator accepting `word` in any letter case, and giving `word`."""

    def read(value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == word.lower():
            return word
        _fail('must be "login" for a password, or "OAuth2" for OAuth2 authentication')

    return read


def _any_case_enum(*spellings: str) -> WithJsonSchema:
    # Any letter case is read; the schema lists the spellings Logto's own schema accepts.
    return WithJsonSchema({"type": "string", "enum": list(spellings)})


_LOGIN_SPELLINGS = _any_case_enum("login", "Login", "LOGIN")
_OAUTH2_SPELLINGS = _any_case_enum("OAuth2", "oauth2", "OAUTH2")

NonEmpty = Annotated[str, Field(min_length=1)]
SingleLine = Annotated[str, Field(min_length=1), AfterValidator(_single_line)]
Secret = Annotated[str, Field(min_length=1)]  # fields of this type also set repr=False
HostName = Annotated[str, Field(min_length=1), AfterValidator(_hostname)]
EmailAddress = Annotated[str, Field(min_length=1), AfterValidator(_email_address)]
HttpUrl = Annotated[str, Field(min_length=1), AfterValidator(_http_url)]
Milliseconds = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_MS)]
Port = Annotated[
    int,
    BeforeValidator(_read_port),
    Field(ge=1, le=65535),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^\\s*[0-9]{1,5}\\s*$"},
            ]
        }
    ),
]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValues = Annotated[
    Any,
    PlainValidator(_header_values),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
CustomHeaders = Annotated[
    dict[HeaderName, HeaderValues],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": "^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$"},
            "additionalProperties": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            },
        }
    ),
]
Certificates = Annotated[
    Any,
    PlainValidator(_certificates),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


# Models -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one validation run learns besides the data: notices, and whether auth was moved."""

    notices: list[str] = field(default_factory=list)
    legacy_auth: bool = False

    @staticmethod
    def of(info: ValidationInfo) -> _Run | None:
        context = info.context
        return context.get("run") if isinstance(context, dict) else None


def _is_empty(value: Any) -> bool:
    return value is None or value in ("", {}, [])


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        hide_input_in_errors=True,
        field_title_generator=lambda name, info: info.alias or name,
    )

    @model_validator(mode="before")
    @classmethod
    def _prepare_input(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        return cls._prepare(dict(data), _Run.of(info))

    @classmethod
    def _prepare(cls, data: dict[str, Any], run: _Run | None) -> dict[str, Any]:
        """Drop optional keys whose value is empty: `null`, `""`, `{}` and `[]` mean "not set"."""
        optional = _optional_keys(cls)
        return {k: v for k, v in data.items() if not (k in optional and _is_empty(v))}

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None and v != {}}


@cache
def _optional_keys(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(
        info.alias or name for name, info in model.model_fields.items() if not info.is_required()
    )


class LoginAuth(_Model):
    """Log in with a user name and a password (SMTP AUTH PLAIN, LOGIN or CRAM-MD5)."""

    type: (
        Annotated[Literal["login"], BeforeValidator(_fixed_word("login")), _LOGIN_SPELLINGS] | None
    ) = Field(None, description='"login", the default when absent.')
    user: NonEmpty = Field(
        description="User name on the SMTP server: often the full email address "
        "(`apikey` for SendGrid)."
    )
    password: Secret = Field(
        alias="pass",
        repr=False,
        description="Password or API key for the SMTP server. Stored encrypted; shown as ********.",
    )


class OAuth2TokenAuth(_Model):
    """Log in with OAuth2 (XOAUTH2): an access token, refreshed with a refresh token."""

    type: Annotated[
        Literal["OAuth2"], BeforeValidator(_fixed_word("OAuth2")), _OAUTH2_SPELLINGS
    ] = Field(
        "OAuth2", description='"OAuth2" (any letter case; read from the other keys when left out).'
    )
    user: NonEmpty = Field(description="Email address of the mailbox to send as.")
    clientId: NonEmpty | None = Field(
        None, description="OAuth2 client ID, needed to refresh the access token."
    )
    clientSecret: Secret | None = Field(
        None,
        repr=False,
        description="OAuth2 client secret, needed to refresh the access token. Stored encrypted.",
    )
    refreshToken: Secret | None = Field(
        None,
        repr=False,
        description="Refresh token used to get a new access token. Stored encrypted.",
    )
    accessToken: Secret | None = Field(
        None,
        repr=False,
        description="Current access token; renewed with `refreshToken` when it expires. "
        "Stored encrypted.",
    )
    expires: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="When `accessToken` expires, in milliseconds since 1970-01-01 UTC "
        "(a JavaScript timestamp).",
    )
    accessUrl: HttpUrl | None = Field(
        None,
        description="Token endpoint to refresh the access token at. "
        "Default: Google's, https://accounts.google.com/o/oauth2/token.",
    )

    @model_validator(mode="after")
    def _has_a_way_to_a_token(self) -> OAuth2TokenAuth:
        if not self.accessToken and not (self.refreshToken and self.clientId and self.clientSecret):
            _fail(
                "OAuth2 needs `accessToken`, or `refreshToken` together with `clientId` and "
                "`clientSecret` to get one"
            )
        return self


class PrivateKeyWithPassphrase(_Model):
    """An encrypted private key and the passphrase that opens it."""

    key: NonEmpty = Field(description="The private key, PEM text.")
    passphrase: NonEmpty = Field(description="Passphrase of the private key.")


PrivateKey = Annotated[
    Annotated[str, Tag("pem"), Field(min_length=1)]
    | Annotated[PrivateKeyWithPassphrase, Tag("pem-with-passphrase")],
    Discriminator(lambda value: "pem" if isinstance(value, str) else "pem-with-passphrase"),
]


class OAuth2ServiceAuth(_Model):
    """Log in with OAuth2 as a Google service account (two-legged OAuth)."""

    type: Annotated[
        Literal["OAuth2"], BeforeValidator(_fixed_word("OAuth2")), _OAUTH2_SPELLINGS
    ] = Field(
        "OAuth2", description='"OAuth2" (any letter case; read from the other keys when left out).'
    )
    user: NonEmpty = Field(description="Email address of the mailbox to send as.")
    privateKey: PrivateKey = Field(
        repr=False,
        description="The service account's private key as PEM text, or `{key, passphrase}` "
        "for an encrypted key. Stored encrypted.",
    )
    serviceClient: NonEmpty = Field(description="Client ID of the service account.")


def _auth_form(value: Any) -> str:
    """Return which auth model reads a value: the `type` says OAuth2, the keys say which kind."""
    if isinstance(value, OAuth2TokenAuth | OAuth2ServiceAuth):  # serialising a validated model
        return "oauth2-service" if isinstance(value, OAuth2ServiceAuth) else "oauth2-token"
    if isinstance(value, dict):
        kind = value.get("type")
        service = "privateKey" in value or "serviceClient" in value
        if isinstance(kind, str) and kind.strip().lower() == "oauth2":
            return "oauth2-service" if service else "oauth2-token"
        if kind is None and "pass" not in value:
            # Logto's schema leaves `type` optional for OAuth2 too: the keys tell.
            if service:
                return "oauth2-service"
            if {"accessToken", "refreshToken", "clientId", "clientSecret"} & value.keys():
                return "oauth2-token"
    return "login"


Auth = Annotated[
    Annotated[LoginAuth, Tag("login")]
    | Annotated[OAuth2TokenAuth, Tag("oauth2-token")]
    | Annotated[OAuth2ServiceAuth, Tag("oauth2-service")],
    Discriminator(_auth_form),
]


class TlsOptions(_Model):
    """Options of the TLS connection, as Node.js TLS sockets name them."""

    rejectUnauthorized: bool | None = Field(
        None,
        description="Check the server's certificate and refuse the connection when it is not "
        "valid. Set to false only for a test server with a self-signed certificate. "
        "Default: true.",
    )
    servername: HostName | None = Field(
        None,
        description="Host name for SNI and the certificate check, when it differs from `host`.",
    )
    minVersion: TlsVersion | None = Field(
        None, description="Oldest TLS version to accept. Default: TLSv1.2."
    )
    maxVersion: TlsVersion | None = Field(
        None, description="Newest TLS version to offer. Default: TLSv1.3."
    )
    ciphers: SingleLine | None = Field(
        None,
        description="OpenSSL cipher list to allow, such as `HIGH:!aNULL:!MD5`. "
        "Default: the Node.js/OpenSSL defaults.",
    )
    ca: Certificates | None = Field(
        None,
        description="Certificate authority to trust for this server, such as an internal CA: "
        "PEM text or a list of them. It replaces the default trusted authorities.",
    )

    @field_validator("maxVersion")
    @classmethod
    def _not_below_min(cls, value: str | None, info: ValidationInfo) -> str | None:
        lowest = info.data.get("minVersion")
        if value and lowest and TLS_VERSIONS.index(value) < TLS_VERSIONS.index(lowest):
            _fail("is older than `minVersion`")
        return value


def _read_legacy_usage_types(value: Any, info: ValidationInfo) -> Any:
    """Read Logto's older usage type `Test` as `Generic`, with a notice."""
    if not isinstance(value, list):
        return value
    run = _Run.of(info)
    templates = []
    for index, item in enumerate(value):
        if isinstance(item, dict) and item.get("usageType") == "Test":
            item = {**item, "usageType": "Generic"}
            if run:
                run.notices.append(
                    f"templates[{index}].usageType `Test` (Logto's older name) is read as `Generic`"
                )
        templates.append(item)
    return templates


def _check_templates(templates: list[Template]) -> list[Template]:
    """Check that each usage type and locale has one template, and the required ones exist."""
    problems: list[tuple[jsonpos.Path, str, str]] = []
    first: dict[tuple[str, str], int] = {}
    for index, template in enumerate(templates):
        key = (template.usageType, template.locale or "")
        if key in first:
            where = f"locale {key[1]}" if key[1] else "the default locale"
            problems.append(
                (
                    (index, "usageType"),
                    "value",
                    f"duplicate template: templates[{first[key]}] is already the "
                    f"{key[0]} template for {where}",
                )
            )
        else:
            first[key] = index
    missing = [usage for usage in REQUIRED_USAGE_TYPES if (usage, "") not in first]
    if missing:
        noun = "usage types" if len(missing) > 1 else "usage type"
        message = f"templates is missing the {noun} {', '.join(missing)}"
        if any(usage == u and locale for u in missing for (usage, locale) in first):
            message += " (a template with a `locale` does not count: each needs a default one)"
        problems.append(((), "value", message))
    if problems:
        raise PydanticCustomError(
            "config", "; ".join(message for _, _, message in problems), {"problems": problems}
        )
    return templates


class Template(_Model):
    """An email template: what to send for one usage type in one locale."""

    usageType: Annotated[
        UsageType,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "enum": list(USAGE_TYPES)},
                    {"const": "Test", "deprecated": True, "description": "Read as Generic."},
                ]
            }
        ),
    ] = Field(
        description="What the message is for: " + ", ".join(USAGE_TYPES) + ". Logto's older "
        "`Test` is read as Generic."
    )
    locale: Annotated[str, AfterValidator(_locale)] | None = Field(
        None,
        description="Language of this template as a language tag (`en`, `fr-CA`, `zh-Hans-CN`). "
        "Leave out for the default template, used when no localised one matches.",
    )
    contentType: ContentType = Field(
        description="`text/plain` or `text/html`. Values inserted into HTML are escaped."
    )
    subject: SingleLine = Field(
        description="Subject line, a single line; it may use the same placeholders as `content`."
    )
    content: NonEmpty = Field(
        description="Message body, with placeholders such as `{{code}}` (the verification code) "
        "and `{{link}}` (a sign-in or invitation link)."
    )
    replyTo: EmailAddress | None = Field(
        None, description="Address that replies to this message go to; overrides `replyTo`."
    )
    sendFrom: EmailAddress | None = Field(
        None,
        description="Sender for this template, overriding `fromEmail`: an email address with "
        "an optional display name.",
    )


Templates = Annotated[
    list[Template],
    BeforeValidator(_read_legacy_usage_types),
    AfterValidator(_check_templates),
]


class SmtpConfig(_Model):
    """Config of an SMTP connector, in Logto's format (nodemailer's SMTP options)."""

    model_config = ConfigDict(title="SMTP connector config")

    host: HostName = Field(
        description="Host name or IP address of the SMTP server, such as `smtp.example.com`: "
        "no scheme and no port."
    )
    port: Port = Field(
        description="TCP port of the SMTP server: usually 587 (STARTTLS) or 465 (TLS from the "
        'start, with `secure`). A numeric string such as "587" is read as a number.'
    )
    secure: bool = Field(
        False,
        description="Use TLS from the first byte (implicit TLS, usually port 465). Leave false "
        "for ports 587 and 25: the connection is then upgraded with STARTTLS when the server "
        "offers it. Default: false.",
    )
    auth: Auth | None = Field(
        None,
        description='Credentials: `{"user", "pass"}` to log in with a password, or an object '
        'with `"type": "OAuth2"`. Leave out for a server that accepts mail without logging in.',
    )
    fromEmail: EmailAddress = Field(
        description="Sender of every message: an email address with an optional display name, "
        "such as `Example <no-reply@example.com>`. Most providers only accept a sender you "
        "have verified with them."
    )
    replyTo: EmailAddress | None = Field(
        None,
        description="Address that replies go to, when not `fromEmail`; a template's own "
        "`replyTo` takes precedence.",
    )
    requireTLS: bool | None = Field(
        None,
        description="Refuse to send unless the server upgrades the connection with STARTTLS "
        "(when `secure` is false). Recommended on port 587, so that the password is never sent "
        "in the clear. Default: false.",
    )
    ignoreTLS: bool | None = Field(
        None,
        description="Never use STARTTLS, even when the server offers it: the connection stays "
        "unencrypted. Only for test servers; not together with `requireTLS`. Default: false.",
    )
    tls: TlsOptions | None = Field(None, description="Options of the TLS connection.")
    servername: HostName | None = Field(
        None,
        description="Host name to check the server's certificate against, when `host` is an IP "
        "address or an alias. Default: `host`.",
    )
    name: HostName | None = Field(
        None,
        description="Host name this console gives in its EHLO greeting. "
        "Default: the machine's host name.",
    )
    localAddress: Annotated[str, AfterValidator(_ip_address)] | None = Field(
        None,
        description="Local IP address to connect from, on a machine with several network "
        "interfaces. Default: chosen by the operating system.",
    )
    connectionTimeout: Milliseconds = Field(
        120_000,
        description="Milliseconds to wait for the connection to the server. "
        "Default: 120000 (2 minutes).",
    )
    greetingTimeout: Milliseconds = Field(
        30_000,
        description="Milliseconds to wait for the server's greeting once connected. "
        "Default: 30000 (30 seconds).",
    )
    socketTimeout: Milliseconds = Field(
        600_000,
        description="Milliseconds of silence after which the connection is dropped. "
        "Default: 600000 (10 minutes).",
    )
    dnsTimeout: Milliseconds = Field(
        30_000,
        description="Milliseconds to wait for the DNS lookup of `host`. "
        "Default: 30000 (30 seconds).",
    )
    customHeaders: CustomHeaders | None = Field(
        None,
        description="Extra headers for every message: header name → value, or a list of values "
        "to repeat the header. Values are single lines.",
    )
    logger: bool | None = Field(
        None, description="Log the main events of each SMTP session. Default: false."
    )
    debug: bool | None = Field(
        None,
        description="Log the SMTP commands and replies in full, for troubleshooting (with "
        "`logger`). Default: false.",
    )
    disableFileAccess: bool | None = Field(
        None,
        description="Never read message content from local files (a nodemailer option, kept "
        "for Logto compatibility). Default: false.",
    )
    disableUrlAccess: bool | None = Field(
        None,
        description="Never fetch message content from URLs (a nodemailer option, kept for "
        "Logto compatibility). Default: false.",
    )
    templates: Templates = Field(
        description="Email templates, one per usage type and locale; at least "
        + ", ".join(REQUIRED_USAGE_TYPES)
        + " for the default locale."
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], run: _Run | None) -> dict[str, Any]:
        """Move Logto's older top-level `username`/`password` into `auth`, then drop empties."""
        if ("username" in data or "password" in data) and _is_empty(data.get("auth")):
            data.pop("auth", None)
            user, password = data.pop("username", None), data.pop("password", None)
            if not (_is_empty(user) and _is_empty(password)):
                moved = {"user": user, "pass": password}
                data["auth"] = {k: v for k, v in moved.items() if not _is_empty(v)}
                if run:
                    run.legacy_auth = True
                    run.notices.append(
                        "top-level `username`/`password` (Logto's older form) were moved "
                        "into `auth.user`/`auth.pass`"
                    )
        return super()._prepare(data, run)

    @field_validator("ignoreTLS")
    @classmethod
    def _not_with_require_tls(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("requireTLS"):
            _fail(
                "cannot be true together with `requireTLS`: one forbids STARTTLS, the other "
                "demands it; remove `ignoreTLS`"
            )
        return value

    @model_validator(mode="after")
    def _advise(self, info: ValidationInfo) -> SmtpConfig:
        run = _Run.of(info)
        if run is None:
            return self
        if self.secure and self.port == 587:
            run.notices.append(
                "port 587 expects STARTTLS, but `secure` is true: set `secure` to false "
                "(STARTTLS is used automatically), or use port 465"
            )
        if not self.secure and self.port == 465:
            run.notices.append(
                "port 465 expects TLS from the start, but `secure` is false: set `secure` to "
                "true, or use port 587"
            )
        if self.tls and self.tls.rejectUnauthorized is False:
            run.notices.append(
                "`tls.rejectUnauthorized` is false: the server's certificate is not checked, "
                "so the connection can be intercepted; use it only with a test server"
            )
        if self.ignoreTLS and self.auth:
            run.notices.append("`ignoreTLS` is true: credentials are sent without encryption")
        return self


class HttpConfig(_Model):
    """Config of an HTTP email connector, in Logto's format."""

    model_config = ConfigDict(title="HTTP email connector config")

    endpoint: HttpUrl = Field(
        description="URL that each message is POSTed to as JSON, as Logto's HTTP email connector "
        'does: `{"to", "type", "payload"}`. It must answer 2xx once it has the message.'
    )
    authorization: Annotated[Secret, AfterValidator(_single_line)] | None = Field(
        None,
        repr=False,
        description="Value of the `Authorization` header of each request, such as "
        "`Bearer <token>`. Stored encrypted; shown as ********.",
    )
    templates: Templates | None = Field(
        None,
        description="Optional email templates, one per usage type and locale (Logto's HTTP "
        "connector has none). When given, "
        + ", ".join(REQUIRED_USAGE_TYPES)
        + " are needed for the default locale, as for SMTP.",
    )


CONFIG_MODELS: dict[str, type[SmtpConfig] | type[HttpConfig]] = {
    "smtp": SmtpConfig,
    "http": HttpConfig,
}


# Keys that are not in the schema but that people bring from nodemailer, Logto or elsewhere.
_NOT_SUPPORTED = "is a nodemailer option that is not supported here"
_KEY_ADVICE: dict[type[BaseModel], dict[str, str]] = {
    SmtpConfig: {
        "pool": f"`pool` {_NOT_SUPPORTED}: connection reuse is built into the send service",
        "maxConnections": f"`maxConnections` {_NOT_SUPPORTED}: the send service manages "
        "connections itself",
        "maxMessages": f"`maxMessages` {_NOT_SUPPORTED}: the send service manages connections "
        "itself",
        "rateDelta": f"`rateDelta` {_NOT_SUPPORTED}: the sending rate is set by the delivery "
        "queue and its workers",
        "rateLimit": f"`rateLimit` {_NOT_SUPPORTED}: the sending rate is set by the delivery "
        "queue and its workers",
        "dkim": f"`dkim` {_NOT_SUPPORTED}: let your mail provider or relay sign with DKIM "
        "(most do for a verified domain)",
        "proxy": f"`proxy` {_NOT_SUPPORTED}: the console connects to `host` directly",
        "service": f"`service` {_NOT_SUPPORTED}: set `host`, `port` and `secure` (the presets "
        "fill them in for Gmail, SendGrid and others)",
        "url": f"`url` {_NOT_SUPPORTED}: give `host`, `port`, `secure` and `auth` as separate keys",
        "transport": f"`transport` {_NOT_SUPPORTED}: the connector kind chooses the transport",
        "secured": f"`secured` {_NOT_SUPPORTED} (it describes a socket upgraded in code); did "
        "you mean `secure`?",
        "authMethod": f"`authMethod` {_NOT_SUPPORTED}: the mechanism is chosen from those the "
        "server offers",
        "lmtp": f"`lmtp` {_NOT_SUPPORTED}: only SMTP is spoken",
        "opportunisticTLS": f"`opportunisticTLS` {_NOT_SUPPORTED}: a failed STARTTLS always "
        "stops the send; `ignoreTLS` skips STARTTLS altogether",
        "forceAuth": f"`forceAuth` {_NOT_SUPPORTED}: the server must offer AUTH when `auth` is set",
        "customAuth": f"`customAuth` {_NOT_SUPPORTED}: use a password login or OAuth2 in `auth`",
        "getSocket": f"`getSocket` {_NOT_SUPPORTED}: it needs JavaScript code",
        "connection": f"`connection` {_NOT_SUPPORTED}: it needs JavaScript code",
        "transactionLog": f"`transactionLog` {_NOT_SUPPORTED}: every attempt is recorded in the "
        "delivery log",
        "username": "give either `auth` or the older top-level `username`/`password`, not both",
        "password": "give either `auth` or the older top-level `username`/`password`, not both",
        "user": "unknown key; the user name goes in `auth.user`",
        "pass": "unknown key; the password goes in `auth.pass`",
        "from": "unknown key; the sender is `fromEmail` in Logto's format",
        "headers": "unknown key; headers for every message go in `customHeaders`",
    },
    TlsOptions: {
        **dict.fromkeys(
            ("cert", "key", "pfx", "passphrase"),
            "client certificates are not supported: remove this key",
        ),
        "secureProtocol": "`secureProtocol` is not supported: use `minVersion` and `maxVersion`",
        "checkServerIdentity": "`checkServerIdentity` needs JavaScript code; use `servername` "
        "to name the host the certificate must match",
    },
    LoginAuth: dict.fromkeys(
        (
            "clientId",
            "clientSecret",
            "refreshToken",
            "accessToken",
            "expires",
            "accessUrl",
            "privateKey",
            "serviceClient",
        ),
        'this is an OAuth2 setting: set `type` to "OAuth2" to log in with OAuth2',
    ),
    OAuth2TokenAuth: {
        "pass": 'OAuth2 logs in with tokens, not `pass`: set `type` to "login" for a password',
    },
    OAuth2ServiceAuth: {
        "pass": 'OAuth2 logs in with tokens, not `pass`: set `type` to "login" for a password',
        **dict.fromkeys(
            ("clientId", "clientSecret", "refreshToken", "accessToken", "expires", "accessUrl"),
            "not used with a service account (`privateKey` and `serviceClient`)",
        ),
    },
    HttpConfig: {
        "url": "unknown key; the URL is `endpoint` in Logto's format",
        "headers": "unknown key; only the `authorization` header can be set",
    },
}


# Error translation --------------------------------------------------------------------------

# Discriminated unions put their tag in an error's location: (auth, "login", pass).
_UNION_FIELDS = frozenset({"auth", "privateKey"})
_TAG_MODELS: dict[str, type[BaseModel] | None] = {
    "login": LoginAuth,
    "oauth2-token": OAuth2TokenAuth,
    "oauth2-service": OAuth2ServiceAuth,
    "pem": None,
    "pem-with-passphrase": PrivateKeyWithPassphrase,
}
_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
}
_EXPECTED_AT = {
    "port": "expected a port number from 1 to 65535",
    "auth": 'expected an object such as {"user": "…", "pass": "…"}',
    "privateKey": "expected the key as PEM text, or an object with `key` and `passphrase`",
    "templates": "expected a list of templates",
    "tls": "expected an object of TLS options",
    "customHeaders": "expected an object of header names and values",
}
_MISSING_AT = {
    "host": "required: the SMTP server's host name, such as smtp.example.com",
    "port": "required: usually 587 (STARTTLS) or 465 (TLS from the start)",
    "fromEmail": "required: the sender's email address, such as no-reply@example.com",
    "templates": "required: a list of templates, with at least " + ", ".join(REQUIRED_USAGE_TYPES),
    "endpoint": "required: the URL that messages are POSTed to",
}
_LEGACY_AUTH_PATHS: dict[jsonpos.Path, jsonpos.Path] = {
    ("auth", "user"): ("username",),
    ("auth", "pass"): ("password",),
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _clean_location(location: tuple[str | int, ...]) -> tuple[jsonpos.Path, bool]:
    """Return (path in the document, whether the error is about the key) of a pydantic loc."""
    path: list[str | int] = []
    previous: str | int | None = None
    at_key = False
    for part in location:
        if part == "[key]":
            at_key = True
        elif not (previous in _UNION_FIELDS and part in _TAG_MODELS):
            path.append(part)
        previous = part
    return tuple(path), at_key


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], location: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Return the model that validates the object at a pydantic loc."""
    model: type[BaseModel] | None = root
    for part in location:
        if model is None:
            return None
        if isinstance(part, str) and part in _TAG_MODELS and part not in _by_alias(model):
            model = _TAG_MODELS[part]
        elif isinstance(part, str):
            info = _by_alias(model).get(part)
            model = _nested_model(info.annotation) if info is not None else None
    return model


@cache
def _by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _suggest(word: str, choices: list[str], *, fuzzy: bool = True) -> str | None:
    """Return the choice that `word` most likely misspells, ignoring case, - and _."""
    folded = {re.sub(r"[-_\s]", "", choice.lower()): choice for choice in choices}
    key = re.sub(r"[-_\s]", "", word.lower())
    if key in folded or not fuzzy:
        return folded.get(key)
    close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.75)
    return folded[close[0]] if close else None


def _unknown_key_message(model: type[BaseModel] | None, key: str) -> str:
    if model is None:
        return "unknown key"
    advice = _KEY_ADVICE.get(model, {}).get(key)
    if advice:
        return advice
    allowed = list(_by_alias(model))
    suggestion = _suggest(key, allowed)
    if suggestion:
        return f"unknown key; did you mean `{suggestion}`?"
    if len(allowed) <= 10:
        return "unknown key; the keys allowed here are " + ", ".join(allowed)
    return "unknown key (the field reference lists the keys allowed here)"


def _message(detail: Any, path: jsonpos.Path) -> str:
    """Return a pydantic error's message in words for people, never echoing the value."""
    kind: str = detail["type"]
    value = detail.get("input")
    context = detail.get("ctx") or {}
    leaf = next((part for part in reversed(path) if isinstance(part, str)), "")
    if kind == "config":
        return str(detail["msg"])
    if kind in _EXPECTED:
        if value is None:
            return "required: must not be null"
        expected = _EXPECTED_AT.get(leaf, _EXPECTED[kind])
        return f"{expected} (got {_json_type(value)})"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(context.get("expected", "")))
        message = "must be one of: " + ", ".join(options)
        if leaf == "usageType":
            message = "unknown usage type; " + message
        # Only a different spelling of a valid value: "TLSv1.0" is nearest to TLSv1.3, wrongly.
        suggestion = _suggest(value, options, fuzzy=False) if isinstance(value, str) else None
        return message + (f" (did you mean `{suggestion}`?)" if suggestion else "")
    if kind == "string_too_short":
        return "must not be empty"
    if leaf == "port" and kind in ("greater_than_equal", "less_than_equal"):
        return "must be a port number from 1 to 65535"
    if leaf.endswith("Timeout") and kind in ("greater_than_equal", "less_than_equal"):
        return f"must be from 1 to {MAX_TIMEOUT_MS} milliseconds (about 24 days)"
    if kind == "greater_than_equal":
        return f"must be at least {context.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {context.get('le')}"
    return "is not valid here"


@dataclass(frozen=True)
class _Located:
    """An error before it gets its line and column."""

    path: jsonpos.Path
    at: str  # "key", "value" or "parent": what the line and column point at
    message: str
    offset: int | None = None  # known already, for problems found while parsing


def _translate(exc: ValidationError, model: type[BaseModel], run: _Run) -> list[_Located]:
    """Return pydantic's errors as located messages for people."""
    located: list[_Located] = []
    for detail in exc.errors(include_url=False):
        location = tuple(detail["loc"])
        path, at_key = _clean_location(location)
        problems = (detail.get("ctx") or {}).get("problems")
        if detail["type"] == "extra_forbidden":
            owner = _model_at(model, location[:-1])
            located.append(_Located(path, "key", _unknown_key_message(owner, str(location[-1]))))
        elif detail["type"] == "missing":
            located.append(_Located(path, "parent", _MISSING_AT.get(str(path[-1]), "required")))
        elif problems:
            located.extend(_Located((*path, *sub), at, message) for sub, at, message in problems)
        else:
            located.append(_Located(path, "key" if at_key else "value", _message(detail, path)))
    if run.legacy_auth:
        # The text has `username`/`password`, not `auth`: point there.
        located = [
            _Located(_LEGACY_AUTH_PATHS.get(e.path, e.path), e.at, e.message) for e in located
        ]
    return located


# Validation ---------------------------------------------------------------------------------


def _decode(text: str | bytes, max_bytes: int | None) -> str | ConfigError:
    """Return the text as str, or the error that makes it unreadable."""
    limit = f"{max_bytes // 1024} KiB" if max_bytes else ""
    too_big = ConfigError(
        "", 1, 1, f"the config is larger than {limit}, the most accepted (a config is a few KiB)"
    )
    if isinstance(text, str):
        if max_bytes is not None and (
            len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            return too_big
        return text
    if not isinstance(text, bytes | bytearray):
        return ConfigError("", 1, 1, "expected the config as text")
    if max_bytes is not None and len(text) > max_bytes:
        return too_big
    data = bytes(text)
    encoding = json.detect_encoding(data)  # UTF-16/32 with a BOM come from Windows tools
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode(encoding, "replace")) + 1
        return ConfigError("", line, column, f"the text is not valid {encoding.upper()}")


def _shown_path(path: str, secret_paths: tuple[str, ...]) -> str:
    """Return a path fit to show: keys someone typed inside a secret may be part of it."""
    for secret in secret_paths:
        inside = path.removeprefix(secret + ".")
        if inside != path and inside not in ("key", "passphrase"):
            return secret
    return path


def _validate_text(kind: str, text: str | bytes, *, max_bytes: int | None) -> ValidationResult:
    """Validate a config text: decode, parse with positions, validate, locate every error."""
    decoded = _decode(text, max_bytes)
    if isinstance(decoded, ConfigError):
        return ValidationResult(None, [decoded])
    try:
        document, source, problems = jsonpos.parse(decoded)
    except jsonpos.JsonSyntaxError as exc:
        source = jsonpos.SourceMap(decoded)
        line, column = source.line_column(exc.offset)
        path = jsonpos.render_path(exc.path)
        return ValidationResult(None, [ConfigError(path, line, column, exc.message)], [], source)

    located = [_Located(p.path, "value", p.message, p.offset) for p in problems]
    run = _Run()
    model = CONFIG_MODELS.get(kind)
    config: BaseModel | None = None
    if model is None:
        located.append(
            _Located((), "value", "unknown connector kind; must be one of: " + ", ".join(KINDS))
        )
    elif not isinstance(document, dict):
        located.append(
            _Located((), "value", f"the config must be a JSON object, not {_json_type(document)}")
        )
    else:
        try:
            config = model.model_validate(document, context={"run": run})
        except ValidationError as exc:
            located.extend(_translate(exc, model, run))

    errors: dict[tuple[str, int, int, str], ConfigError] = {}
    for item in located:
        offset = source.offset(item.path, at=item.at) if item.offset is None else item.offset
        line, column = source.line_column(offset)
        path = _shown_path(jsonpos.render_path(item.path), SECRET_PATHS.get(kind, ()))
        error = ConfigError(path, line, column, item.message)
        errors.setdefault((error.path, line, column, error.message), error)
    ordered = sorted(errors.values(), key=lambda e: (e.line, e.column))
    if len(ordered) > MAX_ERRORS:
        hidden = len(ordered) - MAX_ERRORS
        ordered = [*ordered[:MAX_ERRORS], ConfigError("", 1, 1, f"and {hidden} more errors")]
    if run.legacy_auth:
        # Callers locate secrets by their `auth.*` path; in this text they are top-level keys.
        source.alias(("auth", "user"), ("username",))
        source.alias(("auth", "pass"), ("password",))
    data = config.model_dump(mode="json") if config is not None and not ordered else None
    return ValidationResult(data, ordered, run.notices, source)


def _internal_error() -> ValidationResult:
    """Return the answer for a bug in this module, which must not become a 500 or a traceback."""
    message = "the config could not be checked because of an internal error; please report it"
    return ValidationResult(None, [ConfigError("", 1, 1, message)])


def validate_config(kind: str, text: str | bytes) -> ValidationResult:
    """Validate a config submitted as JSON text; never raises."""
    try:
        return _validate_text(kind, text, max_bytes=MAX_CONFIG_BYTES)
    except Exception:  # The promise is "never raises": a bug must not become a 500.
        return _internal_error()


def validate_config_data(kind: str, data: object) -> ValidationResult:
    """Validate an already-parsed config; positions refer to `json.dumps(data, indent=2)`."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, TypeError):
            reason = "it holds a value that is not JSON"
        elif isinstance(exc, RecursionError):
            reason = "nesting too deep"
        elif "ircular" in str(exc):
            reason = "it refers to itself (a circular reference)"
        elif "digits" in str(exc):
            reason = "it holds a number with too many digits"
        else:
            reason = "it holds NaN or Infinity"
        return ValidationResult(None, [ConfigError("", 1, 1, f"the config is not JSON: {reason}")])
    try:
        return _validate_text(kind, text, max_bytes=None)
    except Exception:  # As in validate_config.
        return _internal_error()


def dump_config(data: dict[str, Any]) -> str:
    """Return a config as the JSON text the console exports."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _tidy_schema(node: Any) -> Any:
    """Return a JSON Schema as the validator reads configs: an optional field may be `""`."""
    if isinstance(node, list):
        return [_tidy_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _tidy_schema(v) for k, v in node.items() if not (k == "default" and v is None)}
    required = set(node.get("required", ()))
    for name, prop in node.get("properties", {}).items():
        if name not in required:
            for branch in prop.get("anyOf", [prop]):
                branch.pop("minLength", None)
    return node


def json_schema(kind: str) -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of a kind's config, for the browser editor."""
    model = CONFIG_MODELS[kind]
    schema = _tidy_schema(model.model_json_schema(by_alias=True))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
