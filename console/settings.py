"""Settings for Connector Console, read from the environment (and an optional `.env`).

Every setting has a default that runs locally on SQLite with nothing else installed; the system
checks in `connectors.checks` say which of those defaults are unsafe in production.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_DIR = BASE_DIR / "var"  # kept out of version control: development keys, test database
LOCAL_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _local_key(name: str, generate: str) -> str:
    """Return a development key stored in `var/NAME`, creating it once."""
    path = LOCAL_DIR / name
    if not path.exists():
        import secrets

        from cryptography.fernet import Fernet

        LOCAL_DIR.mkdir(exist_ok=True)
        value = (
            Fernet.generate_key().decode() if generate == "fernet" else secrets.token_urlsafe(50)
        )
        path.write_text(value + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
USING_DEVELOPMENT_SECRET_KEY = not SECRET_KEY
if USING_DEVELOPMENT_SECRET_KEY:
    SECRET_KEY = _local_key("secret-key", "token")

# Comma-separated Fernet keys: the first encrypts, every one of them decrypts.
CONNECTOR_ENCRYPTION_KEYS: list[str] = env.list("CONNECTOR_ENCRYPTION_KEYS", default=[])
USING_DEVELOPMENT_ENCRYPTION_KEY = not CONNECTOR_ENCRYPTION_KEYS
if USING_DEVELOPMENT_ENCRYPTION_KEY:
    CONNECTOR_ENCRYPTION_KEYS = [_local_key("encryption-key", "fernet")]

ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "connectors.console_app.ConsoleAdminConfig",  # django.contrib.admin; its site is the console
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "connectors",
]

MIDDLEWARE = [
    # Replaces the SELECT 1 round trip of CONN_HEALTH_CHECKS on every request with a look at the
    # kept connection's socket (PostgreSQL only; connectors/api.py says why).
    "connectors.api.ClosedConnectionMiddleware",
    "console.middleware.HeadWithoutBody",
    "django.middleware.security.SecurityMiddleware",
    # Runs CONSOLE_MIDDLEWARE, below, for every path except the HTTP API's (/api/, /healthz),
    # which authenticates by token and answers JSON: it needs none of them.
    "connectors.api.ConsoleOnlyMiddleware",
]
# Middleware of the console's pages, run in this order where ConsoleOnlyMiddleware stands.
CONSOLE_MIDDLEWARE = [
    # Serves the files `collectstatic` gathered in STATIC_ROOT from the app server itself, so
    # production needs no separate file server; see README's production notes.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The admin's checks, and Django's for CSRF and X-Frame-Options (security.W002, W003), look for
# their middleware in MIDDLEWARE only; they are in CONSOLE_MIDDLEWARE. ConsoleOnlyMiddleware
# refuses to start without the admin's; connectors.W004, W006 and W007 make the deploy checks
# that Django makes only when those two are in MIDDLEWARE (security.W016, W019).
SILENCED_SYSTEM_CHECKS = [
    "admin.E408",
    "admin.E409",
    "admin.E410",
    "security.W002",
    "security.W003",
]

ROOT_URLCONF = "console.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",  # the console's editor needs the nonce
            ],
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # One test database per test run, so runs side by side (two checkouts, CI) do not collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file rather than memory, so the tests' worker processes can share the test database.
    # One file per test run (by process id): runs side by side must not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(LOCAL_DIR / f"test-db-{os.getpid()}.sqlite3")}
    # WAL lets the console read while a sender writes; a busy timeout, not "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20, "transaction_mode": "IMMEDIATE"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

# HTTPS: off by default so the console runs on http://localhost; the deploy checks flag them.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
if env.bool("BEHIND_HTTPS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Background work. The default runs each delivery in-process right after its transaction commits
# (nothing else to start); production sets TASKS_BACKEND=connectors.outbox.OutboxBackend and runs
# `python manage.py send_worker` on one or more machines (docs/sending.md has the other choices).
TASKS = {
    "default": {
        "BACKEND": env.str(
            "TASKS_BACKEND", default="django.tasks.backends.immediate.ImmediateBackend"
        ),
    }
}

# Django's mail (send_mail, password reset mails, error reports) goes through a connector and its
# delivery log: the default connector, or CONNECTORS_MAILER_CONNECTOR's slug.
_connector_mailer = {
    "BACKEND": "connectors.mail.ConnectorEmailBackend",
    "OPTIONS": {"connector": env.str("CONNECTORS_MAILER_CONNECTOR", default="") or None},
}
MAILERS = {"default": _connector_mailer, "connectors": _connector_mailer}

# Delivery: retries of transient failures, leases, the per-recipient rate limit.
CONNECTORS_MAX_ATTEMPTS = env.int("CONNECTORS_MAX_ATTEMPTS", default=8)
CONNECTORS_MAX_AGE = env.int("CONNECTORS_MAX_AGE", default=3600)  # seconds
CONNECTORS_RETRY_BASE_DELAY = env.float("CONNECTORS_RETRY_BASE_DELAY", default=5.0)  # seconds
CONNECTORS_RETRY_MAX_DELAY = env.float("CONNECTORS_RETRY_MAX_DELAY", default=600.0)  # seconds
CONNECTORS_LEASE_SECONDS = env.int("CONNECTORS_LEASE_SECONDS", default=300)
# The longest one send may take, all steps together, whatever the connector's own time-outs.
CONNECTORS_SEND_TIMEOUT = env.float("CONNECTORS_SEND_TIMEOUT", default=60.0)  # seconds
# seconds between each worker's recovery of expired leases
CONNECTORS_RECOVER_EVERY = env.float("CONNECTORS_RECOVER_EVERY", default=30.0)
CONNECTORS_RECIPIENT_RATE_LIMIT = (
    env.int("CONNECTORS_RECIPIENT_RATE_LIMIT", default=10),  # messages (0 = no limit) ...
    env.int("CONNECTORS_RECIPIENT_RATE_WINDOW", default=600),  # ... per this many seconds
)
CONNECTORS_HTTP_ALLOW_PRIVATE = env.bool("CONNECTORS_HTTP_ALLOW_PRIVATE", default=DEBUG)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own loggers print once, through the root handler (not twice).
        "django": {"handlers": [], "propagate": True},
        # aiosmtpd (the development mail catcher) logs every connection at INFO.
        "mail.log": {"level": "WARNING"},
    },
}

# Console ------------------------------------------------------------------------------------------
# The browser console (connectors/site.py, connectors/admin.py); docs/console.md explains each.

# Only the console's own files may run or style a page: no inline scripts, no CDN. The HTML preview
# of a template and the mail catcher's messages are served with their own, stricter policy.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    # The nonce is for the <style> elements the code editor (CodeMirror) writes; style attributes
    # stay blocked.
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "frame-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.SELF],
}
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"
# Failed log-ins allowed per user name and client address, per window of seconds, before the
# login form refuses to check passwords for that pair (kept in the default cache).
CONSOLE_LOGIN_FAILURE_LIMIT = (
    env.int("CONSOLE_LOGIN_FAILURE_LIMIT", default=5),
    env.int("CONSOLE_LOGIN_FAILURE_WINDOW", default=900),
)
# Send test: tests per administrator per window of seconds, and the time bound of one test.
CONSOLE_SEND_TEST_LIMIT = (
    env.int("CONSOLE_SEND_TEST_LIMIT", default=10),
    env.int("CONSOLE_SEND_TEST_WINDOW", default=300),
)
CONSOLE_SEND_TEST_SECONDS = env.int("CONSOLE_SEND_TEST_SECONDS", default=20)
# The development mail catcher (`manage.py mailcatcher`) and the console page that shows it.
MAILCATCHER_ENABLED = env.bool("MAILCATCHER_ENABLED", default=DEBUG)
MAILCATCHER_DIR = Path(env.str("MAILCATCHER_DIR", default=str(LOCAL_DIR / "mailcatcher")))

# HTTP API ----------------------------------------------------------------------------------------
# POST /api/v1/messages and friends (connectors/api.py); docs/api.md explains each setting.
CONNECTORS_API_MAX_BODY_BYTES = env.int("CONNECTORS_API_MAX_BODY_BYTES", default=64 * 1024)
# Send requests per token (0 = no limit) per window of seconds, counted in the database so the
# limit holds across every worker process and machine.
CONNECTORS_API_TOKEN_RATE_LIMIT = (
    env.int("CONNECTORS_API_TOKEN_RATE_LIMIT", default=600),
    env.int("CONNECTORS_API_TOKEN_RATE_WINDOW", default=60),
)
# Keep each server thread's database connection open between requests: opening a PostgreSQL
# connection costs more than a whole API request. Checked before reuse, so a restarted database
# costs one failed check, not an error. `?conn_max_age=N` in DATABASE_URL overrides it.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# Top-level body keys to accept and ignore: unknown keys are refused (400, "did you mean"), so a
# client that starts sending a new one can be let through here until the console knows it.
CONNECTORS_API_IGNORED_KEYS: list[str] = env.list("CONNECTORS_API_IGNORED_KEYS", default=[])
# How long a worker trusts a token it has verified before looking it up again. Revocation applies
# at once regardless; a change to a token's connectors applies within this time.
CONNECTORS_API_TOKEN_CACHE_SECONDS = env.float("CONNECTORS_API_TOKEN_CACHE_SECONDS", default=10.0)
