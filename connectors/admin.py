"""Django admin registration: usable now; the full console builds on it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from . import schema
from .models import Connector, ConnectorRevision, MissingSecretError, Template

admin.site.site_header = "Connector Console"
admin.site.site_title = "Connector Console"
admin.site.index_title = "Email connectors"


class ConnectorForm(forms.ModelForm):
    config = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 30, "cols": 100, "spellcheck": "false",
                                     "class": "vLargeTextField config-json"}),
        help_text=f'Logto-format JSON. Secrets show as "{schema.MASK}"; leave them so to keep them.',
    )

    class Meta:
        model = Connector
        fields = ["name", "slug", "kind", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["kind"].disabled = True
            self.fields["config"].initial = schema.dump_config(self.instance.config())
        else:
            kind = self.initial.get("kind") or self.data.get("kind") or "smtp"
            self.fields["config"].initial = schema.example_config_text(
                kind if kind in schema.KINDS else "smtp"
            )
        self.validated: dict[str, Any] | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind, text = cleaned.get("kind") or self.instance.kind, cleaned.get("config")
        if kind and text is not None:
            result = schema.validate_config(kind, text)
            if not result.ok:
                self.add_error("config", [str(e) for e in result.errors])
            else:
                self.validated = result.data
                self.instance.kind = kind  # the form copies it onto the instance only after clean()
                try:
                    self.instance.resolve_masks(dict(result.data or {}))
                except MissingSecretError as exc:
                    line, column = result.locate(exc.path)
                    self.add_error("config", f"{line}:{column}: {exc.path}: {exc}")
        return cleaned


class TemplateInline(admin.TabularInline):
    model = Template
    fields = ["usage_type", "locale", "content_type", "subject"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RevisionInline(admin.TabularInline):
    model = ConnectorRevision
    fields = ["number", "created_at", "created_by", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    show_change_link = True


@admin.register(Connector)
class ConnectorAdmin(admin.ModelAdmin):
    form = ConnectorForm
    list_display = ["name", "slug", "kind", "is_default", "enabled", "template_count", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["is_default", "updated_at", "updated_by"]
    inlines = [TemplateInline, RevisionInline]
    actions = ["make_default"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connector]:
        return super().get_queryset(request).annotate(template_total=Count("templates"))

    @admin.display(description="templates", ordering="template_total")
    def template_count(self, obj: Connector) -> int:
        return getattr(obj, "template_total", 0)

    @admin.action(description="Make the selected connector the default")
    def make_default(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one connector.", messages.ERROR)
            return
        connector = queryset.get()
        connector.set_default()
        self.message_user(request, f"{connector.name} is now the default connector.")

    def save_model(self, request: HttpRequest, obj: Connector, form: Any, change: bool) -> None:
        obj.apply_config(form.validated or {}, user=request.user,
                         note="edited in the console" if change else "created in the console")


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["connector", "usage_type", "locale", "content_type", "subject"]
    list_filter = ["usage_type", "content_type", "connector"]
    list_select_related = ["connector"]
    search_fields = ["subject", "connector__slug"]


@admin.register(ConnectorRevision)
class ConnectorRevisionAdmin(admin.ModelAdmin):
    list_display = ["connector", "number", "created_at", "created_by", "note"]
    list_select_related = ["connector", "created_by"]
    readonly_fields = ["connector", "number", "config", "created_by", "created_at", "note"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
