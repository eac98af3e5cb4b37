"""The production set-up: granian serving console.wsgi, the middleware the API skips, and the
check of kept database connections that replaces Django's `SELECT 1` on every request."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_started
from django.db import connection
from django.test import Client
from django.test.client import RequestFactory

from connectors.api import check_console_middleware
from connectors.models import Delivery
from connectors.tokens import issue_token

from .conftest import TEST_KEY
from .test_api import LOGTO_BODY, MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="kept connections to a database server"
)


def database_url() -> str:
    """Return a URL for the test database, for a server started from the tests."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = quote(settings["USER"] or "")
    password = f":{quote(settings['PASSWORD'])}" if settings["PASSWORD"] else ""
    host = settings["HOST"] or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{settings['PORT'] or 5432}/{settings['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server() -> Iterator[int]:
    """Run the README's production command (granian, one worker) on the test database."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": database_url(),
        "CONNECTOR_ENCRYPTION_KEYS": TEST_KEY,
        "SECRET_KEY": "a-test-secret-key-that-is-long-enough-for-django-checks-0123456789",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "TASKS_BACKEND": "django.tasks.backends.dummy.DummyBackend",
        "LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "console.wsgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--blocking-threads",
        "1",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("granian did not start")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(20)
        connection.close()


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request (on `conn` when given, kept open); return status, headers and body."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if body is None or isinstance(body, (str, bytes)) else json.dumps(body)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if own:
            conn.close()


def send(port: int, token: str, to: str, conn: http.client.HTTPConnection | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return request(port, "POST", MESSAGES, {**LOGTO_BODY, "to": to}, headers, conn)


def test_the_api_answers_over_kept_connections_with_json_headers(server, smtp_connector):
    token = issue_token("logto")[1]
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    ids = []
    for n in range(3):  # one connection for all three: keep-alive
        status, headers, body = send(server, token, f"ada{n}@example.test", conn)
        assert status == 202, body
        ids.append(json.loads(body)["id"])
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        # No console middleware ran: no session, no CSRF cookie, nothing varies on cookies.
        assert "set-cookie" not in headers and "vary" not in headers
    conn.close()
    assert sorted(str(pk) for pk in Delivery.objects.values_list("pk", flat=True)) == sorted(ids)
    # Still a token for every call, and still a Host check, as before.
    status, headers, body = request(server, "POST", MESSAGES, LOGTO_BODY)
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_token"
    status, _, body = request(server, "GET", "/healthz", headers={"Host": "evil.example"})
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"


def test_the_console_keeps_csrf_sessions_and_its_policy(server, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.test")
    # A hash the server's own hashers read (the tests' fast hasher is not among them).
    user.password = PBKDF2PasswordHasher().encode("pw-root-123", "somesalt", iterations=1000)
    user.save()
    status, headers, page = request(server, "GET", "/login/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    cookie = re.search(r"csrftoken=([^;]+)", headers["set-cookie"])
    assert cookie is not None
    form = {"username": "root", "password": "pw-root-123"}
    encoded = "&".join(f"{k}={quote(v)}" for k, v in form.items())
    post_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    # Without the CSRF token: refused.
    status, _, _ = request(server, "POST", "/login/", encoded, post_headers)
    assert status == 403
    # With it: logged in, with a session that opens the console.
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    status, headers, _ = request(
        server,
        "POST",
        "/login/",
        f"{encoded}&csrfmiddlewaretoken={token.group(1).decode()}",
        {**post_headers, "Cookie": f"csrftoken={cookie.group(1)}"},
    )
    assert status == 302, headers
    session = re.search(r"sessionid=([^;]+)", headers["set-cookie"])
    assert session is not None
    status, _, page = request(server, "GET", "/", headers={"Cookie": f"sessionid={session[1]}"})
    assert status == 200 and b"Connectors" in page
    assert request(server, "GET", "/")[0] == 302  # and without it, the login page


@postgresql_only
def test_a_database_session_ended_by_the_server_costs_no_error(server, smtp_connector):
    token = issue_token("logto")[1]
    assert send(server, token, "ada@example.test")[0] == 202  # the server keeps a connection
    with connection.cursor() as cursor:  # as a restart of PostgreSQL does to every session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchall()
    time.sleep(0.2)
    status, _, body = send(server, token, "bob@example.test")
    assert status == 202, body  # not a 503, not a 500: a new connection, found without a query
    assert request(server, "GET", "/healthz")[0] == 200
    assert Delivery.objects.count() == 2


def wsgi_call(path: str, **extra: Any) -> tuple[str, bytes]:
    """Call console.wsgi's application as a server does; return the status and body."""
    from console.wsgi import application

    environ = RequestFactory().generic("GET", path, **extra).environ
    started: list[str] = []
    result = application(environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        return started[0], b"".join(result)
    finally:
        result.close()


@postgresql_only
def test_web_requests_check_kept_connections_without_a_query(monkeypatch, smtp_connector):
    checks: list[bool] = []
    is_usable = connection.is_usable

    def counted() -> bool:
        checks.append(True)
        return is_usable()

    monkeypatch.setattr(connection, "is_usable", counted)
    assert connection.health_check_enabled or connection.settings_dict["CONN_HEALTH_CHECKS"]
    connection.ensure_connection()
    for path in ("/healthz", "/login/", "/api/v1/openapi.json", "/healthz"):
        assert wsgi_call(path)[0].startswith("200"), path
        assert connection.connection is not None  # kept between requests
    assert checks == []  # Django's SELECT 1 was never needed
    # A session the server ended is found and replaced, on the API and the console alike.
    for path in ("/healthz", "/login/"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        killer = connection.copy()  # another session ends ours, as a restart would
        killer.ensure_connection()
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        killer.close()
        time.sleep(0.1)
        checks.clear()  # (the test's own queries above, outside any request, had Django's)
        assert wsgi_call(path)[0].startswith("200"), path
        assert checks == []


def test_api_requests_skip_the_console_middleware_only(admin_user):
    # The console, through the same middleware list: CSRF refuses a form post without its token.
    browser = Client(enforce_csrf_checks=True)
    response = browser.post("/login/", {"username": "root", "password": "pw-root-123"})
    assert response.status_code == 403
    response = browser.get("/login/")
    assert "csrftoken" in response.cookies and "script-src" in response["Content-Security-Policy"]
    api = browser.get("/healthz")
    assert api.status_code == 200 and not api.cookies
    assert api["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_console_middleware_must_hold_what_the_admin_needs(settings):
    check_console_middleware(settings.CONSOLE_MIDDLEWARE)
    without_sessions = [m for m in settings.CONSOLE_MIDDLEWARE if "sessions" not in m]
    with pytest.raises(ImproperlyConfigured, match="SessionMiddleware"):
        check_console_middleware(without_sessions)
    backwards = list(reversed(settings.CONSOLE_MIDDLEWARE))
    with pytest.raises(ImproperlyConfigured, match="in that order"):
        check_console_middleware(backwards)


def test_the_process_environment_never_reaches_django(monkeypatch):
    # granian copies the whole process environment into every request's environ.
    import console.wsgi

    monkeypatch.setattr(console.wsgi, "PROCESS_ENVIRONMENT", frozenset({"DATABASE_URL"}))
    seen: list[dict[str, Any]] = []

    def look(sender: Any, environ: dict[str, Any], **kwargs: Any) -> None:
        seen.append(environ)

    request_started.connect(look)
    try:
        secret = "postgres://console:db-s3cret@db.internal/console"
        assert wsgi_call("/healthz", DATABASE_URL=secret)[0].startswith("200")
        assert wsgi_call("/healthz")[0].startswith("200")
    finally:
        request_started.disconnect(look)
    assert "DATABASE_URL" not in seen[0] and seen[0]["PATH_INFO"] == "/healthz"
    assert seen[1]["PATH_INFO"] == "/healthz"  # nothing to drop: passed on as it is


def test_process_environment_headers_never_pass_for_the_clients(monkeypatch):
    # HTTP_PROXY in the server's environment would read as a "Proxy:" header the client sent,
    # and a CONTENT_TYPE there as the request's own; a client's own headers go through.
    import console.wsgi

    process = {"HTTP_PROXY": "http://user:pr0xy-pass@proxy.internal:3128", "CONTENT_TYPE": "x/y"}
    monkeypatch.setattr(console.wsgi, "REQUEST_OR_PROCESS", process)
    seen: list[dict[str, Any]] = []

    def look(sender: Any, environ: dict[str, Any], **kwargs: Any) -> None:
        seen.append(environ)

    request_started.connect(look)
    try:
        wsgi_call("/healthz", **process)
        wsgi_call("/healthz", HTTP_PROXY="sent-by-the-client", CONTENT_TYPE="text/plain")
    finally:
        request_started.disconnect(look)
    assert "HTTP_PROXY" not in seen[0] and seen[0].get("CONTENT_TYPE") != "x/y"
    assert seen[1]["HTTP_PROXY"] == "sent-by-the-client" and seen[1]["CONTENT_TYPE"] == "text/plain"


def test_an_api_path_under_a_mount_prefix_gets_the_apis_errors(settings):
    # FORCE_SCRIPT_NAME, or SCRIPT_NAME from a proxy: path carries the prefix, path_info not.
    settings.FORCE_SCRIPT_NAME = "/console"
    response = Client().get("/healthz", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "bad_request"


@postgresql_only
def test_a_console_session_survives_a_terminated_database_session(server, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.test")
    user.password = PBKDF2PasswordHasher().encode("pw-root-123", "somesalt", iterations=1000)
    user.save()
    status, headers, page = request(server, "GET", "/login/")
    cookie = re.search(r"csrftoken=([^;]+)", headers["set-cookie"])[1]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1].decode()
    body = f"username=root&password={quote('pw-root-123')}&csrfmiddlewaretoken={token}"
    status, headers, _ = request(
        server,
        "POST",
        "/login/",
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}"},
    )
    assert status == 302
    session = re.search(r"sessionid=([^;]+)", headers["set-cookie"])[1]
    for _ in range(3):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(0.2)
        # The session and user are read from the database: a stale connection would be a 503.
        status, _, page = request(server, "GET", "/", headers={"Cookie": f"sessionid={session}"})
        assert status == 200 and b"Connectors" in page
