"""History: a connector's revisions, the diff between two, and restoring one."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from .. import schema
from ..models import Connector, MissingSecretError
from .base import page_context

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin


def history(request: HttpRequest, model_admin: ModelAdmin, connector: Connector) -> HttpResponse:
    """List a connector's revisions, with who saved each and when."""
    revisions = list(connector.revisions.select_related("created_by").order_by("-number"))
    context = page_context(model_admin, request, connector, f"History of {connector.name}")
    context.update(connector=connector, revisions=revisions)
    return TemplateResponse(request, "admin/connectors/connector/history.html", context)


@dataclass
class DiffLine:
    kind: str  # "context", "added", "removed", "hunk"
    old: int | None
    new: int | None
    text: str


def diff_lines(before: str, after: str) -> list[DiffLine]:
    """Return a unified diff of two texts as numbered lines."""
    lines: list[DiffLine] = []
    old_no = new_no = 0
    for line in list(
        difflib.unified_diff(before.splitlines(), after.splitlines(), n=3, lineterm="")
    )[2:]:
        if line.startswith("@@"):
            match = re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", line)
            old_no, new_no = (int(match[1]), int(match[2])) if match else (0, 0)
            lines.append(DiffLine("hunk", None, None, line))
        elif line.startswith("-"):
            lines.append(DiffLine("removed", old_no, None, line[1:]))
            old_no += 1
        elif line.startswith("+"):
            lines.append(DiffLine("added", None, new_no, line[1:]))
            new_no += 1
        else:
            lines.append(DiffLine("context", old_no, new_no, line[1:]))
            old_no += 1
            new_no += 1
    return lines


def history_diff(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector
) -> HttpResponse:
    """Show what changed between two revisions (their configs are stored with secrets masked)."""
    revisions = {r.number: r for r in connector.revisions.select_related("created_by")}
    if not revisions:
        raise Http404("This connector has no revisions.")
    try:
        newest = max(revisions)
        to_number = int(request.GET.get("to") or newest)
        from_number = int(request.GET.get("from") or max(1, to_number - 1))
    except ValueError:
        raise Http404("Revision numbers are whole numbers.") from None
    if from_number not in revisions or to_number not in revisions:
        raise Http404("No such revision.")
    before, after = revisions[from_number], revisions[to_number]
    lines = diff_lines(schema.dump_config(before.config), schema.dump_config(after.config))
    title = f"Changes from revision {from_number} to {to_number}"
    context = page_context(model_admin, request, connector, title)
    context.update(
        connector=connector,
        before=before,
        after=after,
        lines=lines,
        numbers=sorted(revisions, reverse=True),
    )
    return TemplateResponse(request, "admin/connectors/connector/history_diff.html", context)


@require_POST
def history_restore(
    request: HttpRequest, model_admin: ModelAdmin, connector: Connector, number: int
) -> HttpResponse:
    """Make a revision's config the current one again (itself recorded as a new revision)."""
    revision = connector.revisions.filter(number=number).first()
    if revision is None:
        raise Http404("No such revision.")
    history_url = reverse("admin:connectors_connector_history", args=[connector.pk])
    result = schema.validate_config_data(connector.kind, revision.config)
    if not result.ok or result.data is None:
        messages.error(
            request,
            f"Revision {number} is not valid with today's rules: "
            + "; ".join(str(e) for e in result.errors[:5]),
        )
        return HttpResponseRedirect(history_url)
    try:
        connector.apply_config(result.data, user=request.user, note=f"restored revision {number}")
    except MissingSecretError as exc:
        messages.error(request, f"Revision {number} cannot be restored: {exc}")
        return HttpResponseRedirect(history_url)
    messages.success(
        request,
        f"Restored revision {number} of {connector.name} as revision "
        f"{connector.revisions.count()}.",
    )
    return HttpResponseRedirect(history_url)
