"""POST messages to an HTTP endpoint, byte for byte as Logto's HTTP email connector does.

Logto posts `{"to", "type", "payload", "ip"?}` as JSON with the configured Authorization header
(got's `json:` option: JSON.stringify, no spaces). The endpoint is an address an administrator
typed, so before connecting the host is resolved and checked: cloud metadata and link-local
addresses are always refused, private and loopback ones unless allowed; the request then goes to
the checked address itself, so a second DNS answer cannot swap it.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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

if TYPE_CHECKING:
    from ..rendering import RenderedMessage

__all__ = ["HttpTransport", "address_refusal", "request_body"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, …
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
EXCERPT_CHARS = 300
USER_AGENT = "ConnectorConsole"


def request_body(to: str, usage_type: str, payload: Mapping[str, Any], ip: str | None) -> bytes:
    """Return the JSON body Logto's HTTP email connector posts for one message."""
    body: dict[str, Any] = {"to": to, "type": usage_type, "payload": payload}
    if ip is not None:
        body["ip"] = ip
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Return why an endpoint address may not be contacted, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge it instead.
        if address.ipv4_mapped or address.sixtofour:
            address = address.ipv4_mapped or address.sixtofour or address
        elif address in NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "not an address a web server can have"
    if address.is_global or allow_private:
        return None
    return "a loopback address" if address.is_loopback else "a private address"


def _default_allow_private() -> bool:
    """Return the CONNECTORS_HTTP_ALLOW_PRIVATE setting (DEBUG when unset); False without Django."""
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        return False
    try:
        return bool(getattr(settings, "CONNECTORS_HTTP_ALLOW_PRIVATE", settings.DEBUG))
    except ImproperlyConfigured:
        return False


def _cut(conn: http.client.HTTPConnection) -> None:
    """Shut a connection's socket from another thread: the send's time limit has run out."""
    conn.cut = True  # type: ignore[attr-defined]
    shut(conn.sock)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a checked address, naming the original host in the request."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address, with the original host as SNI and in the check."""

    def __init__(
        self, host: str, port: int, *, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)


class HttpTransport(Transport):
    """POST each message to the configured endpoint, as Logto's HTTP email connector does."""

    kind = "http"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        allow_private: bool | None = None,
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
        send_timeout: float | None = None,
    ) -> None:
        """`timeout` bounds each step (connect, each read); `send_timeout` the send as a whole."""
        super().__init__(config)
        self.allow_private = _default_allow_private() if allow_private is None else allow_private
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.tls_context = tls_context or ssl.create_default_context()

    def send(
        self,
        message: RenderedMessage,
        *,
        to_type: str,
        payload: Mapping[str, Any],
        ip: str | None = None,
    ) -> SendResult:
        """POST one message; return the endpoint's answer or raise TransportError."""
        started = time.monotonic()
        endpoint = str(self.config.get("endpoint") or "")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(
                f"The endpoint {endpoint!r} is not an http(s) URL",
                permanent=True,
                hint="Write it in full, such as https://mail.example.com/send.",
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise TransportError(
                f"The endpoint {endpoint!r} has an invalid port", permanent=True
            ) from None
        host = parts.hostname
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = request_body(message.to, to_type, payload, ip)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        authorization = str(self.config.get("authorization") or "")
        if authorization:
            headers["Authorization"] = authorization
        transcript = [f"> POST {path}", f"> Host: {parts.netloc.rpartition('@')[2]}"]
        transcript += [f"> {k}: {MASK if k == 'Authorization' else v}" for k, v in headers.items()]
        transcript.append(f"> <body, {len(body)} bytes>")

        failed = f"Posting the message to {shown} failed"
        last_error: OSError | None = None
        for address in self._addresses(host, port, failed, transcript):
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = _PinnedHTTPSConnection(
                    host, port, address=address, timeout=self.timeout, context=self.tls_context
                )
            else:
                conn = _PinnedHTTPConnection(host, port, address=address, timeout=self.timeout)
            try:
                response, data = self._exchange(conn, path, body, headers, started)
            except SendTimeLimit as exc:
                raise TransportError(
                    f"{failed}: the send took longer than its time limit",
                    permanent=False,
                    hint="The endpoint answers too slowly; each send is cut off after "
                    "CONNECTORS_SEND_TIMEOUT seconds so that one slow server cannot hold up "
                    "the others.",
                    transcript=transcript,
                ) from exc
            except ssl.SSLCertVerificationError as exc:
                raise TransportError(
                    f"{failed}: the server's certificate could not be verified "
                    f"({str(exc.verify_message or exc.reason).rstrip('.')})",
                    permanent=True,
                    hint="Check that the endpoint's certificate is valid for its host name and "
                    "signed by a public CA.",
                    transcript=transcript,
                ) from None
            except ConnectionRefusedError as exc:
                last_error = exc  # another address of the host may answer
                transcript.append(f"< connection to {address} refused")
                continue
            except (OSError, http.client.HTTPException) as exc:
                raise self._network_error(failed, exc, transcript) from None
            finally:
                conn.close()
            result = self._result(response, data, failed, transcript, authorization, started)
            if parts.scheme == "http" and authorization:
                result.warnings.append(
                    "The endpoint is plain http: the Authorization header and the message "
                    "crossed the network unencrypted."
                )
            return result
        raise TransportError(
            f"{failed}: connection refused",
            permanent=False,
            hint=f"Nothing accepts connections at {host}:{port}: check the endpoint's host and "
            "port, and that the service is running.",
            transcript=transcript,
        ) from last_error

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        path: str,
        body: bytes,
        headers: dict[str, str],
        started: float,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """POST and read the answer (its first 64 KiB) within the send's time limit."""
        # A server that answers a byte at a time never lets a step time out: past the send's
        # time limit, a timer shuts the socket, which ends a read at once.
        alarm = None
        if self.send_timeout:
            deadline = started + self.send_timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise SendTimeLimit("connecting")
            conn.timeout = min(self.timeout, left)
            alarm = watchdog.arm(deadline, functools.partial(_cut, conn))
        try:
            conn.connect()  # here, so that the timer finds the socket to shut
            if getattr(conn, "cut", False):
                raise SendTimeLimit("connecting")
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return response, response.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            if getattr(conn, "cut", False):
                raise SendTimeLimit("the HTTP exchange") from exc
            raise
        finally:
            if alarm is not None:
                watchdog.disarm(alarm)

    def _addresses(self, host: str, port: int, failed: str, transcript: list[str]) -> list[str]:
        """Return the host's addresses that may be contacted, or raise TransportError."""
        try:
            infos = resolve(host, port, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            raise TransportError(
                f"{failed}: the host {host} could not be resolved ({exc})",
                permanent=False,
                hint="Check the endpoint's host name for typos.",
                transcript=transcript,
            ) from None
        allowed: list[str] = []
        refusals: list[str] = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 scope id
            reason = address_refusal(ipaddress.ip_address(text), allow_private=self.allow_private)
            if reason is None:
                allowed.append(text)
            else:
                refusals.append(f"{text} is {reason}")
        if allowed:
            return list(dict.fromkeys(allowed))
        always = not any("private" in r or "loopback" in r for r in refusals)
        refused = "; ".join(dict.fromkeys(refusals))
        raise TransportError(
            f"{failed}: the endpoint's host {host} resolves to {refused}",
            permanent=True,
            hint="Cloud metadata and link-local addresses are never contacted."
            if always
            else "Private and loopback addresses are refused so a connector cannot reach "
            "internal services; an operator can allow them with the setting "
            "CONNECTORS_HTTP_ALLOW_PRIVATE = True.",
            transcript=transcript,
        )

    def _network_error(
        self, failed: str, exc: BaseException, transcript: list[str]
    ) -> TransportError:
        """Return the transient TransportError for a network failure."""
        if isinstance(exc, TimeoutError):
            message = f"{failed}: no answer within {self.timeout:g} s"
            transcript.append("< timed out")
        elif isinstance(exc, ssl.SSLError):
            message = f"{failed}: TLS failed ({exc.reason or exc})"
        elif isinstance(exc, http.client.RemoteDisconnected | ConnectionError):
            message = f"{failed}: the server closed the connection without an answer"
        else:
            message = f"{failed}: {getattr(exc, 'strerror', None) or exc}"
        return TransportError(
            message,
            permanent=False,
            hint="A later attempt may pass.",
            transcript=transcript,
        )

    def _result(
        self,
        response: http.client.HTTPResponse,
        data: bytes,
        failed: str,
        transcript: list[str],
        authorization: str,
        started: float,
    ) -> SendResult:
        """Return the SendResult of a 2xx answer, or raise the TransportError of any other."""
        status, reason = response.status, response.reason
        excerpt = " ".join(data.decode("utf-8", "replace").split())
        # An endpoint that echoes the request must not leak the credential into logs.
        for secret in {authorization, authorization.partition(" ")[2]}:
            if len(secret) >= 6:
                excerpt = excerpt.replace(secret, MASK)
        if len(excerpt) > EXCERPT_CHARS:
            excerpt = excerpt[:EXCERPT_CHARS] + "…"
        transcript.append(f"< {status} {reason}" + (f": {excerpt}" if excerpt else ""))
        if 200 <= status < 300:
            return SendResult(
                message_id=_message_id(data),
                server_reply=f"{status} {reason}" + (f": {excerpt}" if excerpt else ""),
                elapsed_ms=round((time.monotonic() - started) * 1000),
                transcript=transcript,
            )
        hint = ""
        if 300 <= status < 400:
            location = response.getheader("Location") or "another address"
            hint = (
                f"The endpoint redirects to {location}: set `endpoint` to that address. "
                "Redirects are not followed, so the Authorization header never goes elsewhere."
            )
        elif status in (401, 403):
            hint = "Check `authorization`: it is sent as the whole Authorization header value."
        elif status == 404:
            hint = "Check the endpoint's path."
        elif status == 429 or status >= 500:
            hint = "A later attempt may pass."
        raise TransportError(
            failed,
            permanent=status != 429 and status < 500,
            code=status,
            server_text=f"{reason}: {excerpt}" if excerpt else reason,
            hint=hint,
            transcript=transcript,
        )


def _message_id(data: bytes) -> str | None:
    """Return the id an endpoint gave the message in a JSON answer, if it gave one."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    if isinstance(answer, dict):
        for key in ("messageId", "message_id", "id"):
            if isinstance(answer.get(key), str | int):
                return str(answer[key])
    return None
