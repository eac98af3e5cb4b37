"""Templates: the grid of usage types by locales, one template's page, and its preview."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csp import csp_override

from .. import schema
from ..forms import AddLocaleForm, TemplateForm
from ..models import Connector, UsageType
from ..rendering import RenderError, TemplateNotFound, choose_template, render_message
from ..service import sample_payload
from .base import EMAIL_FRAME_CSP, json_error, page_context

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

LOCALE_IN_URL_DEFAULT = "default"  # a locale tag is 2-3 letters first, so this is never one
TEMPLATE_ERROR = re.compile(r"templates\[(\d+)\]\.(\w+)")


def locale_from_url(value: str) -> str:
    """Return the locale a URL names ("default" is the default locale, "")."""
    return "" if value == LOCALE_IN_URL_DEFAULT else value


def locale_to_url(locale: str) -> str:
    """Return how a URL names a locale."""
    return locale or LOCALE_IN_URL_DEFAULT


@dataclass
class TemplateCell:
    """One square of the grid of usage types by locales."""

    usage_type: str
    locale: str
    url: str
    template: Any = None
    fallback: str = ""  # "Generic · default" when another template is used instead


def template_grid(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector
) -> HttpResponse:
    """Show which template each usage type and locale gets, and add a locale."""
    templates = list(connector.templates.all())
    items = [t.as_config() for t in templates]
    locales = ["", *sorted({t.locale for t in templates if t.locale})]
    by_key = {(t.usage_type, t.locale): t for t in templates}
    rows = []
    for usage_type in schema.USAGE_TYPES:
        cells = []
        for locale in locales:
            url = reverse(
                "admin:connectors_connector_template",
                args=[connector.pk, usage_type, locale_to_url(locale)],
            )
            cell = TemplateCell(usage_type, locale, url, by_key.get((usage_type, locale)))
            if cell.template is None:
                try:
                    chosen = choose_template(items, usage_type, locale or None)
                except TemplateNotFound:
                    pass
                else:
                    cell.fallback = f"{chosen['usageType']} · {chosen.get('locale') or 'default'}"
            cells.append(cell)
        rows.append((usage_type, cells))

    form = AddLocaleForm(request.POST or None)
    if request.method == "POST":
        if not model_admin.has_change_permission(request, connector):
            raise PermissionDenied
        if form.is_valid():
            added = add_locale(request, connector, form)
            if added:
                return HttpResponseRedirect(request.path)
    context = page_context(model_admin, request, connector, f"Templates of {connector.name}")
    context.update(
        locales=locales, rows=rows, form=form, connector=connector, has_templates=bool(templates)
    )
    return TemplateResponse(request, "admin/connectors/connector/templates.html", context)


def add_locale(request: HttpRequest, connector: Connector, form: AddLocaleForm) -> bool:
    """Copy the default templates to a new locale; report on the form what went wrong."""
    locale = form.cleaned_data["locale"].strip()
    config = connector.config()
    defaults = [t for t in config.get("templates") or [] if not t.get("locale")]
    if not defaults:
        form.add_error("locale", "This connector has no default templates to copy.")
        return False
    config["templates"] = [
        *config.get("templates", []),
        *({**t, "locale": locale} for t in defaults),
    ]
    result = schema.validate_config_data(connector.kind, config)
    if not result.ok or result.data is None:
        first = result.errors[0]
        message = first.message
        if "duplicate" in message or "more than one" in message:
            message = f"Templates for {locale} exist already."
        form.add_error("locale", message)
        return False
    normalised = next((t.get("locale") for t in result.data["templates"][-len(defaults) :]), locale)
    connector.apply_config(result.data, user=request.user, note=f"locale {normalised} added")
    messages.success(
        request, f"Added {len(defaults)} templates for {normalised}, copied from the default ones."
    )
    return True


def template_edit(
    request: HttpRequest,
    model_admin: ModelAdmin,
    connector: Connector,
    usage_type: str,
    locale_slug: str,
) -> HttpResponse:
    """Edit one template (subject, content, content type, reply-to, send-from) with a preview."""
    if usage_type not in schema.USAGE_TYPES:
        raise Http404("No such usage type.")
    locale = locale_from_url(locale_slug)
    existing = connector.templates.filter(usage_type=usage_type, locale=locale).first()
    can_change = model_admin.has_change_permission(request, connector)
    grid_url = reverse("admin:connectors_connector_templates", args=[connector.pk])

    if request.method == "POST":
        if not can_change:
            raise PermissionDenied
        config = connector.config()
        items = list(config.get("templates") or [])
        index = next(
            (
                i
                for i, t in enumerate(items)
                if t["usageType"] == usage_type and (t.get("locale") or "") == locale
            ),
            None,
        )
        if "_delete" in request.POST:
            if index is None:
                raise Http404("No such template.")
            del items[index]
            note = f"template {usage_type} ({locale or 'default'}) deleted"
            result = store_templates(connector, config, items, request.user, note)
            if result.ok:
                messages.success(
                    request, f"Deleted the {usage_type} template ({locale or 'default'})."
                )
                return HttpResponseRedirect(grid_url)
            messages.error(request, "; ".join(e.message for e in result.errors))
            return HttpResponseRedirect(request.path)
        form = TemplateForm(request.POST)
        if form.is_valid():
            item = form.as_config(usage_type, locale)
            if index is None:
                items.append(item)
                index = len(items) - 1
            else:
                items[index] = item
            note = f"template {usage_type} ({locale or 'default'}) edited"
            result = store_templates(connector, config, items, request.user, note)
            if result.ok:
                messages.success(
                    request,
                    f"Saved the {usage_type} template ({locale or 'default'}) of {connector.name}.",
                )
                return HttpResponseRedirect(
                    request.path if "_continue" in request.POST else grid_url
                )
            for error in result.errors:
                match = TEMPLATE_ERROR.fullmatch(error.path)
                if match and int(match[1]) == index and match[2] in TemplateForm.FIELD_FOR_KEY:
                    form.add_error(TemplateForm.FIELD_FOR_KEY[match[2]], error.message)
                else:
                    form.add_error(None, f"{error.path}: {error.message}")
    else:
        source = (
            existing.as_config() if existing else fallback_template(connector, usage_type, locale)
        )
        form = TemplateForm(
            initial={
                "subject": source.get("subject", ""),
                "content": source.get("content", ""),
                "content_type": source.get("contentType", "text/plain"),
                "reply_to": source.get("replyTo", ""),
                "send_from": source.get("sendFrom", ""),
            }
        )

    title = f"{usage_type} template ({locale or 'default'})"
    context = page_context(model_admin, request, connector, title)
    context.update(
        form=form,
        connector=connector,
        usage_type=usage_type,
        locale=locale,
        existing=existing,
        can_change=can_change,
        grid_url=grid_url,
        template_data={
            "previewUrl": reverse(
                "admin:connectors_connector_template_preview", args=[connector.pk]
            ),
            "frameUrl": reverse("admin:connectors_connector_template_frame", args=[connector.pk]),
            "usageType": usage_type,
            "locale": locale,
            "readOnly": not can_change,
        },
        payload=json.dumps(sample_payload(locale or None), indent=2),
    )
    return TemplateResponse(request, "admin/connectors/connector/template_form.html", context)


def store_templates(
    connector: Connector, config: dict[str, Any], items: list[Any], user: Any, note: str
) -> schema.ValidationResult:
    """Validate the config with these templates and, if valid, save it as a new revision."""
    config["templates"] = items
    result = schema.validate_config_data(connector.kind, config)
    if result.ok and result.data is not None:
        connector.apply_config(result.data, user=user, note=note)
    return result


def fallback_template(connector: Connector, usage_type: str, locale: str) -> dict[str, Any]:
    """Return the template used today for a usage type and locale, as a start for a new one."""
    try:
        return dict(choose_template(connector.template_configs(), usage_type, locale or None))
    except TemplateNotFound:
        return {"contentType": "text/plain", "subject": "", "content": ""}


def render_preview(request: HttpRequest, connector: Connector) -> tuple[Any, str]:
    """Render the posted template with a sample payload; return (message, error)."""
    post = request.POST
    locale = post.get("locale", "")
    try:
        payload = json.loads(post.get("payload") or "null") or sample_payload(locale or None)
    except ValueError as exc:
        return None, f"The sample payload is not JSON: {exc}."
    if not isinstance(payload, dict):
        return None, "The sample payload must be a JSON object."
    template = {
        "usageType": post.get("usage_type", UsageType.GENERIC),
        "contentType": post.get("content_type", "text/plain"),
        "subject": post.get("subject", ""),
        "content": post.get("content", ""),
        "replyTo": post.get("reply_to") or None,
        "sendFrom": post.get("send_from") or None,
    }
    to = getattr(request.user, "email", "") or "ada@example.com"
    try:
        return render_message(connector.config(), template, to, payload), ""
    except RenderError as exc:
        return None, str(exc)


def template_preview(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector
) -> JsonResponse:
    """Answer with the subject, sender and plain text a posted template makes."""
    if request.method != "POST":
        return json_error(405, "method_not_allowed", "POST the template to preview it.")
    message, error = render_preview(request, connector)
    if message is None:
        return JsonResponse({"ok": False, "error": {"code": "render_error", "message": error}})
    return JsonResponse(
        {
            "ok": True,
            "subject": message.subject,
            "from": message.from_email,
            "to": message.to,
            "reply_to": message.reply_to or "",
            "text": message.text,
            "is_html": message.html is not None,
        }
    )


@xframe_options_sameorigin
@csp_override(EMAIL_FRAME_CSP)
def template_frame(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector
) -> HttpResponse:
    """Answer with the HTML body a posted template makes, for the sandboxed preview frame."""
    if request.method != "POST":
        return HttpResponse(status=405)
    message, error = render_preview(request, connector)
    if message is None or message.html is None:
        note = error or "This template is plain text: see the text version."
        return render(request, "admin/connectors/frame_note.html", {"note": note})
    return HttpResponse(message.html, content_type="text/html; charset=utf-8")
