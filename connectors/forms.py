"""The console's forms: log-in with throttling, the connector editor, templates, API tokens."""

from __future__ import annotations

import re
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import QueryDict

from . import schema
from .models import ApiToken, Connector, ContentType, MissingSecretError
from .ratelimit import RateLimit, client_address
from .secrets import DecryptionError


def login_limit() -> RateLimit:
    """Return the limit on failed log-ins per user name and client address."""
    limit, window = settings.CONSOLE_LOGIN_FAILURE_LIMIT
    return RateLimit("login", limit, window)


class ConsoleLoginForm(AdminAuthenticationForm):
    """The admin's log-in form, refusing to check passwords after repeated failures."""

    def clean(self) -> dict[str, Any]:
        limit = login_limit()
        identity = (
            f"{(self.cleaned_data.get('username') or '').lower()}|{client_address(self.request)}"
        )
        wait = limit.retry_after(identity)
        if wait is not None:
            minutes = max(1, round(wait / 60))
            raise ValidationError(
                "Too many failed log-ins for this user from your address. Try again in "
                f"{minutes} minute{'s' if minutes != 1 else ''}, or ask an administrator to "
                "reset the password.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            limit.hit(identity)
            raise
        limit.reset(identity)
        return cleaned


PRESET_CHOICES = [("", "None (generic example)")] + [
    (key, preset.label) for key, preset in schema.PRESETS.items()
]


class ConnectorForm(forms.ModelForm):
    """A connector's name, slug, kind and its whole Logto-format config as JSON text."""

    preset = forms.ChoiceField(
        choices=PRESET_CHOICES,
        required=False,
        label="Provider preset",
        help_text="Fills in the provider's host, port and TLS settings (SMTP only).",
    )
    config = forms.CharField(
        label="Config (JSON)",
        strip=False,
        widget=forms.Textarea(
            attrs={
                "rows": 30,
                "spellcheck": "false",
                "autocomplete": "off",
                "autocapitalize": "off",
                "class": "config-json",
            }
        ),
        help_text=f'Logto-format JSON. Secrets show as "{schema.MASK}": leave them so to keep '
        "them.",
    )

    class Meta:
        model = Connector
        fields = ["name", "slug", "kind", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validated: dict[str, Any] | None = None
        self.config_errors: list[schema.ConfigError] = []
        if self.instance.pk:
            self.fields["config"].initial = schema.dump_config(self.instance.config())
        else:
            kind = self.initial.get("kind") or "smtp"
            kind = kind if kind in schema.KINDS else "smtp"
            preset = self.initial.get("preset") or None
            preset = preset if kind == "smtp" and preset in schema.PRESETS else None
            self.initial.update(kind=kind, preset=preset or "")
            self.fields["config"].initial = schema.example_config_text(kind, preset)

    @property
    def kind(self) -> str:
        """Return the kind being edited: the stored one, or the one picked on this form."""
        if self.instance.pk:
            return self.instance.kind
        value = self.data.get("kind") if self.is_bound else self.initial.get("kind")
        return value if value in schema.KINDS else "smtp"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind, text = cleaned.get("kind") or self.instance.kind, cleaned.get("config")
        if not kind or text is None:
            return cleaned
        result = schema.validate_config(kind, text)
        if not result.ok:
            self.config_errors = list(result.errors)
        else:
            self.instance.kind = kind  # the form copies it onto the instance only after clean()
            try:
                self.instance.resolve_masks(dict(result.data or {}))
            except MissingSecretError as exc:
                line, column = result.locate(exc.path)
                self.config_errors = [schema.ConfigError(exc.path, line, column, str(exc))]
            except DecryptionError as exc:
                self.config_errors = [schema.ConfigError("", 1, 1, str(exc))]
            else:
                self.validated = result.data
        if self.config_errors:
            self._withhold_typed_secrets(kind, text)
            count = len(self.config_errors)
            self.add_error(
                "config",
                f"The config has {count} problem{'s' if count != 1 else ''}; "
                f"{'each is' if count != 1 else 'it is'} marked in the editor and listed below.",
            )
        return cleaned

    def _withhold_typed_secrets(self, kind: str, text: str) -> None:
        """Blank the secrets typed into a refused config, so the page shown again holds none.

        The mask cannot stand in for them: it means "keep the stored secret", which is not what
        the person asked for. They type the secret again; the editor marks where.
        """
        paths = {path.rsplit(".", 1)[-1]: path for path in schema.SECRET_PATHS[kind]}
        withheld: list[schema.ConfigError] = []

        def blank(match: re.Match[str]) -> str:
            value = match.group("value")
            if value in ("", schema.MASK):
                return match.group(0)
            line = text.count("\n", 0, match.start("value")) + 1
            column = match.start("value") - (text.rfind("\n", 0, match.start("value")) + 1) + 1
            withheld.append(
                schema.ConfigError(
                    paths[match.group("name")],
                    line,
                    column,
                    "enter this secret again: a secret is not sent back to the browser",
                )
            )
            return f'{match.group("head")}""'

        names = "|".join(re.escape(name) for name in sorted(paths))
        redacted = re.sub(SECRET_VALUE.replace("NAMES", names), blank, text)
        if withheld:
            data = cast(QueryDict, self.data).copy()  # a bound form's data is a QueryDict
            data[self.add_prefix("config")] = redacted
            self.data = data
            self.config_errors = [*self.config_errors, *withheld]


# `"pass": "value"`, NAMES being the secrets' key names: found by a pattern, because the text of a
# refused config may not even parse.
SECRET_VALUE = r'(?P<head>"(?P<name>NAMES)"\s*:\s*)"(?P<value>(?:[^"\\\n]|\\.)*)"'


class TemplateForm(forms.Form):
    """One template of a connector: what is sent for a usage type in a locale."""

    subject = forms.CharField(max_length=998, strip=False)
    content = forms.CharField(
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 18, "spellcheck": "false", "class": "template-content"}
        ),
        help_text="Placeholders such as {{code}}, {{link}} or {{user.name}} are filled in from "
        "the payload; in HTML they are escaped.",
    )
    content_type = forms.ChoiceField(
        choices=[
            (ContentType.PLAIN, "text/plain: plain text"),
            (ContentType.HTML, "text/html: HTML, sent with a plain-text version made from it"),
        ],
        label="Content type",
    )
    reply_to = forms.CharField(
        required=False, label="Reply-to", help_text="Overrides the connector's replyTo."
    )
    send_from = forms.CharField(
        required=False, label="Send from", help_text="Overrides the connector's fromEmail."
    )

    # Form field name for each key of a template in the config, to put schema errors in place.
    FIELD_FOR_KEY = {
        "subject": "subject",
        "content": "content",
        "contentType": "content_type",
        "replyTo": "reply_to",
        "sendFrom": "send_from",
    }

    def as_config(self, usage_type: str, locale: str) -> dict[str, Any]:
        """Return the cleaned template as an item of a config's `templates`."""
        data = self.cleaned_data
        item: dict[str, Any] = {
            "usageType": usage_type,
            "contentType": data["content_type"],
            "subject": data["subject"],
            "content": data["content"],
        }
        if data.get("reply_to"):
            item["replyTo"] = data["reply_to"]
        if data.get("send_from"):
            item["sendFrom"] = data["send_from"]
        if locale:
            item["locale"] = locale
        return item


class AddLocaleForm(forms.Form):
    locale = forms.CharField(
        max_length=35,
        label="New locale",
        help_text="A language tag such as fr, de-CH or zh-Hans-CN; its templates start as copies "
        "of the default ones.",
    )


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name", "connectors"]
