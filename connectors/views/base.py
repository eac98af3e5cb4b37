"""What the console's views share: JSON errors, page context, the email frame's policy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, JsonResponse

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin


# A rendered email shown in a frame: its own inline styles and remote images may load, nothing
# may run (the frame is sandboxed twice: by its attribute and by this policy).
EMAIL_FRAME_CSP = {
    "default-src": ["'none'"],
    "style-src": ["'unsafe-inline'"],
    "img-src": ["data:", "https:"],
    "font-src": ["data:"],
    "sandbox": "",  # the directive alone: every restriction
    "frame-ancestors": ["'self'"],
}


def json_error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    """Return a JSON error in the shape every console endpoint uses."""
    return JsonResponse(
        {"ok": False, "error": {"code": code, "message": message, **extra}}, status=status
    )


def page_context(
    model_admin: ModelAdmin, request: HttpRequest, obj: Any, title: str
) -> dict[str, Any]:
    """Return the context an admin page about one object needs (breadcrumbs, permissions)."""
    opts = model_admin.model._meta
    return {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "app_label": opts.app_label,
        "original": obj,
        "title": title,
        "subtitle": str(obj),
        "has_view_permission": model_admin.has_view_permission(request, obj),
        "has_change_permission": model_admin.has_change_permission(request, obj),
    }
