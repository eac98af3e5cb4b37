"""The HTTP transport against a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.rendering import RenderedMessage
from connectors.transports import HttpTransport, TransportError, get_transport

from .servers import HttpServer, certificates, drip, raw_server

AUTHORIZATION = "Bearer http-s3cret-token"
PAYLOAD: dict[str, Any] = {"code": "123456", "locale": "fr", "user": {"name": "Zoë"}}
MESSAGE = RenderedMessage(
    to="ada@example.test",
    subject="Your code",
    text="Your code is 123456",
    html=None,
    from_email="no-reply@acme.test",
)


@pytest.fixture
def endpoint() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


def transport(url: str, **options: Any) -> HttpTransport:
    """Return an HTTP transport posting to url, allowed to reach loopback."""
    options.setdefault("allow_private", True)
    return HttpTransport({"endpoint": url, "authorization": AUTHORIZATION}, **options)


def send(url: str, *, ip: str | None = "203.0.113.7", **options: Any) -> Any:
    return transport(url, **options).send(MESSAGE, to_type="SignIn", payload=PAYLOAD, ip=ip)


def send_error(url: str, **options: Any) -> TransportError:
    with pytest.raises(TransportError) as raised:
        send(url, **options)
    return raised.value


# The request


def test_the_request_is_the_one_logtos_http_connector_makes(endpoint: HttpServer) -> None:
    send(f"{endpoint.url}/hooks/email?source=console")

    [request] = endpoint.requests
    assert request.method == "POST"
    assert request.path == "/hooks/email?source=console"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == AUTHORIZATION
    assert request.headers["Host"] == f"127.0.0.1:{endpoint.port}"
    assert (
        request.body
        == (
            '{"to":"ada@example.test","type":"SignIn",'
            '"payload":{"code":"123456","locale":"fr","user":{"name":"Zoë"}},'
            '"ip":"203.0.113.7"}'
        ).encode()
    )
    assert int(request.headers["Content-Length"]) == len(request.body)


def test_ip_and_authorization_are_left_out_when_not_set(endpoint: HttpServer) -> None:
    HttpTransport({"endpoint": endpoint.url}, allow_private=True).send(
        MESSAGE, to_type="Generic", payload={}, ip=None
    )

    [request] = endpoint.requests
    assert request.path == "/"
    assert "Authorization" not in request.headers
    assert request.json() == {"to": "ada@example.test", "type": "Generic", "payload": {}}


def test_https_goes_to_the_checked_address_with_the_host_name_for_sni() -> None:
    with HttpServer(tls=True) as server:
        url = f"https://localhost:{server.port}/send"
        result = send(url, tls_context=certificates().client_context())

        [request] = server.requests
        assert request.headers["Host"] == f"localhost:{server.port}"
    assert result.server_reply.startswith("200 OK")


# Answers


def test_a_2xx_answer_is_success(endpoint: HttpServer) -> None:
    endpoint.reply(202, '{"messageId": "msg-42"}')
    result = send(endpoint.url)

    assert result.message_id == "msg-42"
    assert any("plain http" in warning for warning in result.warnings)
    assert result.server_reply == '202 Accepted: {"messageId": "msg-42"}'
    assert result.elapsed_ms >= 0
    assert "> Authorization: ********" in result.transcript
    assert AUTHORIZATION not in "\n".join(result.transcript)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_server_errors_are_transient(endpoint: HttpServer, status: int) -> None:
    endpoint.reply(status, "slow down")
    error = send_error(endpoint.url)

    assert not error.permanent
    assert error.code == status
    assert "slow down" in error.server_text


def test_a_4xx_answer_is_permanent_with_an_excerpt_of_the_body(endpoint: HttpServer) -> None:
    endpoint.reply(400, json.dumps({"error": "invalid recipient", "detail": "x" * 1000}))
    error = send_error(endpoint.url)

    assert error.permanent
    assert error.code == 400
    assert "invalid recipient" in error.server_text
    assert len(error.server_text) < 400
    assert error.server_text.endswith("…")


def test_an_echoed_authorization_header_is_masked(endpoint: HttpServer) -> None:
    endpoint.reply(401, f"bad credentials: {AUTHORIZATION} (token http-s3cret-token)")
    error = send_error(endpoint.url)

    assert error.permanent
    assert "`authorization`" in error.hint
    for text in (str(error), repr(error), *error.transcript):
        assert "http-s3cret-token" not in text


def test_redirects_are_not_followed(endpoint: HttpServer) -> None:
    endpoint.reply(302, headers={"Location": f"{endpoint.url}/elsewhere"})
    error = send_error(endpoint.url)

    assert error.permanent
    assert error.code == 302
    assert f"{endpoint.url}/elsewhere" in error.hint
    assert len(endpoint.requests) == 1


def test_a_time_out_is_transient(endpoint: HttpServer) -> None:
    endpoint.reply(200, delay=0.5)
    error = send_error(endpoint.url, timeout=0.1)

    assert not error.permanent
    assert "no answer within 0.1 s" in str(error)


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    error = send_error(f"http://127.0.0.1:{port}/")

    assert not error.permanent
    assert "connection refused" in str(error)


# Where requests may go


def test_private_addresses_are_refused_unless_allowed(endpoint: HttpServer) -> None:
    error = send_error(endpoint.url, allow_private=False)

    assert error.permanent
    assert "127.0.0.1 is a loopback address" in str(error)
    assert "CONNECTORS_HTTP_ALLOW_PRIVATE" in error.hint
    assert endpoint.requests == []

    send(endpoint.url, allow_private=True)
    assert len(endpoint.requests) == 1


def test_private_network_addresses_are_refused_before_any_connection() -> None:
    error = send_error("http://10.1.2.3:8080/send", allow_private=False)
    assert "10.1.2.3 is a private address" in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://169.254.10.20/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://0.0.0.0/",
    ],
)
def test_metadata_and_link_local_addresses_are_always_refused(url: str) -> None:
    error = send_error(url, allow_private=True)

    assert error.permanent
    assert "resolves to" in str(error)


def test_an_endpoint_that_is_not_http_is_refused() -> None:
    error = send_error("file:///etc/passwd")
    assert error.permanent
    assert "not an http(s) URL" in str(error)


def test_allow_private_defaults_to_the_django_setting(settings: Any) -> None:
    settings.CONNECTORS_HTTP_ALLOW_PRIVATE = True
    assert HttpTransport({"endpoint": "http://127.0.0.1/"}).allow_private
    settings.CONNECTORS_HTTP_ALLOW_PRIVATE = False
    assert not HttpTransport({"endpoint": "http://127.0.0.1/"}).allow_private


def test_the_registry_makes_transports_by_kind() -> None:
    made = get_transport("http", {"endpoint": "http://127.0.0.1/"}, allow_private=True)
    assert isinstance(made, HttpTransport)
    assert made.allow_private

    with pytest.raises(TransportError) as raised:
        get_transport("fax", {})
    assert raised.value.permanent
    assert "http, smtp" in str(raised.value)


@contextlib.contextmanager
def dripping_endpoint(seconds_per_byte: float) -> Iterator[str]:
    """An endpoint that reads the request, then answers one byte at a time, slowly."""

    def talk(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        drip(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", seconds_per_byte, stop)

    with raw_server(talk) as (host, port):
        yield f"http://{host}:{port}/send"


def test_send_timeout_cuts_off_an_endpoint_that_answers_a_byte_at_a_time() -> None:
    with dripping_endpoint(seconds_per_byte=0.3) as url:
        started = time.monotonic()
        error = send_error(url, timeout=1.0, send_timeout=1.0)
        elapsed = time.monotonic() - started

    assert elapsed < 3  # each byte comes within the step time-out: only the limit ends it
    assert not error.permanent and "time limit" in error.message


def test_a_slow_answer_within_the_limit_is_read_whole() -> None:
    with dripping_endpoint(seconds_per_byte=0.01) as url:
        result = send(url, send_timeout=5.0)
    assert result.server_reply.startswith("200")
