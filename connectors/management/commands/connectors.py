"""`python manage.py connectors list | show | import | export | set-default | delete | test`."""

from __future__ import annotations

import logging
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from connectors import schema
from connectors.models import Connector, DeliveryStatus, MissingSecretError
from connectors.secrets import DecryptionError
from connectors.service import SendError, send_test


class Command(BaseCommand):
    help = "List, show, import, export, set the default of and delete email connectors."
    # Export output is meant for pipes; warnings about development keys would only get in the way.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="List the connectors.")
        show = sub.add_parser("show", help="Show a connector and its config (secrets masked).")
        show.add_argument("slug")
        imp = sub.add_parser(
            "import", help="Create or update a connector from a Logto-format JSON file."
        )
        imp.add_argument("slug")
        imp.add_argument("file", help="JSON file, or - for standard input")
        imp.add_argument(
            "--kind",
            choices=schema.KINDS,
            help="Connector kind for a new connector "
            "(default: http when the config has an endpoint, else smtp).",
        )
        imp.add_argument("--name", help="Display name (default: the slug, for a new connector).")
        export = sub.add_parser("export", help="Print the config as JSON, secrets masked.")
        export.add_argument("slug")
        default = sub.add_parser("set-default", help="Make a connector the default.")
        default.add_argument("slug")
        delete = sub.add_parser("delete", help="Delete a connector with its templates and history.")
        delete.add_argument("slug")
        test = sub.add_parser("test", help="Send one message now and print the outcome.")
        test.add_argument("slug")
        test.add_argument("--to", required=True, help="recipient address")
        test.add_argument("--type", default="Generic", help="usage type (default Generic)")
        test.add_argument("--locale", default=None)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        handler = getattr(self, "handle_" + action.replace("-", "_"))
        try:
            handler(**options)
        except DecryptionError as exc:  # a key missing or malformed: say so, without a traceback
            raise CommandError(str(exc)) from None

    def connector(self, slug: str) -> Connector:
        """Return the connector with this slug, or stop with the known slugs."""
        try:
            return Connector.objects.get(slug=slug)
        except Connector.DoesNotExist:
            known = ", ".join(Connector.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"No connector with slug {slug!r} (known: {known}).") from None

    def handle_list(self, **options: Any) -> None:
        connectors = Connector.objects.all()
        if not connectors:
            self.stdout.write("No connectors yet. Add one with `connectors import SLUG FILE`.")
            return
        rows = [("SLUG", "NAME", "KIND", "DEFAULT", "ENABLED", "TEMPLATES")]
        for c in connectors.order_by("slug"):
            rows.append(
                (
                    c.slug,
                    c.name,
                    c.kind,
                    "yes" if c.is_default else "",
                    "yes" if c.enabled else "no",
                    str(c.templates.count()),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            )

    def handle_show(self, *, slug: str, **options: Any) -> None:
        c = self.connector(slug)
        locales = sorted({t.locale or "default" for t in c.templates.all()})
        self.stdout.write(f"{c.name} ({c.slug})")
        self.stdout.write(f"  kind:      {c.get_kind_display()}")
        self.stdout.write(f"  default:   {'yes' if c.is_default else 'no'}")
        self.stdout.write(f"  enabled:   {'yes' if c.enabled else 'no'}")
        self.stdout.write(f"  templates: {c.templates.count()} ({', '.join(locales) or 'none'})")
        self.stdout.write(
            f"  revisions: {c.revisions.count()}, last change {c.updated_at:%Y-%m-%d %H:%M %Z}"
        )
        self.stdout.write(schema.dump_config(c.config()), ending="")

    def handle_export(self, *, slug: str, **options: Any) -> None:
        self.stdout.write(schema.dump_config(self.connector(slug).config()), ending="")

    def handle_set_default(self, *, slug: str, **options: Any) -> None:
        c = self.connector(slug)
        c.set_default()
        self.stdout.write(f"{c.slug} is now the default connector.")

    def handle_delete(self, *, slug: str, **options: Any) -> None:
        c = self.connector(slug)
        with transaction.atomic():
            c.delete()
        default = Connector.objects.default()
        after = f" {default.slug} is now the default." if default else " No connectors are left."
        self.stdout.write(f"Deleted {slug}.{after}")

    def handle_test(
        self,
        *,
        slug: str,
        to: str,
        type: str,
        locale: str | None,
        **options: Any,
    ) -> None:
        self.connector(slug)
        # The outcome is printed below; the delivery log's own line would say it twice.
        delivery_log = logging.getLogger("connectors.delivery")
        level = delivery_log.level
        delivery_log.setLevel(logging.WARNING)
        try:
            outcome = send_test(to, type, connector=slug, locale=locale, source_detail="cli")
        except SendError as exc:
            raise CommandError(str(exc)) from None
        finally:
            delivery_log.setLevel(level)
        delivery = outcome.delivery
        if delivery.status == DeliveryStatus.SENT:
            self.stdout.write(f"Sent {delivery.usage_type} to {delivery.to} through {slug}.")
            self.stdout.write(f"  server:     {delivery.server_reply}")
            self.stdout.write(f"  message id: {delivery.message_id}")
            for warning in outcome.result.warnings if outcome.result else []:
                self.stdout.write(f"  warning:    {warning}")
            return
        error = outcome.error
        self.stderr.write(f"Failed: {getattr(error, 'summary', None) or error or delivery.error}")
        hint = getattr(error, "hint", "") or delivery.hint
        if hint:
            self.stderr.write(f"Hint: {hint}")
        raise CommandError(f"The test message to {delivery.to} was not sent.")

    def handle_import(
        self, *, slug: str, file: str, kind: str | None, name: str | None, **options: Any
    ) -> None:
        text = self.read(file)
        existing = Connector.objects.filter(slug=slug).first()
        if existing is not None:
            if kind and kind != existing.kind:
                raise CommandError(
                    f"{slug} is an {existing.kind} connector; it cannot become {kind}."
                )
            kind = existing.kind
        kind = kind or guess_kind(text)
        connector = existing or Connector(slug=slug, kind=kind, name=name or slug)
        if name:
            connector.name = name
        result = schema.validate_config(kind, text)
        for notice in result.notices:
            self.stderr.write(f"note: {notice}")
        errors = [str(e) for e in result.errors]
        if result.ok:
            assert result.data is not None
            try:
                connector.full_clean(exclude=["settings", "secrets"])
            except Exception as exc:  # ValidationError: the slug or name
                raise CommandError(f"{slug}: {exc}") from None
            try:
                connector.apply_config(result.data, note=f"imported from {file}")
            except MissingSecretError as exc:
                line, column = result.locate(exc.path)
                errors.append(str(schema.ConfigError(exc.path, line, column, str(exc))))
        if errors:
            for error in errors:
                self.stderr.write(error)
            count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
            raise CommandError(f"{count} in {file}; nothing was changed.")
        verb = "Updated" if existing else "Created"
        self.stdout.write(
            f"{verb} {kind} connector {slug} ({connector.templates.count()} templates)."
        )

    def read(self, file: str) -> bytes:
        """Return the bytes of the file, or of standard input for `-`."""
        if file == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}.") from None


def guess_kind(text: bytes | str) -> str:
    """Return "http" for a config that names an endpoint and no host, else "smtp"."""
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return "http" if '"endpoint"' in body and '"host"' not in body else "smtp"
