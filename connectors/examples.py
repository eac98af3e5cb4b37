"""Example connector configs and SMTP provider presets, shown when a connector is created.

An example holds every field a person may want to set, so that the editor teaches the format;
`schema.validate_config_data` accepts each one unchanged (the tests make sure of it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "example_config", "example_config_text"]


@dataclass(frozen=True)
class Preset:
    """The SMTP settings of a well-known provider, and what to know before using it."""

    key: str
    label: str
    host: str
    port: int
    secure: bool
    require_tls: bool
    username: str  # the provider's convention for `auth.user`
    from_hint: str
    notes: str
    docs_url: str


PRESETS: dict[str, Preset] = {
    preset.key: preset
    for preset in (
        Preset(
            key="gmail",
            label="Gmail / Google Workspace",
            host="smtp.gmail.com",
            port=587,
            secure=False,
            require_tls=True,
            username="your full Gmail address",
            from_hint="Your Gmail address, or an alias added under “Send mail as”.",
            notes=(
                "Google refuses the account password here: turn on 2-Step Verification and "
                "create an app password for the connector. Gmail rewrites the sender to the "
                "signed-in account unless the address is one of its aliases, and daily sending "
                "is limited."
            ),
            docs_url="https://support.google.com/a/answer/176600",
        ),
        Preset(
            key="sendgrid",
            label="SendGrid",
            host="smtp.sendgrid.net",
            port=587,
            secure=False,
            require_tls=True,
            username="apikey",
            from_hint="An address or domain verified under Sender Authentication.",
            notes=(
                "The user name is the word apikey, exactly; the password is an API key with at "
                "least the Mail Send permission. Mail from a sender that is not verified is "
                "rejected."
            ),
            docs_url="https://docs.sendgrid.com/for-developers/sending-email/integrating-with-the-smtp-api",
        ),
        Preset(
            key="aliyun",
            label="Alibaba Cloud DirectMail",
            host="smtpdm.aliyun.com",
            port=465,
            secure=True,
            require_tls=False,
            username="the sender address created in the DirectMail console",
            from_hint="The same sender address as the user name.",
            notes=(
                "Create a sender address in the DirectMail console and set its SMTP password "
                "there. Port 465 uses TLS from the start; port 80 works without TLS. Accounts "
                "in other regions use their own host, such as smtpdm-ap-southeast-1.aliyun.com."
            ),
            docs_url="https://www.alibabacloud.com/help/en/directmail/latest/smtp-service-address",
        ),
        Preset(
            key="microsoft365",
            label="Microsoft 365 / Outlook",
            host="smtp.office365.com",
            port=587,
            secure=False,
            require_tls=True,
            username="the mailbox's full address",
            from_hint="The mailbox's address, or one it has Send As permission for.",
            notes=(
                "An administrator must enable authenticated SMTP (SMTP AUTH) for the mailbox; "
                "new tenants have it off. Microsoft is retiring password logins for SMTP AUTH, "
                'so prefer OAuth2 (`"type": "OAuth2"` in `auth`).'
            ),
            docs_url="https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365",
        ),
        Preset(
            key="ses",
            label="Amazon SES",
            host="email-smtp.us-east-1.amazonaws.com",
            port=587,
            secure=False,
            require_tls=True,
            username="the SES SMTP user name (not an IAM access key ID)",
            from_hint="An address or domain verified as an SES identity in the same region.",
            notes=(
                "Use the host of your region, email-smtp.<region>.amazonaws.com, and SMTP "
                "credentials created in the SES console: IAM access keys do not work. New "
                "accounts are in the sandbox and can only send to verified addresses until "
                "production access is granted."
            ),
            docs_url="https://docs.aws.amazon.com/ses/latest/dg/send-email-smtp.html",
        ),
        Preset(
            key="mailgun",
            label="Mailgun",
            host="smtp.mailgun.org",
            port=587,
            secure=False,
            require_tls=True,
            username="postmaster@your-domain (an SMTP user of the domain)",
            from_hint="An address on the sending domain set up in Mailgun.",
            notes=(
                "Each sending domain has its own SMTP users and passwords, found in the "
                "domain's settings. Domains in the EU region use smtp.eu.mailgun.org instead."
            ),
            docs_url="https://documentation.mailgun.com/docs/mailgun/user-manual/smtp-protocol/",
        ),
    )
}

# Values that look real in an example config for each preset: (auth.user, auth.pass, sender).
_PRESET_ACCOUNTS: dict[str, tuple[str, str, str]] = {
    "gmail": ("your.name@gmail.com", "your-16-letter-app-password", "your.name@gmail.com"),
    "sendgrid": ("apikey", "SG.your-api-key", "no-reply@example.com"),
    "aliyun": ("no-reply@mail.example.com", "your-smtp-password", "no-reply@mail.example.com"),
    "microsoft365": ("no-reply@example.com", "your-mailbox-password", "no-reply@example.com"),
    "ses": ("AKIAIOSFODNN7EXAMPLE", "your-ses-smtp-password", "no-reply@example.com"),
    "mailgun": ("postmaster@mg.example.com", "your-smtp-password", "no-reply@mg.example.com"),
}


def _template(usage: str, content_type: str, subject: str, content: str) -> dict[str, Any]:
    return {"usageType": usage, "contentType": content_type, "subject": subject, "content": content}


_HTML = "text/html"
_TEXT = "text/plain"

EXAMPLE_TEMPLATES: list[dict[str, Any]] = [
    _template(
        "Register",
        _TEXT,
        "Your code to create an account",
        "Welcome! Your verification code is {{code}}. It expires in 10 minutes.\n\n"
        "If you did not try to create an account, you can ignore this email.",
    ),
    _template(
        "SignIn",
        _TEXT,
        "Your sign-in code",
        "Your sign-in code is {{code}}. It expires in 10 minutes.\n\n"
        "If you did not try to sign in, you can ignore this email: nobody can use the code "
        "without access to your mailbox.",
    ),
    _template(
        "ForgotPassword",
        _HTML,
        "Reset your password",
        "<p>We received a request to reset your password.</p>"
        "<p>Your code is <strong>{{code}}</strong>. It expires in 10 minutes.</p>"
        "<p>If you did not ask for this, ignore this email: your password stays the same.</p>",
    ),
    _template(
        "Generic",
        _TEXT,
        "Your verification code",
        "Your verification code is {{code}}. It expires in 10 minutes.",
    ),
    {
        **_template(
            "OrganizationInvitation",
            _HTML,
            "You are invited to join an organization",
            "<p>You have been invited to join an organization.</p>"
            '<p><a href="{{link}}">Accept the invitation</a></p>'
            "<p>If the button does not work, copy this link into your browser: {{link}}</p>",
        ),
        "replyTo": "support@example.com",
        "sendFrom": "Example Invitations <no-reply@example.com>",
    },
    _template(
        "UserPermissionValidation",
        _TEXT,
        "Confirm it is you",
        "To continue with a sensitive change to your account, enter this code: {{code}}. "
        "It expires in 10 minutes.",
    ),
    _template(
        "BindNewIdentifier",
        _TEXT,
        "Confirm your new email address",
        "Enter {{code}} to link this email address to your account. It expires in 10 minutes.",
    ),
    _template(
        "MfaVerification",
        _TEXT,
        "Your two-step verification code",
        "Your two-step verification code is {{code}}. It expires in 10 minutes.",
    ),
    _template(
        "BindMfa",
        _HTML,
        "Turn on email two-step verification",
        "<p>You are turning on two-step verification by email.</p>"
        "<p>Enter <strong>{{code}}</strong> to confirm. It expires in 10 minutes.</p>",
    ),
    {
        **_template(
            "SignIn",
            _TEXT,
            "Votre code de connexion",
            "Votre code de connexion est {{code}}. Il expire dans 10 minutes.",
        ),
        "locale": "fr",
    },
]


def _smtp_example(preset: Preset | None) -> dict[str, Any]:
    host = preset.host if preset else "smtp.example.com"
    user, password, sender = (
        _PRESET_ACCOUNTS[preset.key]
        if preset
        else ("no-reply@example.com", "your-smtp-password", "no-reply@example.com")
    )
    templates = copy.deepcopy(EXAMPLE_TEMPLATES)
    for template in templates:
        if "sendFrom" in template:
            template["sendFrom"] = f"Example Invitations <{sender}>"
    return {
        "host": host,
        "port": preset.port if preset else 587,
        "secure": preset.secure if preset else False,
        "auth": {"type": "login", "user": user, "pass": password},
        "fromEmail": f"Example <{sender}>",
        "replyTo": "support@example.com",
        "requireTLS": preset.require_tls if preset else True,
        "ignoreTLS": False,
        # `ca` and `ciphers` are left out on purpose: a value there narrows what is trusted
        # (a `ca` replaces the system's authorities), so no example value is safe to keep.
        "tls": {
            "rejectUnauthorized": True,
            "servername": host,
            "minVersion": "TLSv1.2",
            "maxVersion": "TLSv1.3",
        },
        "servername": host,
        "name": "mail-sender.example.com",
        # Empty means "not set": an address here would have to be one of this machine's.
        "localAddress": "",
        "connectionTimeout": 120000,
        "greetingTimeout": 30000,
        "socketTimeout": 600000,
        "dnsTimeout": 30000,
        "customHeaders": {"X-Mailer": "Connector Console"},
        "logger": False,
        "debug": False,
        "disableFileAccess": True,
        "disableUrlAccess": True,
        "templates": templates,
    }


def _http_example() -> dict[str, Any]:
    return {
        "endpoint": "https://mail.example.com/api/send-email",
        "authorization": "Bearer your-api-token",
        "templates": copy.deepcopy(EXAMPLE_TEMPLATES),
    }


def example_config(kind: str, preset: str | None = None) -> dict[str, Any]:
    """Return a full example config of a kind, with a provider preset's values filled in."""
    if kind == "http":
        if preset:
            raise ValueError("presets are SMTP providers; an http connector has none")
        return _http_example()
    if kind != "smtp":
        raise ValueError(f"unknown connector kind {kind!r}; expected smtp or http")
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return _smtp_example(PRESETS[preset] if preset else None)


def example_config_text(kind: str, preset: str | None = None) -> str:
    """Return the example config as the JSON text the editor starts from."""
    return json.dumps(example_config(kind, preset), indent=2, ensure_ascii=False) + "\n"
