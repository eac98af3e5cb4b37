"""Real servers on loopback for transport tests: SMTP (aiosmtpd), HTTP, an OAuth2 token endpoint.

Each is a context manager that listens on 127.0.0.1 at a free port, records what it receives
and can be scripted to fail:

    with SmtpServer(tls="starttls", users={"mailer": "pw"}) as smtp:
        smtp.fail_next("RCPT", 421)
        transport = SmtpTransport(smtp.config(auth={"user": "mailer", "pass": "pw"}))
        ...
        smtp.messages[0].message["Subject"]

TLS servers use a test CA and a certificate for localhost / 127.0.0.1 / ::1 made once per run
with `cryptography` (see `certificates()`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email
import email.policy
import functools
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateSet",
    "HttpServer",
    "OAuth2TokenServer",
    "ReceivedMail",
    "RecordedRequest",
    "SmtpServer",
    "certificates",
]

LOOPBACK = "127.0.0.1"
TlsMode = Literal["none", "starttls", "implicit"]


# Certificates


@dataclass(frozen=True)
class CertificateSet:
    """A test CA and a server certificate it signed, as PEM text and files."""

    ca_pem: str
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side TLS context presenting the test certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a client-side TLS context that trusts only the test CA."""
        return ssl.create_default_context(cadata=self.ca_pem)


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@functools.cache
def certificates() -> CertificateSet:
    """Return the run's test CA and server certificate, made on first use."""
    now = datetime.datetime.now(datetime.UTC)
    since, until = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .not_valid_before(since)
        .not_valid_after(until)
        .subject_name(_name("Connector Console Test CA"))
        .issuer_name(_name("Connector Console Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .not_valid_before(since)
        .not_valid_after(until)
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    # Kept for the life of the process: the directory is removed when the object is collected.
    directory = tempfile.TemporaryDirectory(prefix="connector-console-tls-")
    _keep_alive.append(directory)
    cert_file = Path(directory.name, "server.pem")
    key_file = Path(directory.name, "server.key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    return CertificateSet(ca_pem=ca_pem, cert_file=cert_file, key_file=key_file)


_keep_alive: list[tempfile.TemporaryDirectory[str]] = []


# SMTP


@dataclass
class ReceivedMail:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None
    ehlo_name: str | None

    @property
    def message(self) -> EmailMessage:
        """Return the message parsed with the modern email API."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Script:
    """Failures to play back, shared between the test thread and the server's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[str, list[str | None]] = {}

    def add(self, command: str, reply: str | None, times: int) -> None:
        with self._lock:
            self._queue.setdefault(command, []).extend([reply] * times)

    def take(self, command: str) -> tuple[bool, str | None]:
        with self._lock:
            queue = self._queue.get(command)
            if queue:
                return True, queue.pop(0)
            return False, None


class _Handler:
    """aiosmtpd hooks: record what arrives, play scripted failures, and speak XOAUTH2."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    def _scripted(self, command: str) -> str | None:
        scripted, reply = self.server._script.take(command)
        return reply if scripted else None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:  # aiosmtpd reads commands in turn, so it can take them
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        return self._scripted("AUTH") or MISSING

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := self._scripted("MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := self._scripted("RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := self._scripted("DATA"):
            return reply
        auth_data = session.auth_data
        login = getattr(auth_data, "login", None)
        self.server.messages.append(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls=server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None,
                login=login.decode() if isinstance(login, bytes) else login,
                ehlo_name=session.host_name,
            )
        )
        return f"250 2.0.0 Ok: queued as {uuid.uuid4().hex[:10].upper()}"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            blob = base64.b64decode(args[1])
        else:
            answer = await server.challenge_auth("")
            blob = answer if isinstance(answer, bytes) else b""
        fields = dict(p.split("=", 1) for p in blob.decode().split("\x01") if "=" in p)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        self.server.tokens_seen.append(token)
        if token and self.server.oauth_tokens.get(user) == token:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        # Like Gmail: a JSON error as a challenge, then 535 once the client answers it.
        error = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        await server.challenge_auth(json.dumps(error))
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


class _ScriptedSMTP(SMTP):
    """aiosmtpd's SMTP server that can hang up in the middle of DATA when told to."""

    def __init__(self, owner: SmtpServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner

    async def smtp_DATA(self, arg: str) -> None:
        scripted, _ = self.owner._script.take("DROP-DATA")
        if scripted and self.transport is not None:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readline()  # the first line of the message, then hang up
            if isinstance(self.transport, asyncio.Transport):
                self.transport.abort()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    """aiosmtpd's threaded controller, on a free port, making scripted servers and counting them."""

    def __init__(self, owner: SmtpServer, **kwargs: Any) -> None:
        self.owner = owner
        super().__init__(_Handler(owner), hostname=LOOPBACK, port=0, **kwargs)

    def factory(self) -> SMTP:
        smtp = _ScriptedSMTP(self.owner, self.handler, **self.SMTP_kwargs)
        self.owner._sessions.append(smtp)
        self.owner.connections += 1
        return smtp

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before the base class connects to check it.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """An SMTP server on loopback: plain, STARTTLS or implicit TLS, with optional AUTH."""

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        users: Mapping[str, str] | None = None,
        oauth_tokens: Mapping[str, str] | None = None,
        auth_require_tls: bool | None = None,
        smtputf8: bool = True,
        pipelining: bool = False,
    ) -> None:
        self.tls = tls
        self.pipelining = pipelining
        self.users = dict(users or {})
        self.oauth_tokens = dict(oauth_tokens or {})  # user -> the access token accepted
        self.messages: list[ReceivedMail] = []
        self.auth_attempts: list[tuple[str, str]] = []  # (mechanism, login)
        self.tokens_seen: list[str] = []
        self.connections = 0
        self.host = LOOPBACK
        self.port = 0
        self._script = _Script()
        self._sessions: list[SMTP] = []
        context = certificates().server_context() if tls != "none" else None
        self._controller = _Controller(
            self,
            ssl_context=context if tls == "implicit" else None,
            tls_context=context if tls == "starttls" else None,
            server_hostname="localhost",  # else aiosmtpd calls the slow socket.getfqdn()
            authenticator=self._authenticate,
            auth_require_tls=tls == "starttls" if auth_require_tls is None else auth_require_tls,
            enable_SMTPUTF8=smtputf8,
        )

    def __enter__(self) -> Self:
        self._controller.start()
        self.port = self._controller.port
        self.connections = 0  # the controller's own start-up check is not a client
        self._sessions.clear()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._controller.stop()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()
        self.auth_attempts.append((mechanism, login))
        ok = login in self.users and self.users[login] == password
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def fail_next(
        self, command: str, code: int = 421, text: str = "4.3.2 Try again later", *, times: int = 1
    ) -> None:
        """Answer the next `times` MAIL, RCPT, DATA (after the message) or AUTH with an error."""
        assert command in ("MAIL", "RCPT", "DATA", "AUTH"), command
        self._script.add(command, f"{code} {text}", times)

    def drop_next_data(self, *, times: int = 1) -> None:
        """Hang up in the middle of the next DATA: after 354 and the message's first line."""
        self._script.add("DROP-DATA", None, times)

    def drop_connections(self) -> None:
        """Close every open client connection, as an idle time-out on the server would."""

        async def close_all() -> None:
            for smtp in self._sessions:
                if smtp.transport is not None:
                    smtp.transport.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(timeout=5)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Return a Logto SMTP connector config that points at this server, with short time-outs."""
        config: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "secure": self.tls == "implicit",
            "fromEmail": "Acme <no-reply@acme.test>",
            "connectionTimeout": 3000,
            "greetingTimeout": 3000,
            "socketTimeout": 3000,
            "dnsTimeout": 3000,
            "templates": [],
        }
        if self.tls != "none":
            config["tls"] = {"ca": certificates().ca_pem}
        config.update(overrides)
        return config


# HTTP


@dataclass
class RecordedRequest:
    """One request the HTTP server received."""

    method: str
    path: str
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class ScriptedResponse:
    """What the HTTP server answers, after waiting `delay` seconds."""

    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


class HttpServer:
    """An HTTP(S) server on loopback that records requests and answers as scripted."""

    def __init__(self, *, tls: bool = False, default: ScriptedResponse | None = None) -> None:
        self.tls = tls
        self.default = default or ScriptedResponse()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._replies: list[ScriptedResponse] = []
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._httpd.daemon_threads = True
        if tls:
            self._httpd.socket = (
                certificates().server_context().wrap_socket(self._httpd.socket, server_side=True)
            )
        self.host, self.port = LOOPBACK, self._httpd.server_address[1]
        # A short poll interval: shutdown() waits for one, and tests start and stop many servers.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def reply(
        self,
        status: int,
        body: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests with this status and body."""
        data = body.encode() if isinstance(body, str) else body
        response = ScriptedResponse(status, data, dict(headers or {}), delay)
        with self._lock:
            self._replies.extend([response] * times)

    def _next_response(self) -> ScriptedResponse:
        with self._lock:
            return self._replies.pop(0) if self._replies else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append(RecordedRequest(self.command, self.path, self.headers, body))
                response = owner._next_response()
                time.sleep(response.delay)
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(response.body)
                except OSError:
                    pass  # the client gave up waiting, as a time-out test wants

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class OAuth2TokenServer(HttpServer):
    """An OAuth2 token endpoint that hands out one access token for any refresh request."""

    def __init__(self, access_token: str = "fresh-access-token", expires_in: int = 3600) -> None:
        body = json.dumps(
            {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
        ).encode()
        super().__init__(default=ScriptedResponse(body=body))
        self.access_token = access_token

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"


# Misbehaving servers, written on raw sockets: what no well-behaved library server will do.


@contextlib.contextmanager
def raw_server(talk: Callable[[socket.socket, threading.Event], None]) -> Iterator[tuple[str, int]]:
    """A TCP server on loopback handing each connection to `talk` in a thread of its own.

    `talk` gets the connection and an event set when the server stops; yields (host, port).
    """
    listener = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()
    connections: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ValueError):
            talk(conn, stop)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                connections.append(conn)
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def drip(conn: socket.socket, data: bytes, seconds_per_byte: float, stop: threading.Event) -> None:
    """Send data a byte at a time, slowly, until done or the server stops."""
    for byte in data:
        if stop.wait(seconds_per_byte):
            return
        conn.sendall(bytes([byte]))


def smtp_after_ehlo(answer_mail: Callable[[socket.socket, threading.Event], None]) -> Any:
    """Return a `talk` for raw_server: greet, answer EHLO, then let answer_mail answer MAIL."""

    def talk(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"220 odd.test ESMTP\r\n")
        for line in conn.makefile("rb"):
            if line.upper().startswith((b"EHLO", b"HELO")):
                conn.sendall(b"250 odd.test\r\n")
            elif line.upper().startswith(b"MAIL"):
                answer_mail(conn, stop)

    return talk


def stuck_smtp_server() -> Any:
    """An SMTP server that greets and answers EHLO, then never answers again (a stuck server)."""
    return raw_server(smtp_after_ehlo(lambda conn, stop: None))
