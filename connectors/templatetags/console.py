"""Template filters for the console's pages."""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

CODE_SPAN = re.compile(r"`([^`]+)`")


@register.filter
def code_spans(text: str) -> SafeString:
    """Return text escaped, with its `backquoted` parts as <code> (schema descriptions use them)."""
    return mark_safe(CODE_SPAN.sub(r"<code>\1</code>", escape(text)))  # noqa: S308 (escaped first)
