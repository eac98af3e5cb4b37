"""The console's model pages: connectors, deliveries, API tokens, and users for superusers.

Extra pages (Send test, templates, history, retry) hang off the model pages through
`get_urls()`; their bodies live in the `views` package. Every URL goes through
`admin_site.admin_view` (staff log-in, CSRF, no caching) and a permission check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince

from . import schema
from .delivery import requeue
from .forms import ApiTokenForm, ConnectorForm
from .models import ApiToken, Connector, Delivery, DeliverySource, DeliveryStatus
from .views import editor, history, templates

ConnectorView = Callable[..., HttpResponse]


def object_view(
    model_admin: admin.ModelAdmin,
    view: Callable[..., HttpResponse],
    allowed: Callable[[HttpRequest, Any], bool],
    *,
    method: str | None = None,
) -> Callable[..., HttpResponse]:
    """Wrap a page or button of one object, view(request, obj, ...), with the console's checks.

    The method (405), the object (404) and the user's permission on it (403), in that order.
    """

    def wrapped(request: HttpRequest, object_id: Any, *args: Any, **kwargs: Any) -> HttpResponse:
        if method and request.method != method:
            return HttpResponse(status=405, headers={"Allow": method})
        obj = model_admin.get_object(request, str(object_id))
        if obj is None:
            raise Http404(f"No such {model_admin.opts.verbose_name}.")
        if not allowed(request, obj):
            raise PermissionDenied
        return view(request, obj, *args, **kwargs)

    return model_admin.admin_site.admin_view(wrapped)


@admin.register(Connector)
class ConnectorAdmin(admin.ModelAdmin):
    form = ConnectorForm
    list_display = [
        "connector_name", "kind", "default_badge", "enabled", "last_test", "last_delivery",
        "template_summary",
    ]  # fmt: skip
    list_display_links = ["connector_name"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    actions = ["make_default", "enable", "disable", "duplicate", "export_json"]

    # Pages ----------------------------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Connector | None = None) -> Any:
        fields = (
            ["name", "slug", "kind", "enabled"]
            if obj
            else ["name", "slug", "kind", "preset", "enabled"]
        )
        return [(None, {"fields": fields})]

    def get_readonly_fields(self, request: HttpRequest, obj: Connector | None = None) -> Any:
        return ["kind"] if obj else []

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().get_changeform_initial_data(request), "enabled": True}

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Connector | None = None,
    ) -> Any:
        form = context["adminform"].form
        context.update(
            editor.editor_context(request, form, obj, self.has_send_test_permission(request, obj))
        )
        context["editor_data"]["readOnly"] = not (add or self.has_change_permission(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request: HttpRequest, obj: Connector, form: Any, change: bool) -> None:
        obj.apply_config(
            form.validated or {},
            user=request.user,
            note="edited in the console" if change else "created in the console",
        )

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        connector = self.get_object(request, object_id)
        if connector is None:
            raise Http404("No such connector.")
        if not self.has_view_or_change_permission(request, connector):
            raise PermissionDenied
        return history.history(request, self, connector)

    # Permissions ----------------------------------------------------------------------------

    def has_send_test_permission(self, request: HttpRequest, obj: Connector | None = None) -> bool:
        """Tell whether the user may Send test: it needs the right to change connectors."""
        return self.has_change_permission(request, obj)

    def _allowed(self, permission: str, request: HttpRequest, obj: Connector) -> bool:
        checks = {
            "view": self.has_view_or_change_permission,
            "change": self.has_change_permission,
            "send_test": self.has_send_test_permission,
        }
        return checks[permission](request, obj)

    def _connector_view(
        self, view: ConnectorView, permission: str, *, method: str | None = None
    ) -> Callable[..., HttpResponse]:
        """Wrap a view taking (request, model_admin, connector, ...) with the console's checks."""
        return object_view(
            self,
            lambda request, connector, *args, **kwargs: view(
                request, self, connector, *args, **kwargs
            ),
            lambda request, connector: self._allowed(permission, request, connector),
            method=method,
        )

    def _send_test_new(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405, headers={"Allow": "POST"})
        if not (self.has_add_permission(request) and self.has_send_test_permission(request)):
            raise PermissionDenied
        return editor.send_test_view(request, self, None)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Connectors", **(extra_context or {})})

    def get_urls(self) -> list[URLPattern]:
        name = "connectors_connector"
        view, post = self._connector_view, "POST"
        return [
            path(
                "send-test/",
                self.admin_site.admin_view(self._send_test_new),
                name=f"{name}_send_test_new",
            ),
            path(
                "<int:object_id>/send-test/",
                view(editor.send_test_view, "send_test", method=post),
                name=f"{name}_send_test",
            ),
            path("<int:object_id>/export/", view(export_view, "view"), name=f"{name}_export"),
            path(
                "<int:object_id>/templates/",
                view(templates.template_grid, "view"),
                name=f"{name}_templates",
            ),
            path(
                "<int:object_id>/templates/preview/",
                view(templates.template_preview, "view"),
                name=f"{name}_template_preview",
            ),
            path(
                "<int:object_id>/templates/preview/frame/",
                view(templates.template_frame, "view"),
                name=f"{name}_template_frame",
            ),
            path(
                "<int:object_id>/templates/<str:usage_type>/<str:locale_slug>/",
                view(templates.template_edit, "view"),
                name=f"{name}_template",
            ),
            path(
                "<int:object_id>/history/diff/",
                view(history.history_diff, "view"),
                name=f"{name}_history_diff",
            ),
            path(
                "<int:object_id>/history/<int:number>/restore/",
                view(history.history_restore, "change", method=post),
                name=f"{name}_history_restore",
            ),
            *super().get_urls(),
        ]

    # The list -------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connector]:
        latest = (
            Delivery.objects.filter(connector=OuterRef("pk"))
            .exclude(source=DeliverySource.TEST)
            .order_by("-created_at")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                template_total=Count("templates", distinct=True),
                locale_total=Count("templates__locale", distinct=True),
                last_delivery_status=Subquery(latest.values("status")[:1]),
                last_delivery_at=Subquery(latest.values("created_at")[:1]),
            )
        )

    @admin.display(description="Name", ordering="name")
    def connector_name(self, obj: Connector) -> str:
        return format_html('{}<br><code class="slug">{}</code>', obj.name, obj.slug)

    @admin.display(description="Default", ordering="is_default")
    def default_badge(self, obj: Connector) -> str:
        return (
            mark_safe('<span class="badge badge-default">default</span>') if obj.is_default else ""
        )

    @admin.display(description="Last test", ordering="last_test_at")
    def last_test(self, obj: Connector) -> str:
        if obj.last_test_at is None:
            return mark_safe('<span class="muted">never</span>')
        outcome = ("ok", "ok") if obj.last_test_ok else ("failed", "failed")
        return format_html(
            '<span class="badge badge-{}">{}</span> {} ago<br><span class="muted">{}</span>',
            outcome[0],
            outcome[1],
            timesince(obj.last_test_at),
            Truncator(obj.last_test_summary).chars(70),
        )

    @admin.display(description="Last delivery", ordering="last_delivery_at")
    def last_delivery(self, obj: Connector) -> str:
        status = getattr(obj, "last_delivery_status", None)
        if not status:
            return mark_safe('<span class="muted">none yet</span>')
        return format_html(
            '<span class="badge badge-{}">{}</span> {} ago',
            status,
            status,
            timesince(getattr(obj, "last_delivery_at", None) or timezone.now()),
        )

    @admin.display(description="Templates")
    def template_summary(self, obj: Connector) -> str:
        templates, locales = getattr(obj, "template_total", 0), getattr(obj, "locale_total", 0)
        return format_html(
            '<a href="{}">{} template{} · {} locale{}</a>',
            reverse("admin:connectors_connector_templates", args=[obj.pk]),
            templates,
            "s" if templates != 1 else "",
            locales,
            "s" if locales != 1 else "",
        )

    # Actions --------------------------------------------------------------------------------

    @admin.action(description="Make the selected connector the default", permissions=["change"])
    def make_default(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one connector to make it the default.", messages.ERROR
            )
            return
        connector = queryset.get()
        connector.set_default()
        self.log_change(request, connector, "Made the default connector.")
        self.message_user(request, f"{connector.name} is now the default connector.")

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[Connector], enabled: bool
    ) -> None:
        names = []
        for connector in queryset:
            connector.enabled = enabled
            connector.updated_by = request.user if request.user.is_authenticated else None
            connector.save(update_fields=["enabled", "updated_by", "updated_at"])
            self.log_change(request, connector, "Enabled." if enabled else "Disabled.")
            names.append(connector.name)
        word = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{word}: {', '.join(names)}." if names else "Nothing selected.")

    @admin.action(description="Enable the selected connectors", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable the selected connectors", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        self._set_enabled(request, queryset, False)

    @admin.action(description="Duplicate the selected connectors", permissions=["add"])
    def duplicate(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        for source in queryset:
            copy = duplicate_connector(source, request.user)
            self.log_addition(request, copy, f"Duplicated from {source.slug}.")
            self.message_user(request, f"Duplicated {source.name} as {copy.name} ({copy.slug}).")

    @admin.action(description="Export the selected connectors as JSON", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[Connector]) -> HttpResponse:
        connectors = list(queryset)
        if len(connectors) == 1:
            return export_response(connectors[0])
        data = {
            c.slug: {"name": c.name, "kind": c.kind, "enabled": c.enabled, "config": c.config()}
            for c in connectors
        }
        return json_download(
            json.dumps(data, indent=2, ensure_ascii=False) + "\n", "connectors.json"
        )


def duplicate_connector(source: Connector, user: Any) -> Connector:
    """Copy a connector (config, encrypted secrets, templates) under a free slug."""
    base, number = f"{source.slug}-copy", 1
    slug = base
    while Connector.objects.filter(slug=slug).exists():
        number += 1
        slug = f"{base}-{number}"
    with transaction.atomic():
        copy = Connector(
            name=f"{source.name} (copy)",
            slug=slug[:100],
            kind=source.kind,
            enabled=source.enabled,
            settings=source.settings,
            secrets=source.secrets,
            secret_paths_stored=list(source.secret_paths_stored),
        )
        copy.save()
        # The masked config resolves against the secrets copied above, so they carry over.
        copy.apply_config(source.config(), user=user, note=f"duplicated from {source.slug}")
    return copy


def json_download(text: str, filename: str) -> HttpResponse:
    """Return a response that downloads `text` as a JSON file."""
    response = HttpResponse(text, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def export_response(connector: Connector) -> HttpResponse:
    """Return a connector's config (secrets masked) as a JSON file `connectors import` reads."""
    return json_download(schema.dump_config(connector.config()), f"{connector.slug}.json")


def export_view(
    request: HttpRequest, model_admin: ConnectorAdmin, connector: Connector
) -> HttpResponse:
    """Download one connector's config, secrets masked."""
    return export_response(connector)


# Delivery log -------------------------------------------------------------------------------


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "to",
        "usage_type",
        "connector_slug",
        "source",
        "status_badge",
        "attempts",
        "short_error",
    ]
    list_display_links = ["created_at", "to"]
    list_filter = ["status", "connector", "usage_type", "source", "created_at"]
    search_fields = ["to"]
    search_help_text = "Search by recipient address."
    list_per_page = 50
    actions = ["retry"]
    change_form_template = "admin/connectors/delivery/change_form.html"
    # Shown by the template itself; `sealed` (the encrypted payload) never is.
    fields = ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the log is read-only; a retry has its own permission

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Tell whether the user may retry deliveries (editors and superusers)."""
        return request.user.has_perm("connectors.change_delivery")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Delivery log", **(extra_context or {})})

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        delivery = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if delivery is not None:
            context.update(
                delivery=delivery,
                attempts=list(delivery.attempt_log.all()),
                payload_json=json.dumps(delivery.payload, indent=2, ensure_ascii=False),
                can_retry=self.has_retry_permission(request, delivery)
                and delivery.status in (DeliveryStatus.FAILED, DeliveryStatus.QUEUED)
                and delivery.source != DeliverySource.TEST,
                title=f"Delivery to {delivery.to}",
            )
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<uuid:object_id>/retry/",
                object_view(self, self.retry_view, self.has_retry_permission, method="POST"),
                name="connectors_delivery_retry",
            ),
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest, delivery: Delivery) -> HttpResponse:
        """Queue a delivery for another attempt now (its page's Retry button)."""
        self._retry(request, [delivery])
        return HttpResponseRedirect(reverse("admin:connectors_delivery_change", args=[delivery.pk]))

    def _retry(self, request: HttpRequest, chosen: Any) -> None:
        for delivery in chosen:
            refused = requeue(delivery)
            if refused:
                self.message_user(
                    request, f"Delivery to {delivery.to} not retried: {refused}.", messages.WARNING
                )
            else:
                self.log_change(request, delivery, "Retried.")
                delivery.refresh_from_db()
                outcome = "sent" if delivery.status == DeliveryStatus.SENT else "queued again"
                self.message_user(request, f"Delivery to {delivery.to} retried: {outcome}.")

    @admin.action(description="Retry the selected deliveries", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        self._retry(request, queryset)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Delivery) -> str:
        return format_html('<span class="badge badge-{}">{}</span>', obj.status, obj.status)

    @admin.display(description="Error")
    def short_error(self, obj: Delivery) -> str:
        return Truncator(obj.error).chars(80)


# API tokens and users: superusers only --------------------------------------------------------


class SuperuserOnly:
    """Model pages that only superusers see, whatever permissions a group grants."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)


@admin.register(ApiToken)
class ApiTokenAdmin(SuperuserOnly, admin.ModelAdmin):
    form = ApiTokenForm
    list_display = [
        "name",
        "shown_prefix",
        "scope",
        "created_at",
        "created_by",
        "last_used_at",
        "status",
    ]
    list_select_related = ["created_by"]
    actions = ["revoke"]
    filter_horizontal = ["connectors"]
    change_form_template = "admin/connectors/apitoken/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        return super().get_queryset(request).prefetch_related("connectors")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "API tokens", **(extra_context or {})})

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return (
            ["shown_prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
            if obj
            else []
        )

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return ["name", "connectors", *self.get_readonly_fields(request, obj)]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        from .tokens import issue_token

        row, token = issue_token(obj.name, created_by=request.user)
        # The admin goes on with `obj` (connectors, log entry, response): make it that row.
        obj.pk, obj.prefix, obj.token_hash = row.pk, row.prefix, row.token_hash
        obj.created_at, obj.created_by = row.created_at, row.created_by
        obj._state.adding = False
        request.console_new_token = token  # type: ignore[attr-defined]  # shown by response_add

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: Any = None
    ) -> HttpResponse:
        token = getattr(request, "console_new_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"API token {obj.name} created",
            "token": token,
            "api_token": obj,
        }
        return TemplateResponse(request, "admin/connectors/apitoken/created.html", context)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/revoke/",
                object_view(self, self.revoke_view, self.has_change_permission, method="POST"),
                name="connectors_apitoken_revoke",
            ),
            *super().get_urls(),
        ]

    def revoke_view(self, request: HttpRequest, token: ApiToken) -> HttpResponse:
        """Revoke one token (its page's Revoke button)."""
        self.revoke(request, ApiToken.objects.filter(pk=token.pk))
        return HttpResponseRedirect(reverse("admin:connectors_apitoken_changelist"))

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset.filter(revoked_at__isnull=True):
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            self.log_change(request, token, "Revoked.")
            self.message_user(
                request, f"Revoked {token.name} ({token.prefix}…): it no longer works."
            )

    @admin.display(description="Token starts with", ordering="prefix")
    def shown_prefix(self, obj: ApiToken) -> str:
        return format_html("<code>{}…</code>", obj.prefix)

    @admin.display(description="May send through")
    def scope(self, obj: ApiToken) -> str:
        slugs = [c.slug for c in obj.connectors.all()]
        return ", ".join(slugs) if slugs else "every connector"

    @admin.display(description="Status")
    def status(self, obj: ApiToken) -> str:
        if obj.revoked_at:
            return mark_safe('<span class="badge badge-failed">revoked</span>')
        return mark_safe('<span class="badge badge-ok">active</span>')


User = get_user_model()
for model, model_admin in ((User, UserAdmin), (Group, GroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(
        model, type(f"Console{model_admin.__name__}", (SuperuserOnly, model_admin), {})
    )
