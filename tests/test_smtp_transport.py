"""The SMTP transport against a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import base64
import email.utils
import pickle
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.rendering import RenderedMessage, render_message
from connectors.transports import SmtpTransport, TransportError, get_transport

from .servers import (
    OAuth2TokenServer,
    SmtpServer,
    drip,
    raw_server,
    smtp_after_ehlo,
    stuck_smtp_server,
)

PASSWORD = "pässword-s3cret"
USER = "mailer@acme.test"
TEMPLATE = {
    "usageType": "SignIn",
    "contentType": "text/html",
    "subject": "Your code for {{application.name}}",
    "content": "<p>Your code is <b>{{code}}</b></p>",
}
PAYLOAD = {"code": "123456", "application": {"name": "Acme"}}


def message(config: dict[str, Any], to: str = "ada@example.test") -> RenderedMessage:
    return render_message(config, TEMPLATE, to, PAYLOAD)


def send(config: dict[str, Any]) -> Any:
    """Send one message with a new transport, and close it."""
    with SmtpTransport(config) as transport:
        return transport.send(message(config), to_type="SignIn", payload=PAYLOAD)


def send_error(config: dict[str, Any]) -> TransportError:
    """Return the TransportError one send raises."""
    with pytest.raises(TransportError) as raised:
        send(config)
    return raised.value


def secret_forms(*secrets: str) -> list[str]:
    """Return the ways a secret could leak: as is, and base64-encoded alone or in AUTH PLAIN."""
    forms = []
    for secret in secrets:
        forms += [secret, base64.b64encode(secret.encode()).decode()]
        forms.append(base64.b64encode(f"\0{USER}\0{secret}".encode()).decode())
    return forms


def assert_secret_free(texts: list[str], *secrets: str) -> None:
    joined = "\n".join(texts)
    for form in secret_forms(*secrets):
        assert form not in joined


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def plain_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """A plain server, with and without PIPELINING: every test that uses it runs on both."""
    with SmtpServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def auth_server() -> Iterator[SmtpServer]:
    with SmtpServer(tls="starttls", users={USER: PASSWORD}) as server:
        yield server


# Delivering


def test_sends_over_plain_smtp(plain_server: SmtpServer) -> None:
    result = send(plain_server.config())

    [received] = plain_server.messages
    assert received.mail_from == "no-reply@acme.test"
    assert received.rcpt_tos == ["ada@example.test"]
    assert not received.tls
    assert received.message["Subject"] == "Your code for Acme"
    assert result.server_reply.startswith("250 2.0.0 Ok: queued as ")
    assert result.message_id == received.message["Message-ID"]
    assert result.elapsed_ms >= 0
    assert "C: <message, " in "\n".join(result.transcript)


def test_with_pipelining_the_envelope_and_data_go_in_one_write() -> None:
    with SmtpServer(pipelining=True) as server:
        config = server.config()
        dotted = render_message(
            config,
            {**TEMPLATE, "contentType": "text/plain", "content": "Code {{code}}\n.\n..dots"},
            "ada@example.test",
            PAYLOAD,
        )
        with SmtpTransport(config) as transport:
            result = transport.send(dotted, to_type="SignIn", payload=PAYLOAD)
        [received] = server.messages

    sent = [line for line in result.transcript if not line.startswith("S: 250-")]
    start = sent.index("C: mail from:<no-reply@acme.test>")
    assert sent[start : start + 6] == [
        "C: mail from:<no-reply@acme.test>",
        "C: rcpt to:<ada@example.test>",
        "C: data",
        "S: 250 2.1.0 Ok",
        "S: 250 2.1.5 Ok",
        "S: 354 End data with <CR><LF>.<CR><LF>",
    ]
    assert received.message.get_content().splitlines() == ["Code 123456", ".", "..dots"]


def scripted_smtp(pipelining: bool, received: list[bytes], refuse_mail: bytes = b""):
    """A hand-written server: refuses MAIL with `refuse_mail` and hangs up, if given; refuses
    RCPT to bad@…; and, unlike a careful server, answers DATA with 354 even with no recipient."""

    def talk(conn: socket.socket, stop: Any) -> None:
        conn.sendall(b"220 odd.test ESMTP\r\n")
        lines = conn.makefile("rb")
        recipients = 0
        for line in lines:
            verb = line[:4].upper()
            if verb == b"EHLO":
                offer = b"250-PIPELINING\r\n" if pipelining else b""
                conn.sendall(b"250-odd.test\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"MAIL" and refuse_mail:
                conn.sendall(refuse_mail)
                conn.shutdown(socket.SHUT_RDWR)
                return
            elif verb == b"RCPT" and b"bad@" in line:
                conn.sendall(b"550 5.1.1 no such user\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                recipients += verb == b"RCPT"
                recipients *= verb != b"MAIL"
                conn.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                body = b"".join(iter(lambda: lines.readline(), b".\r\n"))
                received.append(body)
                conn.sendall(b"250 queued\r\n" if recipients else b"554 no valid recipients\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return

    return talk


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
@pytest.mark.parametrize(
    ("reply", "permanent", "code", "hint"),
    [
        (b"554 5.7.1 sender blocked\r\n", True, 554, "`fromEmail`"),
        (b"421 4.7.0 busy, closing\r\n", False, 421, "a later attempt may pass"),
    ],
)
def test_a_refused_sender_then_a_hang_up_is_the_refusal(
    pipelining, reply, permanent, code, hint
) -> None:
    with raw_server(scripted_smtp(pipelining, [], refuse_mail=reply)) as (host, port):
        config = {"host": host, "port": port, "fromEmail": "no-reply@acme.test", "ignoreTLS": True}
        error = send_error(config)

    assert (error.permanent, error.code) == (permanent, code), str(error)
    assert reply[4:].decode().strip() in str(error) and hint in error.hint


def test_a_data_taken_after_a_refused_recipient_is_ended_and_the_connection_kept() -> None:
    received: list[bytes] = []
    with raw_server(scripted_smtp(True, received)) as (host, port):
        config = {"host": host, "port": port, "fromEmail": "no-reply@acme.test", "ignoreTLS": True}
        with SmtpTransport(config) as transport:
            with pytest.raises(TransportError) as refused:
                transport.send(message(config, to="bad@example.test"), payload={})
            transport.send(message(config, to="ok@example.test"), payload={})

    assert (refused.value.permanent, refused.value.code) == (True, 550)
    assert received[0] == b""  # the empty message that ended the refused one's DATA
    assert b"Your code is" in received[1]


def test_a_pipelined_command_with_a_line_break_is_refused_before_it_is_written() -> None:
    with SmtpServer(pipelining=True) as server:
        config = server.config()
        with SmtpTransport(config) as transport:
            transport.send(message(config), to_type="SignIn", payload=PAYLOAD)  # connected
            conn = transport._connection
            assert conn is not None
            with pytest.raises(ValueError, match="line break"):
                conn.pipeline(["mail from:<a@acme.test>\r\nrcpt to:<b@example.test>", "data"])
            transport.send(message(config), to_type="SignIn", payload=PAYLOAD)  # still in step
        assert len(server.messages) == 2


def test_headers_arrive_as_rendered(plain_server: SmtpServer) -> None:
    config = plain_server.config(
        fromEmail="Acmé Støre <no-reply@acme.test>",
        replyTo="help@acme.test",
        customHeaders={"X-Campaign": "sign-in", "X-Tag": ["a", "b"]},
        name="client.acme.test",
    )
    send(config)

    [received] = plain_server.messages
    parsed = received.message
    assert parsed["From"].addresses[0].display_name == "Acmé Støre"
    assert parsed["From"].addresses[0].addr_spec == "no-reply@acme.test"
    assert parsed["Reply-To"] == "help@acme.test"
    assert parsed["X-Campaign"] == "sign-in"
    assert parsed.get_all("X-Tag") == ["a", "b"]
    assert parsed["Message-ID"].endswith("@acme.test>")
    assert email.utils.parsedate_to_datetime(parsed["Date"]) is not None
    assert parsed.get_content_type() == "multipart/alternative"
    assert received.ehlo_name == "client.acme.test"


def test_starttls_upgrades_when_the_server_offers_it() -> None:
    with SmtpServer(tls="starttls") as server:
        result = send(server.config())
        assert server.messages[0].tls
    assert "C: STARTTLS" in result.transcript
    assert result.warnings == []


def test_implicit_tls_trusts_the_ca_in_tls_ca() -> None:
    with SmtpServer(tls="implicit") as server:
        result = send(server.config())
        assert server.messages[0].tls
    assert result.warnings == []


def test_servername_names_the_certificate_when_connecting_by_address() -> None:
    with SmtpServer(tls="implicit") as server:
        send(server.config(servername="localhost"))
        assert server.messages[0].tls


def test_skipping_verification_works_and_says_so() -> None:
    with SmtpServer(tls="implicit") as server:
        result = send(server.config(tls={"rejectUnauthorized": False}))
        assert server.messages[0].tls
    assert any(
        "TLS certificate verification was skipped (tls.rejectUnauthorized is false)" in w
        for w in result.warnings
    )


def test_an_untrusted_certificate_is_a_permanent_failure_pointing_at_tls_ca() -> None:
    with SmtpServer(tls="implicit") as server:
        error = send_error(server.config(tls={}))
        assert server.messages == []
    assert error.permanent
    assert "certificate" in str(error)
    assert "`tls.ca`" in error.hint


def test_a_certificate_for_another_name_points_at_servername() -> None:
    with SmtpServer(tls="starttls") as server:
        error = send_error(server.config(servername="mail.example.test"))
    assert error.permanent
    assert "`servername`" in error.hint


def test_require_tls_fails_permanently_when_starttls_is_not_offered(
    plain_server: SmtpServer,
) -> None:
    error = send_error(plain_server.config(requireTLS=True))

    assert error.permanent
    assert "STARTTLS" in str(error)
    assert "requireTLS" in str(error)
    assert plain_server.messages == []


def test_ignore_tls_never_upgrades() -> None:
    with SmtpServer(tls="starttls") as server:
        result = send(server.config(ignoreTLS=True))
        assert not server.messages[0].tls
    assert "C: STARTTLS" not in result.transcript


def test_secure_on_a_starttls_port_suggests_turning_it_off() -> None:
    with SmtpServer(tls="starttls") as server:
        error = send_error(server.config(secure=True))
    assert error.permanent
    assert f"Port {server.port} expects STARTTLS" in error.hint
    assert "set `secure` to false, or use port 465" in error.hint


def test_no_secure_on_an_implicit_tls_port_times_out_and_suggests_secure() -> None:
    with SmtpServer(tls="implicit") as server:
        error = send_error(server.config(secure=False, greetingTimeout=300))
    assert not error.permanent
    assert "no answer within 0.3 s" in str(error)
    assert "set `secure` to true" in error.hint


# Authentication


def test_auth_uses_plain_when_offered_as_nodemailer_does(auth_server: SmtpServer) -> None:
    result = send(auth_server.config(auth={"type": "login", "user": USER, "pass": PASSWORD}))

    assert auth_server.auth_attempts == [("PLAIN", USER)]
    assert auth_server.messages[0].login == USER
    assert "C: AUTH PLAIN ********" in result.transcript
    assert_secret_free(result.transcript, PASSWORD)


def test_auth_method_login_forces_the_login_mechanism(auth_server: SmtpServer) -> None:
    result = send(auth_server.config(auth={"user": USER, "pass": PASSWORD, "method": "LOGIN"}))

    assert auth_server.auth_attempts == [("LOGIN", USER)]
    assert "C: AUTH LOGIN ********" in result.transcript
    assert "C: ********" in result.transcript
    assert_secret_free(result.transcript, PASSWORD)


def test_a_refused_password_is_permanent_with_a_hint_and_no_secret(
    auth_server: SmtpServer,
) -> None:
    error = send_error(auth_server.config(auth={"user": USER, "pass": PASSWORD + "-wrong"}))

    assert error.permanent
    assert error.code == 535
    assert "Authentication credentials invalid" in error.server_text
    assert "`auth.user` and `auth.pass`" in error.hint
    assert_secret_free([str(error), repr(error), *error.transcript], PASSWORD + "-wrong")
    assert auth_server.messages == []


def test_a_refused_password_at_gmail_asks_for_an_app_password(auth_server: SmtpServer) -> None:
    auth_server.fail_next(
        "AUTH",
        535,
        "5.7.8 Username and Password not accepted. For more information, go to "
        "https://support.google.com/mail/?p=BadCredentials",
    )
    error = send_error(auth_server.config(auth={"user": USER, "pass": PASSWORD}))

    assert error.permanent
    assert "Gmail needs an app password" in error.hint


def test_xoauth2_renews_an_expired_token_at_the_token_endpoint() -> None:
    with (
        OAuth2TokenServer(access_token="fresh-access-token") as tokens,
        SmtpServer(tls="starttls", oauth_tokens={USER: "fresh-access-token"}) as server,
    ):
        auth = {
            "type": "OAuth2",
            "user": USER,
            "clientId": "client-id",
            "clientSecret": "client-s3cret",
            "refreshToken": "refresh-s3cret",
            "accessToken": "stale-access-token",
            "expires": 1_000,
            "accessUrl": tokens.token_url,
        }
        transport = SmtpTransport(server.config(auth=auth))
        with transport:
            result = transport.send(message(server.config()), to_type="SignIn", payload=PAYLOAD)

        assert server.tokens_seen == ["fresh-access-token"]
        assert len(server.messages) == 1
        [request] = tokens.requests
        assert request.method == "POST"
        assert request.path == "/token"
        assert request.form() == {
            "client_id": "client-id",
            "client_secret": "client-s3cret",
            "refresh_token": "refresh-s3cret",
            "grant_type": "refresh_token",
        }
    assert transport.refreshed_token is not None
    assert transport.refreshed_token.access_token == "fresh-access-token"
    assert transport.refreshed_token.expires and transport.refreshed_token.expires > 1_000
    assert "fresh-access-token" not in repr(transport.refreshed_token)
    assert "C: AUTH XOAUTH2 ********" in result.transcript
    xoauth = f"user={USER}\x01auth=Bearer fresh-access-token\x01\x01"
    assert_secret_free(result.transcript, "fresh-access-token", xoauth, "client-s3cret")


def test_xoauth2_renews_a_token_the_server_refuses_once() -> None:
    with (
        OAuth2TokenServer(access_token="fresh-access-token") as tokens,
        SmtpServer(tls="starttls", oauth_tokens={USER: "fresh-access-token"}) as server,
    ):
        auth = {
            "type": "OAuth2",
            "user": USER,
            "clientId": "client-id",
            "clientSecret": "client-s3cret",
            "refreshToken": "refresh-s3cret",
            "accessToken": "revoked-access-token",
            "accessUrl": tokens.token_url,
        }
        send(server.config(auth=auth))

        assert server.tokens_seen == ["revoked-access-token", "fresh-access-token"]
        assert len(server.messages) == 1


def test_xoauth2_refusal_without_refresh_is_permanent() -> None:
    with SmtpServer(tls="starttls", oauth_tokens={USER: "good"}) as server:
        error = send_error(
            server.config(auth={"type": "OAuth2", "user": USER, "accessToken": "bad-token"})
        )
    assert error.permanent
    assert error.code == 535
    assert "mail scope" in error.hint
    assert_secret_free([str(error), *error.transcript], "bad-token")


def test_service_account_keys_are_reported_as_not_supported_yet() -> None:
    config = {
        "host": "127.0.0.1",
        "port": 25,
        "auth": {"type": "OAuth2", "user": USER, "privateKey": "-----BEGIN", "serviceClient": "1"},
    }
    error = send_error({**config, "fromEmail": "a@acme.test"})
    assert error.permanent
    assert "not supported yet" in str(error)


# Failures


def test_530_asking_for_starttls_points_at_ignore_tls(plain_server: SmtpServer) -> None:
    plain_server.fail_next("MAIL", 530, "5.7.0 Must issue a STARTTLS command first")
    error = send_error(plain_server.config(ignoreTLS=True))

    assert (error.permanent, error.code) == (True, 530)
    assert "`ignoreTLS`" in error.hint and "set `auth`" not in error.hint


def test_a_refused_recipient_hint_fits_whether_or_not_we_logged_in(
    auth_server: SmtpServer, plain_server: SmtpServer
) -> None:
    auth_server.fail_next("RCPT", 550, "5.1.1 No such user")
    logged_in = send_error(auth_server.config(auth={"user": USER, "pass": PASSWORD}))
    plain_server.fail_next("RCPT", 550, "5.7.1 Relaying denied")
    anonymous = send_error(plain_server.config())

    assert "`auth`" not in logged_in.hint and "recipient's address" in logged_in.hint
    assert "log in with `auth`" in anonymous.hint
    assert logged_in.hint not in logged_in.summary  # the log keeps the hint apart


def test_421_is_transient(plain_server: SmtpServer) -> None:
    plain_server.fail_next("RCPT", 421, "4.7.0 Too many messages, slow down")
    error = send_error(plain_server.config())

    assert not error.permanent
    assert error.code == 421
    assert error.server_text == "4.7.0 Too many messages, slow down"
    assert "a later attempt may pass" in error.hint


def test_a_refused_sender_is_permanent_and_names_from_email(plain_server: SmtpServer) -> None:
    plain_server.fail_next("MAIL", 550, "5.7.1 Sender address not verified")
    error = send_error(plain_server.config())

    assert error.permanent
    assert error.code == 550
    assert "`fromEmail`" in error.hint
    assert "5.7.1 Sender address not verified" in str(error)


def test_a_connection_dropped_mid_data_is_transient(plain_server: SmtpServer) -> None:
    plain_server.drop_next_data()
    error = send_error(plain_server.config())

    assert not error.permanent
    assert "closed the connection" in str(error)
    assert plain_server.messages == []


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    error = send_error({"host": "127.0.0.1", "port": port, "fromEmail": "a@acme.test"})

    assert not error.permanent
    assert "connection refused" in str(error)
    assert "`host` and `port`" in error.hint


def test_errors_survive_pickling(plain_server: SmtpServer) -> None:
    plain_server.fail_next("RCPT", 421)
    error = pickle.loads(pickle.dumps(send_error(plain_server.config())))
    assert (error.permanent, error.code) == (False, 421)
    assert error.transcript


# Connections


def test_a_transport_reuses_its_connection(plain_server: SmtpServer) -> None:
    config = plain_server.config()
    with SmtpTransport(config) as transport:
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        second = transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        assert transport.idle_since is not None
    assert transport.idle_since is None

    assert plain_server.connections == 1
    assert len(plain_server.messages) == 2
    assert second.transcript[0].startswith("C: mail from")  # used a moment ago: no NOOP probe


def test_a_connection_idle_for_a_while_is_probed_before_reuse(plain_server: SmtpServer) -> None:
    config = plain_server.config()
    with SmtpTransport(config) as transport:
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        transport.idle_since -= 60  # a minute passes
        second = transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
    assert second.transcript[0] == "C: noop"
    assert plain_server.connections == 1


def test_a_transport_reconnects_when_the_server_dropped_the_idle_connection(
    plain_server: SmtpServer,
) -> None:
    config = plain_server.config()
    with SmtpTransport(config) as transport:
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        plain_server.drop_connections()
        result = transport.send(message(config), to_type="SignIn", payload=PAYLOAD)

    assert plain_server.connections == 2
    assert len(plain_server.messages) == 2
    assert any("reconnecting" in line for line in result.transcript)


def test_a_refused_recipient_leaves_the_connection_usable(plain_server: SmtpServer) -> None:
    config = plain_server.config()
    plain_server.fail_next("RCPT", 550, "5.1.1 No such user")
    with SmtpTransport(config) as transport:
        with pytest.raises(TransportError):
            transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)

    assert plain_server.connections == 1
    assert len(plain_server.messages) == 1


def test_a_refusal_on_a_kept_connection_is_the_answer_not_a_reason_to_reconnect(
    plain_server: SmtpServer,
) -> None:
    config = plain_server.config()
    with SmtpTransport(config) as transport:
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        plain_server.fail_next("RCPT", 550, "5.1.1 No such user")
        with pytest.raises(TransportError) as refused:
            transport.send(message(config), to_type="SignIn", payload=PAYLOAD)

    assert (refused.value.permanent, refused.value.code) == (True, 550)
    assert plain_server.connections == 1  # the kept connection answered: no second try
    assert len(plain_server.messages) == 1


def test_check_logs_in_and_quits_without_sending(auth_server: SmtpServer) -> None:
    transport = get_transport("smtp", auth_server.config(auth={"user": USER, "pass": PASSWORD}))
    assert isinstance(transport, SmtpTransport)

    result = transport.check()

    assert result.server_reply.startswith("221")
    assert result.message_id is None
    assert auth_server.auth_attempts == [("PLAIN", USER)]
    assert auth_server.messages == []
    assert "C: quit" in result.transcript


def test_non_ascii_addresses_go_out_with_smtputf8(plain_server: SmtpServer) -> None:
    config = plain_server.config(fromEmail="Zoë <zoë@acme.test>")
    with SmtpTransport(config) as transport:
        transport.send(message(config, to="émile@example.test"), to_type="SignIn", payload={})

    [received] = plain_server.messages
    assert received.mail_from == "zoë@acme.test"
    assert received.rcpt_tos == ["émile@example.test"]
    assert received.message["To"] == "émile@example.test"


def test_international_domains_go_out_in_ascii_to_a_server_without_smtputf8() -> None:
    with SmtpServer(smtputf8=False) as server:
        config = server.config(fromEmail="Acme <no-reply@bücher.example>")
        with SmtpTransport(config) as transport:
            transport.send(message(config, to="ada@münchen.example"), to_type="SignIn", payload={})
        [received] = server.messages

    assert received.mail_from == "no-reply@xn--bcher-kva.example"
    assert received.rcpt_tos == ["ada@xn--mnchen-3ya.example"]
    assert received.message["To"] == "ada@xn--mnchen-3ya.example"


def test_a_non_ascii_local_part_needs_smtputf8_and_says_so() -> None:
    with SmtpServer(smtputf8=False) as server:
        config = server.config()
        with SmtpTransport(config) as transport, pytest.raises(TransportError) as refused:
            transport.send(message(config, to="émile@example.test"), to_type="SignIn", payload={})

    assert refused.value.permanent
    assert "SMTPUTF8" in str(refused.value) and "refused" not in str(refused.value)


def test_send_timeout_bounds_the_whole_send_however_long_each_step_may_wait() -> None:
    with stuck_smtp_server() as (host, port):
        config = {"host": host, "port": port, "fromEmail": "a@acme.test", "socketTimeout": 60000}
        started = time.monotonic()
        with pytest.raises(TransportError) as stuck:
            SmtpTransport(config, send_timeout=1.0).send(message(config), payload={})
        elapsed = time.monotonic() - started

    assert elapsed < 5  # not the minute socketTimeout allows
    assert not stuck.value.permanent
    assert "time limit" in stuck.value.message and "CONNECTORS_SEND_TIMEOUT" in stuck.value.hint


def test_send_timeout_cuts_off_a_server_that_answers_a_byte_at_a_time() -> None:
    long_answer = b"250-" + b"x" * 200 + b"\r\n250 ok\r\n"
    answer = smtp_after_ehlo(lambda conn, stop: drip(conn, long_answer, 0.2, stop))
    with raw_server(answer) as (host, port):
        config = {"host": host, "port": port, "fromEmail": "a@acme.test", "socketTimeout": 60000}
        started = time.monotonic()
        with (
            SmtpTransport(config, send_timeout=1.0) as transport,
            pytest.raises(TransportError) as dripped,
        ):
            transport.send(message(config), payload={})
        elapsed = time.monotonic() - started

    assert elapsed < 4  # not the 40 s the answer takes
    assert not dripped.value.permanent and "time limit" in dripped.value.message
    assert "at MAIL FROM" in dripped.value.message


def test_a_kept_connection_outlives_the_time_limit_of_an_earlier_send(
    plain_server: SmtpServer,
) -> None:
    config = plain_server.config()
    with SmtpTransport(config, send_timeout=0.3) as transport:
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)
        time.sleep(0.5)  # the first send's limit is long past
        transport.idle_since -= 60  # and the connection is probed before reuse
        transport.send(message(config), to_type="SignIn", payload=PAYLOAD)

    assert plain_server.connections == 1
    assert len(plain_server.messages) == 2
