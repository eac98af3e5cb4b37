"""Send through an SMTP server with smtplib, configured the way Logto's SMTP connector is.

Logto hands its config to nodemailer, so the options mean what they mean there: `secure` is
implicit TLS, otherwise STARTTLS is used whenever the server offers it (`ignoreTLS` never
upgrades, `requireTLS` fails without it); `auth.type` "login" (the default) picks the password
mechanism the server offers, PLAIN before LOGIN as nodemailer does, and `auth.method` forces one;
`auth.type` "OAuth2" uses XOAUTH2 with an access token renewed from the refresh token.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import hmac
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Buffer, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..rendering import PLAIN_ADDRESS, RenderedMessage, email_bytes
from .base import (
    MASK,
    SendResult,
    SendTimeLimit,
    Transport,
    TransportError,
    resolve,
    shut,
    watchdog,
)
from .oauth2 import OAuth2Token, can_refresh, refresh_access_token
from .smtp_errors import classify

__all__ = ["OAuth2Token", "SmtpSettings", "SmtpTransport", "default_client_name"]

logger = logging.getLogger(__name__)

TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# nodemailer's defaults, in milliseconds, for configs that did not go through the schema.
DEFAULT_TIMEOUTS_MS = {
    "connectionTimeout": 120_000,
    "greetingTimeout": 30_000,
    "socketTimeout": 600_000,
    "dnsTimeout": 30_000,
}
NOT_ENCRYPTED = (
    "The connection to {where} is not encrypted ({why}): the credentials and the message "
    "crossed the network in clear text."
)
NOT_VERIFIED = (
    "TLS certificate verification was skipped (tls.rejectUnauthorized is false): the "
    "connection is encrypted, but not proven to reach {host}."
)


@cache
def default_client_name() -> str:
    """Return the EHLO name nodemailer would use: this machine's name if fully qualified."""
    # socket.getfqdn(), smtplib's default, can stall for seconds on a reverse DNS lookup.
    name = socket.gethostname()
    if "." not in name:
        return "[127.0.0.1]"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return name
    return f"[{name}]"


# The pipelined commands' steps, and the replies that let the message go on.
PIPELINED = (("mail", (250,)), ("rcpt", (250, 251)), ("data", (354,)))
LEADING_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2)
FRESH_SECONDS = 2.0  # a kept connection used this recently is reused without a NOOP


@dataclass(frozen=True)
class SmtpSettings:
    """The parts of a config a connection needs, checked once."""

    host: str
    port: int
    secure: bool
    require_tls: bool
    ignore_tls: bool
    tls_context: ssl.SSLContext
    tls_server_name: str
    verify: bool
    client_name: str
    source_address: tuple[str, int] | None
    connect_timeout: float
    greeting_timeout: float
    socket_timeout: float
    dns_timeout: float
    auth: Mapping[str, Any] | None = field(repr=False)  # holds decrypted secrets
    log: bool

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _config_error(message: str, hint: str = "") -> TransportError:
    return TransportError(message, permanent=True, hint=hint)


def _seconds(config: Mapping[str, Any], key: str) -> float:
    value = config.get(key)
    if not isinstance(value, int | float) or value <= 0:
        value = DEFAULT_TIMEOUTS_MS[key]
    return value / 1000


def _tls_context(config: Mapping[str, Any]) -> tuple[ssl.SSLContext, bool]:
    """Return the TLS context the config asks for, and whether it verifies the server."""
    tls = config.get("tls") or {}
    ca = tls.get("ca")
    cadata = "\n".join(ca) if isinstance(ca, list | tuple) else ca
    try:
        # Like Node's `tls.ca`, given CAs replace the system's trusted ones.
        context = ssl.create_default_context(cadata=cadata or None)
    except (ssl.SSLError, ValueError) as exc:
        raise _config_error(
            f"tls.ca is not a usable PEM certificate ({exc})",
            "Paste the CA certificate(s) including the BEGIN/END CERTIFICATE lines.",
        ) from None
    # Python 3.13 turns on strict X.509 checks that Node (and so Logto) does not make; without
    # this, private CAs that work with Logto would be refused here.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    verify = tls.get("rejectUnauthorized", True) is not False
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    min_version = tls.get("minVersion")
    if min_version:
        if min_version not in TLS_VERSIONS:
            raise _config_error(
                f"tls.minVersion {min_version!r} is not a TLS version",
                f"Use one of {', '.join(TLS_VERSIONS)}.",
            )
        context.minimum_version = TLS_VERSIONS[min_version]
    return context, verify


def _settings(config: Mapping[str, Any]) -> SmtpSettings:
    """Return the connection settings of a config, or raise a permanent TransportError."""
    host = str(config.get("host") or "").strip()
    port = config.get("port")
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        raise _config_error("The SMTP config needs a host and a port between 1 and 65535")
    context, verify = _tls_context(config)
    tls = config.get("tls") or {}
    local = config.get("localAddress")
    auth = config.get("auth") or None
    if auth is not None:
        kind = str(auth.get("type") or "login").lower()
        if kind == "oauth2" and (auth.get("privateKey") or auth.get("serviceClient")):
            raise _config_error(
                "OAuth2 with a service account key (privateKey, serviceClient) is not "
                "supported yet",
                "Use an OAuth2 access token with a refresh token (clientId, clientSecret, "
                "refreshToken), or a password.",
            )
        if kind not in ("login", "oauth2"):
            raise _config_error(f"auth.type {auth.get('type')!r} is not known: use login or OAuth2")
        if kind == "login" and not (auth.get("user") and isinstance(auth.get("pass"), str)):
            raise _config_error("auth needs both user and pass")
    return SmtpSettings(
        host=host,
        port=port,
        secure=bool(config.get("secure")),
        require_tls=bool(config.get("requireTLS")),
        ignore_tls=bool(config.get("ignoreTLS")),
        tls_context=context,
        tls_server_name=str(tls.get("servername") or config.get("servername") or host),
        verify=verify,
        client_name=str(config.get("name") or default_client_name()),
        source_address=(str(local), 0) if local else None,
        connect_timeout=_seconds(config, "connectionTimeout"),
        greeting_timeout=_seconds(config, "greetingTimeout"),
        socket_timeout=_seconds(config, "socketTimeout"),
        dns_timeout=_seconds(config, "dnsTimeout"),
        auth=auth,
        log=bool(config.get("logger") or config.get("debug")),
    )


class _Connection(smtplib.SMTP):
    """An smtplib client that records the conversation, with secrets redacted, as it goes."""

    def __init__(self, settings: SmtpSettings, transcript: list[str]) -> None:
        self.settings = settings
        self.transcript = transcript
        self.warnings: list[str] = []
        self.phase = "connect"  # how far the conversation got; failures are explained by it
        self.redacting = False
        self.body_started = False
        self.encrypted = False
        self.last_challenge = b""  # the server's last SASL challenge, decoded
        self.deadline: float | None = None  # time.monotonic() by which the whole send must end
        super().__init__(
            local_hostname=settings.client_name,
            timeout=settings.connect_timeout,
            source_address=settings.source_address,
        )

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        """Return a socket connected within the config's DNS and connection time-outs."""
        settings = self.settings
        self.phase = "dns"
        addresses = resolve(host, port, timeout=self.within_deadline(settings.dns_timeout))
        if settings.source_address:
            family = ipaddress.ip_address(settings.source_address[0]).version
            addresses = [a for a in addresses if (a[0] == socket.AF_INET6) == (family == 6)]
        self.phase = "connect"
        error: OSError = OSError(f"{host} has no address to connect to")
        for family_, _, _, _, address in addresses:
            sock = socket.socket(family_, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.within_deadline(settings.connect_timeout))
                if settings.source_address:
                    sock.bind(settings.source_address)
                sock.connect(address)
                break
            except OSError as exc:
                sock.close()
                error = exc
        else:
            raise error
        try:
            if settings.secure:
                self.phase = "tls"
                sock = settings.tls_context.wrap_socket(
                    sock, server_hostname=settings.tls_server_name
                )
                self.encrypted = True
            sock.settimeout(self.within_deadline(settings.greeting_timeout))
        except BaseException:
            sock.close()
            raise
        self.phase = "greeting"
        return sock

    def within_deadline(self, timeout: float) -> float:
        """Return `timeout`, shortened to what is left of the send's time limit."""
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SendTimeLimit(self.phase)
        return min(timeout, left)

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def cut(self) -> None:
        """Shut the socket from another thread (the watchdog): the send's time limit has run out.

        Looking up and connecting are bounded by what is left of the limit (`within_deadline`);
        after that, every read's time-out restarts with each byte a server sends, so only the
        shut socket ends a send that outlasts its limit.
        """
        shut(self.sock)

    def starttls_as(self, context: ssl.SSLContext, server_name: str) -> None:
        """Upgrade to TLS, checking the certificate against server_name rather than the host."""
        # smtplib takes the TLS server name from the host it connected to; `servername` may differ.
        self._host = server_name
        self.starttls(context=context)
        self.encrypted = True

    def sasl(
        self, mechanism: str, initial: bytes | None, respond: Callable[[bytes], bytes]
    ) -> tuple[int, bytes]:
        """Run one SASL exchange with the secrets kept out of the transcript."""
        # smtplib.auth() encodes responses as ASCII, which fails on non-ASCII passwords.
        self.last_challenge = b""
        self.redacting = True
        try:
            if initial is None:
                code, reply = self.docmd("AUTH", mechanism)
            else:
                code, reply = self.docmd("AUTH", f"{mechanism} {_b64(initial)}")
            for _ in range(5):
                if code != 334:
                    break
                self.last_challenge = _unb64(reply)
                code, reply = self.docmd(_b64(respond(self.last_challenge)))
        finally:
            self.redacting = False
        return code, reply

    def send(self, s: str | Buffer) -> None:
        # smtplib sends commands as str and only the message body as bytes.
        if not isinstance(s, str):
            self.body_started = True
            self.transcript.append(f"C: <message, {memoryview(s).nbytes} bytes>")
        else:
            self.transcript.append("C: " + self._redacted(s.rstrip("\r\n")))
        try:
            super().send(s)
        except smtplib.SMTPServerDisconnected as exc:
            if self.past_deadline():
                raise SendTimeLimit(self.phase) from exc
            raise

    def pipeline(self, commands: list[str]) -> None:
        """Send several commands in one write (PIPELINING), each in the transcript."""
        if any("\r" in command or "\n" in command for command in commands):
            raise ValueError("a command may not hold a line break")  # as smtplib's putcmd()
        self.transcript.extend("C: " + command for command in commands)
        try:
            smtplib.SMTP.send(self, "".join(command + "\r\n" for command in commands))
        except smtplib.SMTPServerDisconnected as exc:
            if self.past_deadline():
                raise SendTimeLimit(self.phase) from exc
            raise

    def _redacted(self, line: str) -> str:
        if not self.redacting:
            return line
        verb, _, rest = line.partition(" ")
        if verb.upper() != "AUTH":
            return MASK  # a response to a challenge
        mechanism, _, response = rest.partition(" ")
        return f"{verb} {mechanism} {MASK}" if response else f"{verb} {mechanism}"

    def getreply(self) -> tuple[int, bytes]:
        try:
            code, reply = super().getreply()
        except smtplib.SMTPServerDisconnected as exc:
            timed_out = isinstance(exc.__context__, TimeoutError)
            self.transcript.append("S: <timed out>" if timed_out else "S: <connection closed>")
            if self.past_deadline():
                raise SendTimeLimit(self.phase) from exc
            raise
        lines = reply.decode("utf-8", "replace").split("\n")
        for number, line in enumerate(lines, start=1):
            self.transcript.append(f"S: {code}{'-' if number < len(lines) else ' '}{line}")
        return code, reply


def _refusal(replies: list[tuple[int, bytes]]) -> tuple[str, tuple[int, bytes]] | None:
    """Return the first pipelined reply that stops the message, with its step; None if none."""
    for (step, accepted), reply in zip(PIPELINED, replies, strict=False):
        if reply[0] not in accepted:
            return step, reply
    return None


def _message_data(message: bytes) -> bytes:
    """Return a message as DATA sends it: leading dots doubled, ended by CRLF.CRLF (as smtplib)."""
    quoted = LEADING_DOT.sub(b"..", message)
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


def envelope_address(value: str) -> str:
    """Return the address (addr-spec) in a From or To value, for MAIL FROM and RCPT TO."""
    plain = PLAIN_ADDRESS.fullmatch(value)
    if plain:
        return plain.group(1)
    return email.utils.parseaddr(value)[1] or value


def ascii_domains(message: RenderedMessage) -> RenderedMessage:
    """Write internationalised domains in their ASCII form (IDNA), as every server takes them.

    Only an address whose local part is not ASCII still needs a server that offers SMTPUTF8.
    """
    to, from_email = _ascii_domain(message.to), _ascii_domain(message.from_email)
    if (to, from_email) == (message.to, message.from_email):
        return message
    return dataclasses.replace(message, to=to, from_email=from_email)


def _ascii_domain(value: str) -> str:
    if value.isascii():
        return value
    address = envelope_address(value)
    local, _, domain = address.rpartition("@")
    if not local.isascii() or domain.isascii():
        return value
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return value  # not a valid international domain: the server will say so
    return value.replace(address, f"{local}@{ascii_domain}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data)
    except ValueError:
        return data


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class SmtpTransport(Transport):
    """Send through one SMTP server, keeping the connection open between sends."""

    kind = "smtp"

    def __init__(self, config: Mapping[str, Any], *, send_timeout: float | None = None) -> None:
        """`send_timeout` bounds one send, all steps together (the config's bound each step)."""
        super().__init__(config)
        self.send_timeout = send_timeout
        self._deadline: float | None = None
        self._current: _Connection | None = None  # the connection a send is using, for _cut()
        auth = config.get("auth") or {}
        self.idle_since: float | None = None  # time.monotonic() when the connection was last used
        self.refreshed_token: OAuth2Token | None = None
        self._token = OAuth2Token(str(auth.get("accessToken") or ""), auth.get("expires"))
        self._settings: SmtpSettings | None = None
        self._connection: _Connection | None = None
        self._lock = threading.RLock()

    @property
    def settings(self) -> SmtpSettings:
        """Return the checked connection settings; raise a permanent TransportError if invalid."""
        if self._settings is None:
            self._settings = _settings(self.config)
        return self._settings

    def send(
        self,
        message: RenderedMessage,
        *,
        to_type: str = "Generic",
        payload: Mapping[str, Any] | None = None,
        ip: str | None = None,
    ) -> SendResult:
        """Send one message over the open connection (or a new one), or raise TransportError."""
        started = time.monotonic()
        message = ascii_domains(message)
        sender, recipient = envelope_address(message.from_email), envelope_address(message.to)
        try:
            data, message_id = email_bytes(message, utf8=not (sender + recipient).isascii())
        except ValueError as exc:
            raise TransportError(
                f"The message cannot be built: {exc}",
                permanent=True,
                hint="Check the addresses and headers in the config and the template.",
            ) from exc
        with self._lock, self._time_limit(started):
            conn, reused = self._usable_connection()
            try:
                reply = self._deliver(conn, data, sender, recipient)
            except (
                smtplib.SMTPResponseException,
                smtplib.SMTPRecipientsRefused,
                smtplib.SMTPNotSupportedError,
            ) as exc:
                # The server answered (smtplib's errors are OSErrors too): a fresh connection
                # would get the same answer, so this is the outcome.
                raise self._failure(exc, conn) from exc
            except OSError as exc:
                # A kept connection may have been dropped by the server since its last use; as
                # long as no byte of the message went out, one fresh attempt cannot duplicate it.
                if isinstance(exc, SendTimeLimit) or not reused or conn.body_started:
                    raise self._failure(exc, conn) from exc
                self._discard()
                conn.transcript.append(
                    "-- connection lost before the message went out: reconnecting"
                )
                conn = self._connection = self._open(conn.transcript)
                try:
                    reply = self._deliver(conn, data, sender, recipient)
                except OSError as exc:
                    raise self._failure(exc, conn) from exc
            self.idle_since = time.monotonic()
            self._log(conn.transcript)
            return SendResult(
                message_id=message_id,
                server_reply=reply,
                elapsed_ms=round((time.monotonic() - started) * 1000),
                warnings=list(conn.warnings),
                transcript=list(conn.transcript),
            )

    @contextlib.contextmanager
    def _time_limit(self, started: float) -> Iterator[None]:
        """Bound what runs inside to `send_timeout`: every wait, and a watchdog for the rest."""
        if not self.send_timeout:
            yield
            return
        self._deadline = started + self.send_timeout
        self._current = self._connection
        if self._connection is not None:
            self._connection.deadline = self._deadline
        alarm = watchdog.arm(self._deadline, self._cut)
        try:
            yield
        finally:
            watchdog.disarm(alarm)
            self._deadline = self._current = None
            if self._connection is not None:
                self._connection.deadline = None

    def _cut(self) -> None:
        conn = self._current  # the connection in use: kept, or being opened
        if conn is not None:
            conn.cut()

    def check(self) -> SendResult:
        """Connect, upgrade to TLS, authenticate and QUIT without sending: a connection test."""
        started = time.monotonic()
        conn = self._open([])
        try:
            code, reply = conn.quit()
            server_reply = f"{code} {_text(reply)}"
        except (smtplib.SMTPException, OSError):
            conn.close()
            server_reply = "(the server hung up on QUIT)"
        self._log(conn.transcript)
        return SendResult(
            message_id=None,
            server_reply=server_reply,
            elapsed_ms=round((time.monotonic() - started) * 1000),
            warnings=list(conn.warnings),
            transcript=list(conn.transcript),
        )

    def close(self) -> None:
        """Say QUIT and close the kept connection, if any."""
        with self._lock:
            conn, self._connection, self.idle_since = self._connection, None, None
            if conn is not None:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    conn.close()

    # Connections

    def _usable_connection(self) -> tuple[_Connection, bool]:
        """Return the kept connection if it is still open, else a new one."""
        conn = self._connection
        if conn is not None:
            conn.transcript.clear()
            conn.body_started = False
            # A connection used a moment ago is trusted without a NOOP round trip: under load
            # that probe would cost a fifth of each send. Should the server have hung up all the
            # same, send() reconnects and retries, since no byte of the message went out.
            if self.idle_since is not None and time.monotonic() - self.idle_since < FRESH_SECONDS:
                return conn, True
            try:
                if conn.noop()[0] == 250:
                    return conn, True
            except (smtplib.SMTPException, OSError):
                pass
            conn.transcript.append("-- the kept connection no longer answers: reconnecting")
            self._discard()
        self._connection = self._open(conn.transcript if conn is not None else [])
        self.idle_since = time.monotonic()
        return self._connection, False

    def _discard(self) -> None:
        """Close the kept connection without ceremony."""
        conn, self._connection, self.idle_since = self._connection, None, None
        if conn is not None:
            conn.close()

    def _open(self, transcript: list[str]) -> _Connection:
        """Return a connection that is greeted, upgraded to TLS and authenticated as configured."""
        settings = self.settings
        conn = self._current = _Connection(settings, transcript)
        conn.deadline = self._deadline
        try:
            code, reply = conn.connect(settings.host, settings.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            if conn.sock is not None:
                conn.sock.settimeout(settings.socket_timeout)
            conn.phase = "ehlo"
            conn.ehlo_or_helo_if_needed()
            self._upgrade(conn, settings)
            self._authenticate(conn, settings)
            conn.phase = "ready"
        except TransportError as refusal:
            conn.close()
            self._log(transcript)
            refusal.transcript = list(transcript)
            raise
        except (smtplib.SMTPException, OSError) as exc:
            conn.close()
            self._log(transcript)
            raise classify(exc, conn.phase, settings, transcript) from exc
        return conn

    def _upgrade(self, conn: _Connection, settings: SmtpSettings) -> None:
        """Switch to TLS with STARTTLS when the config and the server allow it."""
        if not settings.secure and not settings.ignore_tls:
            if conn.has_extn("starttls"):
                conn.phase = "starttls"
                conn.starttls_as(settings.tls_context, settings.tls_server_name)
                conn.phase = "ehlo"
                conn.ehlo_or_helo_if_needed()
            elif settings.require_tls:
                raise TransportError(
                    f"The SMTP server at {settings.where} does not offer STARTTLS, and "
                    "requireTLS is set",
                    permanent=True,
                    hint="Use a port that offers TLS (587 with STARTTLS, or 465 with `secure` "
                    "set to true); turn `requireTLS` off only if the network to the server is "
                    "trusted.",
                )
        if conn.encrypted and not settings.verify:
            conn.warnings.append(NOT_VERIFIED.format(host=settings.tls_server_name))
        if not conn.encrypted and settings.auth:
            why = "ignoreTLS is set" if settings.ignore_tls else "the server offers no STARTTLS"
            conn.warnings.append(NOT_ENCRYPTED.format(where=settings.where, why=why))

    def _deliver(self, conn: _Connection, data: bytes, sender: str, recipient: str) -> str:
        """Send the envelope and the message; return the server's final reply."""
        options: list[str] = []
        if not (sender + recipient).isascii():
            conn.phase = "mail"
            if not conn.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError(
                    "the server does not take addresses with non-ASCII characters (no SMTPUTF8)"
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        if conn.has_extn("pipelining"):
            return self._deliver_pipelined(conn, data, sender, recipient, options)
        conn.phase = "mail"
        code, reply = conn.mail(sender, options)
        if code != 250:
            raise smtplib.SMTPResponseException(code, reply)
        conn.phase = "rcpt"
        code, reply = conn.rcpt(recipient)
        if code not in (250, 251):
            raise smtplib.SMTPResponseException(code, reply)
        conn.phase = "data"
        code, reply = conn.data(data)
        if code != 250:
            raise smtplib.SMTPResponseException(code, reply)
        conn.phase = "ready"
        return f"{code} {_text(reply)}"

    def _deliver_pipelined(
        self, conn: _Connection, data: bytes, sender: str, recipient: str, options: list[str]
    ) -> str:
        """Send MAIL, RCPT and DATA in one write and read their replies in order (RFC 2920).

        Two round trips per message instead of four: against a server 50 ms away, a thread
        sends twice as many messages a second. Every reply is read, whatever went wrong, so
        that the connection stays in step and can be reset and kept.
        """
        if "SMTPUTF8" in options:
            conn.command_encoding = "utf-8"  # as smtplib's mail() does
        extra = "".join(" " + option for option in options)
        conn.phase = "mail"
        # Spelt as smtplib spells them, so that the transcript reads the same either way.
        conn.pipeline([f"mail from:<{sender}>{extra}", f"rcpt to:<{recipient}>", "data"])
        replies: list[tuple[int, bytes]] = []
        for phase, _ in PIPELINED:
            conn.phase = phase
            try:
                replies.append(conn.getreply())
            except smtplib.SMTPServerDisconnected:
                # A server may refuse and then hang up (a 421 does): that refusal is the answer.
                if (refused := _refusal(replies)) is None:
                    raise
                break
        else:
            if (refused := _refusal(replies)) is None:
                conn.send(_message_data(data))
                code, reply = conn.getreply()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
                conn.phase = "ready"
                return f"{code} {_text(reply)}"
            if replies[2][0] == 354:
                # DATA was taken although the envelope was refused: an empty message ends it.
                conn.send(b".\r\n")
                conn.getreply()
        step, (code, text) = refused
        conn.phase = step
        error = smtplib.SMTPDataError if step == "data" else smtplib.SMTPResponseException
        raise error(code, text)

    def _failure(self, exc: BaseException, conn: _Connection) -> TransportError:
        """Return the TransportError for a failed send, keeping the connection only if sound."""
        error = classify(exc, conn.phase, self.settings, conn.transcript)
        keep = (
            isinstance(exc, smtplib.SMTPResponseException)
            and exc.smtp_code != 421
            and conn.phase in ("mail", "rcpt", "data")
        )
        try:
            keep = keep and conn.rset()[0] == 250
        except (smtplib.SMTPException, OSError):
            keep = False
        if keep:
            conn.phase = "ready"
            self.idle_since = time.monotonic()
        elif conn is self._connection:
            self._discard()
        else:
            conn.close()
        self._log(conn.transcript)
        return error

    # Authentication

    def _authenticate(self, conn: _Connection, settings: SmtpSettings) -> None:
        """Log in as the config says; raise SMTPAuthenticationError when refused."""
        auth = settings.auth
        if not auth:
            return
        conn.phase = "auth"
        if str(auth.get("type") or "login").lower() == "oauth2":
            self._authenticate_xoauth2(conn, auth)
            return
        user, password = str(auth["user"]).encode(), str(auth["pass"]).encode()
        offered = str(conn.esmtp_features.get("auth", "")).upper().split()
        forced = str(auth.get("method") or "").upper()
        # nodemailer takes the first it knows of PLAIN, LOGIN, CRAM-MD5 among those offered,
        # and tries PLAIN when the server lists none (some only list AUTH after STARTTLS).
        mechanism = forced or next(
            (m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m in offered), "PLAIN"
        )
        if mechanism == "PLAIN":
            code, reply = conn.sasl("PLAIN", b"\0" + user + b"\0" + password, lambda _: b"")
        elif mechanism == "LOGIN":
            code, reply = conn.sasl(
                "LOGIN", user, lambda c: user if b"user" in c.lower() else password
            )
        elif mechanism == "CRAM-MD5":
            code, reply = conn.sasl(
                "CRAM-MD5",
                None,
                lambda c: user + b" " + hmac.new(password, c, "md5").hexdigest().encode(),
            )
        else:
            raise TransportError(
                f"auth.method {mechanism} is not supported",
                permanent=True,
                hint="Use PLAIN, LOGIN or CRAM-MD5, or leave auth.method out.",
            )
        if code not in (235, 503):
            raise smtplib.SMTPAuthenticationError(code, reply)

    def _authenticate_xoauth2(self, conn: _Connection, auth: Mapping[str, Any]) -> None:
        """Log in with XOAUTH2, renewing the access token once if the server refuses it."""
        user = str(auth.get("user") or "")
        fresh = not self._token.is_usable()
        if fresh:
            self._refresh_access_token(auth)
        for attempt in range(2):
            token = self._token.access_token
            initial = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
            # On refusal the server sends a JSON challenge and wants an empty answer back.
            code, reply = conn.sasl("XOAUTH2", initial, lambda _: b"")
            if code in (235, 503):
                return
            if attempt or fresh or not can_refresh(auth):
                break
            # nodemailer too renews a token the server refused once before giving up.
            self._refresh_access_token(auth)
        details = conn.last_challenge.decode("utf-8", "replace").strip()
        raise smtplib.SMTPAuthenticationError(
            code, _text(reply) + (f" ({details})" if details else "")
        )

    def _refresh_access_token(self, auth: Mapping[str, Any]) -> None:
        """Renew the access token and keep it, for later sends and for the caller to store."""
        self._token = refresh_access_token(auth, timeout=min(self.settings.connect_timeout, 30))
        self.refreshed_token = self._token

    def _log(self, transcript: list[str]) -> None:
        """Log the conversation when the config's `logger` or `debug` asks for it."""
        if self._settings is not None and self._settings.log:
            for line in transcript:
                logger.info("%s %s", self._settings.where, line)
