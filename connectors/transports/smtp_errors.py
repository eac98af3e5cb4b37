"""Explain a failed SMTP conversation: transient or permanent, the server's words, what to try."""

from __future__ import annotations

import smtplib
import ssl
from typing import TYPE_CHECKING

from .base import SendTimeLimit, TransportError

if TYPE_CHECKING:
    from .smtp import SmtpSettings

__all__ = ["classify"]

# What had failed, by how far the conversation got.
FAILED = {
    "dns": "Could not look up the SMTP server {host}",
    "connect": "Could not connect to the SMTP server at {where}",
    "tls": "The TLS handshake with {where} failed",
    "greeting": "The SMTP server at {where} did not greet",
    "ehlo": "The SMTP server at {where} refused EHLO",
    "starttls": "Switching to TLS with STARTTLS at {where} failed",
    "auth": "Authentication at {where} failed",
    "mail": "The SMTP server at {where} refused the sender",
    "rcpt": "The SMTP server at {where} refused the recipient",
    "data": "The SMTP server at {where} did not take the message",
}
# Where a conversation was when it stalled, for people.
STEPS = {
    "dns": "looking up the host",
    "connect": "connecting",
    "tls": "the TLS handshake",
    "greeting": "waiting for the greeting",
    "ehlo": "at EHLO",
    "starttls": "at STARTTLS",
    "auth": "logging in",
    "mail": "at MAIL FROM",
    "rcpt": "at RCPT TO",
    "data": "sending the message",
}
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH


def classify(
    exc: BaseException, phase: str, settings: SmtpSettings, transcript: list[str]
) -> TransportError:
    """Return the TransportError that explains an exception raised in a conversation's phase."""
    failed = FAILED.get(phase, "The SMTP conversation with {where} failed").format(
        host=settings.host, where=settings.where
    )

    def error(
        message: str, *, permanent: bool, hint: str = "", code: int | None = None, text: str = ""
    ) -> TransportError:
        return TransportError(
            message,
            permanent=permanent,
            code=code,
            server_text=text,
            hint=hint,
            transcript=list(transcript),
        )

    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, smtplib.SMTPResponseException):
        code, text = exc.smtp_code, _text(exc.smtp_error)
        return error(
            failed,
            permanent=code >= 500,
            code=code,
            text=text,
            hint=_reply_hint(phase, code, text, settings),
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return error(
            f"{failed}: the server's certificate could not be verified "
            f"({str(exc.verify_message or exc.reason).rstrip('.')})",
            permanent=True,
            hint=_certificate_hint(exc, settings),
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return error(
            f"{failed}: the server closed the connection during the TLS handshake",
            permanent=False,
            hint=_wrong_tls_mode_hint(phase, settings),
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return error(
            f"{failed}: {reason.lower().replace('_', ' ')}",
            permanent=True,
            hint=_wrong_tls_mode_hint(phase, settings)
            or "The server and this client share no TLS version or cipher: check `tls.minVersion`.",
        )
    if isinstance(exc, SendTimeLimit) or isinstance(exc.__context__, SendTimeLimit):
        return error(
            f"The SMTP conversation with {settings.where} took longer than the send's time "
            f"limit ({STEPS.get(phase, phase)})",
            permanent=False,
            hint="The server answers too slowly; each send is cut off after "
            "CONNECTORS_SEND_TIMEOUT seconds so that one slow server cannot hold up the others.",
        )
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        seconds = {
            "dns": settings.dns_timeout,
            "connect": settings.connect_timeout,
            "tls": settings.connect_timeout,
            "greeting": settings.greeting_timeout,
        }.get(phase, settings.socket_timeout)
        stalled = (
            failed
            if phase in ("dns", "connect", "tls", "greeting")
            else (
                f"The SMTP server at {settings.where} stopped answering ({STEPS.get(phase, phase)})"
            )
        )
        return error(
            f"{stalled}: no answer within {seconds:g} s",
            permanent=False,
            hint=_timeout_hint(phase, settings),
        )
    if phase == "dns":
        return error(
            f"{failed}: {getattr(exc, 'strerror', None) or exc}",
            permanent=False,
            hint=f"Check `host` for typos: {settings.host!r} could not be resolved.",
        )
    if isinstance(exc, ConnectionRefusedError):
        return error(
            f"{failed}: connection refused",
            permanent=False,
            hint=f"Nothing accepts connections at {settings.where}: check `host` and `port`, "
            "and that the server is running.",
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError):
        return error(
            f"{failed}: the server closed the connection",
            permanent=False,
            hint=_disconnect_hint(phase, settings),
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return error(
            f"The SMTP server at {settings.where} cannot take this message: {exc}",
            permanent=True,
            hint="Use an address in ASCII, or a server that supports SMTPUTF8.",
        )
    if isinstance(exc, OSError):
        return error(f"{failed}: {exc.strerror or exc}", permanent=False)
    return error(f"{failed}: {exc}", permanent=False)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _is_gmail(settings: SmtpSettings, text: str) -> bool:
    host = settings.host.lower()
    return "gmail" in host or "googlemail" in host or "support.google.com" in text.lower()


def _reply_hint(phase: str, code: int, text: str, settings: SmtpSettings) -> str:
    """Return advice for an SMTP error reply, where its cause is common."""
    lower = text.lower()
    if phase == "auth":
        if code in (534, 535) and _is_gmail(settings, text):
            return (
                "Gmail needs an app password (Google Account > Security > 2-Step Verification "
                "> App passwords), not the account's normal password; or use OAuth2."
            )
        if code in (534, 535) and "sendgrid" in settings.host.lower():
            return (
                "For SendGrid, `auth.user` must be the word `apikey` and `auth.pass` an API key "
                "with Mail Send permission."
            )
        if code in (534, 535):
            if str((settings.auth or {}).get("type") or "").lower() == "oauth2":
                return (
                    "The access token was refused: check that it belongs to `auth.user` and "
                    "carries the mail scope (for Gmail, https://mail.google.com/)."
                )
            return (
                "Check `auth.user` and `auth.pass`; some providers want an app password or an "
                "API key rather than the account's password."
            )
        if code == 538 or "encryption required" in lower:
            if settings.ignore_tls:
                return (
                    "The server accepts credentials only over TLS: do not set `ignoreTLS`, or "
                    "use port 465 with `secure` set to true."
                )
            return (
                "The server accepts credentials only over TLS and offered no STARTTLS here: "
                "use port 465 with `secure` set to true, or a port where it offers STARTTLS."
            )
        if code in (500, 502, 503, 504):
            return (
                "The server does not offer this login method on this connection. If it offers "
                "AUTH only after STARTTLS, do not set `ignoreTLS`; if it needs no login, remove "
                "`auth`."
            )
    if code == 530 and "starttls" in lower:
        return (
            "The server takes mail only over TLS: do not set `ignoreTLS` (STARTTLS is then used "
            "whenever the server offers it), or use port 465 with `secure` set to true."
        )
    if code == 530 or "authentication required" in lower:
        if settings.auth:
            return "The server wants a login first, and did not get one it accepts: check `auth`."
        return "The server wants a login before it takes mail: set `auth`."
    if phase == "mail" and code in (550, 551, 553, 554):
        return (
            "`fromEmail` (or the template's `sendFrom`) must be a sender address or domain "
            "verified with this provider."
        )
    if phase == "rcpt" and code in (550, 551, 553):
        if settings.auth:
            return "Check the recipient's address: the server does not take mail for it."
        return (
            "Check the recipient's address. A server that does not relay for you refuses "
            "outside recipients; log in with `auth` to send through it."
        )
    if phase == "data" and code == 552:
        return "The message is larger than the server accepts."
    if phase == "greeting" and code >= 500:
        return "The server refuses connections from this address."
    if 400 <= code < 500:
        return "The server is busy or limiting the rate of messages: a later attempt may pass."
    return ""


def _certificate_hint(exc: ssl.SSLCertVerificationError, settings: SmtpSettings) -> str:
    if exc.verify_code in (HOSTNAME_MISMATCH, IP_MISMATCH):
        return (
            f"The certificate is not valid for {settings.tls_server_name!r}: if you connect by "
            "IP address or through another name, set `servername` to the name on the "
            "certificate."
        )
    return (
        "If the server uses a private or self-signed CA, put its certificate (PEM) in "
        "`tls.ca`, and check that `servername` matches the certificate. "
        "`tls.rejectUnauthorized: false` skips the check, but then the mail can be intercepted."
    )


def _wrong_tls_mode_hint(phase: str, settings: SmtpSettings) -> str:
    if phase == "tls":
        return (
            f"Port {settings.port} expects STARTTLS (or plain SMTP), not implicit TLS: set "
            "`secure` to false, or use port 465."
        )
    return ""


def _timeout_hint(phase: str, settings: SmtpSettings) -> str:
    if phase == "dns":
        return "The DNS resolver did not answer: check the network, or raise `dnsTimeout`."
    if phase == "connect" and settings.port == 25:
        return (
            "Many networks and cloud providers block outbound port 25: use port 587 (STARTTLS) "
            "or 465 (with `secure` set to true)."
        )
    if phase == "connect":
        return (
            f"Check `host` and `port`, and that a firewall lets connections to port "
            f"{settings.port} out."
        )
    if phase == "tls":
        return _wrong_tls_mode_hint(phase, settings)
    if phase == "greeting" and not settings.secure:
        if settings.port == 465:
            return "Port 465 expects implicit TLS: set `secure` to true."
        return (
            f"The server took the connection but sent no greeting. If port {settings.port} "
            "expects implicit TLS (usually 465), set `secure` to true."
        )
    return "The server stopped answering: a later attempt may pass."


def _disconnect_hint(phase: str, settings: SmtpSettings) -> str:
    if phase == "data":
        return (
            "The connection dropped while the message was being sent: if it is sent again, it "
            "may arrive twice, in case the server had in fact taken it."
        )
    if phase == "greeting" and not settings.secure and settings.port == 465:
        return "Port 465 expects implicit TLS: set `secure` to true."
    if phase == "greeting":
        return "The server hung up before greeting: it may be overloaded or refuse this address."
    return "A later attempt may pass."
