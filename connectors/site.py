"""The console: a branded admin site with throttled log-in and the development mail catcher."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.urls import URLPattern, URLResolver, path

from .forms import ConsoleLoginForm

# What the index calls the connectors app's pages (the models' own names read "Api tokens").
CONSOLE_NAMES = {"ApiToken": "API tokens", "Delivery": "Delivery log"}


class ConsoleSite(admin.AdminSite):
    site_header = "Connector Console"
    site_title = "Connector Console"
    index_title = "Email connectors"
    login_form = ConsoleLoginForm
    enable_nav_sidebar = False  # a few pages, linked from the header; the sidebar costs width
    site_url = None  # the console is the whole site: no "View site" link

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["mailcatcher_enabled"] = bool(settings.MAILCATCHER_ENABLED)
        return context

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        """Return the index's apps: the console's own first, its pages by their console names."""
        apps = super().get_app_list(request, app_label)
        for app in apps:
            for model in app["models"]:
                model["name"] = CONSOLE_NAMES.get(model["object_name"], model["name"])
        return sorted(apps, key=lambda app: app["app_label"] != "connectors")

    def get_urls(self) -> list[URLResolver | URLPattern]:
        from .views import mailcatcher as views

        extra = [
            path("mailcatcher/", self.admin_view(views.mailcatcher_list), name="mailcatcher"),
            path(
                "mailcatcher/clear/",
                self.admin_view(views.mailcatcher_clear),
                name="mailcatcher_clear",
            ),
            path(
                "mailcatcher/<str:name>/",
                self.admin_view(views.mailcatcher_detail),
                name="mailcatcher_message",
            ),
            path(
                "mailcatcher/<str:name>/frame/",
                self.admin_view(views.mailcatcher_frame),
                name="mailcatcher_frame",
            ),
        ]
        return extra + super().get_urls()
