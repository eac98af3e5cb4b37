"""The development mail catcher's pages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csp import csp_override
from django.views.decorators.http import require_POST

from .. import mailcatcher
from .base import EMAIL_FRAME_CSP

if TYPE_CHECKING:
    pass


def _mailcatcher_allowed(request: HttpRequest) -> None:
    if not settings.MAILCATCHER_ENABLED:
        raise Http404("The mail catcher is for development: set MAILCATCHER_ENABLED=true.")
    if not request.user.has_perm("connectors.view_delivery"):
        raise PermissionDenied


def mailcatcher_list(request: HttpRequest) -> HttpResponse:
    """List what the development mail catcher caught, newest first."""
    _mailcatcher_allowed(request)
    from django.contrib import admin

    context = {
        **admin.site.each_context(request),
        "title": "Mail catcher",
        "caught": mailcatcher.list_messages(settings.MAILCATCHER_DIR),
        "directory": settings.MAILCATCHER_DIR,
        "can_clear": request.user.has_perm("connectors.change_connector"),
    }
    return TemplateResponse(request, "admin/mailcatcher/list.html", context)


def mailcatcher_detail(request: HttpRequest, name: str) -> HttpResponse:
    """Show one caught message: envelope, headers, text, HTML (in a sandboxed frame) and source."""
    _mailcatcher_allowed(request)
    from django.contrib import admin

    message = mailcatcher.read_message(settings.MAILCATCHER_DIR, name)
    if message is None:
        raise Http404("No such message: it may have been cleared.")
    context = {
        **admin.site.each_context(request),
        "title": message.subject or "(no subject)",
        "caught": message,
        "source": (settings.MAILCATCHER_DIR / name).read_bytes().decode("utf-8", "replace"),
    }
    return TemplateResponse(request, "admin/mailcatcher/detail.html", context)


@xframe_options_sameorigin
@csp_override(EMAIL_FRAME_CSP)
def mailcatcher_frame(request: HttpRequest, name: str) -> HttpResponse:
    """Answer with a caught message's HTML body, for the sandboxed frame."""
    _mailcatcher_allowed(request)
    message = mailcatcher.read_message(settings.MAILCATCHER_DIR, name)
    if message is None:
        raise Http404("No such message.")
    return HttpResponse(message.html, content_type="text/html; charset=utf-8")


@require_POST
def mailcatcher_clear(request: HttpRequest) -> HttpResponse:
    """Delete every caught message."""
    _mailcatcher_allowed(request)
    if not request.user.has_perm("connectors.change_connector"):
        raise PermissionDenied
    count = mailcatcher.clear(settings.MAILCATCHER_DIR)
    messages.success(request, f"Deleted {count} caught message{'s' if count != 1 else ''}.")
    return HttpResponseRedirect(reverse("admin:mailcatcher"))
