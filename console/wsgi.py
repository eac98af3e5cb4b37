"""WSGI entry point: `granian --interface wsgi console.wsgi:application` (or gunicorn)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_application = get_wsgi_application()

# Keys a WSGI server sets itself, which may also be in the process environment.
CGI_KEYS = frozenset(
    {
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)
# The process environment as it was when the server loaded us: granian copies all of it into
# every request's environ (CGI style), where Django's request.META and its error reports would
# show DATABASE_URL's password and the like. Those keys are dropped before Django sees them.
PROCESS_ENVIRONMENT = frozenset(
    key for key in os.environ if key not in CGI_KEYS and not key.startswith("HTTP_")
)
# Keys a request may carry itself, but which may also come from the process environment
# (HTTP_PROXY, say, would read as a "Proxy:" header the client sent): dropped when they hold
# the process environment's value, that is when the request did not set them.
REQUEST_OR_PROCESS = {
    key: value
    for key, value in os.environ.items()
    if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
}


def application(environ, start_response):
    """Serve a request with Django, without the server's process environment in it."""
    if not PROCESS_ENVIRONMENT.isdisjoint(environ) or any(
        environ.get(key) == value for key, value in REQUEST_OR_PROCESS.items()
    ):
        environ = {
            k: v
            for k, v in environ.items()
            if k not in PROCESS_ENVIRONMENT
            and not (k in REQUEST_OR_PROCESS and REQUEST_OR_PROCESS[k] == v)
        }
    return django_application(environ, start_response)
